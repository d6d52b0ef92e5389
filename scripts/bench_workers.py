"""Running one side of a side-by-side benchmark in its own process, pinned to given CPU cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Sequence


def run_pinned(side: str, command: Sequence[str], cores: Sequence[int]) -> dict:
    """Runs `command` on `cores` (JAX on CPU) and returns the JSON object of its last stdout line;
    exits with the worker's stderr when it fails."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="true")
    proc = subprocess.run(list(command), env=env, capture_output=True, text=True, check=False,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if proc.returncode != 0:
        sys.exit(f"{side} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
