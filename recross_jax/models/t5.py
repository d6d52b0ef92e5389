"""T5 encoder-decoder (T5 1.1 by default, T5 1.0 as an option) in Flax linen.

Parameter names and logical axis names follow `t5x/examples/t5`, so T5X checkpoints and the
partitioning rules of `recross_jax.partitioning` apply unchanged:

    token_embedder/embedding                          [vocab, embed]
    encoder/relpos_bias/rel_embedding                 [heads, relpos_buckets]
    encoder/layers_i/pre_attention_layer_norm/scale   [embed]
    encoder/layers_i/attention/{query,key,value}/kernel  [embed, joined_kv]
    encoder/layers_i/attention/out/kernel             [joined_kv, embed]
    encoder/layers_i/pre_mlp_layer_norm/scale         [embed]
    encoder/layers_i/mlp/wi_0/kernel, wi_1/kernel     [embed, mlp]   (`wi` with one activation)
    encoder/layers_i/mlp/wo/kernel                    [mlp, embed]
    encoder/encoder_norm/scale                        [embed]
    decoder/...: self_attention, encoder_decoder_attention, pre_self_attention_layer_norm,
    pre_cross_attention_layer_norm, pre_mlp_layer_norm, mlp, relpos_bias, decoder_norm,
    logits_dense/kernel [embed, vocab] (absent when `logits_via_embedding`).
    {encoder,decoder}/layers_i/{attention,self_attention,mlp}_adapter/{down,up}/{kernel,bias}
                                                      (only with `adapter_reduction` set)

`Transformer.init` returns parameters boxed in `nn.LogicallyPartitioned`, which carry the logical
axis names. Strip the boxes with `flax.linen.unbox(variables)` (equivalently
`flax.core.meta.unbox`) before training; `Transformer.apply` accepts boxed and unboxed parameters.
Use `recross_jax.partitioning.param_shardings` on the boxed (abstract) tree to get shardings.

Parameters are stored in float32; activations are computed in `T5Config.dtype`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recross_jax.errors import UserError
from recross_jax.models import adapters
from recross_jax.models.matmul import matmul

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": nn.gelu,  # tanh approximation, as T5X and HF's `gelu_new`
    "relu": nn.relu,
    "silu": nn.silu,
    "linear": lambda x: x,
}
_LAYER_NORM_EPSILON = 1e-6
# Additive bias for masked attention positions; large but finite so bf16 stays NaN-free.
_MASKED_BIAS = -1e10


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of the T5 network. Defaults are T5 1.1 small (except the vocabulary).

    Attributes:
      vocab_size: number of token ids (the embedding and output rows).
      dtype: activation dtype, 'float32' or 'bfloat16'; parameters are always float32.
      emb_dim: model width d.
      num_heads: attention heads.
      num_encoder_layers: encoder depth.
      num_decoder_layers: decoder depth.
      head_dim: width of one head (d_kv).
      mlp_dim: hidden width of the feed-forward block (d_ff).
      mlp_activations: one activation per input projection, multiplied together;
        ('gelu', 'linear') is T5 1.1's gated GELU, ('relu',) is T5 1.0.
      dropout_rate: dropout on embeddings, sublayer outputs, attention weights and MLP hidden.
      logits_via_embedding: tie the output layer to the token embedding (T5 1.0); the logits are
        then divided by sqrt(emb_dim) as T5X and HF do.
      float32_attention_logits: compute attention logits and softmax in float32.
      relative_attention_num_buckets: buckets of the relative position bias.
      relative_attention_max_distance: distance beyond which all offsets share a bucket.
      family: 't5', so a stored `model_config.json` says which network it describes (files
        written before the field existed have none and are T5).
      adapter_reduction: with r set, ELM's bottleneck adapter (width emb_dim / r) after every
        self-attention and MLP sublayer (`recross_jax.models.adapters`); None: none.
    """

    vocab_size: int
    dtype: str = "float32"
    emb_dim: int = 512
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    head_dim: int = 64
    mlp_dim: int = 1024
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    dropout_rate: float = 0.1
    logits_via_embedding: bool = False
    float32_attention_logits: bool = True
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    family: str = "t5"
    adapter_reduction: int | None = None

    @property
    def width(self) -> int:
        """The width of the encoder's hidden states (what the index embedder mean-pools)."""
        return self.emb_dim

    def __post_init__(self) -> None:
        if self.family != "t5":
            raise UserError(f"T5Config.family must be 't5', got {self.family!r}")
        # gin and JSON hand sequences over as lists; the config must stay hashable.
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for name in ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                     "num_decoder_layers", "head_dim", "mlp_dim",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"T5Config.{name} must be a positive integer, got {value!r}")
        if self.dtype not in _DTYPES:
            raise UserError(f"T5Config.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if not self.mlp_activations:
            raise UserError("T5Config.mlp_activations must name at least one activation")
        unknown = [a for a in self.mlp_activations if a not in _ACTIVATIONS]
        if unknown:
            raise UserError(f"T5Config.mlp_activations: unknown activation {unknown[0]!r}; "
                            f"known: {sorted(_ACTIVATIONS)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UserError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if self.relative_attention_num_buckets % 2:
            # The bidirectional encoder splits the buckets between both directions.
            raise UserError("T5Config.relative_attention_num_buckets must be even, got "
                            f"{self.relative_attention_num_buckets}")
        adapters.check_reduction(self.adapter_reduction, self.emb_dim, "T5Config")

    @property
    def activation_dtype(self) -> jnp.dtype:
        """The jnp dtype of activations."""
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["mlp_activations"] = list(self.mlp_activations)
        return adapters.omit_when_off(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> T5Config:
        """Inverse of `to_dict`; unknown keys are an error so typos do not pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise UserError(f"T5Config: unknown field {extra[0]!r}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# Masks and relative positions.


def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable[[Array, Array], Array] = jnp.logical_and) -> Array:
    """[batch, q] x [batch, k] -> boolean mask [batch, 1, q, k]."""
    mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
    return mask[:, None, :, :].astype(jnp.bool_)


def make_key_mask(key_input: Array) -> Array:
    """[batch, k] -> boolean mask [batch, 1, 1, k]: every query may attend to the valid keys.

    Outputs at valid positions equal those under the [batch, 1, q, k] mask of padding on both
    sides (padded query rows are never read), at a fraction of the mask's size.
    """
    return key_input[:, None, None, :].astype(jnp.bool_)


def make_causal_mask(length: int) -> Array:
    """Boolean lower-triangular mask [1, 1, length, length]."""
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given masks, ignoring None."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def relative_position_buckets(query_length: int, key_length: int, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket ids [query_length, key_length] of T5's relative attention (Mesh TF's scheme).

    Offsets below half the (per-direction) buckets get their own bucket; larger ones share
    logarithmically wider buckets up to `max_distance`. Computed in numpy at trace time with the
    same float32 arithmetic as the reference implementations so bucket edges agree exactly.
    """
    context = np.arange(query_length, dtype=np.int64)[:, None]
    memory = np.arange(key_length, dtype=np.int64)[None, :]
    relative = memory - context
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).astype(np.int64) * num_buckets
        distance = np.abs(relative)
    else:
        distance = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    with np.errstate(divide="ignore"):  # log(0) only where is_small selects the exact bucket
        scaled = (np.log(distance.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact))
                  * np.float32(num_buckets - max_exact))
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(is_small, distance, large)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Layers.


def _param(module: nn.Module, name: str, init: Callable[..., Array], shape: Sequence[int],
           axes: tuple[str, ...]) -> Array:
    """A float32 parameter annotated with logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape),
                        jnp.float32)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, statistics in float32."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
                                  + _LAYER_NORM_EPSILON)
        return (x32 * scale).astype(self.dtype)


class Dense(nn.Module):
    """Bias-free projection of the last axis with a 2-D kernel [in, features], computed in
    `dtype`; `float32_result` returns the float32 accumulator instead of rounding it."""

    features: int
    kernel_axes: tuple[str, str]
    kernel_init: Callable[..., Array]
    dtype: Any = jnp.float32
    float32_result: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.kernel_axes)
        y = matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        return y if self.float32_result else y.astype(self.dtype)


class Embed(nn.Module):
    """Token embedding, shared by encoder, decoder and (optionally) the output layer."""

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                                (self.num_embeddings, self.features), ("vocab", "embed"))

    def __call__(self, tokens: Array) -> Array:
        out = jnp.take(self.embedding, tokens.astype(jnp.int32), axis=0).astype(self.dtype)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))

    def attend(self, query: Array) -> Array:
        """Logits against every embedding row, in float32 for a stable softmax."""
        return jnp.dot(query.astype(jnp.float32), self.embedding.T.astype(jnp.float32))


class RelativePositionBias(nn.Module):
    """One learned bias per (head, bucket), shared by all layers of a stack."""

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query_length: int, key_length: int) -> Array:
        """Returns the attention bias [1, heads, query_length, key_length]."""
        table = _param(self, "rel_embedding",
                       nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                       (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
        buckets = relative_position_buckets(query_length, key_length, self.bidirectional,
                                            self.num_buckets, self.max_distance)
        bias = jnp.take(table, jnp.asarray(buckets), axis=1)
        return bias[None].astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention without the 1/sqrt(d) logit scaling (it is folded into the query
    initialisation, as in T5X; HF T5 does the same), with an optional incremental KV cache.

    With `decode=True` the first call (when no cache exists, e.g. inside `init`) sizes the
    cache from the full-length input; later calls take one token at a time and attend to the
    cached keys and values.
    """

    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    float32_logits: bool = True

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None,
                 bias: Array | None = None, *, deterministic: bool = True,
                 decode: bool = False) -> Array:
        joined = self.num_heads * self.head_dim
        kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

        def query_init(*args: Any) -> Array:
            return kernel_init(*args) / math.sqrt(self.head_dim)

        def project(name: str, x: Array, init: Callable[..., Array]) -> Array:
            y = Dense(joined, ("embed", "joined_kv"), init, self.dtype, name=name)(x)
            y = y.reshape(*x.shape[:-1], self.num_heads, self.head_dim)
            return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

        query = project("query", inputs_q, query_init)
        key = project("key", inputs_kv, kernel_init)
        value = project("value", inputs_kv, kernel_init)

        if decode:
            key, value, mask, bias = self._use_cache(key, value, mask, bias)

        if self.float32_logits:
            query, key = query.astype(jnp.float32), key.astype(jnp.float32)
        # Heads before positions ([b, h, l, d]) for both products, and the softmax normalised
        # after the product with the values (dividing [.., q, d] rather than [.., q, k]): on
        # CPU, XLA's batched dots are slow with the batch axes apart; together about 2x faster
        # attention at 256 tokens, the same maths (outputs agree to float rounding).
        query, key, value = (x.transpose(0, 2, 1, 3) for x in (query, key, value))
        logits = jnp.einsum("bhqd,bhkd->bhqk", query, key)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.asarray(_MASKED_BIAS, logits.dtype))
        if bias is not None:
            logits = logits + bias.astype(logits.dtype)
        logits = logits.astype(jnp.float32)
        weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
        total = weights.sum(axis=-1, keepdims=True)
        weights = nn.Dropout(self.dropout_rate)(weights.astype(self.dtype),
                                                deterministic=deterministic)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, value.astype(self.dtype),
                         preferred_element_type=jnp.float32)  # see models.matmul
        out = (out / total).astype(self.dtype)
        out = nn.with_logical_constraint(out.transpose(0, 2, 1, 3), ("batch", "length", "heads", "kv"))
        out = out.reshape(*out.shape[:-2], joined)
        return Dense(inputs_q.shape[-1], ("joined_kv", "embed"), kernel_init, self.dtype,
                     name="out")(out)

    def _use_cache(self, key: Array, value: Array, mask: Array | None, bias: Array | None
                   ) -> tuple[Array, Array, Array | None, Array | None]:
        """Stores one step's key/value in the cache and returns what the step attends to."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                     value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:
            # Cache creation pass: behave like a plain full-sequence call.
            return key, value, mask, bias
        batch, max_length, heads, head_dim = cached_key.value.shape
        if key.shape != (batch, 1, heads, head_dim):
            raise ValueError(f"decode step expects one token per row, cache {cached_key.value.shape}"
                             f" got key {key.shape}")
        if bias is not None and bias.shape[-1] != max_length:
            raise ValueError(f"decode step bias covers {bias.shape[-1]} positions, cache holds "
                             f"{max_length}: pass max_decode_length={max_length}")
        index = cache_index.value
        key = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                           (0, index, 0, 0))
        value = jax.lax.dynamic_update_slice(cached_value.value,
                                             value.astype(cached_value.value.dtype),
                                             (0, index, 0, 0))
        cached_key.value, cached_value.value = key, value
        cache_index.value = index + 1
        # Attend to every position written so far (this step's included), nothing later.
        step_mask = (jnp.arange(max_length) <= index)[None, None, None, :]
        mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
        if bias is not None:
            bias = jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
        return key, value, mask, bias


class MlpBlock(nn.Module):
    """Feed-forward block: product of activated input projections, then the output projection."""

    intermediate_dim: int
    activations: tuple[str, ...]
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        hidden = None
        for i, name in enumerate(self.activations):
            # T5X names the single projection `wi` and gated ones `wi_0`, `wi_1`, ...
            dense_name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            h = _ACTIVATIONS[name](Dense(self.intermediate_dim, ("embed", "mlp"), init,
                                         self.dtype, float32_result=True, name=dense_name)(x))
            hidden = h if hidden is None else hidden * h
        # Activations and their product in float32, rounded to the activation dtype once.
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            hidden.astype(self.dtype), deterministic=deterministic)
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        return Dense(x.shape[-1], ("mlp", "embed"), init, self.dtype, name="wo")(hidden)


def _residual_dropout(config: T5Config, x: Array, deterministic: bool) -> Array:
    return nn.Dropout(config.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


def _attention(config: T5Config, name: str) -> MultiHeadAttention:
    return MultiHeadAttention(num_heads=config.num_heads, head_dim=config.head_dim,
                              dtype=config.activation_dtype, dropout_rate=config.dropout_rate,
                              float32_logits=config.float32_attention_logits, name=name)


def _mlp(config: T5Config) -> MlpBlock:
    return MlpBlock(intermediate_dim=config.mlp_dim, activations=config.mlp_activations,
                    dropout_rate=config.dropout_rate, dtype=config.activation_dtype, name="mlp")


def _constrain(x: Array) -> Array:
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _adapt(config: T5Config, y: Array, name: str) -> Array:
    return adapters.adapt(y, config.adapter_reduction, config.activation_dtype, f"{name}_adapter")


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and MLP sublayers with residuals."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, bias: Array, *,
                 deterministic: bool) -> Array:
        cfg = self.config
        y = RMSNorm(cfg.activation_dtype, name="pre_attention_layer_norm")(x)
        y = _attention(cfg, "attention")(y, y, mask, bias, deterministic=deterministic)
        y = _adapt(cfg, y, "attention")
        x = _constrain(x + _residual_dropout(cfg, y, deterministic))
        y = RMSNorm(cfg.activation_dtype, name="pre_mlp_layer_norm")(x)
        y = _adapt(cfg, _mlp(cfg)(y, deterministic=deterministic), "mlp")
        return _constrain(x + _residual_dropout(cfg, y, deterministic))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and MLP sublayers with residuals."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, encoded: Array, decoder_mask: Array | None,
                 encoder_decoder_mask: Array | None, bias: Array, *, deterministic: bool,
                 decode: bool) -> Array:
        cfg = self.config
        y = RMSNorm(cfg.activation_dtype, name="pre_self_attention_layer_norm")(x)
        y = _attention(cfg, "self_attention")(y, y, decoder_mask, bias,
                                              deterministic=deterministic, decode=decode)
        y = _adapt(cfg, y, "self_attention")
        x = _constrain(x + _residual_dropout(cfg, y, deterministic))
        y = RMSNorm(cfg.activation_dtype, name="pre_cross_attention_layer_norm")(x)
        y = _attention(cfg, "encoder_decoder_attention")(y, encoded, encoder_decoder_mask,
                                                         deterministic=deterministic)
        x = _constrain(x + _residual_dropout(cfg, y, deterministic))
        y = RMSNorm(cfg.activation_dtype, name="pre_mlp_layer_norm")(x)
        y = _adapt(cfg, _mlp(cfg)(y, deterministic=deterministic), "mlp")
        return _constrain(x + _residual_dropout(cfg, y, deterministic))


def _relpos(config: T5Config, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(num_heads=config.num_heads,
                                num_buckets=config.relative_attention_num_buckets,
                                max_distance=config.relative_attention_max_distance,
                                bidirectional=bidirectional, dtype=config.activation_dtype,
                                name="relpos_bias")


class Encoder(nn.Module):
    """Embedding, encoder layers and the final norm."""

    config: T5Config
    shared_embedding: Embed

    @nn.compact
    def __call__(self, tokens: Array, mask: Array | None, *, deterministic: bool) -> Array:
        cfg = self.config
        length = tokens.shape[-1]
        # Relative positions need no absolute positions: offsets inside a packed segment are
        # the same as unpacked, and cross-segment pairs are masked out.
        bias = _relpos(cfg, bidirectional=True)(length, length)
        x = _residual_dropout(cfg, self.shared_embedding(tokens), deterministic)
        for i in range(cfg.num_encoder_layers):
            x = EncoderLayer(cfg, name=f"layers_{i}")(x, mask, bias, deterministic=deterministic)
        x = RMSNorm(cfg.activation_dtype, name="encoder_norm")(x)
        return _residual_dropout(cfg, x, deterministic)


class Decoder(nn.Module):
    """Embedding, decoder layers, final norm and the output layer (float32 logits)."""

    config: T5Config
    shared_embedding: Embed

    @nn.compact
    def __call__(self, encoded: Array, tokens: Array, decoder_mask: Array | None,
                 encoder_decoder_mask: Array | None, *, deterministic: bool, decode: bool,
                 max_decode_length: int | None) -> Array:
        cfg = self.config
        # In a decode step the query is one token; the bias covers the whole cache and the
        # attention layer picks the row of the current position.
        length = max_decode_length if decode and max_decode_length else tokens.shape[-1]
        bias = _relpos(cfg, bidirectional=False)(length, length)
        y = _residual_dropout(cfg, self.shared_embedding(tokens), deterministic)
        for i in range(cfg.num_decoder_layers):
            y = DecoderLayer(cfg, name=f"layers_{i}")(
                y, encoded, decoder_mask, encoder_decoder_mask, bias,
                deterministic=deterministic, decode=decode)
        y = RMSNorm(cfg.activation_dtype, name="decoder_norm")(y)
        y = _residual_dropout(cfg, y, deterministic)
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(y) / math.sqrt(cfg.emb_dim)
        else:
            logits = Dense(cfg.vocab_size, ("embed", "vocab"),
                           nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                           jnp.float32, name="logits_dense")(y)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
    """The T5 encoder-decoder. Token id 0 is padding (and the decoder's start token)."""

    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               enable_dropout: bool = False) -> Array:
        """Encoder hidden states after the final norm, [batch, length, emb_dim] in `dtype`."""
        tokens = encoder_input_tokens
        mask = make_key_mask(tokens > 0)
        if encoder_segment_ids is not None:
            mask = combine_masks(mask, make_attention_mask(encoder_segment_ids,
                                                           encoder_segment_ids, jnp.equal))
        return self.encoder(tokens, mask, deterministic=not enable_dropout)

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: int | None = None) -> Array:
        """Decoder logits [batch, target_length, vocab] in float32.

        Padding is read from `decoder_target_tokens` (the inputs start with id 0). With
        `decode=True` the `cache` collection must be mutable; pass the full-length inputs once
        to create it (e.g. in `init`), then one token per call with `max_decode_length` set to
        the cache length. `decoder_positions` is accepted for T5X compatibility and unused.
        """
        del decoder_positions  # relative attention only
        if decode:
            if encoder_segment_ids is not None or decoder_segment_ids is not None:
                raise ValueError("packed segment ids are not supported with decode=True")
            # The KV cache supplies causality and hides not-yet-written positions.
            decoder_mask = None
            encoder_decoder_mask = make_key_mask(encoder_input_tokens > 0)
        else:
            targets = decoder_target_tokens
            decoder_mask = combine_masks(make_key_mask(targets > 0),
                                         make_causal_mask(targets.shape[-1]))
            encoder_decoder_mask = make_key_mask(encoder_input_tokens > 0)
            if decoder_segment_ids is not None:
                decoder_mask = combine_masks(decoder_mask, make_attention_mask(
                    decoder_segment_ids, decoder_segment_ids, jnp.equal))
            if encoder_segment_ids is not None:
                if decoder_segment_ids is None:
                    raise ValueError("encoder_segment_ids given without decoder_segment_ids")
                encoder_decoder_mask = combine_masks(encoder_decoder_mask, make_attention_mask(
                    decoder_segment_ids, encoder_segment_ids, jnp.equal))
        return self.decoder(encoded, decoder_input_tokens, decoder_mask, encoder_decoder_mask,
                            deterministic=not enable_dropout, decode=decode,
                            max_decode_length=max_decode_length)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None,
                 encoder_positions: Array | None = None,
                 decoder_positions: Array | None = None, enable_dropout: bool = False,
                 decode: bool = False, max_decode_length: int | None = None) -> Array:
        """Logits [batch, target_length, vocab] (float32) for teacher-forced decoding.

        `decoder_input_tokens` is `decoder_target_tokens` shifted right with a leading 0 (per
        segment when packed). Positions are accepted for T5X compatibility and unused.
        """
        del encoder_positions  # relative attention only
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                           decoder_positions, enable_dropout, decode, max_decode_length)
