"""File I/O shared by every module: atomic writes (a reader never sees a half-written file) and
JSONL reading whose errors name the file and line."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Iterable, Iterator

from recross_jax.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` only on success."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_result(out_dir: str, name: str, summary: Any, table: str) -> None:
    """`out_dir`/`name`.json (the summary) and `name`.md (its markdown table), each atomically."""
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, f"{name}.json"), summary)
    write_text_atomic(os.path.join(out_dir, f"{name}.md"), table)


def parse_jsonl_lines(lines: Iterable[str], path: str) -> list[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line; blank lines are skipped.

    Raises:
      UserError: a line that is not JSON, or not a JSON object (names `path` and the line).
    """
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def sha256_file(path: str) -> str:
    """The sha256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"{what} is not a file: {path}")


def read_jsonl(path: str, what: str = "JSONL file") -> list[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line of the file at `path`.

    Raises:
      UserError: `what` is missing, not a file, unreadable or not UTF-8; or a malformed line.
    """
    _check_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return parse_jsonl_lines(f, path)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text: {e.reason}") from e


def read_json(path: str, what: str = "JSON file") -> Any:
    """The JSON value in the file at `path`.

    Raises:
      UserError: `what` is missing, not a file, unreadable, not UTF-8 or not valid JSON (a
        truncated or hand-edited manifest), as one line naming the file.
    """
    _check_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text: {e.reason}") from e
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e.msg}, line {e.lineno}); it is "
                        "corrupt or was edited by hand") from e


def read_json_object(path: str, what: str = "JSON file",
                     required: Iterable[str] = ()) -> dict:
    """`read_json` of a file that must hold an object with the `required` keys."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a JSON object, got {type(value).__name__}")
    missing = [key for key in required if key not in value]
    if missing:
        raise UserError(f"{what} {path} lacks {missing[0]!r}; it is corrupt or from another "
                        "version")
    return value
