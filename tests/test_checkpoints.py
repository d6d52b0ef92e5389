"""Tests of recross_jax.checkpoints and of exact resume through `training.train`."""
from __future__ import annotations

import asyncio
import json
import logging
import os

import jax
import numpy as np
import pytest

from recross_jax import checkpoints, partitioning, training
from recross_jax.errors import UserError
from recross_jax.models.t5 import T5Config

VOCAB = 64


def tiny_config(**overrides) -> T5Config:
    fields = dict(vocab_size=VOCAB, emb_dim=16, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=1, head_dim=8, mlp_dim=32, dropout_rate=0.1)
    return T5Config(**{**fields, **overrides})


def synthetic_batches(start_step: int = 0, batch_size: int = 8):
    """A deterministic, endless, resumable batch stream: batch k depends only on k."""
    step = start_step
    while True:
        rng = np.random.RandomState(1000 + step)
        enc = rng.randint(2, VOCAB, size=(batch_size, 8)).astype(np.int32)
        tgt = ((enc[:, :5] % (VOCAB - 2)) + 2).astype(np.int32)
        tgt[:, rng.randint(2, 5):] = 0
        dec = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
        yield {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
               "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}
        step += 1


def run_train(model_dir: str, train_steps: int, **kwargs):
    defaults = dict(
        model_dir=model_dir, model_config=tiny_config(), train_dataset_fn=synthetic_batches,
        train_steps=train_steps,
        optimizer=training.make_optimizer("adafactor", training.make_schedule(
            "rsqrt", 0.1, warmup_steps=2)),
        checkpoint_period=2, log_period=1, seed=3, progress=False)
    return training.train(**{**defaults, **kwargs})


def tree_equal(a, b) -> bool:
    leaves_a, tree_a = jax.tree_util.tree_flatten(jax.device_get(a))
    leaves_b, tree_b = jax.tree_util.tree_flatten(jax.device_get(b))
    return tree_a == tree_b and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


class Killed(Exception):
    """Stands in for the process dying."""


def dying_batches(after: int):
    """A batch stream that kills the run when it is asked for batch number `after`."""
    def dataset_fn(start_step: int = 0):
        for i, batch in enumerate(synthetic_batches(start_step)):
            if start_step + i == after:
                raise Killed
            yield batch
    return dataset_fn


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    straight = run_train(str(tmp_path / "straight"), 6, keep_checkpoints=2)
    assert checkpoints.CheckpointManager(str(tmp_path / "straight")).all_steps() == [4, 6]
    # Killed while fetching batch 3: steps 1-3 ran, the last checkpoint is step 2 (period 2),
    # so resuming replays step 3 from the restored state, RNG and data position.
    with pytest.raises(Killed):
        run_train(str(tmp_path / "resumed"), 6, train_dataset_fn=dying_batches(3))
    assert checkpoints.CheckpointManager(str(tmp_path / "resumed")).all_steps() == [2]
    resumed = run_train(str(tmp_path / "resumed"), 6)

    assert int(resumed.step) == int(straight.step) == 6
    assert tree_equal(resumed.params, straight.params)  # bit for bit
    assert tree_equal(resumed.opt_state, straight.opt_state)
    assert tree_equal(resumed.rng, straight.rng)
    # metrics.jsonl holds each step once: the replayed step 3 replaced the killed run's.
    with open(tmp_path / "resumed" / "metrics.jsonl", encoding="utf-8") as f:
        steps = [json.loads(line)["step"] for line in f]
    with open(tmp_path / "straight" / "metrics.jsonl", encoding="utf-8") as f:
        straight_records = [json.loads(line) for line in f]
    assert steps == [1, 2, 3, 4, 5, 6] == [r["step"] for r in straight_records]
    assert all(np.isfinite(r["loss"]) and r["tokens_per_second"] > 0 for r in straight_records)
    # The rate each update used: rsqrt(0.1, warmup 2) at update count step - 1.
    np.testing.assert_allclose([r["learning_rate"] for r in straight_records],
                               [0.1 / np.sqrt(max(s - 1, 2)) for s in range(1, 7)], rtol=1e-6)

    # The model directory alone restores the final model.
    config, params = checkpoints.restore_model(str(tmp_path / "resumed"))
    assert config == tiny_config()
    assert tree_equal(params, straight.params)
    _, params_4 = checkpoints.restore_model(str(tmp_path / "resumed" / "checkpoint_4"))
    assert not tree_equal(params_4, straight.params)
    # Resuming with another network is refused before anything runs.
    with pytest.raises(UserError, match="model_config differs .* emb_dim=32 vs 16"):
        run_train(str(tmp_path / "resumed"), 8, model_config=tiny_config(emb_dim=32))


def test_finetune_from_init_checkpoint(tmp_path):
    config = tiny_config(dropout_rate=0.0)
    params = training.init_params(config, 7, partitioning.create_mesh(1, jax.devices()[:1]))
    checkpoints.save_model(str(tmp_path / "base"), config, params)
    # Dropout may differ from the checkpoint's config: it has no parameters.
    state = run_train(str(tmp_path / "ft"), 0, model_config=None,
                      init_checkpoint=str(tmp_path / "base"))
    assert tree_equal(state.params, params)
    assert checkpoints.read_model_config(str(tmp_path / "ft")) == config
    with pytest.raises(UserError, match="parameter decoder/logits_dense/kernel has shape "
                                        r"\(16, 64\), expected \(16, 80\)"):
        run_train(str(tmp_path / "ft2"), 1, model_config=tiny_config(vocab_size=80),
                  init_checkpoint=str(tmp_path / "base"))
    with pytest.raises(UserError, match="model directory not found: .*missing"):
        run_train(str(tmp_path / "ft3"), 1, model_config=None,
                  init_checkpoint=str(tmp_path / "missing"))


def test_save_and_restore_model_round_trip(tmp_path):
    config = tiny_config()
    params = training.init_params(config, 0, partitioning.create_mesh(1, jax.devices()[:1]))
    path = checkpoints.save_model(str(tmp_path / "m"), config, params, step=5)
    assert path == str(tmp_path / "m" / "checkpoint_5")
    restored_config, restored = checkpoints.restore_model(str(tmp_path / "m"))
    assert restored_config == config and tree_equal(restored, params)
    _, from_step_dir = checkpoints.restore_model(path)
    assert tree_equal(from_step_dir, params)

    if jax.device_count() >= 8:  # restore straight onto a 4 x 2 mesh
        mesh = partitioning.create_mesh(2, jax.devices()[:8])
        shardings = partitioning.param_shardings(training.abstract_params(config), mesh)
        _, sharded = checkpoints.restore_model(str(tmp_path / "m"), shardings=shardings)
        kernel = sharded["decoder"]["logits_dense"]["kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
        assert tree_equal(sharded, params)


def test_restore_errors_name_the_problem(tmp_path):
    config = tiny_config()
    params = training.init_params(config, 0, partitioning.create_mesh(1, jax.devices()[:1]))
    model_dir = str(tmp_path / "m")
    checkpoints.save_model(model_dir, config, params)
    with pytest.raises(UserError, match="model directory not found: .*nowhere"):
        checkpoints.restore_model(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no checkpoint for step 9 in .* \\(have 0\\)"):
        checkpoints.restore_model(model_dir, step=9)
    # A config with one more encoder layer: the first missing parameter is named.
    checkpoints.write_model_config(model_dir, tiny_config(num_encoder_layers=2))
    with pytest.raises(UserError, match="lacks parameter encoder/layers_1/attention/key/kernel"):
        checkpoints.restore_model(model_dir)
    checkpoints.write_model_config(model_dir, tiny_config(mlp_dim=48))
    with pytest.raises(UserError, match=r"parameter decoder/layers_0/mlp/wi_0/kernel has shape "
                                        r"\(16, 32\), expected \(16, 48\)"):
        checkpoints.restore_model(model_dir)
    os.remove(os.path.join(model_dir, checkpoints.CONFIG_FILE))
    with pytest.raises(UserError, match="no model_config.json in model directory"):
        checkpoints.restore_model(model_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / checkpoints.CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    with pytest.raises(UserError, match="no checkpoint in"):
        checkpoints.restore_model(str(empty))


def test_importers_are_reexported_lazily():
    with pytest.raises(AttributeError, match="no attribute 'import_nothing'"):
        getattr(checkpoints, "import_nothing")
    try:
        from recross_jax import importers
    except ImportError:
        pytest.skip("recross_jax.importers is not there yet")
    assert checkpoints.import_hf_t5 is importers.import_hf_t5
    assert checkpoints.import_t5x_checkpoint is importers.import_t5x_checkpoint


def test_abandoned_tensorstore_reads_are_not_logged(caplog):
    """A failed restore's other reads may fail too while the event loop runs: asyncio would log
    each never-retrieved exception after the one-line error; only those records are dropped."""
    checkpoints._silence_abandoned_reads()  # pylint: disable=protected-access
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for error in (ValueError("OUT_OF_RANGE: Error reading x [tensorstore_spec='{}']"),
                          ValueError("another failure")):
                loop.call_exception_handler({"message": "Future exception was never retrieved",
                                             "exception": error})
    finally:
        loop.close()
    assert [record.exc_info[1].args[0] for record in caplog.records] == ["another failure"]
