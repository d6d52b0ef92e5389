"""The results study of RESULTS.md: the evaluation protocol of SPEC §1.7 (5 query sets, every
method) on (a) the embedded ReCross release (T0's upstream mixture; the paper's Table-1 targets
and its BIG-bench Table-2 targets with the authors' query sets, reported apart in report_table1/
and report_table2/) and (b) the TaskWeb-based split of SPEC §4.

Each split runs the whole pipeline (`recross_jax/pipeline.py`): its own vocabulary and upstream
model, indexes, mining, reranker, then generalization and the report. Stages resume, so the
study can be stopped and started again. Sizes are what one 2-core CPU allows in about an hour;
pass --train_steps etc. to go further.

    python scripts/run_study.py --out runs/study [--splits release taskweb] [--train_steps 600]
    python scripts/run_study.py --splits taskweb --targets all   # every target of the split

`--targets all` skips (and names) the targets with fewer train examples than 5 disjoint query
sets need, unless their task family brings its own query sets (the release's targets do).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys

import seqio

from recross_jax import corpus, pipeline, task_modules
from recross_jax.errors import UserError
from tasks import recross

# The paper's Table 1 (P3 targets) and Table 2 (BIG-bench targets, the authors' query sets):
# one upstream model, index and reranker serve both, and each gets its own report.
TABLE1 = tuple(recross.task_name(d) for d in recross.TABLE1_TARGETS)
TABLE2 = tuple(recross.task_name(d) for d in recross.TABLE2_TARGETS)
# Upstream datasets standing in for targets to choose re-learning's rate on (one per family:
# topic, sentiment, paraphrase, extractive QA), so no target's labels tune it.
RELEARN_RATE_TASKS = tuple(recross.task_name(d) for d in ("ag_news", "imdb", "glue-mrpc", "quoref"))
SPLITS = {
    "release": pipeline.PipelineConfig(
        out_dir="release", upstream="t0_upstream", targets=TABLE1 + TABLE2,
        gin_bindings=("tasks.recross.upstream_cap.cap=300",),
        report_groups=(("table1", TABLE1), ("table2", TABLE2)),
        relearn_rate_tasks=RELEARN_RATE_TASKS),
    "taskweb": pipeline.PipelineConfig(
        out_dir="taskweb", upstream="p3mini_upstream", tasks_module="tasks.jsonl",
        targets=("p3mini.cb", "p3mini.copa", "p3mini.wic"), task_prefix="p3mini."),
}


TARGET_MIXTURES = {"taskweb": "p3mini_targets"}
NUM_QUERIES = 16  # |Q|


def has_enough_examples(task: seqio.Task, num_query_sets: int, num_queries: int) -> bool:
    """Whether `task`'s train split holds the examples of `num_query_sets` disjoint query sets
    (test inputs aside); prints the shortfall when not."""
    needed = num_query_sets * num_queries
    raw = task.source.get_dataset(split="train", shuffle=False).as_numpy_iterator()
    count = sum(1 for _ in itertools.islice(raw, needed))
    if count < needed:
        print(f"skipping target {task.name}: {count} train examples, {num_query_sets} query "
              f"sets of {num_queries} need {needed}", file=sys.stderr)
    return count >= needed


def split_targets(split: str, targets: list[str] | None, num_query_sets: int,
                  num_queries: int) -> tuple[str, ...]:
    """The targets to run for `split`: the given ones, every target of the split's target
    mixture with enough examples ('all'), or the split's default three."""
    if not targets or (targets == ["all"] and split not in TARGET_MIXTURES):
        return SPLITS[split].targets
    if targets != ["all"]:
        return tuple(targets)
    task_modules.import_task_modules([SPLITS[split].tasks_module])
    return tuple(task.name for task in seqio.get_mixture_or_task(TARGET_MIXTURES[split]).tasks
                 if corpus.query_source(task.name) is not None
                 or has_enough_examples(task, num_query_sets, num_queries))


def transfer_scores_file(split: str) -> str | None:
    """TaskWeb's measured transfer matrix beside its tasks, for the TaskWeb split's report."""
    if split != "taskweb":
        return None
    from tasks import jsonl  # pylint: disable=import-outside-toplevel
    path = os.path.join(os.path.dirname(jsonl.taskweb_dir()), "transfer_scores.json")
    return path if os.path.isfile(path) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("runs", "study"))
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=sorted(SPLITS))
    parser.add_argument("--upstream_model_dir", default=None,
                        help="an upstream model trained beforehand (`recross train`), used instead "
                        "of training one per split")
    parser.add_argument("--train_steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_tuples", type=int, default=24)
    parser.add_argument("--num_query_sets", type=int, default=5)
    parser.add_argument("--max_eval_examples", type=int, default=100)
    parser.add_argument("--targets", nargs="+", help="target tasks, or 'all' for every target "
                        "of the split's target mixture (default: release: the paper's Tables 1 "
                        "and 2; taskweb: the 3 in RESULTS.md)")
    args = parser.parse_args()
    try:
        configs = [dataclasses.replace(
            SPLITS[name], out_dir=os.path.join(args.out, name), train_steps=args.train_steps,
            upstream_model_dir=args.upstream_model_dir,
            targets=split_targets(name, args.targets, args.num_query_sets, NUM_QUERIES),
            transfer_scores=transfer_scores_file(name), batch_size=args.batch_size, pool_cap=300,
            num_tuples=args.num_tuples, num_query_sets=args.num_query_sets,
            num_queries=NUM_QUERIES, num_retrieved=64,
            max_eval_examples=args.max_eval_examples, relearn_epochs=2) for name in args.splits]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(pipeline.main(configs, show_data=False))


if __name__ == "__main__":
    main()
