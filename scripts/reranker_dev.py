"""A trained reranker on its dev tuples, one tuple one unit: pair accuracy and ranking AUC with
bootstrap intervals over tuples (see `recross_jax.rerank.dev_eval`).

    python scripts/reranker_dev.py --reranker DIR --tuples TUPLES.jsonl [--out DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys

from recross_jax.errors import UserError
from recross_jax.io_utils import write_json_atomic, write_text_atomic
from recross_jax.rerank import cross_encoder, dev_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reranker", required=True, help="a `recross reranker train` directory")
    parser.add_argument("--tuples", required=True, help="the tuples file it was trained on")
    parser.add_argument("--out", help="directory for dev_eval.json and dev_eval.md")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args()
    try:
        cross_encoder.check_reranker(args.reranker)
        tuples = dev_eval.dev_tuples(args.reranker, args.tuples)
        summary = dev_eval.evaluate(cross_encoder.load_reranker(args.reranker), tuples, args.seed)
        table = dev_eval.markdown(summary)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            write_json_atomic(os.path.join(args.out, "dev_eval.json"), summary)
            write_text_atomic(os.path.join(args.out, "dev_eval.md"), table)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(table, end="")


if __name__ == "__main__":
    main()
