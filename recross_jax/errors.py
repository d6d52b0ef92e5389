"""Errors that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown task, malformed data.

    The message must be one line that names the problem (and the offending file, task or
    parameter), because the CLI prints it as is.
    """
