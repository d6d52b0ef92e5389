"""ELM at CPU scale (issue 24, SPEC §3): dataset experts on a frozen backbone, the expert
library, Retrieval-of-Experts (RoE) and merging, beside the backbone alone and the multi-task
upstream model, on the ReCross paper's Table-1 and BIG-bench targets (rank classification).

    python scripts/elm_study.py run --backbone BACKBONE_DIR --upstream UPSTREAM_DIR --out OUT \\
        --gin_file=gin/runs/experts.gin --gin.tasks.vocab.vocabulary_path.path=\\"minilm\\"
    python scripts/elm_study.py pilot --backbone BACKBONE_DIR --out OUT/pilot \\
        --gin_file=gin/runs/experts.gin --gin.tasks.vocab.vocabulary_path.path=\\"minilm\\"
    python scripts/elm_study.py report --out OUT

`run` trains one dataset expert per `--experts` dataset (train split, `experts.settings`; those
not trained yet together, in one stacked step when `experts.settings.stacked`), builds
the library (S instances of each expert's training examples, MiniLM), evaluates the backbone,
the upstream model and every expert on the first `--max_eval_examples` test examples of each
target, lets each target's first Q inputs (unlabeled) retrieve an expert, evaluates the uniform
merge of the (up to) `--merge_top` most voted experts, and writes `results.json`, `table.md` and
`votes_heatmap.png`. `pilot` measures, on one upstream dataset's held-out validation examples,
what an expert should own (adapters and layer norms, with or without the cross-attention) at a
few learning rates. Every unit of work (an expert, an evaluation, a retrieval, a merge) is
skipped when its output exists, so both resume.

Layout of OUT: `experts/<dataset>/`, `library/`, `roe/<target>.json`, `merges/<experts>/`,
`evals/<model>/<target>.json`, `timings.json`, `results.json`, `table.md`, `votes_heatmap.png`.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import zero_shot  # scripts/, this script's directory

from recross_jax import (
    checkpoints,
    evaluate,
    gin_utils,
    io_utils,
    partitioning,
    reporting,
    task_modules,
)
from recross_jax.errors import UserError
from recross_jax.experts import checkpoint, library
from recross_jax.experts import cli as experts_cli

# Upstream datasets of T0's mixture (`t0_upstream`), one of each family or two: sentiment, topic,
# paraphrase, multiple-choice QA (commonsense, reading, science), extractive QA, summarisation;
# COSMOS QA is the dataset of ELM's best single expert. Mostly short inputs, so that 128 tokens
# keep the question.
EXPERTS = ("rotten_tomatoes", "ag_news", "glue_qqp", "social_i_qa", "cosmos_qa", "qasc",
           "wiki_qa", "gigaword")
TARGETS = zero_shot.TABLE1 + zero_shot.BIGBENCH
PREFIX = "recross."
# Mean accuracy of ELM's rows on its 11 unseen datasets (Jang et al., 2023, Table 1; T5-3B).
PUBLISHED = {"T0-3B": 51.43, "COS PE (best single expert)": 54.63, "RoE": 53.48,
             "oracle expert": 63.37}
BACKBONE, UPSTREAM = "backbone", "upstream"


def _path(out: str, *parts: str) -> str:
    return os.path.join(out, *parts)


def _mesh():
    return partitioning.create_mesh(devices=jax.devices()[:1])


def load_targets(targets: Sequence[str], prefix: str, max_examples: int, max_input_length: int
                 ) -> dict[str, tuple[list[evaluate.EvalExample], Any]]:
    """{target: (the first `max_examples` test examples of task `prefix + target`, the
    vocabulary)}."""
    return {t: zero_shot.evaluation_examples(prefix + t, "test", max_examples, max_input_length)
            for t in targets}


def with_choices(examples: Sequence[evaluate.EvalExample]) -> bool:
    """Whether rank classification can score any of `examples` (gold among its choices)."""
    return any(e.label is not None for e in examples)


def evaluate_on(model: str, params_fn: Callable[[], tuple[Any, Any]],
                targets: Mapping[str, tuple[list, Any]], out: str, batch_size: int) -> int:
    """Writes `evals/<model>/<target>.json` (accuracy, majority rate) for each target with
    choices that lacks one; `params_fn` gives (config, params) and is called only when needed.
    Returns the number of evaluations made."""
    todo = [t for t, (examples, _) in targets.items()
            if with_choices(examples) and not os.path.exists(_path(out, "evals", model, f"{t}.json"))]
    if not todo:
        return 0
    config, params = params_fn()
    mesh = _mesh()
    for target in todo:
        examples, vocabulary = targets[target]
        results, _, _ = evaluate.evaluate_params(config, params, examples, vocabulary, mesh=mesh,
                                                 batch_size=batch_size, decode=False,
                                                 progress=False, desc=f"{model} {target}")
        results.update(model=model, target=target, majority=evaluate.majority_rate(examples))
        io_utils.write_json_atomic(_path(out, "evals", model, f"{target}.json"), results)
        print(f"{model} on {target}: {results.get('accuracy')}", file=sys.stderr, flush=True)
    return len(todo)


def top_voted(votes: Mapping[str, int], k: int) -> list[str]:
    """The (up to) `k` experts with the most votes, more than none; ties: the earlier in the
    library (`votes` is in library order)."""
    order = sorted(range(len(votes)), key=lambda i: -list(votes.values())[i])
    names = list(votes)
    return [names[i] for i in order[:k] if votes[names[i]] > 0]


def read_retrieval(out: str, target: str, experts: Sequence[str]) -> dict:
    """`roe/<target>.json` with its votes in library order (`experts`; JSON keeps them sorted),
    which `top_voted` breaks ties by."""
    found = io_utils.read_json_object(_path(out, "roe", f"{target}.json"), "retrieval")
    found["votes"] = {e: found["votes"][e] for e in experts}
    return found


def merge_name(experts: Sequence[str]) -> str:
    """The id (and directory name) of the merge of `experts` (most voted first)."""
    return "merge:" + "+".join(experts)


class Timer:
    """Seconds per stage, of the invocation that last did work in it (`timings.json`)."""

    def __init__(self, out: str):
        self.path = _path(out, "timings.json")
        self.seconds = (io_utils.read_json_object(self.path, "timings")
                        if os.path.exists(self.path) else {})

    def run(self, stage: str, work: Callable[[], int]) -> None:
        """Runs `work` (which returns how many units it did) and records its time if any."""
        start = time.perf_counter()
        done = work()
        if done:
            self.seconds[stage] = round(time.perf_counter() - start, 1)
            io_utils.write_json_atomic(self.path, self.seconds)


def run(args: argparse.Namespace) -> None:
    cfg = experts_cli.settings()
    os.makedirs(args.out, exist_ok=True)
    timer = Timer(args.out)
    expert_dirs = {d: _path(args.out, "experts", d) for d in args.experts}
    backbone = experts_cli.load_backbone(args.backbone)

    def train() -> int:
        # The experts not trained yet train together (`experts.settings.stacked`).
        jobs = [experts_cli.Job(directory, dataset, experts_cli.examples_of(
                    args.task_prefix + dataset, "train", cfg, cfg["max_examples"]),
                    {"task": args.task_prefix + dataset, "split": "train"})
                for dataset, directory in expert_dirs.items()
                if experts_cli.trained(directory, dataset) is None]
        for result in experts_cli.train_jobs(backbone, jobs, cfg):
            print(f"expert {result['expert']}: {result}", file=sys.stderr, flush=True)
        return len(jobs)
    timer.run("train experts", train)

    library_dir = _path(args.out, "library")

    def build() -> int:
        if os.path.exists(_path(library_dir, library.MANIFEST)):
            return 0
        experts_cli.build_library(list(expert_dirs.values()), cfg).save(library_dir)
        return 1
    timer.run("library", build)
    lib = library.ExpertLibrary.load(library_dir)

    targets = load_targets(args.targets, args.task_prefix, args.max_eval_examples,
                           args.max_input_length)

    def retrieve() -> int:
        todo = [t for t in targets if not os.path.exists(_path(args.out, "roe", f"{t}.json"))]
        embedder = experts_cli.make_embedder(cfg) if todo else None
        for target in todo:
            queries = targets[target][0][:cfg["queries_per_target"]]
            found = lib.retrieve(experts_cli.rows_of(queries), embedder)
            io_utils.write_json_atomic(_path(args.out, "roe", f"{target}.json"), {
                "target": target, "expert": found.expert, "votes": found.votes,
                "per_query": found.per_query, "queries": len(queries)})
        return len(todo)
    timer.run("retrieve", retrieve)
    retrieved = {t: read_retrieval(args.out, t, lib.experts) for t in targets}

    def models() -> int:
        done = evaluate_on(BACKBONE, lambda: (backbone.config, backbone.params), targets,
                           args.out, args.batch_size)
        done += evaluate_on(UPSTREAM, lambda: checkpoints.restore_model(args.upstream), targets,
                            args.out, args.batch_size)
        for dataset, directory in expert_dirs.items():
            done += evaluate_on(dataset, lambda d=directory: checkpoint.load_expert(d, backbone),
                                targets, args.out, args.batch_size)
        return done
    timer.run("evaluate backbone, upstream, experts", models)

    def merges() -> int:
        done = 0
        for target, found in retrieved.items():
            chosen = top_voted(found["votes"], args.merge_top)
            if len(chosen) == 1:  # one expert got every vote: its merge is itself
                continue
            name = merge_name(chosen)
            directory = _path(args.out, "merges", name)
            if not os.path.exists(_path(directory, checkpoint.MANIFEST)):
                experts_cli.merge(backbone, [expert_dirs[e] for e in chosen], directory, name)
            done += evaluate_on(name, lambda d=directory: checkpoint.load_expert(d, backbone),
                                {target: targets[target]}, args.out, args.batch_size)
        return done
    timer.run("merge and evaluate", merges)

    summary = summarize(args.out, args.experts, args.targets, args.merge_top)
    summary["settings"] = {**cfg, "max_eval_examples": args.max_eval_examples,
                           "max_eval_input_length": args.max_input_length,
                           "merge_top": args.merge_top, "backbone": args.backbone,
                           "upstream": args.upstream, "experts": args.experts,
                           "targets": args.targets}
    summary["timings"] = timer.seconds
    write_report(args.out, summary)


def _accuracy(out: str, model: str, target: str) -> float | None:
    path = _path(out, "evals", model, f"{target}.json")
    return io_utils.read_json_object(path, "evaluation").get("accuracy") if os.path.exists(
        path) else None


def best_by_mean(scores: Mapping[str, Mapping[str, float]], targets: Sequence[str]) -> str:
    """The expert with the highest mean accuracy over `targets` (ties: the earliest)."""
    names = list(scores)
    means = [np.mean([scores[e][t] for t in targets]) for e in names]
    return names[int(np.argmax(means))]


def summarize(out: str, experts: Sequence[str], targets: Sequence[str], merge_top: int) -> dict:
    """Every number of the study, per target (those rank classification can score) and as means.

    Selections: `oracle` is the best expert on the target's own test labels; `best_single` the
    expert of the highest mean over all scored targets (uses every target's labels, as ELM's
    choice of its COS PE row does); `best_single_loo` the expert of the highest mean over the
    other targets (no label of the target itself); `roe` the retrieved one (no labels at all).
    """
    scored = [t for t in targets if _accuracy(out, BACKBONE, t) is not None]
    if not scored:
        raise UserError(f"no evaluations under {out}/evals: run the study first")
    scores = {e: {t: _accuracy(out, e, t) for t in scored} for e in experts}
    missing = [(e, t) for e, row in scores.items() for t, v in row.items() if v is None]
    if missing:
        raise UserError(f"evaluation of {missing[0][0]} on {missing[0][1]} is missing: run the "
                        "study to the end first")
    best_single = best_by_mean(scores, scored)
    rows = {}
    for target in scored:
        evaluation = io_utils.read_json_object(_path(out, "evals", BACKBONE, f"{target}.json"),
                                               "evaluation")
        found = read_retrieval(out, target, experts)
        merged = top_voted(found["votes"], merge_top)
        oracle = max(experts, key=lambda e: (scores[e][target], -experts.index(e)))
        loo = (best_by_mean(scores, [t for t in scored if t != target]) if len(scored) > 1
               else best_single)
        rows[target] = {
            "n": evaluation["num_accuracy_examples"], "majority": evaluation["majority"],
            BACKBONE: evaluation["accuracy"], UPSTREAM: _accuracy(out, UPSTREAM, target),
            "experts": {e: scores[e][target] for e in experts},
            "best_single": {"expert": best_single, "accuracy": scores[best_single][target]},
            "best_single_loo": {"expert": loo, "accuracy": scores[loo][target]},
            "oracle": {"expert": oracle, "accuracy": scores[oracle][target]},
            "roe": {"expert": found["expert"], "accuracy": scores[found["expert"]][target],
                    "votes": found["votes"]},
            "roe_merge": {"experts": merged, "accuracy": (
                scores[merged[0]][target] if len(merged) == 1
                else _accuracy(out, merge_name(merged), target))}}
    return {"targets": rows, "means": _means(rows), "published": PUBLISHED,
            "unscored_targets": [t for t in targets if t not in scored]}


COLUMNS = (("majority", "majority"), (BACKBONE, "backbone alone"),
           (UPSTREAM, "multi-task upstream"), ("best_single", "best single expert"),
           ("best_single_loo", "best single (leave-one-out)"), ("roe", "RoE"),
           ("oracle", "oracle expert"), ("roe_merge", "RoE top merge"))


def _value(row: Mapping[str, Any], key: str) -> float | None:
    value = row[key]
    return value["accuracy"] if isinstance(value, dict) else value


def _means(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    groups = {"Table-1 targets": [t for t in rows if t in zero_shot.TABLE1],
              "BIG-bench targets": [t for t in rows if t in zero_shot.BIGBENCH],
              "all": list(rows)}
    means = {}
    for group, members in groups.items():
        if not members:
            continue
        means[group] = {}
        for key, _ in COLUMNS:
            values = [_value(rows[t], key) for t in members]
            means[group][key] = (None if any(v is None for v in values)
                                 else float(np.mean(values)))
    return means


def _cell(value: float | None, name: str | None = None) -> str:
    if value is None:
        return ""
    return f"{100 * value:.1f}" + (f" ({name})" if name else "")


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The study's table: one row per target, then the means, ELM's published means below."""
    head = ["target", "n"] + [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for target, row in summary["targets"].items():
        cells = []
        for key, _ in COLUMNS:
            value = row[key]
            name = None
            if key in ("oracle", "roe"):
                name = value["expert"]
            elif key == "roe_merge":
                name = "+".join(value["experts"])
            cells.append(_cell(_value(row, key), name))
        lines.append(f"| {target} | {row['n']} | " + " | ".join(cells) + " |")
    for group, means in summary["means"].items():
        lines.append(f"| **mean, {group}** | | "
                     + " | ".join(f"**{_cell(means[key])}**" if means[key] is not None else ""
                                  for key, _ in COLUMNS) + " |")
    best = {row["best_single"]["expert"] for row in summary["targets"].values()}
    published = ", ".join(f"{k} {v:.2f}" for k, v in summary["published"].items())
    lines += ["", f"Best single expert (highest mean over all targets): {', '.join(sorted(best))}."
              f" ELM's published means on its 11 unseen datasets (T5-3B): {published}."]
    if summary["unscored_targets"]:
        lines.append("No answer choices to rank (not scored): "
                     + ", ".join(summary["unscored_targets"]) + ".")
    return "\n".join(lines) + "\n"


def write_report(out: str, summary: Mapping[str, Any]) -> None:
    """`results.json`, `table.md` and `votes_heatmap.png` (share of each target's queries whose
    top-1 key belongs to each expert, drawn by the ReCross report's heatmap)."""
    io_utils.write_json_atomic(_path(out, "results.json"), dict(summary))
    io_utils.write_text_atomic(_path(out, "table.md"), markdown_table(summary))
    votes = []
    for name in sorted(os.listdir(_path(out, "roe"))):
        found = io_utils.read_json_object(_path(out, "roe", name), "retrieval")
        votes.append({"method": "Retrieval-of-Experts: share of Q votes", "target": found["target"],
                      "retrieved_tasks": found["per_query"]})
    reporting.plot_heatmap(votes, _path(out, "votes_heatmap.png"))


def report(args: argparse.Namespace) -> None:
    previous = _path(args.out, "results.json")
    if not os.path.exists(previous):
        raise UserError(f"no results.json in {args.out}: run the study first")
    old = io_utils.read_json_object(previous, "results")
    summary = summarize(args.out, old["settings"]["experts"], old["settings"]["targets"],
                        old["settings"]["merge_top"])
    summary.update(settings=old["settings"], timings=Timer(args.out).seconds)
    write_report(args.out, summary)


def pilot(args: argparse.Namespace) -> None:
    """What an expert should own and how fast it should learn: one expert per (cross-attention
    owned or not, learning rate) on `args.task`, scored on its held-out validation examples."""
    cfg = experts_cli.settings()
    backbone = experts_cli.load_backbone(args.backbone)
    examples, vocabulary = zero_shot.evaluation_examples(args.task, "validation",
                                                         args.max_eval_examples,
                                                         args.max_input_length)
    heldout = {args.task: (examples, vocabulary)}
    results: dict[str, dict] = {}
    summary = {"task": args.task, "eval_examples": len(examples),
               "majority": evaluate.majority_rate(examples), "settings": cfg, "results": results}
    evaluate_on(BACKBONE, lambda: (backbone.config, backbone.params), heldout, args.out,
                args.batch_size)
    results[BACKBONE] = {"accuracy": _accuracy(args.out, BACKBONE, args.task)}
    for cross, rate in itertools.product((False, True), args.learning_rates):
        variant = f"cross_attention={cross},lr={rate:g}"
        settings = {**cfg, "cross_attention": cross, "learning_rate": rate}
        directory = _path(args.out, "experts", variant)
        made = experts_cli.train(backbone, args.task, "train", directory, variant, settings)
        evaluate_on(variant, lambda d=directory: checkpoint.load_expert(d, backbone), heldout,
                    args.out, args.batch_size)
        owned = checkpoint.read_manifest(directory)["params"]
        results[variant] = {"accuracy": _accuracy(args.out, variant, args.task),
                            "final_loss": made["final_loss"], "steps": made["steps"],
                            "examples": made["examples"],
                            "owned_parameters": int(sum(np.prod(s) for s in owned.values())),
                            "train_seconds": made["train_seconds"]}
        print(f"{variant}: {results[variant]}", file=sys.stderr, flush=True)
        io_utils.write_json_atomic(_path(args.out, "pilot.json"), summary)  # after each variant


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="the whole study (resumes)")
    run_parser.add_argument("--upstream", required=True, help="the multi-task model directory")
    run_parser.add_argument("--experts", nargs="+", default=list(EXPERTS),
                            help="upstream datasets, one expert each (library order)")
    run_parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    run_parser.add_argument("--merge_top", type=int, default=3,
                            help="RoE's most voted experts merged per target")
    run_parser.add_argument("--task_prefix", default=PREFIX,
                            help="prefix of the task names of --experts and --targets")
    pilot_parser = sub.add_parser("pilot", help="measure cross-attention ownership and rates")
    pilot_parser.add_argument("--task", default=PREFIX + "ag_news")
    pilot_parser.add_argument("--learning_rates", nargs="+", type=float, default=[1e-4, 1e-3])
    for each in (run_parser, pilot_parser):
        each.add_argument("--backbone", required=True, help="the frozen backbone's model directory")
        each.add_argument("--out", required=True)
        each.add_argument("--max_eval_examples", type=int, default=100)
        each.add_argument("--max_input_length", type=int, default=256,
                          help="evaluated inputs' tokens at most")
        each.add_argument("--batch_size", type=int, default=32, help="evaluation batch size")
        each.add_argument("--tasks_module", action="append", default=None)
        gin_utils.add_gin_flags(each)
    report_parser = sub.add_parser("report", help="re-write the tables of a finished run")
    report_parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.action == "report":
        report(args)
        return 0
    if args.action == "run" and args.merge_top < 1:
        raise UserError(f"--merge_top must be positive, got {args.merge_top}")
    task_modules.import_task_modules(args.tasks_module)
    gin_utils.parse_gin_flags(args)
    (run if args.action == "run" else pilot)(args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"elm_study: error: {gin_utils.first_line(error)}", file=sys.stderr)
        sys.exit(2)
