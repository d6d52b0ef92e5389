"""Benchmark: rank classification (`inference.rank_classify`) over real targets' test sets.

    JAX_PLATFORMS=cpu python scripts/bench_eval.py --tasks winowhy strategyqa logic_grid_puzzle

For each dataset of the embedded ReCross release (`tasks.recross`; BIG-bench targets by
default), the first `--n` examples of its test split give the lengths: every input and answer
choice (a generative example's target) becomes random token ids, 1.4 per word plus one EOS (so
no vocabulary is needed), inputs capped at `--max_length`. A randomly initialised T5 of
`--model_gin` scores them; the seconds are the fastest of `--repeats` calls after a compiling
one. Also printed: how many tokens the encoder batches hold against the real ones, with the
examples in their given order and sorted by length (what `inference` does since it sorts).
Compare code states by running it with `PYTHONPATH=<worktree>`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_mining import model_config  # noqa: E402

from recross_jax import inference, partitioning, training  # noqa: E402
from recross_jax.models import t5  # noqa: E402


def token_count(text: str, cap: int) -> int:
    """Proxy token length of a text: 1.4 SentencePiece pieces a word, plus EOS."""
    return min(cap, int(1.4 * len(text.split())) + 1)


def example_lengths(examples: Sequence[dict], max_length: int
                    ) -> tuple[list[int], list[list[int]]]:
    """Input lengths and per-example answer lengths (its choices, or its target if it has none)
    of examples in SPEC §0's schema."""
    inputs = [token_count(e["inputs"], max_length) for e in examples]
    return inputs, [[token_count(a, 64) for a in e["answer_choices"] or [e["targets"]]]
                    for e in examples]


def task_lengths(dataset: str, n: int, max_length: int) -> tuple[list[int], list[list[int]]]:
    """`example_lengths` of the first n test examples of a dataset of the ReCross release (the
    test split is in hash order, so they are a uniform sample)."""
    from tasks import recross  # pylint: disable=import-outside-toplevel  (registers the release)
    return example_lengths(recross.examples(recross.task_name(dataset), "test")[:n], max_length)


def padded_tokens(lengths: np.ndarray, rows: int) -> int:
    """Tokens of `rows`-row batches each padded to its longest row's bucket."""
    return sum(inference.bucket(int(lengths[i:i + rows].max())) * rows
               for i in range(0, len(lengths), rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["winowhy", "strategyqa", "logic_grid_puzzle"],
                        help="datasets of the ReCross release (tasks recross.<dataset>)")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--model_gin", default="gin/models/t5_1_1_mini.gin")
    parser.add_argument("--batch_size", type=int, default=inference.DEFAULT_BATCH_SIZE)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = model_config(args.model_gin, 0.0)
    mesh = partitioning.create_mesh(devices=jax.devices()[:1])
    params = training.init_params(config, args.seed, mesh)
    model = t5.Transformer(config)
    rng = np.random.default_rng(args.seed)
    for task in args.tasks:
        input_lengths, choice_lengths = task_lengths(task, args.n, args.max_length)

        def ids(n: int) -> list[int]:
            return [int(x) for x in rng.integers(3, config.vocab_size, n - 1)] + [1]
        inputs = inference.pad_tokens([ids(n) for n in input_lengths])
        choices = inference.pad_choices([[ids(n) for n in c] for c in choice_lengths])
        inference.rank_classify(model, params, inputs, choices, batch_size=args.batch_size, mesh=mesh)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            inference.rank_classify(model, params, inputs, choices, batch_size=args.batch_size,
                                    mesh=mesh)
            best = min(best, time.perf_counter() - start)
        lengths = np.asarray(input_lengths)
        real = lengths.sum()
        print(f"{task}: {len(lengths)} examples, {best:.2f} s; encoder tokens / real: given order "
              f"{padded_tokens(lengths, args.batch_size) / real:.2f}, sorted "
              f"{padded_tokens(np.sort(lengths), args.batch_size) / real:.2f}", flush=True)


if __name__ == "__main__":
    main()
