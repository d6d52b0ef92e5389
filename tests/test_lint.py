"""The code base passes ruff (ruff.toml: pycodestyle, pyflakes, import order, 110 columns)."""
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing():
    beside_python = os.path.join(os.path.dirname(sys.executable), "ruff")  # the pinned one
    ruff = beside_python if os.path.exists(beside_python) else shutil.which("ruff")
    result = subprocess.run([ruff, "check", "--output-format", "concise", "recross_jax", "tasks",
                             "scripts", "tests"], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
