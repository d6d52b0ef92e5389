"""The results study of RESULTS.md: the evaluation protocol of SPEC §1.7 (5 query sets, every
method) on (a) the embedded ReCross release (T0's upstream mixture; the paper's Table-1 targets
and its BIG-bench Table-2 targets with the authors' query sets, reported apart in report_table1/
and report_table2/; with --ablations also the paper's Tables 3 and 4 in release/ablations/), (b) a
positive control (rotten_tomatoes held out of its own upstream model and index while its
sentiment family stays in: control/control.md, and again at the release's re-learning rate:
control/control_lr_1e-05.md) and (c) the TaskWeb-based split of SPEC §4.

Each split runs the whole pipeline (`recross_jax/pipeline.py`): its own vocabulary and upstream
model, indexes, mining, reranker, then generalization and the report. Stages resume, so the
study can be stopped and started again. Sizes are what one 2-core CPU allows in about an hour;
pass --train_steps etc. to go further.

    python scripts/run_study.py --out runs/study [--splits release control taskweb] [--ablations]
    python scripts/run_study.py --splits taskweb --targets all   # every target of the split

`--targets all` skips (and names) the targets with fewer train examples than 5 disjoint query
sets need, unless their task family brings its own query sets (the release's targets do).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

import seqio

from recross_jax import corpus, pipeline, reporting, significance, task_modules
from recross_jax.errors import UserError
from recross_jax.io_utils import write_json_atomic, write_text_atomic
from tasks import recross

# The paper's Table 1 (P3 targets) and Table 2 (BIG-bench targets, the authors' query sets):
# one upstream model, index and reranker serve both, and each gets its own report.
TABLE1 = tuple(recross.task_name(d) for d in recross.TABLE1_TARGETS)
TABLE2 = tuple(recross.task_name(d) for d in recross.TABLE2_TARGETS)
# Upstream datasets standing in for targets to choose re-learning's rate on (one per family:
# topic, sentiment, paraphrase, extractive QA), so no target's labels tune it.
RELEARN_RATE_TASKS = tuple(recross.task_name(d) for d in ("ag_news", "imdb", "glue-mrpc", "quoref"))
# How the release's upstream model (minilm2minilm_s600, RESULTS.md) was trained, beyond the
# pipeline's defaults: 1,000 train rows per dataset (the index pool's 300 are their first rows),
# inputs to 256 tokens, minilm2minilm.gin's 50 warmup steps: the release split trains it so when
# no --upstream_model_dir is given, and the control's model is trained so too, so that it differs
# from the release's only by rotten_tomatoes.
RELEASE_MODEL_RECIPE = ("tasks.recross.upstream_cap.cap=1000", "WARMUP_STEPS=50")
RELEASE_MODEL_LENGTHS = "{'inputs': 256, 'targets': 32}"
SPLITS = {
    "release": pipeline.PipelineConfig(
        out_dir="release", upstream="t0_upstream", targets=TABLE1 + TABLE2,
        gin_bindings=("tasks.recross.upstream_cap.cap=300",),
        feature_lengths=RELEASE_MODEL_LENGTHS, upstream_bindings=RELEASE_MODEL_RECIPE,
        report_groups=(("table1", TABLE1), ("table2", TABLE2)),
        relearn_rate_tasks=RELEARN_RATE_TASKS),
    # The positive control: rotten_tomatoes held out of the upstream model and the index (its own
    # upstream run, even with --upstream_model_dir), its sentiment family kept in the pool. It is
    # scored on its validation split: the release's rotten_tomatoes test file holds only positive
    # reviews (the first 200 rows of a validation split sorted by label), so accuracy there
    # measures how often a model says "positive"; validation (rows of its train split) is balanced,
    # and unseen all the same, since no split of rotten_tomatoes reaches this model or its index.
    "control": pipeline.PipelineConfig(eval_split="validation",
        out_dir="control", upstream=recross.CONTROL_MIXTURE,
        targets=(recross.task_name(recross.CONTROL_DATASET),),
        gin_bindings=("tasks.recross.upstream_cap.cap=300",),
        feature_lengths=RELEASE_MODEL_LENGTHS, upstream_bindings=RELEASE_MODEL_RECIPE,
        relearn_rate_tasks=tuple(t for t in RELEARN_RATE_TASKS if t != recross.task_name("imdb"))),
    "taskweb": pipeline.PipelineConfig(
        out_dir="taskweb", upstream="p3mini_upstream", tasks_module="tasks.jsonl",
        targets=("p3mini.cb", "p3mini.copa", "p3mini.wic"), task_prefix="p3mini."),
}


TARGET_MIXTURES = {"taskweb": "p3mini_targets"}
# The ReCross paper's Table 3 (|Q|, |R|, µ) and Table 4 (an upstream group removed), as changes
# to the release study's config; each runs ReCross on the Table-1 targets' first `query_sets` query
# sets. |Q| = 1 and 8 ran on two; the costlier rest run on one (each of its ReCross runs reranks
# |Q| x µ|R| pairs at ~10 a second on 2 cores), which brings the study's end one CPU session nearer.
# µ = 1 needs no run: without reranking ReCross is ReCross† (`recross_dense`).
class Ablation(NamedTuple):
    key: str  # its name on the command line (`--ablations q1 mu3`)
    change: dict
    query_sets: int


ABLATIONS = {
    "|Q| = 1": Ablation("q1", {"num_queries": 1}, 2), "|Q| = 8": Ablation("q8", {"num_queries": 8}, 2),
    "|Q| = 32": Ablation("q32", {"num_queries": 32}, 1),
    "|R| / 2": Ablation("r_half", {"num_retrieved": 0.5}, 1),
    "|R| x 2": Ablation("r_double", {"num_retrieved": 2.0}, 1),
    "µ = 3": Ablation("mu3", {"upsample_ratio": 3.0}, 1),
    "without multiple-choice QA": Ablation("no_mcqa", {"exclude_tasks": tuple(
        recross.task_name(d) for d in recross.T0_MULTIPLE_CHOICE_QA)}, 1),
}
# The rows every setting is read against (base, ReCross†, ReCross) come from the main study's
# runs on as many query sets as the most of any setting.
ABLATION_QUERY_SETS = max(a.query_sets for a in ABLATIONS.values())
# The reranker's training: at the pipeline's 2 epochs of 2e-5 it had barely left chance on the
# release's 60 tuples (train loss 0.6932 -> 0.6838, dev 0.691 -> 0.685), so longer and faster;
# the dev tuples choose the epoch.
RERANKER = ("epochs=6", "batch_size=16", "learning_rate=3e-5", "warmup_steps=10", "max_length=256")
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


def ablation_config(cfg: pipeline.PipelineConfig, ablation: Ablation
                    ) -> tuple[pipeline.PipelineConfig, list]:
    """The study's config with one ablation's change (|R| as a factor) and query sets, and
    generalize's extra flags."""
    change = dict(ablation.change)
    extra = []
    if "exclude_tasks" in change:
        extra.append(f"--gin.generalize.run.exclude_tasks={list(change.pop('exclude_tasks'))}")
    if "num_retrieved" in change:
        change["num_retrieved"] = max(1, round(cfg.num_retrieved * change["num_retrieved"]))
    return dataclasses.replace(cfg, targets=TABLE1, methods=("recross",),
                               num_query_sets=ablation.query_sets, **change), extra


def ablation_runs(results: str, methods: list[str], query_sets: int = ABLATION_QUERY_SETS) -> list[dict]:
    """The runs of `methods` on the Table-1 targets' first `query_sets` query sets."""
    return reporting.load_runs(results, targets=TABLE1, methods=methods, num_query_sets=query_sets)


def ablation_row(runs: list[dict], method: str, metrics: list[str],
                 reference: dict[str, dict[int, float]] | None = None) -> dict:
    """`method`'s mean over `runs` (`ablation_runs`) per metric, their query sets and the upstream
    dataset most of R comes from, with its share; with `reference` (ReCross's SoftEM per target
    and query set) also the SoftEM difference from it, paired by target and query set, with its
    bootstrap interval."""
    row: dict = {m: reporting.summarize(runs, m)[method]["overall"]["mean"] for m in metrics}
    row["query_sets"] = sorted({run["query_set"] for run in runs})
    retrieved = sum(reporting.retrieval_distribution(runs)[method].values(), collections.Counter())
    if retrieved:  # the upstream dataset R draws on most (the reranker's favourite: glue_qqp)
        task, count = retrieved.most_common(1)[0]
        row["top_source"] = {"task": task, "share": count / sum(retrieved.values())}
    if reference is not None:
        scores = reporting.scores_by_method(runs, "soft_em")[method]
        compared = significance.compare(scores, reference, seed=0)
        row["soft_em_minus_recross"] = {"mean": compared["mean"], "ci": compared["ci"]}
    return row


def ablation_results(cfg: pipeline.PipelineConfig, name: str) -> str:
    """The directory of one ablation's runs: <study>/ablations/<name as a slug>."""
    return os.path.join(cfg.out_dir, "ablations", "".join(c if c.isalnum() else "_" for c in name).strip("_"))


def selected_ablations(keys: Sequence[str] | None) -> dict[str, Ablation]:
    """The ablations whose keys are `keys`, in table order; all of them for none given."""
    return {name: a for name, a in ABLATIONS.items() if not keys or a.key in keys}


def run_ablations(cfg: pipeline.PipelineConfig, keys: Sequence[str] | None = None) -> str:
    """Runs the ablations (those of `keys`, else all) after the release study (same model,
    indexes, reranker, re-learning rate; resumable) into <study>/ablations/; returns the markdown
    table it writes there, of every ablation finished so far (run now or before)."""
    if cfg.relearn_rate_tasks:
        cfg = dataclasses.replace(cfg, relearn_learning_rate=pipeline.choose_relearn_rate(cfg))
    out = os.path.join(cfg.out_dir, "ablations")
    reranker = pipeline.mining_paths(cfg)[1]
    main_runs = os.path.join(cfg.out_dir, "generalize")
    metrics = list(reporting.METRICS)
    main = ablation_runs(main_runs, ["base", "recross_dense", "recross"])
    reference = reporting.scores_by_method(main, "soft_em")["recross"]
    rows = {"base": ablation_row(main, "base", metrics, reference),
            "µ = 1 (ReCross†)": ablation_row(main, "recross_dense", metrics, reference),
            f"ReCross (|Q| = {cfg.num_queries}, |R| = {cfg.num_retrieved}, µ = {cfg.upsample_ratio:g})":
                ablation_row(main, "recross", metrics)}
    selected = selected_ablations(keys)
    for name, ablation in ABLATIONS.items():
        results = ablation_results(cfg, name)
        done = os.path.join(results, pipeline.STAGE_RECORD)
        if name in selected:
            ablated, extra = ablation_config(cfg, ablation)
            pipeline.run_stage(out, os.path.basename(results),
                               pipeline.generalize_argv(ablated, results, reranker, extra), done)
        elif not os.path.isfile(done):
            continue
        rows[name] = ablation_row(ablation_runs(results, ["recross"], ablation.query_sets), "recross",
                                  metrics, reference)
    write_json_atomic(os.path.join(out, "ablations.json"), rows)
    lines = [f"Mean over the {len(TABLE1)} Table-1 targets on each row's query sets (points); the "
             "last column pairs each setting with ReCross on the same targets and query sets (95% "
             "bootstrap interval); the dataset most of R comes from, with its share.", "",
             "| setting | query sets | " + " | ".join(metrics) + " | soft_em − ReCross | most retrieved |",
             "|---" * (len(metrics) + 4) + "|"]
    for name, row in rows.items():
        difference = row.get("soft_em_minus_recross")
        cell = (f"{100 * difference['mean']:+.2f} [{100 * difference['ci'][0]:+.2f}, "
                f"{100 * difference['ci'][1]:+.2f}]") if difference else ""
        query_sets = ", ".join(str(q) for q in row["query_sets"])
        top = row.get("top_source")
        source = f"{top['task']} {100 * top['share']:.1f}%" if top else "–"
        lines.append(f"| {name} | {query_sets} | " + " | ".join(f"{100 * row[m]:.2f}" for m in metrics)
                     + f" | {cell} | {source} |")
    table = "\n".join(lines) + "\n"
    write_text_atomic(os.path.join(out, "ablations.md"), table)
    print(f"\n=== ablations ===\n{table}", flush=True)
    return table


CONTROL_TARGET = SPLITS["control"].targets[0]
CONTROL_FAMILY = tuple(recross.task_name(d) for d in recross.CONTROL_FAMILY)
# The control again at re-learning rates other than the one its stand-ins choose (1e-6 there, the
# grid's lower edge, where re-learning barely moves the model): the release's choice, 1e-5
# (release/relearn_rate/lr_choice.md). A sensitivity check reported beside the control, not a choice.
CONTROL_RATES = (1e-5,)


def control_table(results_dir: str, num_query_sets: int) -> tuple[dict, str]:
    """The positive control per method: the sentiment family's share of R and the mean scores over
    query sets (JSON, markdown)."""
    runs = reporting.load_runs(results_dir, targets=[CONTROL_TARGET], num_query_sets=num_query_sets)
    shares = reporting.retrieved_share(runs, CONTROL_FAMILY)
    metrics = [m for m in reporting.METRICS if all(m in run["metrics"] for run in runs)]
    summaries = {m: reporting.summarize(runs, m) for m in metrics}
    rows = {method: {"family_share": shares.get(method, {}).get(CONTROL_TARGET),
                     **{m: summaries[m][method]["per_task"][CONTROL_TARGET] for m in metrics}}
            for method in summaries[metrics[0]]}
    lines = [f"Target {CONTROL_TARGET}; sentiment family in the pool: {', '.join(CONTROL_FAMILY)}.", "",
             "| method | share of R from the family | " + " | ".join(metrics) + " |",
             "|---" * (len(metrics) + 2) + "|"]
    for method, row in rows.items():
        share = "–" if row["family_share"] is None else f"{100 * row['family_share']:.1f}%"
        cells = [f"{100 * row[m]['mean']:.2f} ± {100 * row[m]['std']:.2f}" for m in metrics]
        lines.append(f"| {method} | {share} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines) + "\n"


def write_control(cfg: pipeline.PipelineConfig, results_dir: str, stem: str, rate: float) -> str:
    """Writes the control's table over `results_dir` (re-learned at `rate`) to <control>/<stem>.json
    and .md; returns the markdown."""
    rows, table = control_table(results_dir, cfg.num_query_sets)
    table = f"Re-learning rate {rate:g}. " + table
    write_json_atomic(os.path.join(cfg.out_dir, f"{stem}.json"), {"learning_rate": rate, "methods": rows})
    write_text_atomic(os.path.join(cfg.out_dir, f"{stem}.md"), table)
    print(f"\n=== positive control ({stem}) ===\n{table}", flush=True)
    return table


def run_control(cfg: pipeline.PipelineConfig, rates: Sequence[float]) -> None:
    """The control's table at the rate its stand-ins chose (control.md), then its methods again at
    each of `rates` (stages generalize_lr_<rate>, resumable; control_lr_<rate>.md)."""
    chosen = pipeline.choose_relearn_rate(cfg) if cfg.relearn_rate_tasks else cfg.relearn_learning_rate
    write_control(cfg, os.path.join(cfg.out_dir, "generalize"), "control", chosen)
    reranker = pipeline.mining_paths(cfg)[1] if "recross" in cfg.methods else None
    for rate in rates:
        if rate == chosen:
            print(f"control: {rate:g} is the chosen rate, already in control.md", flush=True)
            continue
        name = f"generalize_lr_{rate:g}"
        results = os.path.join(cfg.out_dir, name)
        at_rate = dataclasses.replace(cfg, relearn_learning_rate=rate)
        pipeline.run_stage(cfg.out_dir, name, pipeline.generalize_argv(at_rate, results, reranker),
                           os.path.join(results, pipeline.STAGE_RECORD))
        write_control(cfg, results, f"control_lr_{rate:g}", rate)


def study_status(configs: Sequence[pipeline.PipelineConfig], ablations: Sequence[str] | None) -> str:
    """What a (running or stopped) study has finished: each split's stages with their wall
    times, its generalization runs out of all, and the runs of the ablations of `ablations`'
    keys (every ablation for [], none for None)."""
    def runs(run_cfg: pipeline.PipelineConfig, results: str) -> str:
        done = pipeline.runs_done(results, run_cfg.targets, run_cfg.methods, run_cfg.num_query_sets)
        clock = pipeline.read_clock(results)
        so_far = (f", {clock['seconds']:.0f} s so far in {clock['processes']} process"
                  + ("es" if clock["processes"] > 1 else "")) if clock else ""
        total = len(run_cfg.targets) * len(run_cfg.methods) * run_cfg.num_query_sets
        return f"{done} of {total} runs{so_far}"

    lines = []
    for cfg in configs:
        lines.append(f"{cfg.out_dir}:")
        times = pipeline.stage_times(cfg.out_dir)
        lines += [f"  {stage}: done, {seconds:.0f} s" for stage, seconds in times.items()]
        lines.append(f"  generalize: {runs(cfg, os.path.join(cfg.out_dir, 'generalize'))}")
        if ablations is not None and cfg.upstream == SPLITS["release"].upstream:
            for name, ablation in selected_ablations(ablations).items():
                ablated = ablation_config(cfg, ablation)[0]
                lines.append(f"  ablation {name}: {runs(ablated, ablation_results(cfg, name))}")
    return "\n".join(lines)


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
    parser.add_argument("--num_tuples", type=int, default=60)
    parser.add_argument("--num_query_sets", type=int, default=5)
    parser.add_argument("--max_eval_examples", type=int, default=100)
    parser.add_argument("--targets", nargs="+", help="target tasks, or 'all' for every target "
                        "of the split's target mixture (default: release: the paper's Tables 1 "
                        "and 2; taskweb: the 3 in RESULTS.md)")
    parser.add_argument("--ablations", nargs="*", choices=[a.key for a in ABLATIONS.values()],
                        help="then the release split's ablations (|Q|, |R|, µ, a group removed) "
                        "into <out>/release/ablations: those named, or all of them")
    parser.add_argument("--control_rates", nargs="*", type=float, default=list(CONTROL_RATES),
                        help="re-learning rates to run the positive control at besides the one "
                        "its stand-ins choose, as a sensitivity check (default: the release's 1e-5)")
    parser.add_argument("--status", action="store_true", help="print what the study in --out "
                        "has finished (stages, runs, ablations) and exit; runs nothing")
    args = parser.parse_args()
    try:
        if args.ablations is not None and "release" not in args.splits:
            raise UserError("--ablations change the release study: add release to --splits")
        if any(rate <= 0 for rate in args.control_rates):
            raise UserError(f"--control_rates must be positive learning rates, got {args.control_rates}")
        configs = [dataclasses.replace(
            SPLITS[name], out_dir=os.path.join(args.out, name), train_steps=args.train_steps,
            upstream_model_dir=None if name == "control" else args.upstream_model_dir,
            targets=split_targets(name, None if name == "control" else args.targets,
                                  args.num_query_sets, NUM_QUERIES),
            transfer_scores=transfer_scores_file(name), batch_size=args.batch_size, pool_cap=300,
            num_tuples=args.num_tuples, reranker=RERANKER, num_query_sets=args.num_query_sets,
            num_queries=NUM_QUERIES, num_retrieved=64,
            max_eval_examples=args.max_eval_examples, relearn_epochs=2) for name in args.splits]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.status:
        print(study_status(configs, args.ablations))
        return
    code = pipeline.main(configs, show_data=False)
    if code:
        sys.exit(code)
    try:
        for cfg, name in zip(configs, args.splits):
            if name == "control":
                run_control(cfg, args.control_rates)
            if name == "release" and args.ablations is not None:
                run_ablations(cfg, args.ablations)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
