"""Measured pairwise transfer s → t (TaskWeb, Kim et al., 2023; SPEC §2), resumable.

For each seed k, source s and target t ≠ s: fine-tune the upstream model on `n_source` examples
of s, then on `n_target` examples of t, and score it on t's evaluation split (p(s→t)); the
baseline p(t) fine-tunes the upstream model on the same `n_target` examples of t alone (with the
same seed), once per (t, k). Then, over the seeds,
PC(s, t) = mean of (p(s→t) − p(t)) / p(t), PM(s, t) = share with p(s→t) > p(t), and TaskWeb's
T(s→t) = `transfer.combine(PC, PM)`. Fine-tuning is `finetune.finetune`, scoring
`evaluate.evaluate_params` (rank-classification accuracy by default).

Every finished unit is one JSON file, written atomically, so a killed run resumes where it
stopped and re-runs nothing finished:

    <out_dir>/settings.json                    the TransferConfig and model (checked on resume)
    <out_dir>/baselines/<t>/seed_<k>.json      p(t)
    <out_dir>/cells/<t>/<s>/seed_<k>.json      p(s→t) with its p(t)
    <out_dir>/transfer_scores.json             TaskWeb's record format, for every pair whose
                                               seeds are all done (`transfer.load_transfer_scores`)
    <out_dir>/transfer_table.json              their T(s→t) as a TaskShop score file
                                               (`recross taskshop select | evaluate --scores`)

Tasks are named as the caller likes (TaskWeb's names, so the records compare with TaskWeb's)
and mapped to registered SeqIO tasks by `resolve_task`. Every random choice (the example
samples, the fine-tunes' shuffling and dropout) derives from a seed of the config.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Sequence

import gin
import jax
import numpy as np

from recross_jax import checkpoints, corpus, evaluate, finetune, partitioning
from recross_jax.errors import UserError
from recross_jax.io_utils import read_json_object, write_json_atomic
from recross_jax.selection import estimators, ranking, taskweb
from recross_jax.selection.transfer import combine

SETTINGS_FILE = "settings.json"
SCORES_FILE = "transfer_scores.json"
TABLE_FILE = "transfer_table.json"
# p(t) below this is taken as this in PC's denominator (a target the model never gets right
# would otherwise make PC infinite).
MIN_BASELINE = 1e-3


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Settings of a transfer run (gin: gin/runs/transfer.gin).

    Attributes:
      n_source, n_target: examples drawn from the source's / target's `train_split` (all of
        them when the split is smaller); SPEC §2: 1000 of the target.
      seeds: one repetition each; PC and PM average over them.
      source_epochs, target_epochs: passes over the source / target examples (updates per stage:
        epochs · ⌈n / batch_size⌉).
      learning_rate, batch_size: of both fine-tuning stages (AdamW, constant, as re-learning).
      train_split, eval_split: where examples are drawn from, and p is measured on.
      max_eval_examples: p on the first examples of `eval_split` only (None: all).
      metric: what p is, of `evaluate.evaluate_params`' metrics ('accuracy': rank
        classification; 'soft_em' or 'em' decode).
      setup: the key of this run in the records' `settings` (TaskWeb's are e.g. 'finetune/t5l').
    """

    n_source: int = 1000
    n_target: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)
    source_epochs: int = 1
    target_epochs: int = 1
    learning_rate: float = 1e-4
    batch_size: int = 8
    train_split: str = "train"
    eval_split: str = "test"
    max_eval_examples: int | None = 500
    metric: str = "accuracy"
    setup: str = "finetune/recross"
    max_input_length: int = 256
    max_target_length: int = 64
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        counts = {"n_source": self.n_source, "n_target": self.n_target, "batch_size": self.batch_size,
                  "source_epochs": self.source_epochs, "target_epochs": self.target_epochs,
                  "max_input_length": self.max_input_length, "eval_batch_size": self.eval_batch_size,
                  "max_target_length": self.max_target_length,
                  "max_eval_examples": 1 if self.max_eval_examples is None else self.max_eval_examples}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"transfer {name} must be a positive integer, got {value!r}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            raise UserError(f"transfer seeds must be a non-empty list of integers, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"transfer seeds repeat: {self.seeds!r}")
        if not self.learning_rate > 0:
            raise UserError(f"transfer learning_rate must be positive, got {self.learning_rate!r}")
        if self.metric not in ("accuracy", "em", "soft_em", "rouge_l"):
            raise UserError(f"unknown transfer metric {self.metric!r} (accuracy, em, soft_em, rouge_l)")

    def stage(self, epochs: int, seed: int) -> finetune.FinetuneConfig:
        """The fine-tuning config of one stage (source or target) under `seed`."""
        return finetune.FinetuneConfig(learning_rate=self.learning_rate, batch_size=self.batch_size,
                                       epochs=epochs, seed=seed)


# ----------------------------------------------------------------------------- the arithmetic


def relative_change(after: float, before: float) -> float:
    """(after − before) / before, the denominator floored at `MIN_BASELINE`."""
    return (after - before) / max(before, MIN_BASELINE)


def pc_pm(results: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(PC, PM) over the seeds' (p(s→t), p(t)) pairs."""
    if not results:
        raise ValueError("PC and PM need at least one seed")
    pc = float(np.mean([relative_change(after, before) for after, before in results]))
    pm = float(np.mean([after > before for after, before in results]))
    return pc, pm


def aggregate(cells: Sequence[Mapping], seeds: Sequence[int], setup: str) -> list[dict]:
    """TaskWeb's records `{"target", "source", "pc_mean", "pm_mean", "settings": {setup: [PC, PM]}}`
    for every (target, source) pair with a cell of each of `seeds` (others are left out)."""
    by_pair: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    for cell in cells:
        by_pair.setdefault((cell["target"], cell["source"]), {})[cell["seed"]] = (
            cell["p_transfer"], cell["p_target"])
    records = []
    for (target, source), results in sorted(by_pair.items()):
        if all(seed in results for seed in seeds):
            pc, pm = pc_pm([results[seed] for seed in seeds])
            records.append({"target": target, "source": source, "pc_mean": pc, "pm_mean": pm,
                            "settings": {setup: [pc, pm]}})
    return records


def transfer_table(records: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """`{target: {source: T(s→t)}}` of records."""
    table: dict[str, dict[str, float]] = {}
    for record in records:
        table.setdefault(record["target"], {})[record["source"]] = combine(record["pc_mean"],
                                                                          record["pm_mean"])
    return table


def compare_with_taskweb(records: Sequence[Mapping], setup: str = taskweb.DEFAULT_SETUP
                         ) -> tuple[float, int]:
    """Spearman's ρ between the measured T(s→t) and TaskWeb's published one (of `setup`) over
    the pairs both have, and the number of those pairs (ρ is NaN under 3)."""
    return ranking.spearman(transfer_table(records), taskweb.transfer(setup))


# ----------------------------------------------------------------------------- tasks


def resolve_task(name: str) -> str:
    """The registered SeqIO task of `name`: a TaskWeb task held by the ReCross release
    (`taskweb.RECROSS_TASKS`), or a registered task's own name.

    Raises:
      UserError: neither.
    """
    import seqio  # pylint: disable=import-outside-toplevel
    task = taskweb.RECROSS_TASKS.get(name, name)
    if task not in seqio.TaskRegistry.names():
        known = ", ".join(sorted(taskweb.RECROSS_TASKS))
        raise UserError(f"unknown task {name!r}: neither a registered task nor a TaskWeb task of "
                        f"the ReCross release ({known})")
    return task


def task_rows(name: str, split: str) -> list[dict]:
    """The text examples of a registered task's split, in the task's order (read in Python
    through `tasks.vocab`, imported here: the library never imports tasks/ statically)."""
    from tasks import vocab  # pylint: disable=import-outside-toplevel
    return vocab.task_examples(name, split)


def check_inputs(sources: Sequence[str], targets: Sequence[str], model_dir: str, out_dir: str,
                 cfg: TransferConfig) -> dict[str, str]:
    """The run's one validation pass, before anything is written: tasks (and their splits), the
    model, the output directory and, on resume, that it was made with the same settings.
    Returns `{name: registered task}`.

    Raises:
      UserError: the first problem, as one line.
    """
    if isinstance(sources, str) or isinstance(targets, str):
        raise UserError("sources and targets must be lists of task names")
    if not sources or not targets:
        raise UserError("transfer needs at least one source and one target task")
    for group in (sources, targets):
        repeated = sorted({n for n in group if list(group).count(n) > 1})
        if repeated:
            raise UserError(f"task {repeated[0]!r} is named twice")
    if not any(s != t for s in sources for t in targets):
        raise UserError("no pair to measure: every source is its target")
    names = {}
    for name in list(sources) + list(targets):
        check_dir_name(name)
        names[name] = resolve_task(name)
    needed = {(name, cfg.train_split) for name in names}
    needed |= {(name, cfg.eval_split) for name in targets}
    check_splits(names, needed)
    check_run_dirs(model_dir, out_dir, os.path.join(out_dir, SETTINGS_FILE), _settings(cfg, model_dir))
    return names


def check_dir_name(name: str) -> str:
    """`name` if it can name a directory of a run (no separator, no leading dot)."""
    if not name or os.sep in name or name.startswith("."):
        raise UserError(f"task name {name!r} cannot name a directory of the run")
    return name


def check_splits(tasks: Mapping[str, str], needed: Sequence[tuple[str, str]] | set) -> None:
    """A UserError for the first (name, split) of `needed` whose task (`tasks[name]`) lacks it."""
    for name, split in sorted(needed):
        splits = corpus.get_provider(tasks[name]).splits
        if split not in splits:
            raise UserError(f"task {name!r} ({tasks[name]}) has no split {split!r} (it has: "
                            f"{', '.join(splits)})")


def check_run_dirs(model_dir: str, out_dir: str, settings_path: str, settings: Mapping) -> None:
    """The model directory exists with a model config, `out_dir` is no file, and a resumed
    run's settings file (if any) records `settings`."""
    if not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir}")
    checkpoints.read_model_config(model_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"output directory {out_dir} is a file")
    if os.path.exists(settings_path):
        check_same_settings(read_json_object(settings_path, "run settings"), settings, settings_path)


def _settings(cfg: TransferConfig, model_dir: str) -> dict:
    """What a resumed run must share with the first (seeds may grow: each is its own cells)."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seeds"}
    return {**values, "model_dir": os.path.abspath(model_dir)}


def check_same_settings(recorded: Mapping, current: Mapping, path: str) -> None:
    """A UserError naming the first setting of `current` that `recorded` (a resumed run's
    settings file at `path`) holds otherwise."""
    for key, value in current.items():
        if recorded.get(key) != value:
            raise UserError(f"{path} records {key} = {recorded.get(key)!r}, not {value!r}: resume "
                            "with the same settings or use another output directory")


# ----------------------------------------------------------------------------- the run


class Runner:
    """The upstream model and each task's examples, loaded once; fine-tunes and scores (also
    what `multitask.py` trains its mixtures with)."""

    def __init__(self, model_dir: str, tasks: Mapping[str, str], cfg: TransferConfig, out_dir: str):
        self.mesh = partitioning.create_mesh(devices=jax.devices()[:1])  # fine-tunes' small batches
        self.config, self.params = checkpoints.restore_model(model_dir)
        self.tasks = tasks
        self.cfg = cfg
        self.out_dir = out_dir
        self._rows: dict[str, list[dict]] = {}
        self._eval: dict[str, tuple[list, Any]] = {}

    def sample(self, name: str, n: int, seed: int) -> list[dict]:
        """`n` train examples of task `name` drawn with `seed` (all when it has fewer)."""
        if name not in self._rows:
            self._rows[name] = task_rows(self.tasks[name], self.cfg.train_split)
            estimators.check_examples(name, self._rows[name], 1)
        return estimators.sample(self._rows[name], n, seed, name)

    def tokenize(self, name: str, rows: Sequence[dict]) -> list[finetune.TokenPair]:
        """`rows` of task `name` as (input ids, target ids), with that task's vocabulary."""
        vocabulary = corpus.get_provider(self.tasks[name]).output_features["targets"].vocabulary
        return finetune.tokenize_rows(rows, vocabulary, self.cfg.max_input_length,
                                      self.cfg.max_target_length)

    def fit_pairs(self, params: Any, pairs: Sequence[finetune.TokenPair], epochs: int, seed: int
                  ) -> Any:
        """`params` fine-tuned on tokenized `pairs` (one stage of the config, under `seed`)."""
        params, _ = finetune.finetune(self.config, params, pairs, self.cfg.stage(epochs, seed),
                                      mesh=self.mesh)
        return params

    def fit(self, params: Any, name: str, rows: Sequence[dict], epochs: int, seed: int) -> Any:
        """`params` fine-tuned on `rows` of task `name`."""
        return self.fit_pairs(params, self.tokenize(name, rows), epochs, seed)

    def eval_examples(self, target: str) -> tuple[list[evaluate.EvalExample], Any]:
        """The target's evaluation examples (the first `max_eval_examples` of `eval_split`)
        and their vocabulary, loaded once."""
        if target not in self._eval:
            self._eval[target] = evaluate.load_examples(
                self.tasks[target], self.cfg.eval_split, max_examples=self.cfg.max_eval_examples,
                max_input_length=self.cfg.max_input_length,
                max_target_length=self.cfg.max_target_length)
        return self._eval[target]

    def score(self, params: Any, target: str) -> float:
        """p: the config's metric of `params` on the target's evaluation examples."""
        examples, vocabulary = self.eval_examples(target)
        results, _, _ = evaluate.evaluate_params(
            self.config, params, examples, vocabulary, mesh=self.mesh,
            batch_size=self.cfg.eval_batch_size, decode=self.cfg.metric != "accuracy", progress=False)
        if self.cfg.metric not in results:
            raise UserError(f"target {target!r} has no {self.cfg.metric!r} score (its examples have "
                            "no answer choices?): set transfer metric to 'soft_em'")
        return float(results[self.cfg.metric])

    def target_stage(self, params: Any, target: str, seed: int) -> tuple[float, int]:
        """p after fine-tuning `params` on the target's examples of `seed`, and their number."""
        rows = self.sample(target, self.cfg.n_target, seed)
        return self.score(self.fit(params, target, rows, self.cfg.target_epochs, seed), target), len(rows)

    def baseline(self, target: str, seed: int) -> dict:
        """p(t) of (target, seed), computed once and kept on disk."""
        path = os.path.join(self.out_dir, "baselines", target, f"seed_{seed}.json")
        if os.path.isfile(path):
            return read_json_object(path, "transfer baseline", ("p_target",))
        start = time.perf_counter()
        p, n = self.target_stage(self.params, target, seed)
        record = {"target": target, "seed": seed, "p_target": p, "n_target": n,
                  "seconds": time.perf_counter() - start}
        write_json_atomic(path, record)
        return record


def cell_path(out_dir: str, source: str, target: str, seed: int) -> str:
    """Where the (source, target, seed) cell's record goes."""
    return os.path.join(out_dir, "cells", target, source, f"seed_{seed}.json")


def run(sources: Sequence[str], targets: Sequence[str], model_dir: str, out_dir: str,
        cfg: TransferConfig = TransferConfig(), *, progress: bool = True,
        on_start: Callable[[str], None] | None = None) -> list[dict]:
    """Measures every (source, target ≠ source, seed) cell not yet on disk and returns the
    records of `transfer_scores.json` (also written). Each source is fine-tuned once per seed
    and reused for all its targets. `on_start(out_dir)` runs once the directory exists (the CLI
    writes config.gin there)."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    tasks = check_inputs(sources, targets, model_dir, out_dir, cfg)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, SETTINGS_FILE), _settings(cfg, model_dir))
    if on_start:
        on_start(out_dir)
    runner = None
    cells = []
    jobs = [(seed, s, t) for seed in cfg.seeds for s in sources for t in targets if s != t]
    with tqdm(total=len(jobs), desc="transfer", unit="cell", disable=not progress) as bar:
        for seed in cfg.seeds:
            for source in sources:
                source_rows, source_params = [], None  # fine-tuned on the source when first needed
                for target in (t for t in targets if t != source):
                    path = cell_path(out_dir, source, target, seed)
                    if not os.path.isfile(path):
                        bar.set_postfix_str(f"{source} -> {target}, seed {seed}")
                        runner = runner or Runner(model_dir, tasks, cfg, out_dir)
                        start = time.perf_counter()
                        if source_params is None:
                            source_rows = runner.sample(source, cfg.n_source, seed)
                            source_params = runner.fit(runner.params, source, source_rows,
                                                       cfg.source_epochs, seed)
                        baseline = runner.baseline(target, seed)
                        p, n_target = runner.target_stage(source_params, target, seed)
                        write_json_atomic(path, {
                            "target": target, "source": source, "seed": seed, "p_transfer": p,
                            "p_target": baseline["p_target"], "n_source": len(source_rows),
                            "n_target": n_target, "metric": cfg.metric,
                            "seconds": time.perf_counter() - start})
                    cells.append(read_json_object(path, "transfer cell", ("p_transfer", "p_target")))
                    bar.update()
    records = aggregate(cells, cfg.seeds, cfg.setup)
    write_json_atomic(os.path.join(out_dir, SCORES_FILE), records)
    write_json_atomic(os.path.join(out_dir, TABLE_FILE), {"estimator": "transfer", "setup": cfg.setup,
                                                          "scores": transfer_table(records)})
    return records
