"""The whole ReCross pipeline as a sequence of `recross` commands, each skipped when up to date.

`make demo` (scripts/demo.py) and the results study (scripts/run_study.py) run the same stages
with different sizes: vocabulary (T5 only) → upstream training → model and SBERT indexes → mining →
reranker → (re-learning's rate chosen on upstream stand-ins, where asked) → generalization over
targets and methods → report. Every stage runs in this process
(TensorFlow and JAX load once) and records its arguments in `<out>/<stage>/.stage.json`; a
stage whose output exists and whose arguments are unchanged is skipped, so a re-run is fast and
an interrupted run resumes (mining and generalization also resume inside their stage).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys
import threading
import time
from typing import Sequence

from recross_jax import cli, generalize, provenance, relearn_rate
from recross_jax.errors import UserError
from recross_jax.io_utils import read_json, write_json_atomic, write_text_atomic

STAGE_RECORD = ".stage.json"
STAGE_CLOCK = ".stage_clock.json"  # a running or stopped stage's time so far
CLOCK_PERIOD_S = 30.0
MINILM2MINILM = "minilm2minilm"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Sizes and data of one end-to-end run (defaults: the demo's mini scale)."""

    out_dir: str
    upstream: str                       # upstream mixture
    targets: tuple[str, ...]            # held-out target tasks
    tasks_module: str = "tasks.recross"
    gin_bindings: tuple[str, ...] = ()  # applied to every data-reading stage (e.g. caps)
    # A gin/models file: minilm2minilm (BERT2BERT warm-started from MiniLM, its WordPiece
    # vocabulary) or a T5 size trained from scratch (t5_1_1_mini, ...: a SentencePiece
    # vocabulary of vocab_size pieces trained on the upstream mixture first).
    model: str = MINILM2MINILM
    # An upstream model trained beforehand (`recross train`): used as is, no upstream stage. It
    # must tokenize as `model` says (MiniLM's WordPiece, or `vocab` for a T5 size).
    upstream_model_dir: str | None = None
    vocab: str | None = None            # a T5 upstream_model_dir's SentencePiece model
    vocab_size: int = 8000
    pool_cap: int = 100                 # upstream examples per task in the indexes
    train_steps: int = 150
    # The upstream stage saves every checkpoint_period steps (the newest 2 kept) and resumes from
    # the last save when restarted.
    checkpoint_period: int = 50
    batch_size: int = 8
    feature_lengths: str = "{'inputs': 128, 'targets': 32}"
    # Gin bindings of the upstream stage alone, after every other (e.g. its own cap, or warmup
    # steps other than train_steps // 3).
    upstream_bindings: tuple[str, ...] = ()
    sbert_max_length: int = 128
    num_tuples: int = 8
    # Mining (gin bindings of mining.mine, then of its group fine-tune): each candidate fine-tuned
    # alone without dropout at a constant rate, so its label is its own, and one round gives it
    # (scripts/mining_reliability.py: groups of 5 with dropout needed ~26 rounds for 0.8).
    mining: tuple[str, ...] = ("num_queries=4", "num_heldout=16", "num_candidates=20", "num_rounds=1",
                               "num_groups=20", "parallel=False", "group_dropout=False")
    mining_finetune: tuple[str, ...] = ("schedule='constant'", "warmup_steps=0")
    reranker: tuple[str, ...] = ("epochs=2", "batch_size=16", "learning_rate=2e-5", "warmup_steps=4",
                                 "max_length=256")
    methods: tuple[str, ...] = ("base", "random", "sbert", "recross_dense", "recross")
    num_query_sets: int = 2
    num_queries: int = 8
    num_retrieved: int = 32
    upsample_ratio: float = 2.0
    max_eval_examples: int = 64
    eval_split: str = "test"            # the targets' split that generalization is scored on
    relearn_learning_rate: float = 1e-4
    relearn_epochs: int = 2
    # Upstream tasks standing in for targets to choose relearn_learning_rate from
    # relearn_rate_grid on (`relearn_rate.py`; stage relearn_rate/, 2 query sets); () keeps it.
    relearn_rate_tasks: tuple[str, ...] = ()
    relearn_rate_grid: tuple[float, ...] = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4)
    # Named subsets of targets reported on their own as well (report_<name>/), e.g. Table 1's
    # targets and Table 2's when one study runs both.
    report_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    transfer_scores: str | None = None  # measured transfer (TaskWeb): adds transfer_alignment.md
    task_prefix: str = ""               # of the registered task names, to match transfer_scores


def run_stage(out_dir: str, name: str, argv: Sequence[str], done_marker: str) -> float | None:
    """Runs `recross argv` unless `done_marker` exists from a run with the same argv.

    Returns the seconds it took (summed over the processes that ran it, `StageClock`), or None
    when skipped. A failing command raises UserError.
    """
    argv = list(argv)
    record = os.path.join(out_dir, name, STAGE_RECORD)
    if os.path.exists(done_marker) and os.path.exists(record):
        with open(record, encoding="utf-8") as f:
            if json.load(f).get("argv") == argv:
                print(f"\n=== {name}: up to date ({done_marker}), skipped ===", flush=True)
                return None
    print(f"\n=== {name}: recross {' '.join(argv)} ===", flush=True)
    with StageClock(os.path.join(out_dir, name), argv) as clock:
        code = cli.main(argv)
    if code:
        raise UserError(f"stage {name} failed (exit code {code})")
    seconds = clock.total()
    write_json_atomic(record, {"argv": argv, "seconds": round(seconds, 1),
                               "processes": clock.processes,
                               "last_process_seconds": round(clock.elapsed(), 1),
                               "environment": provenance.environment()})
    clock.remove()
    print(f"=== {name}: {seconds:.0f} s"
          + (f" over {clock.processes} processes" if clock.processes > 1 else "") + " ===", flush=True)
    return seconds


class StageClock:
    """A stage's wall time summed over every process that ran it (a stopped stage resumes in
    the next): while it runs, `<stage>/.stage_clock.json` holds the time so far, rewritten every
    `CLOCK_PERIOD_S` seconds, so a killed process loses at most one period of it."""

    def __init__(self, stage_dir: str, argv: list[str]):
        self.path = os.path.join(stage_dir, STAGE_CLOCK)
        self.argv = argv
        earlier = read_clock(stage_dir)
        same = earlier is not None and earlier.get("argv") == argv
        self.before = float(earlier["seconds"]) if same else 0.0
        self.processes = (int(earlier["processes"]) if same else 0) + 1
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._tick, daemon=True)

    def elapsed(self) -> float:
        """Seconds of this process's part."""
        return time.perf_counter() - self.start

    def total(self) -> float:
        """Seconds of every process's part, this one's included."""
        return self.before + self.elapsed()

    def write(self) -> None:
        """Stores the time so far (atomically: a kill mid-write leaves the previous one)."""
        write_json_atomic(self.path, {"argv": self.argv, "seconds": round(self.total(), 1),
                                      "processes": self.processes})

    def remove(self) -> None:
        """Drops the clock once the stage's record holds its time."""
        if os.path.exists(self.path):
            os.remove(self.path)

    def _tick(self) -> None:
        while not self._stop.wait(CLOCK_PERIOD_S):
            self.write()

    def __enter__(self) -> "StageClock":
        self.write()
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._beat.join()
        self.write()


def read_clock(stage_dir: str) -> dict | None:
    """A stage's clock (`StageClock`), or None where it has none."""
    path = os.path.join(stage_dir, STAGE_CLOCK)
    return read_json(path, "stage clock") if os.path.exists(path) else None


def run(cfg: PipelineConfig, show_data: bool = True) -> dict:
    """Runs every stage of `cfg`; returns the report summary (`summary.json`, see
    `reporting.write_report`)."""
    out = cfg.out_dir
    path = lambda *parts: os.path.join(out, *parts)  # noqa: E731
    os.makedirs(out, exist_ok=True)
    data = ["--tasks_module", cfg.tasks_module, *(f"--gin.{b}" for b in cfg.gin_bindings)]
    if cfg.model == MINILM2MINILM:
        os.environ["RECROSS_VOCAB"] = "minilm"
    elif cfg.vocab:
        os.environ["RECROSS_VOCAB"] = os.path.abspath(cfg.vocab)
    else:
        vocab = path("vocab", f"spm_{cfg.vocab_size}.model")
        os.environ["RECROSS_VOCAB"] = os.path.abspath(vocab)
        run_stage(out, "vocab", ["vocab", "train", "--mixture", cfg.upstream, "--size",
                                 str(cfg.vocab_size), "--out", vocab, *data], vocab)
    if show_data:
        for name in (cfg.upstream, *cfg.targets[:1]):
            print(f"\n=== data: statistics of {name} (train split, first 200 examples per task) ===")
            cli.main(["data", "stats", name, "--max_examples_per_task", "200", *data])
        print(f"\n=== data: an example of {cfg.targets[0]} ===")
        cli.main(["data", "show", cfg.targets[0], "-n", "1", "--split", "test", *data])

    model_dir = model_dir_of(cfg)
    if cfg.upstream_model_dir and not os.path.isdir(cfg.upstream_model_dir):
        raise UserError(f"upstream model directory not found: {cfg.upstream_model_dir}")
    if not cfg.upstream_model_dir:
        run_stage(out, "upstream", [
            "train", "--gin_file=gin/upstream.gin", f"--gin_file=gin/models/{cfg.model}.gin",
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.MIXTURE_OR_TASK_NAME='{cfg.upstream}'", f"--gin.TRAIN_STEPS={cfg.train_steps}",
            f"--gin.BATCH_SIZE={cfg.batch_size}", f"--gin.WARMUP_STEPS={max(1, cfg.train_steps // 3)}",
            f"--gin.CHECKPOINT_PERIOD={min(cfg.checkpoint_period, cfg.train_steps)}",
            "--gin.KEEP_CHECKPOINTS=2", f"--gin.TASK_FEATURE_LENGTHS={cfg.feature_lengths}",
            f"--gin_bindings=import {cfg.tasks_module}", *data[2:],
            *(f"--gin.{b}" for b in cfg.upstream_bindings)],
            path("upstream", f"checkpoint_{cfg.train_steps}"))

    index = ["index", "build", "--gin_file=gin/runs/index.gin", f"--gin.MIXTURE='{cfg.upstream}'",
             f"--gin.indexing.build.max_examples_per_task={cfg.pool_cap}", *data]
    run_stage(out, "index_model", [*index, f"--gin.MODEL_DIR='{model_dir}'",
                                   f"--gin.INDEX_DIR='{path('index_model')}'"],
              path("index_model", "index", "manifest.json"))
    if "sbert" in cfg.methods:
        run_stage(out, "index_sbert", [*index, "--gin.EMBEDDER='sbert'",
                                       f"--gin.INDEX_DIR='{path('index_sbert')}'",
                                       f"--gin.indexing.build.max_length={cfg.sbert_max_length}"],
                  path("index_sbert", "index", "manifest.json"))

    reranker = None
    if "recross" in cfg.methods and cfg.upsample_ratio > 1:
        tuples, reranker = mining_paths(cfg)
        run_stage(out, "mine", ["mine", "--gin_file=gin/runs/mine.gin", f"--gin.MODEL_DIR='{model_dir}'",
                                f"--gin.INDEX_DIR='{path('index_model')}'", f"--gin.OUT='{tuples}'",
                                f"--gin.NUM_TUPLES={cfg.num_tuples}", *_mining_bindings(cfg),
                                *data], tuples)
        run_stage(out, "reranker", ["reranker", "train", "--gin_file=gin/runs/rerank.gin",
                                    "--tuples", tuples, "--out", reranker,
                                    *(f"--gin.cross_encoder.train_reranker.{r}" for r in cfg.reranker)],
                  reranker)

    if cfg.relearn_rate_tasks:
        cfg = dataclasses.replace(cfg, relearn_learning_rate=choose_relearn_rate(cfg))
    results = path("generalize")
    run_stage(out, "generalize", generalize_argv(cfg, results, reranker), path("generalize", STAGE_RECORD))
    summary = report(cfg, results, path("report"))
    for name, group in cfg.report_groups:
        targets = [t for t in group if t in cfg.targets]
        if targets:
            report(cfg, results, path(f"report_{name}"), targets)
    write_stage_times(out)
    return summary


def stage_times(out_dir: str) -> dict[str, float]:
    """{stage: seconds} of every finished stage under `out_dir` (its last run, summed over the
    processes it took when resumed)."""
    times = {}
    for record in sorted(glob.glob(os.path.join(out_dir, "**", STAGE_RECORD), recursive=True)):
        with open(record, encoding="utf-8") as f:
            times[os.path.relpath(os.path.dirname(record), out_dir)] = json.load(f)["seconds"]
    return times


def runs_done(results_dir: str, targets: Sequence[str], methods: Sequence[str], num_query_sets: int) -> int:
    """How many of the (target, method, query set) runs of a generalize stage have their JSON."""
    return sum(os.path.isfile(generalize.run_path(results_dir, target, method, query_set))
               for target in targets for method in methods for query_set in range(num_query_sets))


def write_stage_times(out_dir: str) -> dict[str, float]:
    """Collects the wall time every stage under `out_dir` recorded (its last run) into
    `stage_times.json` and `stage_times.md`; returns {stage: seconds}."""
    times = stage_times(out_dir)
    write_json_atomic(os.path.join(out_dir, "stage_times.json"), times)
    lines = ["| stage | seconds |", "|---|---|", *(f"| {k} | {v:.0f} |" for k, v in times.items()),
             f"| **total** | {sum(times.values()):.0f} |"]
    write_text_atomic(os.path.join(out_dir, "stage_times.md"), "\n".join(lines) + "\n")
    return times


def choose_relearn_rate(cfg: PipelineConfig, num_query_sets: int = 2) -> float:
    """Re-learning's rate chosen on cfg's upstream stand-in tasks (stage `relearn_rate`, one
    generalize run per rate of the grid); records `lr_choice.json` / `.md` and returns it."""
    out = os.path.join(cfg.out_dir, "relearn_rate")
    trial = dataclasses.replace(cfg, targets=cfg.relearn_rate_tasks, methods=relearn_rate.METHODS,
                                num_query_sets=num_query_sets, upsample_ratio=1.0)
    by_rate = {}
    for rate in sorted(set(cfg.relearn_rate_grid)):
        results = os.path.join(out, f"lr_{rate:g}")
        run_stage(cfg.out_dir, os.path.join("relearn_rate", f"lr_{rate:g}"), generalize_argv(
            dataclasses.replace(trial, relearn_learning_rate=rate), results, None,
            [f"--gin.generalize.run.eval_split='{relearn_rate.EVAL_SPLIT}'"]),
            os.path.join(results, STAGE_RECORD))
        by_rate[rate] = relearn_rate.gains(results, trial.targets, num_query_sets, "soft_em")
    chosen = relearn_rate.choose(by_rate)
    write_json_atomic(os.path.join(out, "lr_choice.json"),
                      {"chosen": chosen, "metric": "soft_em", "tasks": list(trial.targets),
                       "gains": {f"{r:g}": g for r, g in by_rate.items()}})
    table = relearn_rate.markdown(by_rate, chosen, "soft_em")
    write_text_atomic(os.path.join(out, "lr_choice.md"), table)
    print(f"\n=== relearn_rate: chose {chosen:g} ===\n{table}", flush=True)
    return chosen


def _mining_bindings(cfg: PipelineConfig) -> list[str]:
    return [*(f"--gin.mining.mine.{m}" for m in cfg.mining),
            *(f"--gin.group/finetune.FinetuneConfig.{m}" for m in cfg.mining_finetune)]


def mining_paths(cfg: PipelineConfig) -> tuple[str, str]:
    """(tuples file, reranker directory) of cfg's mining and reranker settings: other mining
    settings mine into a file of their own (mining refuses to extend one of other settings);
    more tuples of the same settings extend the file; a reranker of other tuples or settings
    trains into a directory of its own (training refuses to resume one of others)."""
    def key(values: Sequence[str]) -> str:
        return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()[:8]
    mining = _mining_bindings(cfg)
    return (os.path.join(cfg.out_dir, "mining", key(mining), "tuples.jsonl"),
            os.path.join(cfg.out_dir, "reranker",
                         f"{key(mining)}_{cfg.num_tuples}_tuples_{key(cfg.reranker)}"))


def model_dir_of(cfg: PipelineConfig) -> str:
    """The upstream model `cfg` uses: its `upstream_model_dir`, else the one its run trains."""
    return cfg.upstream_model_dir or os.path.join(cfg.out_dir, "upstream")


def generalize_argv(cfg: PipelineConfig, results: str, reranker: str | None,
                    extra: Sequence[str] = ()) -> list[str]:
    """`recross generalize` over cfg's targets and methods with the model and indexes of cfg's
    run, into `results`; `extra`: more flags (e.g. gin bindings of an ablation)."""
    index_model, index_sbert = (os.path.join(cfg.out_dir, name) for name in ("index_model", "index_sbert"))
    return [
        "generalize", "--gin_file=gin/generalize.gin", "--tasks_module", cfg.tasks_module,
        *(f"--gin.{b}" for b in cfg.gin_bindings), f"--gin.TARGETS={list(cfg.targets)}",
        f"--gin.METHODS={list(cfg.methods)}", f"--gin.MODEL_DIR='{model_dir_of(cfg)}'",
        f"--gin.MODEL_INDEX_DIR='{index_model}'",
        f"--gin.SBERT_INDEX_DIR={repr(index_sbert) if 'sbert' in cfg.methods else None}",
        f"--gin.RERANKER_DIR={repr(reranker)}", f"--gin.OUT_DIR='{results}'",
        f"--gin.NUM_QUERY_SETS={cfg.num_query_sets}", f"--gin.NUM_QUERIES={cfg.num_queries}",
        f"--gin.NUM_RETRIEVED={cfg.num_retrieved}", f"--gin.UPSAMPLE_RATIO={cfg.upsample_ratio}",
        f"--gin.generalize.run.max_eval_examples={cfg.max_eval_examples}",
        *([f"--gin.generalize.run.eval_split='{cfg.eval_split}'"] if cfg.eval_split != "test" else []),
        f"--gin.finetune.FinetuneConfig.learning_rate={cfg.relearn_learning_rate}",
        f"--gin.finetune.FinetuneConfig.epochs={cfg.relearn_epochs}", *extra]


def report(cfg: PipelineConfig, results_dir: str, out_dir: str,
           targets: Sequence[str] | None = None) -> dict:
    """`recross report` over the generalize results of `cfg` (its methods and query sets, and
    `targets` or else all of cfg's), with the transfer alignment when `cfg` has measured transfer
    scores, against the upstream tasks; returns its summary."""
    transfer = (["--transfer_scores", cfg.transfer_scores, "--task_prefix", cfg.task_prefix,
                 "--upstream", cfg.upstream, "--tasks_module", cfg.tasks_module]
                if cfg.transfer_scores else [])
    select = ["--targets", *(targets or cfg.targets), "--methods", *cfg.methods,
              "--num_query_sets", str(cfg.num_query_sets)]
    print(f"\n=== report: {out_dir} ===", flush=True)
    if cli.main(["report", "--results", results_dir, "--out", out_dir, *select, *transfer]):
        raise UserError("stage report failed")
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


def main(configs: Sequence[PipelineConfig], show_data: bool = True) -> int:
    """Runs `configs` one after another, as a script's entry point: bad input or a failed
    stage prints one line and returns exit code 2."""
    try:
        for cfg in configs:
            run(cfg, show_data=show_data)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
