"""`make demo`: the embedded BIG-bench corpus through the data layer.

Stages (each skipped when its output already exists): train the project's default SentencePiece
vocabulary on `bigbench_upstream`, then print the upstream and target mixtures' statistics and a
few formatted examples of multiple-choice and generative tasks.
"""
from __future__ import annotations

import os
import sys

from recross_jax import cli

VOCAB_SIZE = 8000


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run(*argv: str) -> None:
    code = cli.main(list(argv))
    if code:
        sys.exit(code)


def main() -> None:
    from tasks import vocab  # pylint: disable=import-outside-toplevel
    path = vocab.default_vocab_path()
    stage(f"vocabulary ({path})")
    if os.path.isfile(path):
        print("exists, skipping")
    else:
        run("vocab", "train", "--mixture", "bigbench_upstream", "--size", str(VOCAB_SIZE), "--out", path,
            "--tasks_module", "tasks.bigbench")
    for mixture in ("bigbench_targets", "bigbench_upstream"):
        stage(f"statistics of {mixture} (train split)")
        run("data", "stats", mixture, "--tasks_module", "tasks.bigbench")
    for task in ("bigbench.strategyqa", "bigbench.logical_deduction.three_objects", "bigbench.winowhy"):
        stage(f"examples of {task}")
        run("data", "show", task, "-n", "2", "--split", "test", "--tasks_module", "tasks.bigbench")


if __name__ == "__main__":
    main()
