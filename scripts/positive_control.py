"""The positive control of issue 22: a target whose right upstream examples are known.

`rotten_tomatoes` is held out of T0's upstream set (`t0_upstream_without_rotten_tomatoes`:
the upstream model is trained and the index built without it) while its family stays in
(amazon_polarity, app_reviews, imdb, yelp_review_full). It is then the one target: the whole
pipeline runs on it (`recross_jax/pipeline.py`, resumable), and `control.md` / `control.json`
report per method the share of R drawn from the sentiment family beside the scores. A retriever
that works draws mostly sentiment examples; re-learning on them should lift the target.

    python scripts/positive_control.py --out runs/control [--train_steps 600 ...]
"""
from __future__ import annotations

import argparse
import os
import sys

from recross_jax import pipeline, reporting
from recross_jax.errors import UserError
from recross_jax.io_utils import write_json_atomic, write_text_atomic
from tasks import recross

TARGET = recross.task_name(recross.CONTROL_DATASET)
FAMILY = tuple(recross.task_name(d) for d in recross.CONTROL_FAMILY)


def control_table(results_dir: str, num_query_sets: int) -> tuple[dict, str]:
    """Per method: the family's share of R and the mean scores over query sets (JSON, markdown)."""
    runs = reporting.load_runs(results_dir, targets=[TARGET], num_query_sets=num_query_sets)
    shares = reporting.retrieved_share(runs, FAMILY)
    metrics = [m for m in reporting.METRICS if all(m in run["metrics"] for run in runs)]
    summaries = {m: reporting.summarize(runs, m) for m in metrics}
    rows = {method: {"family_share": shares.get(method, {}).get(TARGET),
                     **{m: summaries[m][method]["per_task"][TARGET] for m in metrics}}
            for method in summaries[metrics[0]]}
    lines = [f"Target {TARGET}; sentiment family in the pool: {', '.join(FAMILY)}.", "",
             "| method | share of R from the family | " + " | ".join(metrics) + " |",
             "|---" * (len(metrics) + 2) + "|"]
    for method, row in rows.items():
        share = "–" if row["family_share"] is None else f"{100 * row['family_share']:.1f}%"
        cells = [f"{100 * row[m]['mean']:.2f} ± {100 * row[m]['std']:.2f}" for m in metrics]
        lines.append(f"| {method} | {share} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("runs", "control"))
    parser.add_argument("--cap", type=int, default=300, help="upstream examples per dataset")
    parser.add_argument("--train_steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_tuples", type=int, default=16)
    parser.add_argument("--num_query_sets", type=int, default=5)
    parser.add_argument("--num_retrieved", type=int, default=64)
    parser.add_argument("--max_eval_examples", type=int, default=100)
    args = parser.parse_args(argv)
    cfg = pipeline.PipelineConfig(
        out_dir=args.out, upstream=recross.CONTROL_MIXTURE, targets=(TARGET,),
        gin_bindings=(f"tasks.recross.upstream_cap.cap={args.cap}",), pool_cap=args.cap,
        train_steps=args.train_steps, batch_size=args.batch_size, num_tuples=args.num_tuples,
        num_query_sets=args.num_query_sets, num_queries=16, num_retrieved=args.num_retrieved,
        max_eval_examples=args.max_eval_examples)
    if pipeline.main([cfg], show_data=False):
        return 2
    try:
        rows, table = control_table(os.path.join(args.out, "generalize"), args.num_query_sets)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json_atomic(os.path.join(args.out, "control.json"), rows)
    write_text_atomic(os.path.join(args.out, "control.md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
