"""T5X-style gin flags for every entry point: `--gin_file` (repeatable), `--gin.KEY=VALUE`
(repeatable), `--gin_search_paths` (comma-separated).

    parser = argparse.ArgumentParser()
    add_gin_flags(parser)
    args = parser.parse_args(argv)
    parse_gin_flags(args)              # gin errors become one-line UserErrors
    result = call_configurable(fn)     # fn with its gin bindings
    write_config(run_dir)              # the resolved config.gin, atomically

Gin files name each other relative to a search path; the repository root (which holds `gin/`)
and the working directory are always searched, so `include 'gin/runs/train.gin'` works from
anywhere.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import re
import sys
from typing import Any, Callable, Iterator, Sequence

import gin

from recross_jax.errors import UserError
from recross_jax.io_utils import write_text_atomic

CONFIG_FILE = "config.gin"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SEARCH_PATHS = (".", REPO_ROOT)

_REQUIRED_MACRO = re.compile(r"^(\S+?)(/macro\.value)? set to `%gin\.REQUIRED`")
_REQUIRED_CALL = re.compile(r"^Required bindings for `([^`]+)` not provided in config: (.*)$")


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """Turns each `--gin.KEY=VALUE` into `--gin_bindings=KEY = VALUE` (argparse cannot match
    an open-ended family of option names)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin."):
            if "=" not in arg:
                raise UserError(f"gin flags must look like --gin.KEY=VALUE, got {arg!r}")
            name, value = arg[len("--gin."):].split("=", 1)
            arg = f"--gin_bindings={name} = {value}"
        out.append(arg)
    return out


def add_gin_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the gin flags to `parser`, which then also accepts `--gin.KEY=VALUE`.

    The parser's `parse_known_args` (which `parse_args` and sub-parsers go through) is wrapped
    to rewrite `--gin.KEY=VALUE` first.
    """
    group = parser.add_argument_group("gin configuration")
    group.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                       help="gin file to parse (repeatable; later files override earlier)")
    group.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING",
                       help="one gin binding 'KEY = VALUE' (repeatable); same as "
                            "--gin.KEY=VALUE")
    group.add_argument("--gin_search_paths", default="", metavar="PATHS",
                       help="comma-separated directories searched for gin files (the "
                            "repository root and the working directory always are)")
    parse_known_args = parser.parse_known_args

    def parse_known_args_with_gin(args: Sequence[str] | None = None,
                                  namespace: argparse.Namespace | None = None):
        args = sys.argv[1:] if args is None else args
        return parse_known_args(rewrite_gin_args(args), namespace)

    parser.parse_known_args = parse_known_args_with_gin
    return parser


def parse_gin_flags(args: argparse.Namespace, finalize: bool = True) -> None:
    """Parses the gin files and bindings of `args` into a fresh gin config.

    Raises:
      UserError: a missing gin file, a syntax error, an unknown configurable or parameter, or
        a `%gin.REQUIRED` macro left unset -- as one line.
    """
    search_paths = [p for p in args.gin_search_paths.split(",") if p] + list(DEFAULT_SEARCH_PATHS)
    parse(args.gin_file, args.gin_bindings, search_paths, finalize)


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = DEFAULT_SEARCH_PATHS, finalize: bool = True) -> None:
    """`gin.parse_config_files_and_bindings` with search paths and one-line errors."""
    gin.clear_config()
    for path in search_paths:
        gin.add_config_file_search_path(path)
    try:
        with _quiet_gin_path_errors():
            gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                                finalize_config=finalize)
    except IOError as e:
        missing = re.match(r"Unable to open file: (.*?)\. Searched config paths", str(e))
        name = missing.group(1) if missing else str(e)
        raise UserError(f"gin file not found: {name} (searched {', '.join(search_paths)})"
                        ) from None
    except (ValueError, SyntaxError, ImportError, TypeError, NameError, AttributeError) as e:
        raise UserError(describe_error(e)) from None


@contextlib.contextmanager
def _quiet_gin_path_errors() -> Iterator[None]:
    """Keeps gin's own "Path not found" log line (it probes the Python path for a gin file
    before the search paths) off stderr: a missing file is reported once, as a UserError. A
    handler is set on the root logger meanwhile, so `logging.error` does not configure one
    for the rest of the process."""
    root = logging.getLogger()
    handler = logging.NullHandler() if not root.handlers else None
    if handler is not None:
        root.addHandler(handler)
    root.addFilter(_drop_gin_path_errors)
    try:
        yield
    finally:
        root.removeFilter(_drop_gin_path_errors)
        if handler is not None:
            root.removeHandler(handler)


def _drop_gin_path_errors(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


def call_configurable(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Calls `fn` with its gin bindings (explicit `kwargs` win); a parameter left
    `gin.REQUIRED` becomes a one-line UserError. A function no gin file or flag binds (so
    gin's dynamic registration never registered it) runs with its defaults and `kwargs`."""
    try:
        configurable = gin.get_configurable(fn)
    except ValueError:  # "Could not find ... in the Gin registry": nothing binds it
        configurable = fn
        missing = _missing_arguments(fn, kwargs)
        if missing:
            raise UserError(f"missing required gin binding(s) of {fn.__name__}: "
                            f"{', '.join(missing)} (pass a gin file that binds them)") from None
    try:
        return configurable(**kwargs)
    except RuntimeError as e:
        if _REQUIRED_CALL.match(first_line(e)):
            raise UserError(describe_error(e)) from None
        raise


def _missing_arguments(fn: Callable[..., Any], kwargs: dict) -> list[str]:
    """The parameters of `fn` without a default that `kwargs` does not give."""
    return [name for name, parameter in inspect.signature(fn).parameters.items()
            if parameter.default is inspect.Parameter.empty and name not in kwargs
            and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                       inspect.Parameter.VAR_KEYWORD)]


def describe_error(error: BaseException) -> str:
    """A gin error as one line: the message plus where it came from."""
    message = first_line(error)
    required = _REQUIRED_MACRO.match(message)
    if required:
        name = required.group(1)
        return f"missing required gin binding {name}: set it with --gin.{name}=... or in a gin file"
    call = _REQUIRED_CALL.match(message)
    if call:
        return f"missing required gin binding(s) of {call.group(1)}: {call.group(2)}"
    if isinstance(error, SyntaxError):
        location = getattr(error, "filename", None) or "bindings"
        return f"gin syntax error: {error.msg} ({location}, line {error.lineno})"
    lines = [line.strip() for line in str(error).splitlines()]
    context = [line for line in lines[1:] if line and set(line) != {"^"}]
    return message if not context else f"{message} ({': '.join(context)})"


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (gin appends call-site lines)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def write_config(directory: str) -> str:
    """Writes the resolved gin config to `directory/config.gin` (atomically); returns its path."""
    path = os.path.join(directory, CONFIG_FILE)
    write_text_atomic(path, gin.config_str())
    return path
