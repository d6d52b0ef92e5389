"""How reliable mined reranker labels are: split-half agreement of each tuple's rounds.

    python scripts/mining_reliability.py TUPLES.jsonl [--against OTHER.jsonl] [--out DIR]

TUPLES.jsonl is a `recross mine` output (tuples carry each candidate's score per round); prints
a markdown table (see `recross_jax.rerank.reliability`) and, with --out, writes
reliability.json and reliability.md there. With --against, the table compares the two minings
of the same tuples instead (agreement.json, agreement.md).
"""
from __future__ import annotations

import argparse
import os
import sys

from recross_jax.errors import UserError
from recross_jax.io_utils import write_json_atomic, write_text_atomic
from recross_jax.rerank import mining, reliability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tuples", help="a `recross mine` output file")
    parser.add_argument("--against", help="another mining of the same tuples to compare with")
    parser.add_argument("--out", help="directory for the JSON and markdown results")
    parser.add_argument("--target", type=float, default=0.8,
                        help="the reliability to project the rounds needed for")
    args = parser.parse_args()
    try:
        if not 0 < args.target < 1:
            raise UserError(f"--target must lie strictly between 0 and 1, got {args.target}")
        tuples = mining.read_tuples(args.tuples)
        if args.against:
            name, summary = "agreement", reliability.agreement(tuples, mining.read_tuples(args.against))
            table = reliability.agreement_markdown(summary)
        else:
            name, summary = "reliability", reliability.summarize(tuples, args.target)
            table = reliability.markdown(summary)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            write_json_atomic(os.path.join(args.out, f"{name}.json"), summary)
            write_text_atomic(os.path.join(args.out, f"{name}.md"), table)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(table, end="")


if __name__ == "__main__":
    main()
