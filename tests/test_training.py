"""Tests of recross_jax.training: losses, schedules, optimizers, steps and the guard."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recross_jax import partitioning, training
from recross_jax.errors import UserError
from recross_jax.models.t5 import T5Config, Transformer

VOCAB = 64


def tiny_config(dropout_rate: float = 0.0) -> T5Config:
    return T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, num_encoder_layers=1,
                    num_decoder_layers=1, head_dim=8, mlp_dim=32, dropout_rate=dropout_rate)


def make_batch(seed: int, batch_size: int = 8, inputs: int = 10, targets: int = 6) -> dict:
    """A copy task with padding: targets are the first input tokens shifted by one id."""
    rng = np.random.RandomState(seed)
    enc = rng.randint(2, VOCAB, size=(batch_size, inputs)).astype(np.int32)
    lengths = rng.randint(2, targets + 1, size=batch_size)
    tgt = np.where(np.arange(targets)[None] < lengths[:, None],
                   (enc[:, :targets] % (VOCAB - 2)) + 2, 0).astype(np.int32)
    enc[:, inputs - 2:] = 0
    dec_in = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.float32)}


@pytest.fixture(scope="module")
def tiny_params():
    """Parameters of `tiny_config()` on one device (initialised once: compiling is the cost)."""
    return training.init_params(tiny_config(), 0, partitioning.create_mesh(1, jax.devices()[:1]))


@pytest.fixture(scope="module")
def sgd_step():
    """A jitted plain-SGD (lr 1, so the update is the gradient) step shared by several tests,
    compiled once."""
    return training.make_train_step(Transformer(tiny_config()), optax.sgd(1.0))


def new_state(config: T5Config, optimizer, mesh, seed: int = 0):
    shardings = training.state_shardings(training.abstract_params(config), optimizer, mesh)
    params = training.init_params(config, seed, mesh)
    state = jax.jit(lambda p: training.TrainState.create(p, optimizer, seed),
                    out_shardings=shardings)(params)
    return state, shardings


# --- losses --------------------------------------------------------------------------------


def reference_loss(logits, targets, weights, smoothing, z_loss):
    """T5X's formula written out in numpy (float64)."""
    logits = np.asarray(logits, np.float64)
    vocab = logits.shape[-1]
    log_z = np.log(np.exp(logits).sum(-1))
    log_softmax = logits - log_z[..., None]
    confidence, low = 1.0 - smoothing, smoothing / (vocab - 1)
    soft = np.full(logits.shape, low)
    np.put_along_axis(soft, targets[..., None], confidence, axis=-1)
    entropy = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
    per_token = -(soft * log_softmax).sum(-1) - entropy + z_loss * log_z ** 2
    return (per_token * weights).sum(), (z_loss * log_z ** 2 * weights).sum()


@pytest.mark.parametrize("smoothing,z_loss", [(0.0, 0.0), (0.1, 1e-4), (0.2, 0.01)])
def test_weighted_cross_entropy_matches_reference(smoothing, z_loss):
    rng = np.random.RandomState(0)
    logits = rng.randn(3, 5, 11).astype(np.float32) * 3
    targets = rng.randint(0, 11, size=(3, 5))
    weights = (rng.rand(3, 5) > 0.3).astype(np.float32)
    loss, z = training.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                              jnp.asarray(weights), smoothing, z_loss)
    ref_loss, ref_z = reference_loss(logits, targets, weights, smoothing, z_loss)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(z), ref_z, rtol=1e-5, atol=1e-12)


def test_cross_entropy_custom_gradient_matches_autodiff():
    rng = np.random.RandomState(1)
    logits = jnp.asarray(rng.randn(4, 7, 13).astype(np.float32))
    targets = jnp.asarray(rng.randint(0, 13, size=(4, 7)))
    weights = jnp.ones((4, 7))

    def plain(x):
        log_z = jax.nn.logsumexp(x, -1)
        soft = jax.nn.one_hot(targets, 13) * 0.9 + 0.1 / 12 * (1 - jax.nn.one_hot(targets, 13))
        return jnp.sum(-(soft * (x - log_z[..., None])).sum(-1) + 1e-2 * log_z ** 2)

    ours = jax.grad(lambda x: training.weighted_cross_entropy(x, targets, weights, 0.1, 1e-2)[0])
    np.testing.assert_allclose(ours(logits), jax.grad(plain)(logits), atol=1e-6)


def test_loss_normalizer():
    batch = {"decoder_target_tokens": jnp.array([[3, 4, 0], [5, 0, 0]]),
             "decoder_loss_weights": jnp.array([[1, 1, 0], [1, 0, 0]])}
    assert float(training.loss_normalizer(batch, "NUM_REAL_TARGET_TOKENS")) == 3.0
    assert float(training.loss_normalizer(batch, "num_total_target_tokens")) == 6.0
    assert float(training.loss_normalizer(batch, 512)) == 512.0
    assert float(training.loss_normalizer(batch, None)) == 1.0
    with pytest.raises(UserError, match="loss_normalizing_factor 'TOKENS'"):
        training.loss_normalizer(batch, "TOKENS")


# --- schedules and optimizers ---------------------------------------------------------------


def test_schedules_values():
    constant = training.make_schedule("constant", 0.1, warmup_steps=4)
    assert [round(float(constant(s)), 6) for s in (0, 1, 4, 100)] == [0.0, 0.025, 0.1, 0.1]
    linear = training.make_schedule("linear", 1.0, warmup_steps=2, total_steps=10,
                                    end_learning_rate=0.2)
    assert [round(float(linear(s)), 6) for s in (0, 1, 2, 6, 10, 20)] == [
        0.0, 0.5, 1.0, 0.6, 0.2, 0.2]
    rsqrt = training.make_schedule("rsqrt", 1.0, warmup_steps=100)
    assert float(rsqrt(0)) == pytest.approx(0.1)
    assert float(rsqrt(100)) == pytest.approx(0.1)
    assert float(rsqrt(400)) == pytest.approx(0.05)
    assert float(rsqrt(10_000)) == pytest.approx(0.01)


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "cosine"}, "unknown learning-rate schedule 'cosine'"),
    ({"name": "rsqrt", "warmup_steps": 0}, "rsqrt schedule needs warmup_steps >= 1"),
    ({"name": "linear", "warmup_steps": 5, "total_steps": 5}, "total_steps > warmup_steps"),
])
def test_schedule_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        training.make_schedule(**kwargs)


def test_adamw_with_clipping_matches_optax():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = {"w": jnp.full((2, 3), 2.0), "b": jnp.array([1.0, -3.0, 0.5])}
    ours = training.make_optimizer("adamw", 1e-2, clip_grad_norm=0.5, weight_decay=0.1)
    reference = optax.chain(optax.clip_by_global_norm(0.5),
                            optax.adamw(1e-2, weight_decay=0.1, mask={"w": True, "b": False}))
    ours_state, ref_state = ours.init(params), reference.init(params)
    for _ in range(3):
        ours_updates, ours_state = ours.update(grads, ours_state, params)
        ref_updates, ref_state = reference.update(grads, ref_state, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours_updates,
                     ref_updates)
    assert float(ours_state.hyperparams["learning_rate"]) == pytest.approx(1e-2)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_weight_decay_shrinks_matrices_but_not_vectors(name):
    params = {"kernel": jnp.full((2, 3), 2.0), "scale": jnp.full((3,), 2.0)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    with_decay = training.make_optimizer(name, 0.1, weight_decay=0.5)
    without = training.make_optimizer(name, 0.1)
    decayed, _ = with_decay.update(zeros, with_decay.init(params), params)
    plain, _ = without.update(zeros, without.init(params), params)
    assert float(jnp.abs(decayed["kernel"] - plain["kernel"]).max()) > 1e-3
    np.testing.assert_array_equal(decayed["scale"], plain["scale"])


def test_optimizer_errors():
    with pytest.raises(UserError, match="unknown optimizer 'sgd'"):
        training.make_optimizer("sgd")
    with pytest.raises(UserError, match="clip_grad_norm must be positive"):
        training.make_optimizer("adamw", clip_grad_norm=0.0)


# --- steps ----------------------------------------------------------------------------------


def test_loss_decreases_on_tiny_model(tiny_params, sgd_step):
    state = training.TrainState.create(jax.tree.map(jnp.copy, tiny_params), optax.sgd(1.0))
    batch = make_batch(0)
    state, history = training.fit(state, sgd_step, [batch] * 20)
    losses = [h["loss"] for h in history]
    assert int(state.step) == 20
    assert losses[-1] < 0.1 * losses[0], losses
    assert history[0]["target_tokens"] == batch["decoder_loss_weights"].sum()
    assert history[0]["accuracy"] < 0.2 < 0.9 < history[-1]["accuracy"] <= 1.0


def run_sharded(num_partitions: int, devices, steps: int = 4):
    """A few AdamW steps with dropout on the given devices; returns (losses, params)."""
    config = tiny_config(dropout_rate=0.1)
    mesh = partitioning.create_mesh(num_partitions, devices)
    optimizer = training.make_optimizer("adamw", training.make_schedule(
        "linear", 3e-3, warmup_steps=1, total_steps=steps), clip_grad_norm=1.0)
    state, shardings = new_state(config, optimizer, mesh)
    step = training.make_train_step(Transformer(config), optimizer, mesh=mesh,
                                    state_shardings=shardings, label_smoothing=0.1)
    state, history = training.fit(state, step, [make_batch(i) for i in range(steps)], mesh=mesh)
    return [h["loss"] for h in history], jax.device_get(state.params), state


def test_one_device_and_eight_devices_agree():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    losses_1, params_1, _ = run_sharded(1, jax.devices()[:1])
    losses_8, params_8, state_8 = run_sharded(2, jax.devices()[:8])
    # The 4 x 2 mesh really splits the work: batch over data, MLP over model.
    wi = state_8.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert wi.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert len(wi.addressable_shards) == 8
    # Same randomness (dropout keys do not depend on the sharding); sums in another order.
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params_8, params_1)


def test_gradient_accumulation_equals_big_batch(tiny_params, sgd_step):
    model = Transformer(tiny_config())
    optimizer = optax.sgd(1.0)
    batch = {k: jnp.asarray(v) for k, v in make_batch(3).items()}
    results = []
    for step in (sgd_step, training.make_train_step(model, optimizer, num_microbatches=4)):
        state = training.TrainState.create(jax.tree.map(jnp.copy, tiny_params), optimizer)
        new, metrics = step(state, batch)
        results.append((jax.device_get(new.params), jax.device_get(metrics)))
    (params_1, metrics_1), (params_4, metrics_4) = results
    for key in ("loss", "z_loss", "accuracy", "target_tokens", "grad_norm"):
        np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 params_4, params_1)
    state = training.TrainState.create(tiny_params, optimizer)
    with pytest.raises(UserError, match="not divisible by num_microbatches=3"):
        training.make_train_step(model, optimizer, num_microbatches=3, jit=False)(state, batch)


def test_nan_guard_names_step_and_loss(tiny_params, sgd_step, capsys):
    state = training.TrainState.create(jax.tree.map(jnp.copy, tiny_params), optax.sgd(1.0))
    batches = [make_batch(0), make_batch(1)]
    batches[1]["decoder_loss_weights"] = batches[1]["decoder_loss_weights"] * np.float32("nan")
    with pytest.raises(training.NonFiniteLossError, match=r"at step 2: loss=nan"):
        training.fit(state, sgd_step, batches)
    state = training.TrainState.create(jax.tree.map(jnp.copy, tiny_params), optax.sgd(1.0))
    try:
        training.fit(state, sgd_step, batches, num_steps=2, progress=True)
    except training.NonFiniteLossError:  # read while the traceback holds the bar, as the CLI does
        err = capsys.readouterr().err
    assert "1/2" in err and err.endswith("\n")  # so the CLI's error line starts a line
    with pytest.raises(training.NonFiniteLossError, match="at step 7: grad_norm=inf"):
        training.check_finite(7, {"loss": 1.0, "grad_norm": math.inf})
    training.check_finite(8, {"loss": 1.0, "grad_norm": 2.0})


def test_eval_step_sums_over_padded_batches(tiny_params):
    config = tiny_config()
    model = Transformer(config)
    params = tiny_params
    eval_step = training.make_eval_step(model)
    full = make_batch(5, batch_size=4)
    padded = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in full.items()}
    a = training.evaluate(eval_step, params, [full])
    b = training.evaluate(eval_step, params, [padded])
    assert a["target_tokens"] == full["decoder_loss_weights"].sum() == b["target_tokens"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    logits = jax.jit(model.apply)({"params": params}, full["encoder_input_tokens"],
                                  full["decoder_input_tokens"], full["decoder_target_tokens"])
    nll, _ = reference_loss(logits, full["decoder_target_tokens"],
                            full["decoder_loss_weights"], 0.0, 0.0)
    assert a["loss"] == pytest.approx(nll / full["decoder_loss_weights"].sum(), rel=1e-5)


def test_put_batch_checks_features_and_divisibility():
    mesh = partitioning.create_mesh(1, jax.devices()[:1])
    with pytest.raises(UserError, match="lacks feature 'decoder_input_tokens'"):
        training.put_batch({"encoder_input_tokens": np.zeros((2, 3)),
                            "decoder_target_tokens": np.zeros((2, 3))}, mesh)
    if jax.device_count() >= 8:
        mesh8 = partitioning.create_mesh(1, jax.devices()[:8])
        with pytest.raises(UserError, match="batch size 6 is not divisible by the 8"):
            training.put_batch(make_batch(0, batch_size=6), mesh8)
