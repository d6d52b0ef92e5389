"""The promise of every `recross` command on bad input: exit code 2, one line on stderr naming
the problem, and nothing new (or changed) at the output path.

One table over all commands (`CASES`); each row names the command line (built from the tiny
world of `world`: a tiny T5, a BIG-bench-shaped corpus, a model index, a trained toy run), the
words the message must hold, and the path that must be left as it was. Rows marked `issue 26:N`
are the cases of that issue. New commands add their bad inputs here.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import textwrap
from typing import Callable

import bigbench_fixtures
import gin
import pytest
import tiny_models

from recross_jax import cli
from recross_jax.experts import checkpoint, expert
from recross_jax.models import adapters
from recross_jax.retrieval import embed
from tasks import bigbench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "bbbad"

TASKS_MODULE = '''
"""A tiny task for the training rows of the bad-input table."""
from tasks import common


def examples(split):
    for i in range(40):
        yield common.make_example(inputs=f"copy the number {i}", targets=str(i),
                                  answer_choices=[], task="toy_bad", template="plain",
                                  example_id=common.example_id("toy_bad", split, "plain", i))


common.register_task("toy_bad", examples)
'''

EXPERIMENT = '''
from __gin__ import dynamic_registration

from recross_jax import training
from recross_jax.models import t5
import toy_bad_tasks

include 'gin/models/t5_1_1_tiny.gin'
include 'gin/runs/train.gin'

t5.T5Config.num_encoder_layers = 1
t5.T5Config.num_decoder_layers = 1

VOCAB_SIZE = 128
MIXTURE_OR_TASK_NAME = 'toy_bad'
TASK_FEATURE_LENGTHS = {'inputs': 12, 'targets': 4}
TRAIN_STEPS = 3
BATCH_SIZE = 8
WARMUP_STEPS = 1
CHECKPOINT_PERIOD = 2
LOG_PERIOD = 1
training.train.progress = False
'''


@dataclasses.dataclass
class World:
    root: str
    model_dir: str  # a tiny upstream model (params only)
    index: str  # its model index over the bbbad upstream mixture
    sbert_index: str  # an index that says SBERT embedded it
    run: str  # a trained toy run: checkpoints 2 and 3, metrics, events
    queries: str
    gin: str  # the toy experiment

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


def _retag(index_dir: str, kind: str) -> None:
    """Rewrites both manifests of an index as if `kind` had embedded it."""
    for manifest in (os.path.join(index_dir, "pool", embed.MANIFEST),
                     os.path.join(index_dir, "index", "manifest.json")):
        with open(manifest, encoding="utf-8") as f:
            values = json.load(f)
        values["embedder"] = {"kind": kind, "model": "all-MiniLM-L6-v2", "max_length": 128,
                              "dtype": "float32", **({"mixture": values["embedder"]["mixture"]}
                                                     if "mixture" in values["embedder"] else {})}
        with open(manifest, "w", encoding="utf-8") as f:
            json.dump(values, f)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    bigbench.register_bigbench(bigbench_fixtures.write_tasks_dir(str(root)), cap=20, prefix=PREFIX)
    model_dir = str(root / "model")
    tiny_models.save_tiny_model(model_dir, step=1)
    (root / "toy_bad_tasks.py").write_text(TASKS_MODULE)
    (root / "toy_bad.gin").write_text(textwrap.dedent(EXPERIMENT))
    queries = root / "queries.jsonl"
    queries.write_text("".join(json.dumps({"inputs": q}) + "\n" for q in ["What is 5 + 1?", "Spell 7."]))
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.chdir(REPO)
    assert cli.main(["index", "build", "--gin_file=gin/runs/index.gin", "--tasks_module", "tasks.common",
                     f"--gin.MIXTURE='{PREFIX}_upstream'", f"--gin.MODEL_DIR='{model_dir}'",
                     f"--gin.INDEX_DIR='{root / 'index'}'", "--gin.indexing.build.backend='exact'",
                     "--gin.indexing.build.max_examples_per_task=20",
                     "--gin.indexing.build.progress=False"]) == 0
    shutil.copytree(root / "index", root / "sbert_index")
    _retag(str(root / "sbert_index"), "sbert")
    assert cli.main(["train", f"--gin_file={root / 'toy_bad.gin'}",
                     f"--gin.MODEL_DIR='{root / 'run'}'"]) == 0
    yield World(str(root), model_dir, str(root / "index"), str(root / "sbert_index"),
                str(root / "run"), str(queries), str(root / "toy_bad.gin"))
    monkeypatch.undo()


def snapshot(path: str) -> dict[str, tuple[int, int]]:
    """Every file and directory under `path` (or `path` itself) with its size and mtime."""
    if not os.path.exists(path):
        return {}
    found = {path: (os.path.getsize(path), os.stat(path).st_mtime_ns)}
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(directory, name)
            found[full] = (os.path.getsize(full), os.stat(full).st_mtime_ns)
    return found


def _corrupt_json(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:len(text) // 2])


def _copy(world: World, source: str, name: str) -> str:
    target = world.path(name)
    if not os.path.exists(target):
        shutil.copytree(source, target)
    return target


def corrupt_index_manifest(world: World) -> str:
    index = _copy(world, world.index, "index_bad_manifest")
    _corrupt_json(os.path.join(index, "index", "manifest.json"))
    return index


def corrupt_pool_manifest(world: World) -> str:
    index = _copy(world, world.index, "index_bad_pool")
    _corrupt_json(os.path.join(index, "pool", embed.MANIFEST))
    return index


def unfinished_index(world: World) -> str:
    """An index whose build was killed while embedding: a pool manifest that is not complete
    and no index/."""
    index = _copy(world, world.index, "index_unfinished")
    shutil.rmtree(os.path.join(index, "index"), ignore_errors=True)
    manifest_path = os.path.join(index, "pool", embed.MANIFEST)
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["complete"] = False
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return index


def vocabulary_gone(world: World) -> str:
    """An index whose recorded vocabulary file has since been deleted."""
    index = _copy(world, world.index, "index_vocabulary_gone")
    path = os.path.join(index, "index", "manifest.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["embedder"]["vocabulary"]["path"] = world.path("deleted.model")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return index


def other_transfer_run(world: World) -> str:
    """A transfer run directory whose settings differ from the defaults."""
    run = world.path("transfer_other")
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "settings.json"), "w", encoding="utf-8") as f:
        json.dump({"n_source": 3}, f)
    return run


def truncated_checkpoint(world: World) -> str:
    """The toy run with the tensor data files of its latest checkpoint cut in half."""
    run = world.path("run_truncated")
    if not os.path.exists(run):
        shutil.copytree(world.run, run)
        for directory, _, files in os.walk(os.path.join(run, "checkpoint_3", "params")):
            for name in files:
                path = os.path.join(directory, name)
                if os.path.basename(directory) == "d" or name.endswith(".data"):
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) // 2)
    return run


def corrupt_model_config(world: World) -> str:
    model = _copy(world, world.model_dir, "model_bad_config")
    _corrupt_json(os.path.join(model, "model_config.json"))
    return model


def binary_file(world: World) -> str:
    path = world.path("junk", "tuples.jsonl")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"\xff\xfe\x00junk\n")
    return path


def not_sentencepiece(world: World) -> str:
    path = world.path("not_a_vocab.model")
    with open(path, "w", encoding="utf-8") as f:
        f.write("this is not a SentencePiece model\n")
    return path


def generalize_runs(world: World) -> str:
    """A results directory with one base run (as `recross generalize` writes them)."""
    path = world.path("generalize_runs", "runs", f"{PREFIX}.mc_task", "base", "query_set_0.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"target": f"{PREFIX}.mc_task", "method": "base", "query_set": 0,
                   "metrics": {"accuracy": 0.5, "soft_em": 0.4}}, f)
    return world.path("generalize_runs")


def bad_tuples(world: World) -> str:
    path = world.path("bad_tuples.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"queries": ["q"], "positives": ["p"]\n')
    return path


def foreign_expert(world: World) -> str:
    """An expert of another backbone: the tiny model's shape, other parameters."""
    path = world.path("foreign_expert")
    if not os.path.exists(path):
        config = tiny_models.tiny_config()
        backbone = expert.Backbone.of(config, tiny_models.init_params(config, seed=1))
        owned = adapters.ExpertParams()
        params = adapters.split(expert.start_expert(backbone, 4)[1], owned)[0]
        checkpoint.save_expert(path, "foreign", backbone, 4, params, owned)
    return path


def _experts(action: str, *flags: str):
    return lambda w: ["experts", action, *[f.format(w=w) for f in flags], "--tasks_module",
                      "tasks.common"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: `argv(world)` must fail naming `message`, leaving `output(world)` as it was."""

    name: str
    argv: Callable[[World], list[str]]
    message: str
    output: Callable[[World], str]
    fresh_vocabulary: bool = False  # forget the process's loaded vocabulary first


def _train(*flags):
    return lambda w: ["train", f"--gin_file={w.gin}", *[f.format(w=w) for f in flags]]


def _index_build(*flags):
    return lambda w: ["index", "build", "--gin_file=gin/runs/index.gin", "--tasks_module", "tasks.common",
                      f"--gin.MIXTURE='{PREFIX}_upstream'", f"--gin.MODEL_DIR='{w.model_dir}'",
                      f"--gin.INDEX_DIR='{w.path('index_new')}'",
                      "--gin.indexing.build.max_examples_per_task=20", *[f.format(w=w) for f in flags]]


def _dir(index, w: World) -> str:
    return index(w) if callable(index) else index.format(w=w)


def _generalize(*flags, methods="['recross_dense']", index="{w.index}"):
    return lambda w: ["generalize", "--gin_file=gin/generalize.gin", "--tasks_module", "tasks.common",
                      f"--gin.TARGETS=['{PREFIX}.mc_task']", f"--gin.METHODS={methods}",
                      f"--gin.MODEL_DIR='{w.model_dir}'", f"--gin.MODEL_INDEX_DIR='{_dir(index, w)}'",
                      f"--gin.OUT_DIR='{w.path('generalize_out')}'", "--gin.UPSAMPLE_RATIO=1.0",
                      *[f.format(w=w) for f in flags]]


def _mine(*flags, index="{w.index}"):
    return lambda w: ["mine", "--gin_file=gin/runs/mine.gin", "--tasks_module", "tasks.common",
                      f"--gin.MODEL_DIR='{w.model_dir}'", f"--gin.INDEX_DIR='{_dir(index, w)}'",
                      f"--gin.OUT='{w.path('mining_out', 'tuples.jsonl')}'", "--gin.NUM_TUPLES=1",
                      *[f.format(w=w) for f in flags]]


def _retrieve(index: Callable[[World], str], *flags):
    return lambda w: ["retrieve", "--index", index(w), "--queries", w.queries, "--k", "3",
                      "--out", w.path("retrieved_out.jsonl"), "--tasks_module", "tasks.common", *flags]


def _new_run(w):
    return w.path("run_new")


CASES = [
    # train
    Case("train: BATCH_SIZE=0 (issue 26:6)",
         _train("--gin.MODEL_DIR='{w.root}/run_new'", "--gin.BATCH_SIZE=0"),
         "batch_size 0 must be a positive multiple", _new_run),
    Case("train: unknown mixture (issue 26:6)",
         _train("--gin.MODEL_DIR='{w.root}/run_new'", "--gin.MIXTURE_OR_TASK_NAME='no_such_mixture'"),
         "unknown task or mixture", _new_run),
    Case("train: vocabulary not SentencePiece (issue 26:2, 26:6)",
         lambda w: _train("--gin.MODEL_DIR='{w.root}/run_new'")(w)
         + [f"--gin.tasks.vocab.vocabulary_path.path='{not_sentencepiece(w)}'"],
         "is not a SentencePiece model", _new_run, fresh_vocabulary=True),
    Case("train: resume from a truncated checkpoint (issue 26:3)",
         lambda w: _train(f"--gin.MODEL_DIR='{truncated_checkpoint(w)}'", "--gin.TRAIN_STEPS=4")(w),
         "is truncated or corrupt", truncated_checkpoint),
    Case("train: missing gin file (issue 26:9)",
         lambda w: ["train", "--gin_file=no_such_file.gin", f"--gin.MODEL_DIR='{w.path('run_new')}'"],
         "gin file not found: no_such_file.gin", _new_run),
    Case("train: negative TRAIN_STEPS", _train("--gin.MODEL_DIR='{w.root}/run_new'", "--gin.TRAIN_STEPS=-1"),
         "train_steps >= 0", _new_run),
    Case("train: num_microbatches not dividing", _train("--gin.MODEL_DIR='{w.root}/run_new'",
                                                        "--gin.NUM_MICROBATCHES=0"),
         "num_microbatches must be >= 1", _new_run),
    # eval
    Case("eval: missing model directory",
         lambda w: ["eval", "--checkpoint", w.path("no_model"), "--task", f"{PREFIX}.mc_task",
                    "--tasks_module", "tasks.common", "--out", w.path("eval_out")],
         "model directory not found", lambda w: w.path("eval_out")),
    Case("eval: unknown task",
         lambda w: ["eval", "--checkpoint", w.model_dir, "--task", "no.such.task",
                    "--tasks_module", "tasks.common", "--out", w.path("eval_out")],
         "unknown task: 'no.such.task'", lambda w: w.path("eval_out")),
    # index build
    Case("index build: shard_size=0 (issue 26:7)", _index_build("--gin.indexing.build.shard_size=0"),
         "shard_size must be a positive integer", lambda w: w.path("index_new")),
    Case("index build: backend 'faiss' (issue 26:7)", _index_build("--gin.indexing.build.backend='faiss'"),
         "unknown index backend 'faiss'", lambda w: w.path("index_new")),
    Case("index build: unknown metric", _index_build("--gin.indexing.build.metric='l2'"),
         "unknown index metric 'l2'", lambda w: w.path("index_new")),
    Case("index build: unknown embedder", _index_build("--gin.EMBEDDER='bogus'"),
         "unknown embedder 'bogus'", lambda w: w.path("index_new")),
    Case("index build: unknown mixture", _index_build("--gin.MIXTURE='no_such_mixture'"),
         "unknown task or mixture", lambda w: w.path("index_new")),
    Case("index build: missing model", _index_build("--gin.MODEL_DIR='{w.root}/no_model'"),
         "no_model", lambda w: w.path("index_new")),
    Case("index build: a model whose checkpoint is truncated",
         lambda w: _index_build()(w) + [f"--gin.MODEL_DIR='{truncated_checkpoint(w)}'"],
         "is truncated or corrupt", lambda w: w.path("index_new")),
    Case("index build: bad dtype", _index_build("--gin.indexing.build.dtype='float8'"),
         "dtype must be one of", lambda w: w.path("index_new")),
    # retrieve
    Case("retrieve: corrupt index manifest (issue 26:4)", _retrieve(corrupt_index_manifest),
         "index manifest", lambda w: w.path("retrieved_out.jsonl")),
    Case("retrieve: corrupt pool manifest (issue 26:4)", _retrieve(corrupt_pool_manifest),
         "embedding pool manifest", lambda w: w.path("retrieved_out.jsonl")),
    Case("retrieve: unfinished index (issue 26:10)", _retrieve(unfinished_index),
         "is incomplete", lambda w: w.path("retrieved_out.jsonl")),
    Case("retrieve: recorded vocabulary deleted (issue 26:12)", _retrieve(vocabulary_gone),
         "the vocabulary this index was embedded with is gone", lambda w: w.path("retrieved_out.jsonl")),
    Case("retrieve: missing index", _retrieve(lambda w: w.path("no_index")),
         "index directory not found", lambda w: w.path("retrieved_out.jsonl")),
    Case("retrieve: k=0",
         lambda w: ["retrieve", "--index", w.index, "--queries", w.queries, "--k", "0",
                    "--out", w.path("retrieved_out.jsonl")],
         "--k must be at least 1", lambda w: w.path("retrieved_out.jsonl")),
    Case("retrieve: missing queries file",
         lambda w: ["retrieve", "--index", w.index, "--queries", w.path("no_queries.jsonl"), "--k", "3",
                    "--out", w.path("retrieved_out.jsonl")],
         "queries file not found", lambda w: w.path("retrieved_out.jsonl")),
    # mine
    Case("mine: corrupt index manifest (issue 26:4)", _mine(index=corrupt_index_manifest),
         "index manifest", lambda w: w.path("mining_out")),
    Case("mine: an SBERT index", _mine(index="{w.sbert_index}"),
         "needs an index embedded by 'model'", lambda w: w.path("mining_out")),
    Case("mine: num_candidates too small", _mine("--gin.mining.mine.num_candidates=3"),
         "num_candidates=3 must be at least", lambda w: w.path("mining_out")),
    Case("mine: OUT holds binary junk",
         lambda w: _mine()(w) + [f"--gin.OUT='{binary_file(w)}'"],
         "is not UTF-8 text", binary_file),
    # reranker train
    Case("reranker train: no gin file, missing tuples (issue 26:5)",
         lambda w: ["reranker", "train", "--tuples", w.path("no_tuples.jsonl"),
                    "--out", w.path("reranker_out")],
         "tuples file not found", lambda w: w.path("reranker_out")),
    Case("reranker train: no gin file, malformed tuples (issue 26:5)",
         lambda w: ["reranker", "train", "--tuples", bad_tuples(w), "--out", w.path("reranker_out")],
         "not valid JSON", lambda w: w.path("reranker_out")),
    Case("reranker train: epochs=0",
         lambda w: ["reranker", "train", "--tuples", bad_tuples(w), "--out", w.path("reranker_out"),
                    "--gin_file=gin/runs/rerank.gin", "--gin.cross_encoder.train_reranker.epochs=0"],
         "epochs must be positive", lambda w: w.path("reranker_out")),
    # generalize
    Case("generalize: SBERT index as MODEL_INDEX_DIR (issue 26:1)", _generalize(index="{w.sbert_index}"),
         "embedded by 'sbert'", lambda w: w.path("generalize_out")),
    Case("generalize: model index as SBERT_INDEX_DIR (issue 26:1)",
         _generalize("--gin.SBERT_INDEX_DIR='{w.index}'", methods="['sbert']"),
         "embedded by 'model'", lambda w: w.path("generalize_out")),
    Case("generalize: unknown target (issue 26:8)",
         lambda w: _generalize()(w) + ["--gin.TARGETS=['no.such.target']"],
         "unknown task or mixture", lambda w: w.path("generalize_out")),
    Case("generalize: recross without a reranker (issue 26:8)",
         _generalize("--gin.UPSAMPLE_RATIO=2.0", methods="['recross']"),
         "needs a trained reranker directory", lambda w: w.path("generalize_out")),
    Case("generalize: recross with a missing reranker",
         _generalize("--gin.UPSAMPLE_RATIO=2.0", "--gin.RERANKER_DIR='{w.root}/no_reranker'",
                     methods="['recross']"),
         "reranker directory not found", lambda w: w.path("generalize_out")),
    Case("generalize: corrupt model_config.json",
         lambda w: _generalize()(w) + [f"--gin.MODEL_DIR='{corrupt_model_config(w)}'"],
         "model config", lambda w: w.path("generalize_out")),
    Case("generalize: unknown method", _generalize(methods="['magic']"),
         "unknown method 'magic'", lambda w: w.path("generalize_out")),
    Case("generalize: corrupt index", _generalize(index=corrupt_index_manifest),
         "index manifest", lambda w: w.path("generalize_out")),
    Case("generalize: unfinished index", _generalize(index=unfinished_index),
         "is incomplete", lambda w: w.path("generalize_out")),
    # report, data, vocab, assets
    Case("report: missing results",
         lambda w: ["report", "--results", w.path("no_results"), "--out", w.path("report_out")],
         "no_results", lambda w: w.path("report_out")),
    Case("report: unknown method",
         lambda w: ["report", "--results", generalize_runs(w), "--out", w.path("report_out"),
                    "--methods", "base", "magic"],
         "no runs of method 'magic'", lambda w: w.path("report_out")),
    Case("report: unknown target",
         lambda w: ["report", "--results", generalize_runs(w), "--out", w.path("report_out"),
                    "--targets", "no.such_target"],
         "no runs of target 'no.such_target'", lambda w: w.path("report_out")),
    Case("report: no query sets",
         lambda w: ["report", "--results", generalize_runs(w), "--out", w.path("report_out"),
                    "--num_query_sets", "0"],
         "num_query_sets must be a positive integer, got 0", lambda w: w.path("report_out")),
    Case("data show: unknown task",
         lambda w: ["data", "show", "no.such.task", "--tasks_module", "tasks.common"],
         "unknown task or mixture", lambda w: w.root),
    Case("data show: unknown embedded-release task", lambda w: ["data", "show", "recross.no_such_task"],
         "unknown task or mixture: 'recross.no_such_task'", lambda w: w.root),
    Case("data stats: unknown split",
         lambda w: ["data", "stats", f"{PREFIX}.mc_task", "--split", "dev", "--tasks_module", "tasks.common"],
         "has no split 'dev'", lambda w: w.root),
    Case("vocab train: out not .model",
         lambda w: ["vocab", "train", "--mixture", f"{PREFIX}_upstream", "--size", "50", "--out",
                    w.path("vocab_out", "v.txt"), "--tasks_module", "tasks.common"],
         "must end in .model", lambda w: w.path("vocab_out")),
    Case("vocab train: unknown mixture",
         lambda w: ["vocab", "train", "--mixture", "no_such_mixture", "--size", "50", "--out",
                    w.path("vocab_out", "v.model"), "--tasks_module", "tasks.common"],
         "unknown task or mixture", lambda w: w.path("vocab_out")),
    # taskshop
    Case("taskshop score: unknown estimator",
         lambda w: ["taskshop", "score", "--estimator", "bogus", "--out", w.path("taskshop_out", "s.json")],
         "unknown estimator 'bogus'", lambda w: w.path("taskshop_out")),
    Case("taskshop evaluate: malformed score file",
         lambda w: ["taskshop", "evaluate", "--scores", f"mine={bad_tuples(w)}",
                    "--out", w.path("taskshop_out")],
         "malformed score file", lambda w: w.path("taskshop_out")),
    Case("taskshop select: no target", lambda w: ["taskshop", "select"],
         "give one of --target TASK", lambda w: w.root),
    Case("taskshop transfer: unknown task",
         lambda w: ["taskshop", "transfer", "--model_dir", w.model_dir, "--sources", "no_such_task",
                    "--targets", f"{PREFIX}.mc_task", "--out", w.path("transfer_out"),
                    "--tasks_module", "tasks.common"],
         "unknown task 'no_such_task'", lambda w: w.path("transfer_out")),
    Case("taskshop transfer: missing model dir",
         lambda w: ["taskshop", "transfer", "--model_dir", w.path("no_model"), "--sources",
                    f"{PREFIX}.gen_task", "--targets", f"{PREFIX}.mc_task", "--out",
                    w.path("transfer_out"), "--tasks_module", "tasks.common"],
         "model directory not found", lambda w: w.path("transfer_out")),
    Case("taskshop transfer: bad setting",
         lambda w: ["taskshop", "transfer", "--model_dir", w.model_dir, "--sources", f"{PREFIX}.gen_task",
                    "--targets", f"{PREFIX}.mc_task", "--out", w.path("transfer_out"),
                    "--tasks_module", "tasks.common", "--gin.transfer_runner.TransferConfig.seeds=()"],
         "seeds must be a non-empty list", lambda w: w.path("transfer_out")),
    Case("taskshop transfer: resumed with other settings",
         lambda w: ["taskshop", "transfer", "--model_dir", w.model_dir, "--sources", f"{PREFIX}.gen_task",
                    "--targets", f"{PREFIX}.mc_task", "--out", other_transfer_run(w),
                    "--tasks_module", "tasks.common"],
         "records n_source = 3, not 1000", lambda w: w.path("transfer_other")),
    Case("assets fetch: unknown asset", lambda w: ["assets", "fetch", "no_such_asset"],
         "no_such_asset", lambda w: w.root),
    # experts
    Case("experts eval: unknown expert",
         _experts("eval", "--backbone", "{w.model_dir}", "--expert", "{w.root}/no_expert",
                  "--task", f"{PREFIX}.mc_task"),
         "no expert at", lambda w: w.root),
    Case("experts eval: expert of another backbone",
         lambda w: _experts("eval", "--backbone", w.model_dir, "--expert", foreign_expert(w),
                            "--task", f"{PREFIX}.mc_task")(w),
         "was trained on another backbone", lambda w: w.root),
    Case("experts retrieve: empty library",
         _experts("retrieve", "--library", "{w.root}/no_library", "--task", f"{PREFIX}.mc_task"),
         "no expert library at", lambda w: w.root),
    Case("experts library: no experts", _experts("library", "--out", "{w.root}/library_out"),
         "the library would be empty", lambda w: w.path("library_out")),
    Case("experts merge: unknown expert",
         _experts("merge", "--backbone", "{w.model_dir}", "--experts", "{w.root}/no_expert",
                  "--out", "{w.root}/merged_out"),
         "no expert at", lambda w: w.path("merged_out")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, world, capsys, monkeypatch):
    from tasks import vocab  # pylint: disable=import-outside-toplevel
    monkeypatch.chdir(REPO)
    argv = case.argv(world)  # builds the bad input (a corrupt copy...) first
    output = case.output(world)
    before = snapshot(output)
    if case.fresh_vocabulary:  # the process loads its vocabulary once: forget it for this case
        monkeypatch.delitem(vocab.VOCABULARY.__dict__, "resolved", raising=False)
    capsys.readouterr()
    gin.clear_config()  # as in a fresh process: a module may register configurables on import
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}; stderr: {err[-3000:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("recross") and ": error: " in lines[0], lines[0]
    assert case.message in lines[0], lines[0]
    assert snapshot(output) == before, f"{output} changed"


def test_every_command_has_a_row():
    """The table covers every `recross` command (new commands add rows)."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # pylint: disable=protected-access
    covered = {case.name.split(":")[0].split()[0] for case in CASES}
    assert set(commands) <= covered, sorted(set(commands) - covered)


def test_an_index_records_its_vocabulary_and_retrieves_without_it_bound(world, capsys, monkeypatch,
                                                                         tmp_path):
    """Issue 26:12: `retrieve` on a model index needs no vocabulary binding or task module."""
    from tasks import vocab  # pylint: disable=import-outside-toplevel
    with open(os.path.join(world.index, "index", "manifest.json"), encoding="utf-8") as f:
        recorded = json.load(f)["embedder"]["vocabulary"]
    assert recorded == {"kind": "sentencepiece", "path": tiny_models.SEQIO_TEST_VOCAB, "extra_ids": 100}
    monkeypatch.setenv("RECROSS_VOCAB", str(tmp_path / "unbound.model"))
    monkeypatch.delitem(vocab.VOCABULARY.__dict__, "resolved", raising=False)
    out = tmp_path / "retrieved.jsonl"
    assert cli.main(["retrieve", "--index", world.index, "--queries", world.queries, "--k", "4",
                     "--out", str(out), "--tasks_module", "tasks.common"]) == 0, capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 4


def test_a_resumed_run_keeps_one_events_file_without_repeated_steps(world, capsys, monkeypatch):
    """Issue 26:11: the steps a resumed run redoes appear once in TensorBoard."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    monkeypatch.chdir(REPO)
    run = world.path("run_resumed")
    shutil.copytree(world.run, run)
    shutil.rmtree(os.path.join(run, "checkpoint_3"))  # as if killed before step 3 was saved
    assert cli.main(["train", f"--gin_file={world.gin}", f"--gin.MODEL_DIR='{run}'"]) == 0, \
        capsys.readouterr().err
    events = [name for name in os.listdir(run) if name.startswith("events.out.tfevents.")]
    assert len(events) == 1, events
    seen = [(value.tag, event.step)
            for event in tf.compat.v1.train.summary_iterator(os.path.join(run, events[0]))
            for value in event.summary.value]
    assert len(seen) == len(set(seen)), sorted(seen)
    assert sorted(step for tag, step in seen if tag == "loss") == [1, 2, 3]
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]


@pytest.mark.parametrize("case", [c for c in CASES if "26:3" in c.name or "26:9" in c.name],
                         ids=lambda c: c.name)
def test_a_real_process_prints_only_the_one_line(case, world):
    """Issues 26:3 and 26:9 as a user sees them: no log lines of gin, no Orbax thread noise at
    exit (what pytest's capture would hide)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    argv = case.argv(world)
    before = snapshot(case.output(world))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, world.root]),
               RECROSS_VOCAB=tiny_models.SEQIO_TEST_VOCAB)
    result = subprocess.run([sys.executable, "-m", "recross_jax.cli", *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
    assert case.message in result.stderr
    assert snapshot(case.output(world)) == before
