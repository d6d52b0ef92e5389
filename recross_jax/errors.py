"""Errors that the CLI turns into a one-line message and exit code 2."""
from __future__ import annotations

import sys
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown task, malformed data.

    The message must be one line that names the problem (and the offending file, task or
    parameter), because the CLI prints it as is.
    """


def exit_on_user_error(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`; a UserError it raises ends the program as the CLI does: its first line
    after `error: ` on stderr, exit code 2 (for scripts/)."""
    try:
        return function(*args)
    except UserError as error:
        from recross_jax.gin_utils import first_line  # pylint: disable=import-outside-toplevel
        print(f"error: {first_line(error)}", file=sys.stderr)
        sys.exit(2)
