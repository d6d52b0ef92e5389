"""A trained reranker on its dev tuples, one tuple one unit: pair accuracy and ranking AUC with
bootstrap intervals over tuples (see `recross_jax.rerank.dev_eval`), beside two baselines that
never read the query (how often the candidate's dataset, or dataset and prompt, was a positive in
the training tuples) and the reranker's paired differences from them. The dev tuples chose the
reranker's epoch; `--test_tuples` (tuples mined apart, with another seed) evaluates on tuples it
never saw instead.

    python scripts/reranker_dev.py --reranker DIR --tuples TUPLES.jsonl [--test_tuples TEST.jsonl]
        [--out DIR] [--seed 0]
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
    parser.add_argument("--test_tuples", help="tuples mined apart to evaluate on instead of the dev "
                        "tuples (refused if any shares its queries with the reranker's tuples)")
    parser.add_argument("--out", help="directory for dev_eval.json and dev_eval.md (test_eval.* "
                        "with --test_tuples)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args()
    summary, table = exit_on_user_error(evaluate, args)
    if args.out:
        name = "test_eval" if args.test_tuples else "dev_eval"
        exit_on_user_error(write_result, args.out, name, summary, table)
    print(table, end="")


def evaluate(args: argparse.Namespace) -> tuple[dict, str]:
    """(summary, markdown tables) of the reranker and the source priors (learned from the
    reranker's training tuples) on its dev tuples, or on `args.test_tuples`."""
    cross_encoder.check_reranker(args.reranker)
    train, dev = dev_eval.recorded_split(args.reranker, args.tuples)
    scored = dev_eval.unseen_tuples(args.test_tuples, train + dev) if args.test_tuples else dev
    scorers = {"reranker": cross_encoder.load_reranker(args.reranker)}
    for level in dev_eval.SOURCE_LEVELS:
        scorers[f"{level} prior"] = dev_eval.SourcePrior(train, level, scored)
    summaries = {name: dev_eval.evaluate(scorer, scored, args.seed) for name, scorer in scorers.items()}
    differences = dev_eval.compared(summaries, "reranker", args.seed)
    unit = "test tuple" if args.test_tuples else "dev tuple"
    table = (dev_eval.markdown(summaries["reranker"], unit) + "\n"
             + dev_eval.comparison_markdown(summaries, differences, "reranker"))
    return {"scorers": summaries, "reranker_minus": differences}, table


if __name__ == "__main__":
    main()
