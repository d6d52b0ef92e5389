"""Multi-task source selection (TaskWeb's Table 3; Kim et al., 2023, SPEC §2), resumable.

For a target t, pick k source tasks, sample n prompted training examples of each into one
mixture, fine-tune the backbone on it and score the result zero-shot on t (rank-classification
accuracy on the first examples of t's evaluation split). The conditions differ only in which
sources fill the mixture, never in its size or the number of updates:

- `taskshop`: the top k by TaskShop with the authors' RoE as F (`taskshop.taskshop_scores`; t's
  own row of the transfer matrix is held out and t is never a source),
- `taskweb`: the top k by TaskWeb's measured transfer into t (the gold: what TaskShop estimates),
- `random`: k drawn uniformly (seeded by the seed and the target),
- `bottom`: the last k of TaskShop's ranking,
- `all`: every candidate source, k·n examples spread evenly over them (the remainder to a
  seeded draw of sources), so the mixture and the fine-tune are as long as the others',
- `none`: the backbone without fine-tuning (a reference, no sources).

Candidates are TaskWeb's 22 tasks but t. A source's examples come from the embedded ReCross
release where it holds the task (`taskweb.RECROSS_TASKS`), else from TaskWeb's own prompted
examples (`p3mini.<task>`, `tasks/jsonl.py`): `source_task`. Fine-tuning and scoring are the
transfer runner's (`transfer_runner.Runner`).

Every finished (target, condition, seed) is one JSON file, written atomically:

    <out_dir>/settings.json                          the config and model (checked on resume)
    <out_dir>/cells/<target>/<condition>/seed_<k>.json   sources, example counts, steps, accuracy
    <out_dir>/results.json, table.md                 every finished cell, tabulated
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import zlib
from typing import Callable, Mapping, Sequence

import gin
import numpy as np

from recross_jax import evaluate, finetune
from recross_jax.errors import UserError
from recross_jax.io_utils import read_json_object, write_json_atomic, write_text_atomic
from recross_jax.selection import ranking, taskshop, taskweb, transfer_runner

CONDITIONS = ("none", "taskshop", "taskweb", "random", "bottom", "all")
LABELS = {"none": "no fine-tuning", "taskshop": "TaskShop top-{k}", "taskweb": "TaskWeb top-{k}",
          "random": "random {k}", "bottom": "TaskShop bottom {k}", "all": "all {n} sources"}
SETTINGS_FILE = "settings.json"
RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
PAPER_NOTE = ("The paper's Table 3 row is not given beside these numbers: neither "
              "../shared/data/taskweb (README, JSON files) nor SPEC.md holds it.")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MultitaskConfig:
    """Settings of a multi-task selection run (gin: gin/runs/multitask.gin).

    Attributes:
      k: sources per selected mixture (the paper's 5).
      n_per_source: training examples drawn from each selected source (the paper's 2000).
      conditions: which of `CONDITIONS` to run.
      lam, setup: TaskShop's λ and the TaskWeb setup of its T and of the `taskweb` ranking.
      seeds: one fine-tune per (target, condition, seed); a seed also draws the examples and
        the `random` sources.
      epochs, learning_rate, batch_size: of the one fine-tune (AdamW, constant, clip 0.1).
      train_split, eval_split, max_eval_examples: where the mixture is drawn from and the target
        scored on (its first `max_eval_examples`, a uniform sample in the ReCross release).
      max_input_length, max_target_length, eval_batch_size: token lengths and scoring batch.
    """

    k: int = 5
    n_per_source: int = 64
    conditions: tuple[str, ...] = CONDITIONS
    lam: float = taskweb.DEFAULT_LAMBDA
    setup: str = taskweb.DEFAULT_SETUP
    seeds: tuple[int, ...] = (0,)
    epochs: int = 1
    learning_rate: float = 1e-4
    batch_size: int = 8
    train_split: str = "train"
    eval_split: str = "test"
    max_eval_examples: int = 200
    max_input_length: int = 256
    max_target_length: int = 32
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown or not self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise UserError(f"multitask conditions must be distinct names of {', '.join(CONDITIONS)}, "
                            f"got {list(self.conditions)!r}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds) \
                or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"multitask seeds must be distinct integers, got {list(self.seeds)!r}")
        counts = {"n_per_source": self.n_per_source, "epochs": self.epochs, "batch_size": self.batch_size,
                  "max_eval_examples": self.max_eval_examples, "max_input_length": self.max_input_length,
                  "max_target_length": self.max_target_length, "eval_batch_size": self.eval_batch_size}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"multitask {name} must be a positive integer, got {value!r}")
        taskshop.check_lambda(self.lam)
        if self.setup not in taskweb.setups():
            raise UserError(f"unknown TaskWeb setup {self.setup!r} (known: {', '.join(taskweb.setups())})")
        if not 1 <= self.k < len(taskweb.TASKS) - 1:
            raise UserError(f"multitask k must be between 1 and {len(taskweb.TASKS) - 2}, got {self.k!r}")
        self.runner_config()  # the learning rate is checked there

    def runner_config(self, seed: int = 0) -> transfer_runner.TransferConfig:
        """The transfer runner's config for the fine-tunes and scoring of this run."""
        return transfer_runner.TransferConfig(
            n_source=self.n_per_source, n_target=self.n_per_source, seeds=(seed,),
            source_epochs=self.epochs, target_epochs=self.epochs, learning_rate=self.learning_rate,
            batch_size=self.batch_size, train_split=self.train_split, eval_split=self.eval_split,
            max_eval_examples=self.max_eval_examples, metric="accuracy", setup="multitask",
            max_input_length=self.max_input_length, max_target_length=self.max_target_length,
            eval_batch_size=self.eval_batch_size)

    def label(self, condition: str, n_candidates: int) -> str:
        return LABELS[condition].format(k=self.k, n=n_candidates)


# ----------------------------------------------------------------------------- selection


def candidates(target: str) -> list[str]:
    """The candidate sources of `target`: TaskWeb's source tasks but the target, in order."""
    return [s for s in taskweb.TASKS if s != target]


def check_target(target: str) -> str:
    """`target` if TaskShop and TaskWeb's ranking can select for it, else a UserError."""
    taskweb.check_task(target)
    if target not in taskweb.roe() or target not in taskweb.transfer():
        raise UserError(f"TaskWeb measured no transfer into {target!r}: it cannot be a target")
    return target


def taskshop_ranking(target: str, cfg: MultitaskConfig) -> list[str]:
    """The candidates ranked by TaskShop(authors' RoE) for `target`, its own row held out."""
    held_out = {p: row for p, row in taskweb.transfer(cfg.setup).items() if p != target}
    sources = candidates(target)
    scores = taskshop.taskshop_scores(taskweb.roe()[target], held_out, target, sources, cfg.lam)
    return ranking.rank(scores, sources)


def taskweb_ranking(target: str, cfg: MultitaskConfig) -> list[str]:
    """The candidates ranked by TaskWeb's measured transfer T(s→target) of `cfg.setup`."""
    return ranking.rank(taskweb.transfer(cfg.setup)[target], candidates(target))


def _rng(seed: int, target: str, what: str) -> random.Random:
    return random.Random(seed * 1_000_003 + zlib.crc32(f"{target}|{what}".encode()))


def select(target: str, condition: str, cfg: MultitaskConfig, seed: int) -> dict[str, int]:
    """`{source: examples to draw}` of one condition, in ranking (or candidate) order."""
    pool = candidates(target)
    if condition == "none":
        return {}
    if condition == "taskshop":
        chosen = taskshop_ranking(target, cfg)[:cfg.k]
    elif condition == "bottom":
        chosen = taskshop_ranking(target, cfg)[-cfg.k:]
    elif condition == "taskweb":
        chosen = taskweb_ranking(target, cfg)[:cfg.k]
    elif condition == "random":
        chosen = sorted(_rng(seed, target, "random").sample(pool, cfg.k), key=pool.index)
    elif condition == "all":
        total = cfg.k * cfg.n_per_source
        base, extra = divmod(total, len(pool))
        lucky = set(_rng(seed, target, "all").sample(pool, extra))
        return {s: base + (s in lucky) for s in pool if base + (s in lucky) > 0}
    else:
        raise UserError(f"unknown multitask condition {condition!r} (choose from {', '.join(CONDITIONS)})")
    return {s: cfg.n_per_source for s in chosen}


def source_task(name: str) -> str:
    """The registered task a TaskWeb task's examples come from: the ReCross release's where it
    holds the task, else TaskWeb's own prompted examples (`p3mini.<task>`)."""
    return taskweb.RECROSS_TASKS.get(name, f"p3mini.{name}")


# ----------------------------------------------------------------------------- the run


def cell_path(out_dir: str, target: str, condition: str, seed: int) -> str:
    return os.path.join(out_dir, "cells", target, condition, f"seed_{seed}.json")


def _settings(cfg: MultitaskConfig, model_dir: str, tasks: Mapping[str, str]) -> dict:
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("seeds", "conditions")}
    values["tasks"] = dict(sorted(tasks.items()))
    return {**values, "model_dir": os.path.abspath(model_dir)}


def check_inputs(targets: Sequence[str], model_dir: str, out_dir: str, cfg: MultitaskConfig,
                 task_of: Callable[[str], str] | None = None) -> dict[str, str]:
    """The one validation pass before anything is written; returns `{TaskWeb name: registered
    task}` of every target and candidate source, each with the split it needs.

    Raises:
      UserError: the first problem, as one line.
    """
    if isinstance(targets, str) or not targets:
        raise UserError("multitask needs a list of target tasks")
    if len(set(targets)) != len(targets):
        raise UserError(f"a target is named twice: {', '.join(targets)}")
    for target in targets:
        check_target(target)
    sources = list(dict.fromkeys(s for t in targets for s in candidates(t)))
    tasks = {}
    for name in list(dict.fromkeys(list(targets) + sources)):
        task = (task_of or source_task)(name)
        try:
            tasks[name] = transfer_runner.resolve_task(task)
        except UserError:
            raise UserError(f"TaskWeb task {name!r}: its examples' task {task!r} is not registered "
                            "(tasks.recross and tasks.jsonl register them)") from None
    transfer_runner.check_splits(tasks, {(s, cfg.train_split) for s in sources}
                                 | {(t, cfg.eval_split) for t in targets})
    transfer_runner.check_run_dirs(model_dir, out_dir, os.path.join(out_dir, SETTINGS_FILE),
                                   _settings(cfg, model_dir, tasks))
    return tasks


def train_mixture(runner: transfer_runner.Runner, counts: Mapping[str, int], seed: int
                  ) -> tuple[list[finetune.TokenPair], dict[str, int]]:
    """The tokenized mixture of `counts` examples per source (each drawn with `seed`) and how
    many each source gave (fewer where its split holds fewer). The fine-tune shuffles it."""
    pairs, drawn = [], {}
    for source, n in counts.items():
        rows = runner.sample(source, n, seed)
        pairs += runner.tokenize(source, rows)
        drawn[source] = len(rows)
    return pairs, drawn


def run_cell(runner: transfer_runner.Runner, target: str, condition: str, cfg: MultitaskConfig,
             seed: int) -> dict:
    """One (target, condition, seed): select, fine-tune the backbone, score zero-shot."""
    start = time.perf_counter()
    counts = select(target, condition, cfg, seed)
    params, drawn, steps = runner.params, {}, 0
    if counts:
        pairs, drawn = train_mixture(runner, counts, seed)
        steps = finetune.num_steps(len(pairs), cfg.batch_size, cfg.epochs)
        params = runner.fit_pairs(runner.params, pairs, cfg.epochs, seed)
    examples, _ = runner.eval_examples(target)
    return {"target": target, "condition": condition, "seed": seed, "sources": list(drawn),
            "examples_per_source": drawn, "num_examples": sum(drawn.values()), "steps": steps,
            "accuracy": runner.score(params, target), "num_eval_examples": len(examples),
            "num_accuracy_examples": sum(e.label is not None for e in examples),
            "majority": evaluate.majority_rate(examples), "eval_task": runner.tasks[target],
            "seconds": time.perf_counter() - start}


def check_scorable(runner: transfer_runner.Runner, target: str) -> None:
    """A UserError, before anything is trained, unless some evaluation example of `target` has
    its gold among its answer choices (rank classification scores nothing otherwise)."""
    examples, _ = runner.eval_examples(target)
    if not any(e.label is not None for e in examples):
        raise UserError(f"target {target!r} ({runner.tasks[target]}): none of its {len(examples)} "
                        "evaluation examples has its gold among answer choices, so rank "
                        "classification cannot score it")


def run(targets: Sequence[str], model_dir: str, out_dir: str, cfg: MultitaskConfig = MultitaskConfig(),
        *, task_of: Callable[[str], str] | None = None, progress: bool = True,
        on_start: Callable[[str], None] | None = None) -> dict:
    """Runs every (target, condition, seed) cell not yet on disk; writes and returns the
    results (`results.json`, `table.md`). `task_of` maps a TaskWeb name to the registered task
    of its examples (default `source_task`); `on_start(out_dir)` runs once the directory exists."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    tasks = check_inputs(targets, model_dir, out_dir, cfg, task_of)
    jobs = [(t, c, k) for t in targets for k in cfg.seeds for c in cfg.conditions]
    missing = [job for job in jobs if not os.path.isfile(cell_path(out_dir, *job))]
    runner = transfer_runner.Runner(model_dir, tasks, cfg.runner_config(), out_dir) if missing else None
    for target in dict.fromkeys(t for t, _, _ in missing):
        check_scorable(runner, target)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, SETTINGS_FILE), _settings(cfg, model_dir, tasks))
    if on_start:
        on_start(out_dir)
    cells = []
    with tqdm(total=len(jobs), desc="multitask", unit="cell", disable=not progress) as bar:
        for target, condition, seed in jobs:
            path = cell_path(out_dir, target, condition, seed)
            if not os.path.isfile(path):
                bar.set_postfix_str(f"{target}: {condition}, seed {seed}")
                write_json_atomic(path, run_cell(runner, target, condition, cfg, seed))
            cells.append(read_json_object(path, "multitask cell", ("accuracy", "sources")))
            bar.update()
    results = summarize(cells, cfg)
    write_json_atomic(os.path.join(out_dir, RESULTS_FILE), results)
    write_text_atomic(os.path.join(out_dir, TABLE_FILE), table_markdown(results, cfg))
    return results


# ----------------------------------------------------------------------------- tables


def summarize(cells: Sequence[Mapping], cfg: MultitaskConfig) -> dict:
    """`{"targets": {t: {"majority", "num_eval_examples", "conditions": {c: {"accuracy" (mean
    over seeds), "std", "seeds", "sources"}}}}, "mean": {c: mean over targets}}`."""
    targets: dict[str, dict] = {}
    for cell in cells:
        row = targets.setdefault(cell["target"], {
            "majority": cell.get("majority"), "num_eval_examples": cell.get("num_eval_examples"),
            "num_accuracy_examples": cell.get("num_accuracy_examples"), "conditions": {}})
        row["conditions"].setdefault(cell["condition"], []).append(cell)
    for row in targets.values():
        for condition, group in list(row["conditions"].items()):
            accuracies = [c["accuracy"] for c in group]
            row["conditions"][condition] = {
                "accuracy": float(np.mean(accuracies)), "std": float(np.std(accuracies)),
                "seeds": [c["seed"] for c in group], "steps": group[0]["steps"],
                "num_examples": group[0]["num_examples"],
                "sources": {str(c["seed"]): c["sources"] for c in group}}
    mean = {}
    for condition in cfg.conditions:
        values = [row["conditions"][condition]["accuracy"] for row in targets.values()
                  if condition in row["conditions"]]
        if len(values) == len(targets) and values:
            mean[condition] = float(np.mean(values))
    majorities = [row["majority"] for row in targets.values() if row["majority"] is not None]
    if targets and len(majorities) == len(targets):
        mean["majority"] = float(np.mean(majorities))
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    return {"targets": targets, "mean": mean, "settings": settings}


def _percent(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def table_markdown(results: Mapping, cfg: MultitaskConfig) -> str:
    """The accuracy table (targets × conditions, majority-class rate beside, mean over targets;
    beside each target the number of its examples whose gold is among their answer choices,
    which accuracy is over) and the sources each condition trained on."""
    conditions = [c for c in cfg.conditions if any(c in r["conditions"] for r in results["targets"].values())]
    n_all = len(taskweb.TASKS) - 1
    header = ["target (examples scored)", "majority class"] + [cfg.label(c, n_all) for c in conditions]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for target, row in results["targets"].items():
        cells = []
        for condition in conditions:
            entry = row["conditions"].get(condition)
            if entry is None:
                cells.append("")
            elif len(entry["seeds"]) > 1:
                cells.append(f"{_percent(entry['accuracy'])} ± {_percent(entry['std'])}")
            else:
                cells.append(_percent(entry["accuracy"]))
        lines.append(f"| {target} ({row['num_accuracy_examples']}) | {_percent(row['majority'])} | "
                     + " | ".join(cells) + " |")
    mean = results["mean"]
    lines.append(f"| mean of {len(results['targets'])} | {_percent(mean.get('majority'))} | "
                 + " | ".join(_percent(mean.get(c)) for c in conditions) + " |")
    lines += ["", "Sources of each mixture (seed: sources; `all`: every candidate):", "",
              "| target | condition | sources |", "|---|---|---|"]
    for target, row in results["targets"].items():
        for condition in conditions:
            entry = row["conditions"].get(condition)
            if entry is None or condition in ("none", "all"):
                continue
            listed = "; ".join(f"{seed}: {', '.join(sources)}" if len(entry["seeds"]) > 1
                               else ", ".join(sources) for seed, sources in entry["sources"].items())
            lines.append(f"| {target} | {cfg.label(condition, n_all)} | {listed} |")
    return "\n".join(lines + ["", PAPER_NOTE]) + "\n"
