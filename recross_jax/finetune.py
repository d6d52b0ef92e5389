"""Short fine-tunes of a T5 on a few text examples: ReCross re-learning (SPEC §1.5) and the
group fine-tunes of mining (SPEC §1.4), both built on `training.make_train_step`.

Examples arrive as (input ids, target ids) pairs, already EOS-ended. Every batch of one run has
the same shape (rows rounded up to the data-parallel width, lengths to a power of two), so the
step compiles once; padding rows carry zero loss weight.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recross_jax import inference, models, partitioning, training
from recross_jax.errors import UserError

TokenPair = tuple[Sequence[int], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """SPEC §1.5's re-learning defaults: AdamW, a very small constant rate, batch 4, clip 0.1.

    `trainable`: None trains every parameter; a hashable predicate of parameter key paths
    (e.g. `models.adapters.ExpertParams()`) trains those only, the rest frozen.
    """

    learning_rate: float = 3e-6
    optimizer: str = "adamw"
    schedule: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 4
    epochs: int = 1
    clip_grad_norm: float | None = 0.1
    weight_decay: float = 0.0
    seed: int = 0
    trainable: Callable[[tuple[str, ...]], bool] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1:
            raise UserError(f"fine-tune batch_size and epochs must be positive, got "
                            f"{self.batch_size} and {self.epochs}")

    def make_optimizer(self, total_steps: int):
        """The optimizer with this config's schedule over `total_steps` updates (used by
        the linear schedule only)."""
        schedule = training.make_schedule(self.schedule, self.learning_rate, self.warmup_steps,
                                          total_steps=max(total_steps, self.warmup_steps + 1))
        return training.make_optimizer(self.optimizer, schedule, clip_grad_norm=self.clip_grad_norm,
                                       weight_decay=self.weight_decay, trainable=self.trainable)


def tokenize_rows(rows: Sequence[dict], vocabulary: Any, max_input_length: int = 256,
                  max_target_length: int = 64) -> list[TokenPair]:
    """(input ids, target ids) of text rows with `inputs` and `targets`, trimmed, EOS-ended."""
    eos = vocabulary.eos_id

    def ids(text: str, length: int) -> list[int]:
        return list(vocabulary.encode(text))[:length - 1] + [eos]

    return [(ids(r["inputs"], max_input_length), ids(r["targets"], max_target_length)) for r in rows]


def padded_shape(pairs: Sequence[TokenPair], batch_size: int, mesh) -> tuple[int, int, int]:
    """(rows, input length, target length) of every batch over `pairs` on `mesh`."""
    data = mesh.shape["data"] if mesh is not None else 1
    rows = partitioning.round_up(batch_size, data)
    return (rows, inference.bucket(max(len(p[0]) for p in pairs)),
            inference.bucket(max(len(p[1]) for p in pairs)))


def make_batch(pairs: Sequence[TokenPair], shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """T5X features for `pairs`, padded to `shape` (extra rows are all padding, weight 0)."""
    rows, input_length, target_length = shape
    encoder = np.zeros((rows, input_length), np.int32)
    targets = np.zeros((rows, target_length), np.int32)
    for i, (input_ids, target_ids) in enumerate(pairs):
        encoder[i, :len(input_ids)] = input_ids
        targets[i, :len(target_ids)] = target_ids
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]
    return {"encoder_input_tokens": encoder, "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets, "decoder_loss_weights": (targets > 0).astype(np.float32)}


def epoch_batches(pairs: Sequence[TokenPair], batch_size: int, epochs: int, seed: int,
                  shape: tuple[int, int, int]) -> Iterator[dict[str, np.ndarray]]:
    """Batches over `epochs` passes, reshuffled each epoch with a seeded permutation."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), batch_size):
            yield make_batch([pairs[i] for i in order[start:start + batch_size]], shape)


def num_steps(num_examples: int, batch_size: int, epochs: int) -> int:
    """Updates of a fine-tune over `num_examples` examples."""
    return epochs * -(-num_examples // batch_size)


def finetune(config, params: Any, pairs: Sequence[TokenPair], cfg: FinetuneConfig,
             mesh=None, progress: bool = False) -> tuple[Any, list[dict]]:
    """Fine-tunes a copy of `params` (T5 `config`) on `pairs`; returns (params, step metrics).

    `params` are not modified (the state is built from them; donated buffers are copies).
    """
    if not pairs:
        raise UserError("nothing to fine-tune on: no examples")
    mesh = mesh or partitioning.create_mesh(devices=jax.devices()[:1])
    steps = num_steps(len(pairs), cfg.batch_size, cfg.epochs)
    optimizer, shardings, step = _train_step(config, cfg, steps if cfg.schedule == "linear" else 0, mesh)
    state = jax.device_put(training.TrainState.create(jax.tree.map(np.array, params), optimizer,
                                                      seed=cfg.seed), shardings)
    shape = padded_shape(pairs, cfg.batch_size, mesh)
    batches = epoch_batches(pairs, cfg.batch_size, cfg.epochs, cfg.seed, shape)
    state, history = training.fit(state, step, batches, num_steps=steps, mesh=mesh, progress=progress,
                                  desc="re-learn")
    return state.params, history


@functools.lru_cache(maxsize=16)
def _train_step(config, cfg: FinetuneConfig, schedule_steps: int, mesh):
    """(optimizer, state shardings, jitted step), cached so repeated fine-tunes compile once.

    Only the linear schedule depends on the run's length; others share `schedule_steps=0`.
    """
    optimizer = cfg.make_optimizer(schedule_steps)
    shardings = training.state_shardings(training.abstract_params(config), optimizer, mesh)
    step = training.make_train_step(models.build(config), optimizer, z_loss=0.0, mesh=mesh,
                                    state_shardings=shardings)
    return optimizer, shardings, step


def length_sorted_batches(pairs: Sequence[TokenPair], batch_size: int, mesh=None
                          ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """`pairs` in batches of similar length, each padded to its own shape (for scoring, where
    the order of examples does not matter): (positions in `pairs` of its rows, batch)."""
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = np.asarray(order[start:start + batch_size])
        chunk = [pairs[i] for i in rows]
        batches.append((rows, make_batch(chunk, padded_shape(chunk, batch_size, mesh))))
    return batches


def example_losses(config, params: Any, pairs: Sequence[TokenPair], batch_size: int = 32,
                   mesh=None) -> np.ndarray:
    """Per-example mean token cross entropy of `pairs` under `params` (teacher forcing)."""
    mesh = mesh or partitioning.create_mesh(devices=jax.devices()[:1])
    loss_fn = _example_loss_fn(models.build(config), mesh)
    losses = np.zeros(len(pairs), np.float32)
    for rows, batch in length_sorted_batches(pairs, batch_size, mesh):
        losses[rows] = np.asarray(loss_fn(params, training.put_batch(batch, mesh)))[:len(rows)]
    return losses


def per_example_loss(model, params: Any, batch: dict) -> jax.Array:
    """Mean token cross entropy per row of a T5X batch [rows] (0 for all-padding rows)."""
    logits = model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         batch["decoder_target_tokens"])
    log_probs = jax.nn.log_softmax(logits.astype(np.float32))
    targets = batch["decoder_target_tokens"]
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    weights = batch["decoder_loss_weights"]
    return (nll * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1.0)


@functools.lru_cache(maxsize=16)
def _example_loss_fn(model, mesh):
    jitted = jax.jit(lambda params, batch: per_example_loss(model, params, batch))

    def fn(params, batch):
        with partitioning.activate(mesh):  # logical constraints resolve while tracing
            return jitted(params, batch)
    return fn
