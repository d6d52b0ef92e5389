"""Chooses re-learning's learning rate on upstream data only (issue 22: never on a target).

Upstream datasets stand in for targets: for each rate, `recross generalize` runs `base` and
ReCross† (`recross_dense`) on them (their own examples are never retrieved; queries come from
their train split, evaluation from their validation split), and the rate whose mean gain of
ReCross† over base is highest wins (ties: the smaller rate). Everything lands under --out, one
generalize directory per rate (resumable), with `lr_choice.md` and `lr_choice.json`.

    python scripts/choose_relearn_lr.py --model_dir M --index_dir I --out runs/lr \\
        [--tasks recross.ag_news recross.imdb ...] [--learning_rates 1e-5 3e-5 1e-4 3e-4]

A BERT2BERT model reads MiniLM's WordPiece vocabulary; a T5 model needs `$RECROSS_VOCAB` set to
its SentencePiece model. The validation split of some release datasets shares raw examples with
train (which the upstream model saw); that lifts base and re-learned runs alike, so it bears on
the level, not the choice.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from recross_jax import checkpoints, cli, reporting
from recross_jax.errors import UserError
from recross_jax.io_utils import write_json_atomic, write_text_atomic
from recross_jax.models import bert2bert

# One upstream dataset per family of T0's mixture: topic, sentiment, paraphrase, extractive QA.
DEFAULT_TASKS = ("recross.ag_news", "recross.imdb", "recross.glue_mrpc", "recross.quoref")
DEFAULT_RATES = (1e-5, 3e-5, 1e-4, 3e-4)
METHOD = "recross_dense"


def generalize_argv(args: argparse.Namespace, rate: float, out_dir: str) -> list[str]:
    """`recross generalize` of one rate."""
    return ["generalize", "--gin_file=gin/generalize.gin", "--tasks_module", "tasks.recross",
            *(f"--gin.{b}" for b in args.gin), f"--gin.TARGETS={list(args.tasks)}",
            f"--gin.METHODS={['base', METHOD]}", f"--gin.MODEL_DIR='{args.model_dir}'",
            f"--gin.MODEL_INDEX_DIR='{args.index_dir}'", f"--gin.OUT_DIR='{out_dir}'",
            f"--gin.NUM_QUERY_SETS={args.num_query_sets}", f"--gin.NUM_QUERIES={args.num_queries}",
            f"--gin.NUM_RETRIEVED={args.num_retrieved}", "--gin.UPSAMPLE_RATIO=1.0",
            "--gin.generalize.run.eval_split='validation'",
            f"--gin.generalize.run.max_eval_examples={args.max_eval_examples}",
            f"--gin.finetune.FinetuneConfig.learning_rate={rate}",
            f"--gin.finetune.FinetuneConfig.epochs={args.epochs}"]


def gains(results_dir: str, tasks: Sequence[str], num_query_sets: int, metric: str) -> dict:
    """Mean gain of ReCross† over base per task (over query sets) and overall (over tasks)."""
    runs = reporting.load_runs(results_dir, targets=tasks, num_query_sets=num_query_sets)
    scores = reporting.scores_by_method(runs, metric)
    diffs = {t: float(np.mean([scores[METHOD][t][q] - scores["base"][t][q] for q in scores[METHOD][t]]))
             for t in tasks}
    return {"per_task": diffs, "mean": float(np.mean(list(diffs.values())))}


def choose(by_rate: dict[float, dict]) -> float:
    """The rate of the highest mean gain; ties go to the smaller rate."""
    return max(sorted(by_rate), key=lambda rate: (by_rate[rate]["mean"], -rate))


def markdown(by_rate: dict[float, dict], chosen: float, metric: str) -> str:
    """Rates as rows, tasks as columns: the gain of ReCross† over base in points."""
    tasks = list(next(iter(by_rate.values()))["per_task"])
    lines = [f"Gain of ReCross† over base ({metric}, points; upstream validation examples).", "",
             "| learning rate | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for rate in sorted(by_rate):
        cells = [f"{100 * by_rate[rate]['per_task'][t]:+.2f}" for t in tasks]
        mark = " (chosen)" if rate == chosen else ""
        lines.append(f"| {rate:g}{mark} | " + " | ".join(cells) + f" | {100 * by_rate[rate]['mean']:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="the upstream model directory")
    parser.add_argument("--index_dir", required=True, help="its index (`recross index build`)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    parser.add_argument("--learning_rates", nargs="+", type=float, default=list(DEFAULT_RATES))
    parser.add_argument("--num_query_sets", type=int, default=2)
    parser.add_argument("--num_queries", type=int, default=16)
    parser.add_argument("--num_retrieved", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max_eval_examples", type=int, default=100)
    parser.add_argument("--metric", default="soft_em", choices=reporting.METRICS)
    parser.add_argument("--gin", action="append", default=[],
                        help="extra gin binding for every run (e.g. tasks.recross.upstream_cap.cap=300)")
    args = parser.parse_args(argv)
    try:
        if not args.learning_rates or min(args.learning_rates) <= 0:
            raise UserError(f"--learning_rates must be positive, got {args.learning_rates}")
        if checkpoints.read_model_config(args.model_dir).family == bert2bert.FAMILY:
            os.environ["RECROSS_VOCAB"] = "minilm"  # BERT2BERT reads MiniLM's WordPiece
        by_rate = {}
        for rate in sorted(set(args.learning_rates)):
            out_dir = os.path.join(args.out, f"lr_{rate:g}")
            if cli.main(generalize_argv(args, rate, out_dir)):
                raise UserError(f"generalize at learning rate {rate:g} failed")
            by_rate[rate] = gains(out_dir, args.tasks, args.num_query_sets, args.metric)
        chosen = choose(by_rate)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json_atomic(os.path.join(args.out, "lr_choice.json"),
                      {"chosen": chosen, "metric": args.metric, "tasks": args.tasks,
                       "gains": {f"{r:g}": g for r, g in by_rate.items()}})
    table = markdown(by_rate, chosen, args.metric)
    write_text_atomic(os.path.join(args.out, "lr_choice.md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
