"""recross_jax.task_modules: importing task modules by name, apart from the CLI."""
import os
import subprocess
import sys
import textwrap

import pytest

from recross_jax import task_modules
from recross_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_modules_are_the_embedded_release_p3_and_jsonl():
    assert task_modules.DEFAULT_TASK_MODULES == ("tasks.recross", "tasks.p3", "tasks.jsonl")


def test_named_modules_are_imported_and_a_missing_one_is_a_one_line_user_error(
        tmp_path, monkeypatch):
    (tmp_path / "marker_tasks.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "marker_tasks", raising=False)
    task_modules.import_task_modules(["marker_tasks"])
    assert sys.modules["marker_tasks"].IMPORTED
    with pytest.raises(UserError) as info:
        task_modules.import_task_modules(["marker_tasks", "no_such_tasks_module"])
    assert str(info.value).startswith("cannot import tasks module 'no_such_tasks_module'")
    assert "\n" not in str(info.value)


def test_evaluate_imports_task_modules_without_the_cli():
    # `cli` imports `generalize`, which imports `evaluate`: evaluate must not need `cli`.
    script = textwrap.dedent("""
        import sys
        from recross_jax import evaluate
        try:
            evaluate.main(["--checkpoint", "unused", "--task", "t", "--tasks_module", "nope"])
        except Exception as e:
            print(type(e).__name__, e)
        print("cli imported:", "recross_jax.cli" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert result.stdout.splitlines() == [
        "UserError cannot import tasks module 'nope': No module named 'nope'",
        "cli imported: False"]
