"""JSONL reading shared by tasks, queries and tuples: rows with 1-based line numbers, and one-line
errors that name the file and line."""
import pytest

from recross_jax import io_utils
from recross_jax.errors import UserError


def test_read_jsonl_skips_blank_lines_and_numbers_lines_from_one(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n', encoding="utf-8")
    assert io_utils.read_jsonl(str(path)) == [(1, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize("content, message", [
    ('{"a": 1}\n{"a": \n', r"rows\.jsonl:2: not valid JSON"),
    ('{"a": 1}\n\n[1, 2]\n', r"rows\.jsonl:3: expected a JSON object, got list"),
    (b'{"a": "\xff"}\n', r"rows\.jsonl is not UTF-8 text"),
])
def test_read_jsonl_names_file_and_line_of_a_bad_row(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(UserError, match=message):
        io_utils.read_jsonl(str(path), what="rows file")


def test_read_jsonl_refuses_a_missing_file_or_a_directory(tmp_path):
    with pytest.raises(UserError, match="queries file not found: .*nope.jsonl"):
        io_utils.read_jsonl(str(tmp_path / "nope.jsonl"), what="queries file")
    with pytest.raises(UserError, match="queries file is not a file"):
        io_utils.read_jsonl(str(tmp_path), what="queries file")
