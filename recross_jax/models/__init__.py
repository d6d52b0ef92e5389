"""Pure Flax networks (no data, no files), and the one place that maps a config to its family.

Every stage builds its network with `build(config)`, reads stored configs with
`config_from_dict` and starts fresh parameters with `init_params`, so T5 and BERT2BERT
(warm-started from MiniLM) go through the same training, scoring, decoding and embedding code:
both modules have T5X's interface (`__call__`, `encode`, `decode`, a `cache` collection for
incremental decoding, logical axis names), and both configs say their `family` and `width`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from recross_jax.errors import UserError
from recross_jax.models import bert2bert, t5
from recross_jax.models.bert2bert import Bert2BertConfig
from recross_jax.models.t5 import T5Config

ModelConfig = Union[T5Config, Bert2BertConfig]
FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "t5": (T5Config, t5.Transformer),
    bert2bert.FAMILY: (Bert2BertConfig, bert2bert.Transformer),
}

__all__ = ["FAMILIES", "Bert2BertConfig", "ModelConfig", "T5Config", "build", "config_from_dict",
           "init_params", "without_dropout"]


def config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
    """The config a `model_config.json` describes (no `family`: T5, as written before families)."""
    family = values.get("family", "t5")
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r} (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[family][0].from_dict(values)


def build(config: ModelConfig) -> nn.Module:
    """The network of `config`'s family."""
    return FAMILIES[config.family][1](config)


def without_dropout(config: ModelConfig) -> ModelConfig:
    """`config` with every dropout probability 0: the same parameters, a deterministic network."""
    return dataclasses.replace(config, **{f.name: 0.0 for f in dataclasses.fields(config)
                                          if "dropout" in f.name})


def init_params(config: ModelConfig, rng: jax.Array) -> Any:
    """Freshly initialised parameters of `config`'s network, boxed with their logical axes."""
    dummy = jnp.ones((1, 1), jnp.int32)
    return build(config).init(rng, dummy, dummy, dummy)["params"]


def warm_start(config: ModelConfig, weights: str, rng: jax.Array) -> Any:
    """Parameters (unboxed host arrays) of `config`'s network started from pretrained `weights`
    (BERT2BERT: a BERT checkpoint file or directory; new sublayers seeded by `rng`)."""
    if config.family != bert2bert.FAMILY:
        raise UserError(f"warm_start: the {config.family} family has no warm start from "
                        f"{weights} (use init_checkpoint to start from a model directory)")
    return bert2bert.warm_start_from_bert(weights, config, rng)
