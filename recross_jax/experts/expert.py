"""An expert's backbone and its training: adapters (and layer norms) trained on a frozen network.

A `Backbone` is a network without adapters, its parameters and their fingerprint (which expert
checkpoints record). `train_expert` attaches fresh adapters to it and fine-tunes only the
expert's own parameters (SPEC §3: lr 1e-4 constant, 5 epochs), through `finetune.finetune`;
`train_experts` trains several such experts at once, their own parameters stacked on a leading
axis and one jitted step vmapped over them with the frozen backbone broadcast (the same result
to float tolerance). `train_full_expert` fine-tunes every parameter (a full fine-tune expert,
merged as a task vector).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recross_jax import finetune, models, partitioning, training
from recross_jax.errors import UserError
from recross_jax.models import ModelConfig, adapters

# SPEC §3's expert training: constant 1e-4 for 5 epochs, backbone frozen, layer norms trained.
ELM_FINETUNE = finetune.FinetuneConfig(learning_rate=1e-4, optimizer="adamw", batch_size=8,
                                       epochs=5, clip_grad_norm=None,
                                       trainable=adapters.ExpertParams(layer_norms=True))


def fingerprint(params: Any) -> str:
    """sha256 of a parameter tree: every leaf's key path, dtype, shape and bytes, in path order."""
    digest = hashlib.sha256()
    for path, leaf in sorted(traverse_util.flatten_dict(params).items()):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{'/'.join(path)}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
    """A network without adapters and its (unboxed) parameters; build it with `of`."""

    config: ModelConfig
    params: Any
    fingerprint: str

    @classmethod
    def of(cls, config: ModelConfig, params: Any) -> Backbone:
        """The backbone of `config` (which must have no adapters) with `params`."""
        if getattr(config, adapters.FIELD) is not None:
            raise UserError(f"a backbone has no adapters; its config sets {adapters.FIELD}="
                            f"{getattr(config, adapters.FIELD)}")
        return cls(config, params, fingerprint(params))

    def expert_config(self, reduction: int) -> ModelConfig:
        """This network with adapters of `reduction`."""
        return adapters.with_adapters(self.config, reduction)

    def expert_shapes(self, reduction: int, owned: adapters.ExpertParams) -> dict[str, Any]:
        """Shapes (`jax.ShapeDtypeStruct`) of the parameters an expert of `reduction` owns."""
        abstract = nn.unbox(training.abstract_params(self.expert_config(reduction)))
        return adapters.split(abstract, owned)[0]

    def with_expert(self, expert_params: Any) -> Any:
        """The parameters of the adapted network: these, with `expert_params` added or
        replacing theirs (the backbone's own tree is not changed)."""
        return adapters.combine(self.params, expert_params)


def start_expert(backbone: Backbone, reduction: int = adapters.DEFAULT_REDUCTION,
                 seed: int = 0) -> tuple[ModelConfig, Any]:
    """(config, parameters) of `backbone` with fresh adapters of `reduction`."""
    config = backbone.expert_config(reduction)
    abstract = nn.unbox(training.abstract_params(config))
    fresh = adapters.init_adapters(config, abstract, jax.random.PRNGKey(seed))
    return config, backbone.with_expert(fresh)


def train_expert(backbone: Backbone, pairs: Sequence[finetune.TokenPair],
                 reduction: int = adapters.DEFAULT_REDUCTION,
                 settings: finetune.FinetuneConfig = ELM_FINETUNE, mesh: Mesh | None = None,
                 progress: bool = False) -> tuple[Any, list[dict]]:
    """Trains a new expert on (input ids, target ids) `pairs`; returns (its own parameters, the
    step metrics). `settings.trainable` names what the expert owns (the rest stays frozen)."""
    _check_adapter_settings(settings)
    config, params = start_expert(backbone, reduction, settings.seed)
    params, history = finetune.finetune(config, params, pairs, settings, mesh, progress)
    return adapters.split(params, settings.trainable)[0], history


def train_full_expert(backbone: Backbone, pairs: Sequence[finetune.TokenPair],
                      settings: finetune.FinetuneConfig = ELM_FINETUNE, mesh: Mesh | None = None,
                      progress: bool = False) -> tuple[Any, list[dict]]:
    """A full fine-tune expert: every backbone parameter trained on `pairs` (`settings.trainable`
    is ignored); returns (all its parameters, the step metrics)."""
    full = dataclasses.replace(settings, trainable=None)
    return finetune.finetune(backbone.config, backbone.params, pairs, full, mesh, progress)


def train_experts(backbone: Backbone, pair_sets: Sequence[Sequence[finetune.TokenPair]],
                  reduction: int = adapters.DEFAULT_REDUCTION,
                  settings: finetune.FinetuneConfig = ELM_FINETUNE, stacked: bool = True
                  ) -> list[tuple[Any, list[dict]]]:
    """One adapter expert per element of `pair_sets`; returns each one's (own parameters, step
    metrics) as `train_expert` would.

    With `stacked`, the experts train together: their own parameters (and optimizer states)
    stacked on a leading axis (split over the devices, as many as divide K), one jitted step
    `jax.vmap`ped over them with the frozen backbone broadcast (replicated), and only the
    experts' own parameters differentiated. An expert with fewer steps
    than the longest sits the remaining steps out (its state is kept). Every expert starts from
    the adapters of `settings.seed` and sees its batches in that seed's order, as `train_expert`.
    Without `stacked`: `train_expert` on each, one after another.
    """
    _check_adapter_settings(settings)
    if not pair_sets or any(not pairs for pairs in pair_sets):
        raise UserError("every expert needs training examples")
    if not stacked:
        return [train_expert(backbone, pairs, reduction, settings) for pairs in pair_sets]
    steps = [finetune.num_steps(len(p), settings.batch_size, settings.epochs) for p in pair_sets]
    if settings.schedule == "linear" and len(set(steps)) > 1:
        raise UserError("stacked experts share one learning-rate schedule: a linear schedule "
                        f"needs experts of equal length, these take {sorted(set(steps))} steps")
    config, start = start_expert(backbone, reduction, settings.seed)
    own, frozen = adapters.split(start, settings.trainable)
    optimizer = dataclasses.replace(settings, trainable=None).make_optimizer(
        max(steps) if settings.schedule == "linear" else 0)
    # The experts' axis is split over as many devices as divide it; the backbone is replicated.
    devices = jax.devices()
    data = max(d for d in range(1, min(len(pair_sets), len(devices)) + 1)
               if len(pair_sets) % d == 0)
    mesh = partitioning.create_mesh(devices=devices[:data])
    per_expert = NamedSharding(mesh, PartitionSpec("data"))
    one = training.TrainState.create(own, optimizer, seed=settings.seed)
    states = jax.device_put(jax.tree.map(lambda x: jnp.stack([x] * len(pair_sets)), one),
                            per_expert)
    frozen = jax.device_put(frozen, NamedSharding(mesh, PartitionSpec()))
    shape = finetune.padded_shape([p for pairs in pair_sets for p in pairs], settings.batch_size,
                                  None)
    batches = [list(finetune.epoch_batches(p, settings.batch_size, settings.epochs,
                                           settings.seed, shape)) for p in pair_sets]
    step = _stacked_step(models.build(config), optimizer)
    losses = []
    for t in range(max(steps)):
        active = np.array([t < n for n in steps])
        # An expert past its last step repeats its first batch; its update is discarded.
        batch = {k: np.stack([b[t if t < len(b) else 0][k] for b in batches])
                 for k in batches[0][0]}
        states, loss = step(states, frozen, jax.device_put(batch, per_expert),
                            jax.device_put(active, per_expert), masked=not active.all())
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses))  # [steps, experts]
    results = []
    for k, n in enumerate(steps):
        history = [{"loss": float(losses[t, k])} for t in range(n)]
        for t, metrics in enumerate(history, 1):
            training.check_finite(t, metrics)
        results.append((jax.tree.map(lambda x, k=k: np.asarray(x[k]), states.params), history))
    return results


@functools.lru_cache(maxsize=8)
def _stacked_step(model: nn.Module, optimizer: optax.GradientTransformation):
    """The jitted step of stacked expert states `(states, frozen, batch [K, ...], active [K],
    masked) -> (states, losses [K])`: `finetune`'s objective (token cross entropy over real
    target tokens, dropout keyed by each state's rng and step), gradients of the experts' own
    parameters only."""

    def one(state: training.TrainState, frozen: Any, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(own: Any) -> jax.Array:
            logits = model.apply({"params": adapters.combine(frozen, own)},
                                 **{k: batch[k] for k in training.REQUIRED_FEATURES},
                                 enable_dropout=True, rngs={"dropout": rng})
            loss, _ = training.weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                                      training.loss_weights(batch))
            return loss / training.loss_normalizer(batch, "NUM_REAL_TARGET_TOKENS")

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state), loss

    def step(states: training.TrainState, frozen: Any, batch: dict, active: jax.Array,
             masked: bool):
        new, losses = jax.vmap(one, in_axes=(0, None, 0))(states, frozen, batch)
        if not masked:  # selecting old states copies every buffer: only when some sit out
            return new, losses

        def keep(a: jax.Array, b: jax.Array) -> jax.Array:
            return jnp.where(active.reshape(active.shape + (1,) * (a.ndim - 1)), a, b)
        return jax.tree.map(keep, new, states), losses

    return jax.jit(step, static_argnames="masked", donate_argnums=0)


def _check_adapter_settings(settings: finetune.FinetuneConfig) -> None:
    if not isinstance(settings.trainable, adapters.ExpertParams):
        raise UserError("an adapter expert trains its own parameters only: settings.trainable "
                        f"must be an ExpertParams, got {settings.trainable!r}")
