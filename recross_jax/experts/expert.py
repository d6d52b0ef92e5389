"""An expert's backbone and its training: adapters (and layer norms) trained on a frozen network.

A `Backbone` is a network without adapters, its parameters and their fingerprint (which expert
checkpoints record). `train_expert` attaches fresh adapters to it and fine-tunes only the
expert's own parameters (SPEC §3: lr 1e-4 constant, 5 epochs), through `finetune.finetune`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from recross_jax import finetune, training
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
    if not isinstance(settings.trainable, adapters.ExpertParams):
        raise UserError("an adapter expert trains its own parameters only: settings.trainable "
                        f"must be an ExpertParams, got {settings.trainable!r}")
    config, params = start_expert(backbone, reduction, settings.seed)
    params, history = finetune.finetune(config, params, pairs, settings, mesh, progress)
    return adapters.split(params, settings.trainable)[0], history
