"""Importing the modules that register SeqIO tasks and mixtures.

Its own small home so that the CLI and the stage entry points (`recross eval`, scripts) share it
without importing one another. The library never imports tasks/ statically: modules are named
here and imported by name.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence

from recross_jax.errors import UserError

# Imported before data commands run when no `--tasks_module` is given (it replaces this list).
DEFAULT_TASK_MODULES = ("tasks.recross", "tasks.p3", "tasks.jsonl")


def import_task_modules(modules: Sequence[str] | None) -> None:
    """Imports the modules that register tasks (`DEFAULT_TASK_MODULES` when None).

    Raises:
      UserError: a module cannot be found.
    """
    for name in DEFAULT_TASK_MODULES if modules is None else modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise UserError(f"cannot import tasks module {name!r}: {e}") from e
