"""How reliable mined reranker labels are: split-half agreement of each tuple's rounds.

    python scripts/mining_reliability.py TUPLES.jsonl [--against OTHER.jsonl] [--out DIR]

TUPLES.jsonl is a `recross mine` output (tuples carry each candidate's score per round); prints
a markdown table (see `recross_jax.rerank.reliability`) and, with --out, writes
reliability.json and reliability.md there. With --against, the table compares the two minings
of the same tuples instead (agreement.json, agreement.md).
"""
from __future__ import annotations

import argparse

from recross_jax.errors import UserError, exit_on_user_error
from recross_jax.io_utils import write_result
from recross_jax.rerank import mining, reliability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tuples", help="a `recross mine` output file")
    parser.add_argument("--against", help="another mining of the same tuples to compare with")
    parser.add_argument("--out", help="directory for the JSON and markdown results")
    parser.add_argument("--target", type=float, default=0.8,
                        help="the reliability to project the rounds needed for")
    args = parser.parse_args()
    name, summary, table = exit_on_user_error(measure, args)
    if args.out:
        exit_on_user_error(write_result, args.out, name, summary, table)
    print(table, end="")


def measure(args: argparse.Namespace) -> tuple[str, dict, str]:
    """(output name, summary, markdown table) of the tuples: their reliability, or their
    agreement with another mining."""
    if not 0 < args.target < 1:
        raise UserError(f"--target must lie strictly between 0 and 1, got {args.target}")
    tuples = mining.read_tuples(args.tuples)
    if args.against:
        summary = reliability.agreement(tuples, mining.read_tuples(args.against))
        return "agreement", summary, reliability.agreement_markdown(summary)
    summary = reliability.summarize(tuples, args.target)
    return "reliability", summary, reliability.markdown(summary)


if __name__ == "__main__":
    main()
