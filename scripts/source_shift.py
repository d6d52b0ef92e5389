"""Does a method lose where it draws more of R from some upstream datasets than another method
does? Per (target, query set), the change in the share of R from `--sources` against the change
in score, and Spearman's ρ over the pairs (`reporting.source_shift`). RESULTS.md asks it of
ReCross against ReCross† with glue_qqp, which the reranker favours.

    python scripts/source_shift.py --results DIR --sources recross.glue_qqp [--method recross]
        [--against recross_dense] [--metric soft_em] [--targets T ...] [--num_query_sets N] [--out DIR]
"""
from __future__ import annotations

import argparse
import os

from recross_jax import reporting
from recross_jax.errors import UserError, exit_on_user_error
from recross_jax.io_utils import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a `recross generalize` output directory")
    parser.add_argument("--sources", nargs="+", required=True, help="upstream task names (as in runs' "
                        "retrieved_tasks)")
    parser.add_argument("--method", default="recross")
    parser.add_argument("--against", default="recross_dense", help="the reference method")
    parser.add_argument("--metric", default="soft_em")
    parser.add_argument("--targets", nargs="+", help="only these targets (default: every one)")
    parser.add_argument("--num_query_sets", type=int, help="only the first N query sets")
    parser.add_argument("--out", help="directory for source_shift.json and source_shift.md")
    args = parser.parse_args()
    shift = exit_on_user_error(measure, args)
    table = reporting.source_shift_markdown(shift)
    if args.out:
        exit_on_user_error(write_result, args.out, "source_shift", shift, table)
    print(table, end="")


def measure(args: argparse.Namespace) -> dict:
    """`reporting.source_shift` on the runs `args` name."""
    if not os.path.isdir(args.results):
        raise UserError(f"results directory not found: {args.results}")
    runs = reporting.load_runs(args.results, targets=args.targets, methods=[args.method, args.against],
                               num_query_sets=args.num_query_sets)
    missing = [run["target"] for run in runs if args.metric not in run["metrics"]]
    if missing:
        raise UserError(f"metric {args.metric!r} is not in the runs of {missing[0]}")
    return reporting.source_shift(runs, args.sources, args.method, args.against, args.metric)


if __name__ == "__main__":
    main()
