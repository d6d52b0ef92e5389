"""`recross train` / `python -m recross_jax.train`: a gin-configured training run.

    recross train --gin_file=gin/upstream.gin --gin.MODEL_DIR=\\"runs/upstream\\"

The gin files bind `recross_jax.training.train` (see gin/runs/train.gin); the run writes its
resolved `config.gin` into the model directory before the first step. Re-running the same
command resumes from the latest checkpoint. Bad flags, gin errors and bad checkpoints end with
one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from recross_jax import gin_utils
from recross_jax.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The flags of `recross train`: the gin flags only, as T5X's train script."""
    parser = argparse.ArgumentParser(
        prog="recross train", description="Train a T5 model configured by gin files.",
        epilog="example: recross train --gin_file=gin/upstream.gin "
               "--gin.MODEL_DIR=\\\"runs/upstream\\\" --gin.TRAIN_STEPS=100")
    return gin_utils.add_gin_flags(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a training job; returns the exit code (0, or 2 on a user error)."""
    try:
        args = build_parser().parse_args(argv)
        gin_utils.parse_gin_flags(args)
        from recross_jax import training  # pylint: disable=import-outside-toplevel
        gin_utils.call_configurable(training.train, on_start=gin_utils.write_config)
    except UserError as e:
        print(f"recross train: error: {gin_utils.first_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
