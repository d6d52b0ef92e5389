"""How far each method of a generalize run pulls its targets' answers into a form they do not use,
by default yes / no: over the test examples none of whose gold answers is one of the forms, the
share of greedy predictions that are (`reporting.answer_form_share`). It reads the outputs each
run record keeps (runs without them are skipped) and the targets' gold answers from the split
the runs were scored on.

    python scripts/answer_forms.py --results DIR [--targets T ...] [--num_query_sets N]
        [--forms yes no] [--tasks_module tasks.recross] [--out DIR]
"""
from __future__ import annotations

import argparse
import os

from recross_jax import evaluate, reporting, task_modules
from recross_jax.errors import UserError, exit_on_user_error
from recross_jax.io_utils import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a `recross generalize` output directory")
    parser.add_argument("--targets", nargs="+", help="only these targets (default: every one)")
    parser.add_argument("--methods", nargs="+", help="only these methods (default: every one)")
    parser.add_argument("--num_query_sets", type=int, help="only the first N query sets")
    parser.add_argument("--forms", nargs="+", default=["yes", "no"], help="the answer forms to count")
    parser.add_argument("--tasks_module", action="append", help="module registering the targets "
                        "(repeatable; default: the built-in task modules)")
    parser.add_argument("--out", help="directory for answer_forms.json and answer_forms.md")
    args = parser.parse_args()
    summary, table = exit_on_user_error(tabulate, args)
    if args.out:
        exit_on_user_error(write_result, args.out, "answer_forms", summary, table)
    print(table, end="")


def tabulate(args: argparse.Namespace) -> tuple[dict, str]:
    """(answer_form_share's result, its markdown table) for `args`."""
    if not os.path.isdir(args.results):
        raise UserError(f"results directory not found: {args.results}")
    runs = [run for run in reporting.load_runs(args.results, targets=args.targets, methods=args.methods,
                                               num_query_sets=args.num_query_sets) if run.get("outputs")]
    if not runs:
        raise UserError(f"no run under {args.results} kept its test outputs (runs written before "
                        "outputs were recorded have none)")
    # Loading a split tokenizes it; the golds are its text, so any vocabulary serves: the MiniLM
    # one that ships with the package unless $RECROSS_VOCAB names another.
    os.environ.setdefault("RECROSS_VOCAB", "minilm")
    task_modules.import_task_modules(args.tasks_module)
    golds = {}
    for target, split in sorted({(r["target"], r.get("config", {}).get("eval_split", "test")) for r in runs}):
        examples, _ = evaluate.load_examples(target, split)
        golds[target] = {e.example_id: e.golds for e in examples}
    shares = reporting.answer_form_share(runs, golds, args.forms)
    return shares, reporting.answer_form_markdown(shares, args.forms)


if __name__ == "__main__":
    main()
