"""promptsource's bundled templates, loaded once, for every task family that reads them.

`tasks.p3` applies them to raw rows; `tasks.recross` takes the fixed answer choices of the
release's templates from them. This module registers nothing with gin and reads only
promptsource's YAML, so any task module may import it at any time (also after gin's config is
locked).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import random
import sys
import types
from typing import Iterator, Sequence

# promptsource's `choice` filter draws from the global `random` module, which would make
# prompted targets change from run to run; this generator is re-seeded per row instead
# (`ROW_RNG.seed(...)` before applying a template).
ROW_RNG = random.Random()


def _seeded_choice(sequence: Sequence):
    return ROW_RNG.choice(sequence)


@contextlib.contextmanager
def _pkg_resources_shim() -> Iterator[None]:
    """Lets promptsource 0.2.3 import where setuptools no longer ships `pkg_resources`.

    promptsource only calls `pkg_resources.resource_filename` at import, to find its bundled
    templates; the stand-in answers that one call and is removed afterwards, so nothing else
    mistakes it for the real module.
    """
    try:
        import pkg_resources  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        yield
        return
    except ImportError:
        pass
    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = lambda package, resource: os.path.join(
        os.path.dirname(importlib.util.find_spec(package).origin), resource)
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


@functools.cache
def promptsource_module():
    """promptsource's `templates` module, with its random filter made seedable."""
    with _pkg_resources_shim():
        from promptsource import templates  # pylint: disable=import-outside-toplevel
    templates.env.filters["choice"] = _seeded_choice
    return templates


@functools.cache
def dataset_templates(hf_name: str, hf_subset: str | None):
    """promptsource's `DatasetTemplates` of a HF dataset (and subset), from the bundled YAML."""
    return promptsource_module().DatasetTemplates(hf_name, hf_subset)
