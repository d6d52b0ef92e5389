"""`run_eval` end to end: a tiny saved model over a tiny in-memory seqio task."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from recross_jax import checkpoints, evaluate, inference, metrics, partitioning
from recross_jax.errors import UserError
from recross_jax.models import t5

TASK = "recross_test_eval_task"
SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                   "sentencepiece.model")
MAX_DECODE = 5

ROWS = [
    ("is the sky blue", "yes", ["yes", "no"]),
    ("is fire cold", "no", ["yes", "no"]),
    ("pick a fruit", "apple", ["car", "apple", "road"]),
    ("say hello", "hello world", []),
    ("name a color", "red", []),
    ("count to two", "one two", []),
    ("which is big", "a whale", ["an ant", "a whale"]),
]


def _register(name, rows):
    from tasks import common  # pylint: disable=import-outside-toplevel

    def examples_fn(split):
        return [common.make_example(inputs=i, targets=t, answer_choices=c, task=name,
                                    template="t", example_id=common.example_id(name, split, "t", k))
                for k, (i, t, c) in enumerate(rows)] if split == "test" else []

    common.register_task(name, examples_fn, splits=("test",))


@pytest.fixture(scope="module")
def vocab_env():
    old = os.environ.get("RECROSS_VOCAB")
    os.environ["RECROSS_VOCAB"] = SPM
    yield
    if old is None:
        os.environ.pop("RECROSS_VOCAB")
    else:
        os.environ["RECROSS_VOCAB"] = old


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vocab_env):
    del vocab_env
    from tasks.vocab import VOCABULARY  # pylint: disable=import-outside-toplevel
    _register(TASK, ROWS)
    config = t5.T5Config(vocab_size=inference.bucket(VOCABULARY.vocab_size), emb_dim=16,
                         num_heads=2, num_encoder_layers=1, num_decoder_layers=1, head_dim=8,
                         mlp_dim=32, dropout_rate=0.0)
    dummy = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(jax.jit(t5.Transformer(config).init)(jax.random.PRNGKey(0), dummy,
                                                               dummy, dummy)["params"])
    path = str(tmp_path_factory.mktemp("model"))
    checkpoints.save_model(path, config, params, step=7)
    return path


def _read(out_dir):
    with open(os.path.join(out_dir, evaluate.PREDICTIONS_FILE), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(out_dir, evaluate.METRICS_FILE), encoding="utf-8") as f:
        return records, json.load(f)


@pytest.fixture(scope="module")
def first_run(model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval"))
    results = evaluate.run_eval(model_dir, TASK, "test", out, batch_size=4,
                                max_decode_length=MAX_DECODE, progress=False)
    return out, results


def test_run_eval_writes_predictions_and_metrics(model_dir, first_run):
    out, results = first_run
    records, written = _read(out)
    assert written == json.loads(json.dumps(results))
    assert sorted(os.listdir(out)) == ["config.gin", "metrics.json", "predictions.jsonl"]
    assert [r["example_id"] for r in records] == [f"{TASK}|test|t|#{k}" for k in range(len(ROWS))]
    assert [(r["inputs"], r["targets"]) for r in records] == [(i, t) for i, t, _ in ROWS]
    assert results["num_examples"] == 7 and results["num_choice_examples"] == 4
    assert results["num_accuracy_examples"] == 4 and results["step"] is None
    for name in ("accuracy", "em", "soft_em", "rouge_l"):
        assert 0.0 <= results[name] <= 1.0, name

    # The metrics are those of the written predictions.
    labels = [c.index(t) for _, t, c in ROWS if c]
    chosen = [int(np.argmax(r["choice_scores"])) for r in records if "choice_scores" in r]
    assert results["accuracy"] == pytest.approx(metrics.accuracy(chosen, labels))
    expected = metrics.text_metrics([r["prediction"] for r in records], [t for _, t, _ in ROWS])
    for name, value in expected.items():
        assert results[name] == pytest.approx(value)
    for record, (_, _, choices) in zip(records, ROWS):
        assert ("choice_scores" in record) == bool(choices)
        if choices:
            assert len(record["choice_scores"]) == len(choices)
            assert record["choice_prediction"] == choices[int(np.argmax(record["choice_scores"]))]


def test_choice_scores_are_target_log_likelihoods(model_dir, first_run):
    records, _ = _read(first_run[0])
    config, params = checkpoints.restore_model(model_dir)
    model = t5.Transformer(config)
    examples, _ = evaluate.load_examples(TASK, "test")
    example, record = examples[2], records[2]
    inputs = inference.pad_tokens([example.input_tokens] * len(example.choice_tokens))
    expected = inference.score(model, params, inputs, inference.pad_tokens(example.choice_tokens))
    np.testing.assert_allclose(record["choice_scores"], expected, rtol=1e-5)


def test_targets_equal_to_the_models_outputs_score_perfectly(model_dir, first_run, tmp_path):
    # Re-label every example with what the model produced: its decode, or its chosen choice.
    records, _ = _read(first_run[0])
    relabeled = [(i, r.get("choice_prediction", r["prediction"]), c)
                 for (i, _, c), r in zip(ROWS, records)]
    _register(TASK + "_relabeled", relabeled)
    results = evaluate.run_eval(model_dir, TASK + "_relabeled", "test", str(tmp_path),
                                batch_size=4, max_decode_length=MAX_DECODE, progress=False)
    assert results["accuracy"] == 1.0
    generative = [k for k, (_, _, c) in enumerate(ROWS) if not c]
    new_records, _ = _read(str(tmp_path))
    for k in generative:
        assert metrics.exact_match(new_records[k]["prediction"], new_records[k]["targets"]) == 1.0


def test_length_normalize_and_no_decode(model_dir, tmp_path):
    results = evaluate.run_eval(model_dir, TASK, "test", str(tmp_path), batch_size=4,
                                length_normalize=True, decode=False, max_examples=3,
                                progress=False)
    assert results["num_examples"] == 3 and results["length_normalize"] is True
    assert "em" not in results and 0.0 <= results["accuracy"] <= 1.0
    records, _ = _read(str(tmp_path))
    assert len(records) == 3 and all("prediction" not in r for r in records)


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "no_such_task"}, "unknown task: 'no_such_task'"),
    ({"split": "train"}, f"task '{TASK}' has no split 'train'"),
    ({"model_dir": "/nonexistent/model"}, "model directory not found: /nonexistent/model"),
    ({"batch_size": 0}, "batch_size must be positive"),
])
def test_run_eval_errors(model_dir, tmp_path, kwargs, message):
    args = {"model_dir": model_dir, "task": TASK, "split": "test",
            "out_dir": str(tmp_path / "out")}
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        evaluate.run_eval(args.pop("model_dir"), args.pop("task"), args.pop("split"),
                          args.pop("out_dir"), progress=False, **args)
    assert not os.path.exists(tmp_path / "out")


def test_checkpoint_without_config_or_with_too_small_vocabulary(model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model_config.json"):
        evaluate.run_eval(str(tmp_path / "empty"), TASK, progress=False)
    small = t5.T5Config(vocab_size=8, emb_dim=8, num_heads=1, num_encoder_layers=1,
                        num_decoder_layers=1, head_dim=8, mlp_dim=8)
    checkpoints.write_model_config(str(tmp_path / "small"), small)
    with pytest.raises(UserError, match="but the model in .* has only 8"):
        evaluate.run_eval(str(tmp_path / "small"), TASK, progress=False)


def test_main_prints_metrics_and_cli_reports_bad_checkpoint(model_dir, tmp_path, capsys):
    pytest.importorskip("recross_jax.gin_utils")
    from recross_jax import cli  # pylint: disable=import-outside-toplevel
    out = tmp_path / "main"
    argv = ["--checkpoint", model_dir, "--task", TASK, "--out", str(out), "--max_examples", "2",
            "--no_decode", "--tasks_module", "tasks.common", "--gin.run_eval.length_normalize=True"]
    assert evaluate.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_examples"] == 2 and "em" not in printed
    assert printed["length_normalize"] is True
    assert "run_eval.length_normalize = True" in (out / "config.gin").read_text()
    assert (out / "metrics.json").is_file()
    code = cli.main(["eval", "--checkpoint", str(tmp_path / "missing"), "--task", TASK,
                     "--tasks_module", "tasks.common"])
    assert code == 2
    assert "model directory not found" in capsys.readouterr().err


def test_evaluate_params_in_memory_equals_run_eval(model_dir, first_run):
    _, written = _read(first_run[0])
    config, params = checkpoints.restore_model(model_dir)
    examples, vocabulary = evaluate.load_examples(TASK, "test")
    host_params = jax.tree_util.tree_map(np.asarray, params)  # not placed on any mesh
    results, predictions, choice_scores = evaluate.evaluate_params(
        config, host_params, examples, vocabulary, mesh=partitioning.create_mesh(),
        batch_size=4, max_decode_length=MAX_DECODE, progress=False)
    records, _ = _read(first_run[0])
    assert predictions == [r["prediction"] for r in records]
    assert [s is None for s in choice_scores] == ["choice_scores" not in r for r in records]
    for name in ("accuracy", "em", "soft_em", "rouge_l", "num_examples"):
        assert results[name] == pytest.approx(written[name])
    with pytest.raises(UserError, match="no examples to evaluate"):
        evaluate.evaluate_params(config, host_params, [], vocabulary,
                                 mesh=partitioning.create_mesh(), progress=False)
