"""Tests of the gin flags (recross_jax.gin_utils) and `python -m recross_jax.train`."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import gin
import pytest
import seqio

from recross_jax import checkpoints, gin_utils, train
from recross_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_VOCAB = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                          "sentencepiece.model")

TASKS_MODULE = '''
"""A tiny task for the entry-point tests."""
from tasks import common


def examples(split):
    for i in range(40):
        yield common.make_example(inputs=f"copy the number {i}", targets=str(i),
                                  answer_choices=[], task="toy_entry", template="plain",
                                  example_id=common.example_id("toy_entry", split, "plain", i))


common.register_task("toy_entry", examples)
'''

# T5X layering: a model file, the run defaults ({run}.gin), then the experiment's settings.
EXPERIMENT = '''
from __gin__ import dynamic_registration

from recross_jax.models import t5
import toy_entry_tasks

include 'gin/models/t5_1_1_tiny.gin'
include 'gin/runs/{run}.gin'

t5.T5Config.num_encoder_layers = 1
t5.T5Config.num_decoder_layers = 1

VOCAB_SIZE = 128
MIXTURE_OR_TASK_NAME = 'toy_entry'
TASK_FEATURE_LENGTHS = {'inputs': 12, 'targets': 4}
TRAIN_STEPS = 3
BATCH_SIZE = 8
WARMUP_STEPS = 1
CHECKPOINT_PERIOD = 2
'''


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """A directory holding the toy tasks module and an experiment gin file using them."""
    (tmp_path / "toy_entry_tasks.py").write_text(TASKS_MODULE)
    (tmp_path / "toy.gin").write_text(textwrap.dedent(EXPERIMENT.replace("{run}", "train")))
    (tmp_path / "toy_ft.gin").write_text(textwrap.dedent(EXPERIMENT.replace("{run}", "finetune")))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    gin.clear_config()


def run_module(args, cwd, extra_path):
    env = dict(os.environ, RECROSS_VOCAB=TEST_VOCAB, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, str(extra_path)]))
    return subprocess.run([sys.executable, "-m", "recross_jax.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_module_runs_a_tiny_experiment(experiment):
    model_dir = experiment / "run"
    # From another working directory: gin/ is found on the default search path (repo root).
    result = run_module(["--gin_file=toy.gin", "--gin_file=gin/runs/eval.gin",
                         f"--gin.MODEL_DIR=\"{model_dir}\"", "--gin.EVAL_PERIOD=2",
                         "--gin.EVAL_BATCH_SIZE=8", f"--gin_search_paths={experiment}",
                         "--gin.training.train.progress=False"],
                        cwd=experiment, extra_path=experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoints.CheckpointManager(str(model_dir)).all_steps() == [2, 3]
    config_gin = (model_dir / "config.gin").read_text()
    assert f"MODEL_DIR = '{model_dir}'" in config_gin
    assert "MIXTURE_OR_TASK_NAME = 'toy_entry'" in config_gin
    assert "EVAL_PERIOD = 2" in config_gin
    with open(model_dir / "metrics.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    train_steps = [r["step"] for r in records if "loss" in r]
    eval_steps = [r["step"] for r in records if "eval/loss" in r]
    assert train_steps == [3] and eval_steps == [2, 3]
    assert all(0.0 <= r["eval/accuracy"] <= 1.0 and r["eval/target_tokens"] > 0
               for r in records if "eval/loss" in r)
    config, params = checkpoints.restore_model(str(model_dir))
    assert (config.vocab_size, config.emb_dim, config.num_encoder_layers) == (128, 32, 1)
    assert params["token_embedder"]["embedding"].shape == (128, 32)


def test_unknown_binding_exits_2_with_one_line(experiment):
    result = run_module(["--gin_file=toy.gin", "--gin.MODEL_DIR='/tmp/x'",
                         "--gin.training.train.bogus=1"], cwd=experiment, extra_path=experiment)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("recross train: error: Configurable 'training.train' doesn't "
                              "have a parameter named 'bogus'"), result.stderr[-2000:]
    assert "training.train.bogus = 1" in message


@pytest.mark.parametrize("flags,message", [
    ([], "missing required gin binding MODEL_DIR: set it with --gin.MODEL_DIR=..."),
    (["--gin.MODEL_DIR=1", "--gin.TRAIN_STEPS="], "gin syntax error: Unable to parse value."),
    (["--gin.MODEL_DIR=1", "--gin.NOT_A_MACRO_USER.x=2"],
     "No configurable matching 'NOT_A_MACRO_USER'"),
    (["--gin_file=nope.gin"], "gin file not found: nope.gin"),
    (["--gin.MODEL_DIR"], "gin flags must look like --gin.KEY=VALUE, got '--gin.MODEL_DIR'"),
])
def test_gin_errors_are_one_line(experiment, capsys, flags, message):
    assert train.main([f"--gin_file={experiment / 'toy.gin'}", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_bad_init_checkpoint_exits_2(experiment, capsys):
    argv = [f"--gin_file={experiment / 'toy_ft.gin'}", f"--gin.MODEL_DIR='{experiment / 'ft'}'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{experiment / 'no_such_model'}'"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"recross train: error: model directory not found: {experiment / 'no_such_model'}"
    assert train.main(argv[:2]) == 2
    assert "missing required gin binding INITIAL_CHECKPOINT_PATH" in capsys.readouterr().err


def test_gin_flags_work_in_subcommands_and_rewrite():
    assert gin_utils.rewrite_gin_args(["--gin.A=1", "--gin_file=x.gin", "pos"]) == [
        "--gin_bindings=A = 1", "--gin_file=x.gin", "pos"]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command").add_parser("run")
    gin_utils.add_gin_flags(sub)
    args = parser.parse_args(["run", "--gin_file=a.gin", "--gin.X='y'", "--gin_file=b.gin",
                              "--gin.training.train.seed=3", "--gin_search_paths=p,q"])
    assert args.gin_file == ["a.gin", "b.gin"]
    assert args.gin_bindings == ["X = 'y'", "training.train.seed = 3"]
    assert args.gin_search_paths == "p,q"
    with pytest.raises(UserError, match="--gin.KEY=VALUE"):
        parser.parse_args(["run", "--gin.X"])


def test_write_config_and_call_configurable(tmp_path):
    def configured(model_dir, steps=gin.REQUIRED):
        return model_dir, steps

    gin.external_configurable(configured, module="entry_test")
    try:
        gin_utils.parse([], ["entry_test.configured.model_dir = 'm'"])
        with pytest.raises(UserError, match=r"missing required gin binding\(s\) of "
                                            r"configured: \['steps'\]"):
            gin_utils.call_configurable(configured)
        gin_utils.parse([], ["entry_test.configured.model_dir = 'm'",
                             "entry_test.configured.steps = 5"])
        assert gin_utils.call_configurable(configured) == ("m", 5)
        path = gin_utils.write_config(str(tmp_path))
        assert "configured.steps = 5" in open(path, encoding="utf-8").read()
    finally:
        gin.clear_config()


def test_upstream_gin_binds_the_mini_model_on_the_embedded_t0_mixture():
    import tasks.recross  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    try:
        gin_utils.parse(["gin/upstream.gin"], ["MODEL_DIR = '/tmp/unused'"])
        assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "t0_upstream"
        assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 256, "targets": 32}
        model = gin_utils.call_configurable(
            __import__("recross_jax.models.t5", fromlist=["T5Config"]).T5Config)
        assert (model.emb_dim, model.num_encoder_layers, model.vocab_size) == (256, 4, 8192)
    finally:
        gin.clear_config()


def test_diverged_run_ends_its_progress_bar_before_the_one_line_error(experiment, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("RECROSS_VOCAB", TEST_VOCAB)
    argv = [f"--gin_file={experiment / 'toy.gin'}", f"--gin.MODEL_DIR='{experiment / 'nan'}'",
            "--gin.LEARNING_RATE=1e999"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    bar, message = err.rstrip("\n").rsplit("\n", 1)
    assert "train:" in bar and "/3" in bar
    assert message.startswith("recross train: error: non-finite training loss at step "), err
