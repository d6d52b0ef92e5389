"""Training: the train state, losses, optimizers, schedules, jitted steps and the loop.

The pieces later stages reuse (mining, re-learning, experts) are `TrainState.create`,
`make_optimizer`, `make_schedule`, `make_train_step`, `make_eval_step` and `fit`; `train` is
the full upstream loop (checkpoints, exact resume, evaluation, metrics) built from them:

    state = TrainState.create(params, optimizer, seed=0)
    step = make_train_step(model, optimizer, mesh=mesh, state_shardings=shardings)
    state, history = fit(state, step, batches, mesh=mesh)

Only jax, flax, optax and orbax are imported here: data arrive as iterators of numpy dicts
with T5X feature names (`recross_jax.data` builds them from SeqIO).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recross_jax import checkpoints, models, partitioning
from recross_jax.errors import UserError
from recross_jax.io_utils import (
    parse_jsonl_lines,
    read_json_object,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from recross_jax.models import ModelConfig

Batch = Mapping[str, np.ndarray]
Metrics = dict[str, float]

# Features the model reads; `decoder_loss_weights` is read by the loss only.
MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                  "decoder_positions")
REQUIRED_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
LOSS_NORMALIZERS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS")
METRICS_FILE = "metrics.jsonl"
# How a run's parameters started (family, seed, warm-start weights and their sha256).
INIT_FILE = "init.json"


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss or gradient (usually a too-high learning rate)."""


# ---------------------------------------------------------------------------------------------
# State.


@struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree of arrays (checkpointed as is).

    Attributes:
      step: number of optimizer updates applied (int32 scalar).
      params: unboxed model parameters.
      opt_state: optimizer state of the transformation that created it.
      rng: raw uint32 PRNG key; each step derives its dropout key by folding in `step`, so a
        resumed run draws the same randomness as an uninterrupted one.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation,
               seed: int = 0) -> TrainState:
        """A fresh state at step 0 for (unboxed) `params`."""
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   opt_state=optimizer.init(params), rng=jax.random.PRNGKey(seed))


def state_shardings(boxed_params: Any, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES
                    ) -> TrainState:
    """`NamedSharding`s for a `TrainState` (as a TrainState of shardings).

    Args:
      boxed_params: parameters (or their `jax.eval_shape`) still in `nn.LogicallyPartitioned`
        boxes; optimizer moments inherit the boxes through `optimizer.init`.
      optimizer: the transformation whose state is sharded.
      mesh: target mesh.
      rules: logical axis rules.
    """
    abstract_opt_state = jax.eval_shape(optimizer.init, boxed_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(
        step=replicated,
        params=partitioning.param_shardings(boxed_params, mesh, rules),
        opt_state=partitioning.param_shardings(abstract_opt_state, mesh, rules),
        rng=replicated)


def abstract_params(config: ModelConfig) -> Any:
    """Shapes of the parameters, still boxed with their logical axis names (no compute)."""
    return jax.eval_shape(lambda rng: models.init_params(config, rng), jax.random.PRNGKey(0))


def init_params(config: ModelConfig, seed: int, mesh: Mesh,
                rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES) -> Any:
    """Randomly initialised, unboxed parameters placed on their shards of `mesh`."""
    params, _ = partitioning.sharded_init(lambda rng: models.init_params(config, rng),
                                          jax.random.PRNGKey(seed), mesh, rules)
    return params


# ---------------------------------------------------------------------------------------------
# Losses (T5X semantics).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def token_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float,
                        z_loss: float) -> tuple[jax.Array, jax.Array]:
    """Per-token cross entropy against label-smoothed targets plus `z_loss * log(Z)^2`.

    The target distribution puts `1 - label_smoothing` on the label and the rest evenly on the
    other classes (T5X's `cross_entropy_with_logits` on its soft targets). Returns (loss
    including the z-loss term, the z-loss term), both shaped like `targets`.

    Written in terms of log Z, the label's logit and the sum of the logits, so no one-hot
    [..., vocab] array is built; the custom gradient (T5X's) keeps only the logits and log Z
    and recomputes the softmax in one fused pass.
    """
    return _token_cross_entropy_fwd(logits, targets, label_smoothing, z_loss)[0]


def _token_cross_entropy_fwd(logits: jax.Array, targets: jax.Array, label_smoothing: float,
                             z_loss: float):
    vocab = logits.shape[-1]
    peak = jax.lax.stop_gradient(logits.max(axis=-1))
    log_z = jnp.log(jnp.sum(jnp.exp(logits - peak[..., None]), axis=-1)) + peak
    label_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = log_z - label_logit
    if label_smoothing:
        low = label_smoothing / (vocab - 1)
        # -sum_v soft_v log p_v with soft = low + (confidence - low) * onehot.
        loss = ((1.0 - label_smoothing - low) * loss
                - low * (jnp.sum(logits, axis=-1) - vocab * log_z))
    z_term = z_loss * jnp.square(log_z)
    return (loss + z_term, z_term), (logits, targets, log_z)


def _token_cross_entropy_bwd(label_smoothing: float, z_loss: float, residuals, grads):
    logits, targets, log_z = residuals
    g = grads[0]  # the z-loss output is for logging; its gradient is already in the loss
    vocab = logits.shape[-1]
    low = label_smoothing / (vocab - 1)
    softmax = jnp.exp(logits - log_z[..., None])
    label = jax.nn.one_hot(targets, vocab, dtype=logits.dtype)
    d_logits = ((1.0 + 2.0 * z_loss * log_z)[..., None] * softmax
                - low - (1.0 - label_smoothing - low) * label)
    return g[..., None] * d_logits, None


token_cross_entropy.defvjp(_token_cross_entropy_fwd, _token_cross_entropy_bwd)


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           label_smoothing: float = 0.0, z_loss: float = 0.0
                           ) -> tuple[jax.Array, jax.Array]:
    """Sums over tokens of (cross entropy, z-loss), weighted; T5X's label-smoothing semantics.

    The entropy of the smoothed target distribution is subtracted, as in T5X, so a perfect
    model scores 0.
    """
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    entropy = -(confidence * math.log(confidence)
                + (vocab - 1) * low * math.log(low + 1e-20)) if label_smoothing else 0.0
    loss, z_term = token_cross_entropy(logits, targets.astype(jnp.int32), float(label_smoothing),
                                       float(z_loss))
    return jnp.sum((loss - entropy) * weights), jnp.sum(z_term * weights)


def loss_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
    """`decoder_loss_weights` when present, else 1 on every non-padding target token."""
    if "decoder_loss_weights" in batch:
        return batch["decoder_loss_weights"].astype(jnp.float32)
    return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)


def loss_normalizer(batch: Mapping[str, jax.Array],
                    loss_normalizing_factor: float | str | None) -> jax.Array:
    """What the summed loss is divided by (T5X's `loss_normalizing_factor`).

    'NUM_REAL_TARGET_TOKENS': the sum of the loss weights; 'NUM_TOTAL_TARGET_TOKENS':
    batch × target length; a number: that constant; None: 1 (the plain sum).
    """
    if loss_normalizing_factor is None:
        return jnp.ones((), jnp.float32)
    if isinstance(loss_normalizing_factor, str):
        name = loss_normalizing_factor.upper()
        if name == "NUM_REAL_TARGET_TOKENS":
            # max(., 1): a batch of pure padding contributes zero loss instead of NaN.
            return jnp.maximum(jnp.sum(loss_weights(batch)), 1.0)
        if name == "NUM_TOTAL_TARGET_TOKENS":
            return jnp.asarray(float(np.prod(batch["decoder_target_tokens"].shape)))
        raise UserError(f"unknown loss_normalizing_factor {loss_normalizing_factor!r}; use a "
                        f"number, None or one of {', '.join(LOSS_NORMALIZERS)}")
    return jnp.asarray(float(loss_normalizing_factor), jnp.float32)


# ---------------------------------------------------------------------------------------------
# Optimizers and schedules.


@functools.lru_cache(maxsize=64)
def make_schedule(name: str = "constant", base_learning_rate: float = 1e-3,
                  warmup_steps: int = 0, total_steps: int | None = None,
                  end_learning_rate: float = 0.0) -> optax.Schedule:
    """A learning-rate schedule as a function of the update count (0 for the first update).

    Args:
      name: 'constant' (after an optional linear warmup from 0); 'linear' (linear warmup from
        0, then linear decay to `end_learning_rate` at `total_steps`, as HF's
        `get_linear_schedule_with_warmup`); 'rsqrt' (T5's `rsqrt_decay`:
        base / sqrt(max(step, warmup_steps)), constant during warmup).
      base_learning_rate: the peak (constant, linear) or the numerator (rsqrt).
      warmup_steps: warmup length in updates.
      total_steps: end of the linear decay (required for 'linear').
      end_learning_rate: value reached at `total_steps` by 'linear'.
    """
    if warmup_steps < 0:
        raise UserError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if name == "rsqrt" and warmup_steps < 1:
        raise UserError("the rsqrt schedule needs warmup_steps >= 1 (its value at step 0 is "
                        "base / sqrt(warmup_steps))")
    if name == "linear" and (total_steps is None or total_steps <= warmup_steps):
        raise UserError(f"the linear schedule needs total_steps > warmup_steps, got "
                        f"total_steps={total_steps}, warmup_steps={warmup_steps}")
    if name not in ("constant", "linear", "rsqrt"):
        raise UserError(f"unknown learning-rate schedule {name!r}; use constant, linear or rsqrt")

    def schedule(count: jax.Array) -> jax.Array:
        step = jnp.asarray(count, jnp.float32)
        if name == "rsqrt":
            return base_learning_rate * jax.lax.rsqrt(jnp.maximum(step, float(warmup_steps)))
        warmup = jnp.minimum(1.0, step / warmup_steps) if warmup_steps else 1.0
        if name == "constant":
            return base_learning_rate * warmup
        decay = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
        return warmup * (base_learning_rate + (end_learning_rate - base_learning_rate) * decay)

    return schedule


def decay_mask(params: Any) -> Any:
    """True for the parameters weight decay applies to: those with two or more dimensions."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def freeze(optimizer: optax.GradientTransformation,
           trainable: Callable[[tuple[str, ...]], bool]) -> optax.GradientTransformation:
    """`optimizer` on the parameters whose key path (a tuple of names) `trainable` accepts;
    the others get zero updates and no optimizer state, so they stay bit-for-bit unchanged."""
    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "train" if trainable(tuple(
                k.key for k in path if isinstance(k, jax.tree_util.DictKey))) else "frozen",
            params)
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


@functools.lru_cache(maxsize=64)
def make_optimizer(name: str = "adafactor",
                   learning_rate: float | optax.Schedule = 1e-3,
                   clip_grad_norm: float | None = None,
                   weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   decay_rate: float = 0.8, clipping_threshold: float | None = 1.0,
                   multiply_by_parameter_scale: bool = True,
                   trainable: Callable[[tuple[str, ...]], bool] | None = None
                   ) -> optax.GradientTransformation:
    """Adafactor (T5X's defaults) or AdamW, after optional global-norm gradient clipping.

    The learning rate is injected as a hyperparameter, so the current value lives in the
    optimizer state (checkpointed, and reported by the train step as `learning_rate`). Equal
    arguments return the same object (as does `make_schedule`), so train steps built from
    it share their compilation.

    Args:
      name: 'adafactor' or 'adamw'.
      learning_rate: a constant or a schedule of the update count.
      clip_grad_norm: clip the gradients' global norm to this value first (None: no clip).
      weight_decay: decoupled weight decay (AdamW's `weight_decay`, Adafactor's
        `weight_decay_rate`), applied to matrices (kernels, embeddings) only: not to layer-norm
        scales or biases, as in HF's and sentence-transformers' training loops.
      b1, b2, eps: AdamW moments and epsilon.
      decay_rate, clipping_threshold, multiply_by_parameter_scale: Adafactor's second-moment
        decay exponent, update clipping and relative step size (T5X: 0.8, 1.0, True).
      trainable: None to train every parameter, or a hashable predicate of key paths: only
        those parameters are clipped and updated, the others stay frozen (see `freeze`).
    """
    if name not in ("adafactor", "adamw"):
        raise UserError(f"unknown optimizer {name!r}; use adafactor or adamw")
    if clip_grad_norm is not None and clip_grad_norm <= 0:
        raise UserError(f"clip_grad_norm must be positive or None, got {clip_grad_norm}")

    def build(learning_rate: Any) -> optax.GradientTransformation:
        if name == "adamw":
            base = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                               mask=decay_mask)
        else:
            base = optax.adafactor(
                learning_rate, decay_rate=decay_rate, clipping_threshold=clipping_threshold,
                multiply_by_parameter_scale=multiply_by_parameter_scale,
                weight_decay_rate=weight_decay or None, weight_decay_mask=decay_mask)
        if clip_grad_norm is not None:
            base = optax.chain(optax.clip_by_global_norm(clip_grad_norm), base)
        return base if trainable is None else freeze(base, trainable)

    return optax.inject_hyperparams(build)(learning_rate=learning_rate)


# ---------------------------------------------------------------------------------------------
# Steps.


def _model_inputs(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: batch[k] for k in MODEL_FEATURES if k in batch}


def _split_microbatches(batch: Mapping[str, jax.Array], num_microbatches: int
                        ) -> dict[str, jax.Array]:
    """[B, ...] -> [num_microbatches, B / num_microbatches, ...], microbatch i = rows i::n.

    Strided rows keep each data-parallel device's rows on that device (a contiguous block of B
    splits into contiguous blocks of every microbatch).
    """
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % num_microbatches:
            raise UserError(f"batch size {x.shape[0]} is not divisible by "
                            f"num_microbatches={num_microbatches}")
        x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
        return jnp.moveaxis(x, 1, 0)
    return {k: split(v) for k, v in batch.items()}


def _train_step(state: TrainState, batch: Mapping[str, jax.Array], model: nn.Module,
                optimizer: optax.GradientTransformation, label_smoothing: float, z_loss: float,
                loss_normalizing_factor: float | str | None, num_microbatches: int
                ) -> tuple[TrainState, dict]:
    """One optimizer update on `batch` (see `make_train_step`)."""
    normalizer = loss_normalizer(batch, loss_normalizing_factor)
    step_rng = jax.random.fold_in(state.rng, state.step)

    def grads_of(micro: Mapping[str, jax.Array], rng: jax.Array):
        def loss_fn(params: Any):
            logits = model.apply({"params": params}, **_model_inputs(micro),
                                 enable_dropout=True, rngs={"dropout": rng})
            weights = loss_weights(micro)
            loss_sum, z_sum = weighted_cross_entropy(
                logits, micro["decoder_target_tokens"], weights, label_smoothing, z_loss)
            correct = jnp.sum((logits.argmax(-1) == micro["decoder_target_tokens"]) * weights)
            return loss_sum / normalizer, (z_sum / normalizer, correct, jnp.sum(weights))
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return grads, (loss,) + aux

    if num_microbatches == 1:
        grads, sums = grads_of(batch, step_rng)
    else:
        def accumulate(carry, xs):
            index, micro_batch = xs
            grads, sums = grads_of(micro_batch, jax.random.fold_in(step_rng, index))
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zeros = (jax.tree.map(jnp.zeros_like, state.params),
                 tuple(jnp.zeros((), jnp.float32) for _ in range(4)))
        (grads, sums), _ = jax.lax.scan(
            accumulate, zeros,
            (jnp.arange(num_microbatches), _split_microbatches(batch, num_microbatches)))
    loss, z_sum, correct, weight_sum = sums
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "z_loss": z_sum, "accuracy": correct / jnp.maximum(weight_sum, 1.0),
               "target_tokens": weight_sum, "grad_norm": optax.tree.norm(grads)}
    # `inject_hyperparams` records the rate this update used in the new state.
    hyperparams = getattr(opt_state, "hyperparams", {})
    if "learning_rate" in hyperparams:
        metrics["learning_rate"] = hyperparams["learning_rate"]
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _eval_step(params: Any, batch: Mapping[str, jax.Array], model: nn.Module) -> dict:
    """Summed NLL, argmax hits and loss weights of `batch` (see `make_eval_step`)."""
    logits = model.apply({"params": params}, **_model_inputs(batch), enable_dropout=False)
    weights = loss_weights(batch)
    nll, _ = weighted_cross_entropy(logits, batch["decoder_target_tokens"], weights)
    correct = jnp.sum((logits.argmax(-1) == batch["decoder_target_tokens"]) * weights)
    return {"nll": nll, "correct": correct, "target_tokens": jnp.sum(weights)}


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
                    label_smoothing: float = 0.0, z_loss: float = 1e-4,
                    loss_normalizing_factor: float | str | None = "NUM_REAL_TARGET_TOKENS",
                    num_microbatches: int = 1, mesh: Mesh | None = None,
                    state_shardings: TrainState | None = None,
                    rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
                    jit: bool = True) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """A train step `(state, batch) -> (state, metrics)`.

    The loss is summed over the whole batch and divided by one normaliser computed on the whole
    batch, so `num_microbatches` > 1 (gradient accumulation) gives the gradient of the big
    batch. Metrics (device scalars): `loss` (the optimised objective), `z_loss`, `accuracy`
    (token level), `target_tokens` (sum of loss weights), `grad_norm` (before clipping) and
    `learning_rate` (when the optimizer injects it).

    Model, optimizer and loss settings are static arguments of one module-level jitted
    function, so steps built again with equal ones (e.g. one re-learning run per target task)
    reuse the compilation.

    Args:
      model: a hashable Flax module called as `model.apply({'params': p}, **features,
        enable_dropout=True, rngs={'dropout': key})` returning logits.
      optimizer: the transformation that created `state.opt_state`.
      label_smoothing, z_loss, loss_normalizing_factor: see `weighted_cross_entropy` and
        `loss_normalizer`.
      num_microbatches: gradient accumulation steps per batch (must divide the batch size).
      mesh, state_shardings: with `jit`, shard the state as given (batch over `data`);
        without a mesh, the step runs on the default device.
      rules: logical axis rules active while tracing.
      jit: return the pure function (e.g. to `jax.vmap` over stacked states) when False.
    """
    if num_microbatches < 1:
        raise UserError(f"num_microbatches must be >= 1, got {num_microbatches}")
    # Passed positionally: jit takes no keyword arguments together with in_shardings.
    statics = (model, optimizer, label_smoothing, z_loss, loss_normalizing_factor,
               num_microbatches)
    if not jit:
        return lambda state, batch: _train_step(state, batch, *statics)
    static_argnums = tuple(range(2, 2 + len(statics)))
    if mesh is None:
        jitted = jax.jit(_train_step, static_argnums=static_argnums, donate_argnums=0)
        return lambda state, batch: jitted(state, batch, *statics)
    if state_shardings is None:
        raise ValueError("make_train_step with a mesh needs state_shardings")
    jitted = jax.jit(_train_step, static_argnums=static_argnums,
                     in_shardings=(state_shardings, partitioning.batch_sharding(mesh, rules)),
                     out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
                     donate_argnums=0)
    return _under_mesh(lambda state, batch: jitted(state, batch, *statics), mesh, rules)


def make_eval_step(model: nn.Module, *, mesh: Mesh | None = None,
                   param_shardings: Any = None,
                   rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES
                   ) -> Callable[[Any, Batch], dict]:
    """An eval step `(params, batch) -> sums` of `nll` (summed token negative log-likelihood,
    no smoothing or z-loss), `correct` (argmax hits) and `target_tokens` (loss weights).

    Sums, not means, so that batches (and padded final batches) aggregate exactly.
    """
    if mesh is None:
        jitted = jax.jit(_eval_step, static_argnums=2)
        return lambda params, batch: jitted(params, batch, model)
    if param_shardings is None:
        raise ValueError("make_eval_step with a mesh needs param_shardings")
    jitted = jax.jit(_eval_step, static_argnums=2,
                     in_shardings=(param_shardings, partitioning.batch_sharding(mesh, rules)),
                     out_shardings=NamedSharding(mesh, PartitionSpec()))
    return _under_mesh(lambda params, batch: jitted(params, batch, model), mesh, rules)


def _under_mesh(fn: Callable, mesh: Mesh, rules: partitioning.LogicalRules) -> Callable:
    """Calls `fn` with `mesh` and `rules` active (logical constraints resolve at trace time)."""
    def wrapped(*args: Any) -> Any:
        with partitioning.activate(mesh, rules):
            return fn(*args)
    return wrapped


# ---------------------------------------------------------------------------------------------
# Host-side helpers shared by `fit` and `train`.


def put_batch(batch: Batch, mesh: Mesh | None,
              rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES) -> dict:
    """Moves a host batch onto the devices (this process's rows of the global batch)."""
    missing = [k for k in REQUIRED_FEATURES if k not in batch]
    if missing:
        raise UserError(f"batch lacks feature {missing[0]!r} (has {sorted(batch)})")
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    sharding = partitioning.batch_sharding(mesh, rules)
    data_size = mesh.shape["data"]
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.shape[0] * jax.process_count() % data_size:
            raise UserError(f"batch size {value.shape[0] * jax.process_count()} is not "
                            f"divisible by the {data_size} data-parallel devices")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def count_tokens(batch: Batch) -> int:
    """Non-padding input plus target tokens of a host batch (for tokens/s)."""
    return int(np.count_nonzero(batch["encoder_input_tokens"])
               + np.count_nonzero(batch["decoder_target_tokens"]))


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
    """Raises `NonFiniteLossError` naming the step if the loss or gradient norm is NaN/inf."""
    bad = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics
           and not math.isfinite(metrics[k])}
    if bad:
        details = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLossError(f"non-finite training loss at step {step}: {details} "
                                 f"(loss={metrics.get('loss')}); lower the learning rate or "
                                 "enable gradient clipping")


def _to_host(metrics: Mapping[str, jax.Array]) -> Metrics:
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


def fit(state: TrainState, train_step: Callable, batches: Iterable[Batch], *,
        num_steps: int | None = None, mesh: Mesh | None = None,
        rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
        progress: bool = False, desc: str = "fine-tune") -> tuple[TrainState, list[Metrics]]:
    """Runs `train_step` over `batches` (at most `num_steps`); returns the state and the
    per-step host metrics. Stops with `NonFiniteLossError` on a NaN/inf loss.

    For fine-tunes (mining, re-learning); `train` adds checkpoints, resume and evaluation.
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    history: list[Metrics] = []
    batches = itertools.islice(batches, num_steps) if num_steps is not None else batches
    first_step = int(jax.device_get(state.step))
    for i, batch in enumerate(tqdm(batches, total=num_steps, desc=desc, disable=not progress)):
        state, metrics = train_step(state, put_batch(batch, mesh, rules))
        history.append(_to_host(metrics))
        check_finite(first_step + i + 1, history[-1])
    return state, history


def evaluate(eval_step: Callable, params: Any, batches: Iterable[Batch],
             mesh: Mesh | None = None,
             rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES) -> Metrics:
    """Token-level `loss` (mean NLL) and `accuracy` of `params` over `batches`."""
    totals = {"nll": 0.0, "correct": 0.0, "target_tokens": 0.0}
    for batch in batches:
        for key, value in _to_host(eval_step(params, put_batch(batch, mesh, rules))).items():
            totals[key] += value
    tokens = max(totals["target_tokens"], 1.0)
    return {"loss": totals["nll"] / tokens, "accuracy": totals["correct"] / tokens,
            "target_tokens": totals["target_tokens"]}


# ---------------------------------------------------------------------------------------------
# The upstream loop.


EVENTS_PREFIX = "events.out.tfevents."


def _complete_lines(path: str) -> list[str]:
    """The lines of `path` up to its last newline (a run killed mid-write leaves a partial one)."""
    with open(path, "rb") as f:
        data = f.read()
    return data[:data.rfind(b"\n") + 1].decode("utf-8", errors="replace").splitlines()


class MetricsLog:
    """Appends metric records to `metrics.jsonl` (and TensorBoard via clu when asked); only
    the first process writes."""

    def __init__(self, model_dir: str, start_step: int, tensorboard: bool = False):
        self.path = os.path.join(model_dir, METRICS_FILE)
        self.enabled = jax.process_index() == 0
        self.writer = None
        # A resumed run repeats the steps after its checkpoint: drop their old records.
        kept: list[dict] = []
        if self.enabled and os.path.exists(self.path):
            kept = [record for _, record in parse_jsonl_lines(_complete_lines(self.path), self.path)
                    if record.get("step", 0) <= start_step]
            write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                                 for r in kept))
        if self.enabled and tensorboard:
            try:
                from clu import metric_writers  # pylint: disable=import-outside-toplevel
            except ImportError:
                pass  # TensorBoard is optional; metrics.jsonl is always written
            else:
                # One events file per run directory: the old ones hold the redone steps too, so
                # they are replaced by the kept records, replayed into a fresh file.
                for name in os.listdir(model_dir):
                    if name.startswith(EVENTS_PREFIX):
                        os.remove(os.path.join(model_dir, name))
                self.writer = metric_writers.create_default_writer(model_dir, asynchronous=False)
                for record in kept:
                    scalars = {k: v for k, v in record.items()
                               if k != "step" and isinstance(v, (int, float))}
                    if scalars:
                        self.writer.write_scalars(int(record["step"]), scalars)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(step, dict(metrics))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()


def train(*, model_dir: str,
          train_dataset_fn: Callable[..., Iterator[Batch]],
          train_steps: int,
          optimizer: optax.GradientTransformation,
          model_config: ModelConfig | None = None,
          init_checkpoint: str | None = None,
          warm_start: str | None = None,
          eval_dataset_fn: Callable[[], Iterable[Batch]] | None = None,
          eval_period: int = 0,
          checkpoint_period: int = 1000,
          keep_checkpoints: int | None = None,
          log_period: int = 10,
          seed: int = 0,
          num_partitions: int = 1,
          num_microbatches: int = 1,
          label_smoothing: float = 0.0,
          z_loss: float = 1e-4,
          loss_normalizing_factor: float | str | None = "NUM_REAL_TARGET_TOKENS",
          progress: bool = True,
          tensorboard: bool = False,
          on_start: Callable[[str], None] | None = None) -> TrainState:
    """Trains a T5 in `model_dir`, resuming exactly from its latest checkpoint if any.

    The model directory ends up holding `model_config.json`, `checkpoint_<step>/` (params,
    optimizer state, step, RNG and the data position), `metrics.jsonl` and whatever
    `on_start` writes (the entry point writes `config.gin`).

    Args:
      model_dir: run directory (created if needed).
      train_dataset_fn: called as `train_dataset_fn(start_step=k)`, returns an iterator of
        numpy batches, deterministic so that resuming at step k yields the batches an
        uninterrupted run sees from its k-th on (e.g. `data.get_dataset_iterator` bound by
        gin).
      train_steps: total number of optimizer steps (a resumed run continues up to it).
      optimizer: e.g. `make_optimizer(...)`.
      model_config: the network; None takes the one of `init_checkpoint`. It may differ from
        the checkpoint's in what has no parameters (dropout, dtype).
      init_checkpoint: model directory whose parameters start a fresh run (fine-tuning);
        ignored when `model_dir` already has a checkpoint to resume from.
      warm_start: pretrained weights that start a fresh run where the family has them
        (BERT2BERT: a BERT checkpoint file or directory, or 'minilm' for the all-MiniLM-L6-v2
        asset); the new sublayers are drawn from `seed`. How the run started is recorded in
        `model_dir/init.json`, and a resumed run must have been started the same way.
      eval_dataset_fn: `() -> finite iterable of batches` evaluated every `eval_period` steps
        and at the end.
      eval_period: 0 disables periodic evaluation.
      checkpoint_period: save every this many steps (and always at the end).
      keep_checkpoints: keep only the newest N checkpoints (None keeps all).
      log_period: steps between metric records (and progress-bar updates).
      seed: parameter initialisation and dropout randomness.
      num_partitions: model-parallel width of the `('data', 'model')` mesh.
      num_microbatches, label_smoothing, z_loss, loss_normalizing_factor: see
        `make_train_step`.
      progress: show a tqdm progress bar.
      tensorboard: also write TensorBoard summaries via clu when it is installed.
      on_start: called with `model_dir` once the directory exists.

    Returns:
      The final state.
    """
    # One validation pass before anything is written: settings, the network, the checkpoint to
    # resume, and the data (mixture, batch size, vocabulary), so that bad input leaves no
    # config.gin, model_config.json or events file behind.
    if train_steps < 0 or checkpoint_period < 1 or log_period < 1 or eval_period < 0:
        raise UserError(f"train_steps >= 0, checkpoint_period >= 1, log_period >= 1 and "
                        f"eval_period >= 0 required, got {train_steps}, {checkpoint_period}, "
                        f"{log_period}, {eval_period}")
    if keep_checkpoints is not None and keep_checkpoints < 1:
        raise UserError(f"keep_checkpoints must be >= 1 or None, got {keep_checkpoints}")
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UserError(f"MODEL_DIR {model_dir} is a file, not a directory")
    resume_step = _latest_step(model_dir)
    if init_checkpoint is not None and resume_step is None and not os.path.isdir(init_checkpoint):
        raise UserError(f"model directory not found: {init_checkpoint}")
    config = _run_config(model_dir, model_config, init_checkpoint, resume_step is not None)
    if init_checkpoint is not None and warm_start is not None:
        raise UserError("give train one of init_checkpoint and warm_start, not both")
    init = _run_init(model_dir, config, init_checkpoint, warm_start, seed, resume_step is not None)
    batches = train_dataset_fn(start_step=resume_step or 0)  # one batch per step
    mesh = partitioning.create_mesh(num_partitions)
    model = models.build(config)
    boxed = abstract_params(config)
    shardings = state_shardings(boxed, optimizer, mesh)

    train_step = make_train_step(
        model, optimizer, label_smoothing=label_smoothing, z_loss=z_loss,
        loss_normalizing_factor=loss_normalizing_factor, num_microbatches=num_microbatches,
        mesh=mesh, state_shardings=shardings)
    eval_step = make_eval_step(model, mesh=mesh, param_shardings=shardings.params)

    # The starting state is read (resume, fine-tuning) or made before anything is written too:
    # an unreadable checkpoint is reported with the directory untouched.
    if resume_step is not None:
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            jax.eval_shape(lambda p: TrainState.create(p, optimizer, seed), nn.unbox(boxed)),
            shardings)
        reader = checkpoints.CheckpointManager(model_dir, read_only=True)
        try:
            state, data_position = _restore_state(reader, resume_step, abstract)
        finally:
            reader.close()
        if data_position != resume_step:
            batches = train_dataset_fn(start_step=data_position)
    else:
        if init_checkpoint is not None:
            params = _restore_params(init_checkpoint, boxed, shardings.params)
        elif warm_start is not None:
            params = jax.device_put(models.warm_start(config, init["warm_start"], jax.random.PRNGKey(seed)),
                                    shardings.params)
        else:
            params = init_params(config, seed, mesh)
        state = jax.jit(TrainState.create, static_argnums=(1, 2), out_shardings=shardings,
                        donate_argnums=0)(params, optimizer, seed)

    os.makedirs(model_dir, exist_ok=True)
    if on_start is not None:
        on_start(model_dir)
    checkpoints.write_model_config(model_dir, config)
    write_json_atomic(os.path.join(model_dir, INIT_FILE), init)
    manager = checkpoints.CheckpointManager(model_dir, keep=keep_checkpoints)
    log = None
    try:  # the manager is closed on any error, so no save thread outlives the run
        step = int(jax.device_get(state.step))
        log = MetricsLog(model_dir, step, tensorboard)
        state = _loop(state, step, train_steps, train_step, batches,
                      manager, checkpoint_period, log, log_period, mesh, progress,
                      lambda params: evaluate(eval_step, params, eval_dataset_fn(), mesh)
                      if eval_dataset_fn is not None else None, eval_period)
    finally:
        manager.close()
        if log is not None:
            log.close()
    return state


def _latest_step(model_dir: str) -> int | None:
    """The step of the newest complete checkpoint in `model_dir` (None: a fresh run); reads
    only, so a run that then fails validation has written nothing."""
    if not os.path.isdir(model_dir):
        return None
    manager = checkpoints.CheckpointManager(model_dir, read_only=True)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def _run_init(model_dir: str, config: ModelConfig, init_checkpoint: str | None,
              warm_start: str | None, seed: int, resuming: bool) -> dict:
    """How the run's parameters started (`INIT_FILE`): its family and random seed, the model
    directory it fine-tunes, or the pretrained weights (path and sha256) it warm-starts from. A
    resumed run must have started the same way."""
    init: dict[str, Any] = {"family": config.family, "seed": seed}
    if init_checkpoint is not None:
        init["init_checkpoint"] = os.path.abspath(init_checkpoint)
    if warm_start is not None:
        if warm_start == "minilm":
            from recross_jax import assets  # pylint: disable=import-outside-toplevel
            warm_start = assets.minilm_dir()
        weights = os.path.join(warm_start, "model.safetensors") if os.path.isdir(warm_start) else warm_start
        if not os.path.isfile(weights):
            raise UserError(f"warm_start weights not found: {weights}")
        init.update(warm_start=os.path.abspath(weights), warm_start_sha256=sha256_file(weights))
    recorded_path = os.path.join(model_dir, INIT_FILE)
    if resuming and os.path.isfile(recorded_path):
        recorded = read_json_object(recorded_path, "run initialisation record")
        for key in ("family", "warm_start_sha256"):  # what the resumed parameters came from
            if recorded.get(key) != init.get(key):
                raise UserError(f"{model_dir} was started with {key}={recorded.get(key)!r}, this "
                                f"run asks for {init.get(key)!r}: resume it as it was started")
        return recorded
    return init


def _run_config(model_dir: str, model_config: ModelConfig | None, init_checkpoint: str | None,
                resuming: bool) -> ModelConfig:
    """The network of the run: as given, else the fine-tuned checkpoint's; a resumed run must
    match the config saved in `model_dir`."""
    if model_config is None and init_checkpoint is not None and not resuming:
        model_config = checkpoints.read_model_config(init_checkpoint)
    saved = checkpoints.read_model_config(model_dir) if resuming else None
    config = model_config or saved
    if config is None:
        raise UserError("train needs model_config (or init_checkpoint) to start a new run in "
                        f"{model_dir}")
    if saved is not None and saved != config:
        raise UserError(f"model_config differs from the one saved in {model_dir}: "
                        f"{_first_difference(config, saved)}")
    return config


def _restore_params(init_checkpoint: str, boxed: Any, shardings: Any) -> Any:
    """The latest parameters of `init_checkpoint`, checked against this run's shapes."""
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.unbox(boxed), shardings)
    return checkpoints.restore_params(init_checkpoint, abstract)


def _first_difference(a: ModelConfig, b: ModelConfig) -> str:
    da, db = a.to_dict(), b.to_dict()  # optional fields (adapters) may be absent from one
    key = next(k for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k))
    return f"{key}={da.get(key)!r} vs {db.get(key)!r}"


def _restore_state(manager: checkpoints.CheckpointManager, step: int, abstract: TrainState
                   ) -> tuple[TrainState, int]:
    items, data = manager.restore(step, {
        "params": abstract.params,
        "train_state": {"opt_state": abstract.opt_state, "step": abstract.step,
                        "rng": abstract.rng}})
    extras = items["train_state"]
    state = TrainState(step=extras["step"], params=items["params"],
                       opt_state=extras["opt_state"], rng=extras["rng"])
    return state, int(data["data_position"])


def _save_state(manager: checkpoints.CheckpointManager, step: int, state: TrainState) -> None:
    # One batch per step: the data position is the step count.
    manager.save(step, {"params": state.params,
                        "train_state": {"opt_state": state.opt_state, "step": state.step,
                                        "rng": state.rng}},
                 {"data_position": step})


def _loop(state: TrainState, step: int, train_steps: int, train_step: Callable,
          batches: Iterator[Batch], manager: checkpoints.CheckpointManager,
          checkpoint_period: int, log: MetricsLog, log_period: int, mesh: Mesh, progress: bool,
          run_eval: Callable[[Any], Metrics | None], eval_period: int) -> TrainState:
    """Steps from `step` to `train_steps`, checking each loss one step late (so the host
    never stalls the device queue) and saving, logging and evaluating on schedule."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    with tqdm(total=train_steps, initial=step, desc="train", unit="step", disable=not progress) as bar:
        pending: tuple[int, dict, int] | None = None  # (step, device metrics, its tokens)
        window_tokens, window_start = 0, time.perf_counter()

        def settle(done_step: int, device_metrics: dict, tokens: int) -> None:
            nonlocal window_tokens, window_start
            metrics = _to_host(device_metrics)
            check_finite(done_step, metrics)
            window_tokens += tokens
            if done_step % log_period == 0 or done_step == train_steps:
                elapsed = time.perf_counter() - window_start
                metrics["tokens_per_second"] = window_tokens / max(elapsed, 1e-9)
                log.write(done_step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                                tok_s=f"{metrics['tokens_per_second']:.0f}")
                window_tokens, window_start = 0, time.perf_counter()

        while step < train_steps:
            try:
                batch = next(batches)
            except StopIteration:
                raise UserError(f"training data ran out at step {step} of {train_steps}; use a "
                                "repeating dataset") from None
            state, metrics = train_step(state, put_batch(batch, mesh))
            step += 1
            if pending is not None:
                settle(*pending)
            pending = (step, metrics, count_tokens(batch))
            bar.update(1)
            at_end = step == train_steps
            if step % checkpoint_period == 0 or at_end or (eval_period and step % eval_period == 0):
                settle(*pending)  # never save or evaluate a diverged state
                pending = None
            if step % checkpoint_period == 0 or at_end:
                _save_state(manager, step, state)
            if (eval_period and step % eval_period == 0) or at_end:
                eval_metrics = run_eval(state.params)
                if eval_metrics is not None:
                    log.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        if pending is not None:
            settle(*pending)
    return state
