"""A trained reranker on its dev tuples, one tuple one unit: pair accuracy and ranking AUC with
bootstrap intervals over tuples (see `recross_jax.rerank.dev_eval`).

    python scripts/reranker_dev.py --reranker DIR --tuples TUPLES.jsonl [--out DIR] [--seed 0]
"""
from __future__ import annotations

import argparse

from recross_jax.errors import exit_on_user_error
from recross_jax.io_utils import write_result
from recross_jax.rerank import cross_encoder, dev_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reranker", required=True, help="a `recross reranker train` directory")
    parser.add_argument("--tuples", required=True, help="the tuples file it was trained on")
    parser.add_argument("--out", help="directory for dev_eval.json and dev_eval.md")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args()
    summary, table = exit_on_user_error(evaluate, args)
    if args.out:
        exit_on_user_error(write_result, args.out, "dev_eval", summary, table)
    print(table, end="")


def evaluate(args: argparse.Namespace) -> tuple[dict, str]:
    """(summary, markdown table) of the reranker on its dev tuples."""
    cross_encoder.check_reranker(args.reranker)
    tuples = dev_eval.dev_tuples(args.reranker, args.tuples)
    summary = dev_eval.evaluate(cross_encoder.load_reranker(args.reranker), tuples, args.seed)
    return summary, dev_eval.markdown(summary)


if __name__ == "__main__":
    main()
