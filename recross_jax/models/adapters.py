"""ELM's bottleneck adapters (SPEC §3), shared by every encoder-decoder family.

An adapter maps a sublayer's output y to y + Up(GELU(Down(y))), Down: d → d/r and Up: d/r → d,
kernels drawn from N(0, 0.01) and zero biases, so a new adapter starts close to the identity.
A family puts one after every self-attention and feed-forward sublayer of its encoder and decoder
(named `<sublayer>_adapter`) when its config's `adapter_reduction` r is set; with r None (the
default) the network, its parameters and its stored config are those of a model without them.

The bottleneck axis is replicated (logical name None): adapters are small, and d/r need not
divide the model-parallel mesh axis.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from recross_jax.errors import UserError

Array = jax.Array
Path = tuple[str, ...]

FIELD = "adapter_reduction"
SUFFIX = "_adapter"
INIT_STDDEV = 0.01
DEFAULT_REDUCTION = 32


class Adapter(nn.Module):
    """y + Up(GELU(Down(y))) over the last axis of y [..., d]; float32 parameters."""

    reduction: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, y: Array) -> Array:
        width = y.shape[-1]

        def dense(features: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
            return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32, name=name,
                            kernel_init=nn.with_logical_partitioning(
                                nn.initializers.normal(INIT_STDDEV), axes),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   axes[1:]))

        hidden = nn.gelu(dense(width // self.reduction, ("embed", None), "down")(y))
        return y + dense(width, (None, "embed"), "up")(hidden).astype(y.dtype)


def adapt(y: Array, reduction: int | None, dtype: Any, name: str) -> Array:
    """`y` through the adapter `name` of the calling module, or `y` itself when `reduction` is
    None (call it inside a compact method)."""
    if reduction is None:
        return y
    return Adapter(reduction, dtype, name=name)(y)


def check_reduction(value: Any, width: int, owner: str) -> None:
    """Raises a UserError unless `value` is None or a reduction r with 1 <= d/r (d = `width`)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= width:
        raise UserError(f"{owner}.{FIELD} must be None or an integer in [1, {width}] (the "
                        f"model width), got {value!r}")


def omit_when_off(values: dict[str, Any]) -> dict[str, Any]:
    """A config's dict without the adapter field when adapters are off, so configs, config
    hashes and `model_config.json` files stay those written before adapters existed."""
    if values.get(FIELD, 0) is None:
        del values[FIELD]
    return values


def with_adapters(config: Any, reduction: int | None = DEFAULT_REDUCTION) -> Any:
    """`config` (a T5 or BERT2BERT config) with adapters of `reduction` (None: without)."""
    return dataclasses.replace(config, **{FIELD: reduction})


def is_adapter(path: Path) -> bool:
    """Whether a parameter's key path lies inside an adapter."""
    return any(key.endswith(SUFFIX) for key in path)


def is_layer_norm(path: Path) -> bool:
    """Whether a parameter's key path lies inside a layer norm (T5's RMS norms included)."""
    return any(key.endswith("norm") for key in path)


# The decoder's attention over the encoder: BERT2BERT's `cross_attention`, T5's
# `encoder_decoder_attention` (their layer norms are layer norms, not this).
CROSS_ATTENTION_NAMES = ("cross_attention", "encoder_decoder_attention")


def is_cross_attention(path: Path) -> bool:
    """Whether a parameter's key path lies inside a decoder's cross-attention sublayer."""
    return any(key in CROSS_ATTENTION_NAMES for key in path)


@dataclasses.dataclass(frozen=True)
class ExpertParams:
    """The parameters an expert trains and owns: its adapters, the layer norms when
    `layer_norms` (SPEC §3), and the decoder's cross-attention when `cross_attention`.

    A hashable key-path predicate, usable as a static jit argument. Owning the cross-attention
    is the default because the project's backbone is BERT2BERT, whose warm start leaves it
    random: on AG News an expert owning it reached 82% held-out accuracy, one without it 43%
    (same 80 steps; RESULTS.md). ELM's T5 backbone has a trained one, which SPEC §3's experts
    leave frozen (`cross_attention=False`).
    """

    layer_norms: bool = True
    cross_attention: bool = True

    def __call__(self, path: Path) -> bool:
        return (is_adapter(path) or (self.layer_norms and is_layer_norm(path))
                or (self.cross_attention and is_cross_attention(path)))

    def to_dict(self) -> dict[str, bool]:
        """The fields, as an expert manifest records them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExpertParams:
        """The inverse of `to_dict`; a missing `cross_attention` (manifests written before it
        existed) means False."""
        return cls(layer_norms=bool(values["layer_norms"]),
                   cross_attention=bool(values.get("cross_attention", False)))


def split(params: Any, keep: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`params` whose key paths `keep` accepts, the others), as nested dicts."""
    flat = traverse_util.flatten_dict(params)
    kept = {path: leaf for path, leaf in flat.items() if keep(path)}
    rest = {path: leaf for path, leaf in flat.items() if not keep(path)}
    return traverse_util.unflatten_dict(kept), traverse_util.unflatten_dict(rest)


def combine(params: Any, update: Any) -> dict[str, Any]:
    """`params` with the leaves of `update` added or replaced (nested dicts; neither changed)."""
    flat = traverse_util.flatten_dict(params)
    flat.update(traverse_util.flatten_dict(update))
    return traverse_util.unflatten_dict(flat)


def init_adapters(config: Any, abstract_params: Any, rng: jax.Array) -> dict[str, Any]:
    """Fresh (unboxed) parameters of every adapter of `config`'s network, and nothing else.

    Each adapter is initialised on its own (seeded by `rng` and its index), so a large backbone
    is never initialised to obtain them.

    Args:
      config: a config with `adapter_reduction` set.
      abstract_params: the network's unboxed parameter shapes (`jax.eval_shape` of its init).
      rng: a PRNG key.
    """
    reduction = getattr(config, FIELD)
    if reduction is None:
        raise UserError(f"the {config.family} config has no adapters ({FIELD} is None)")
    shapes = traverse_util.flatten_dict(abstract_params)
    prefixes = sorted(path[:-2] for path in shapes
                      if is_adapter(path) and path[-2:] == ("down", "kernel"))
    flat: dict[Path, Any] = {}
    for index, prefix in enumerate(prefixes):
        width = shapes[prefix + ("down", "kernel")].shape[0]
        variables = Adapter(reduction).init(jax.random.fold_in(rng, index),
                                            jnp.zeros((1, width), jnp.float32))
        for path, leaf in traverse_util.flatten_dict(nn.unbox(variables["params"])).items():
            flat[prefix + path] = leaf
    return traverse_util.unflatten_dict(flat)
