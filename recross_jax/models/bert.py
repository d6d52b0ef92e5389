"""BERT encoder (post-LN, absolute positions, token types) in Flax linen, with an HF importer.

Serves two roles: the all-MiniLM-L6-v2 sentence embedder (mean-pooled last hidden states) and the
backbone of the ReCross cross-encoder (a head on the [CLS] / pooled output of a
`(query, candidate)` pair whose halves differ by token type id).

Parameter names and logical axis names (the T5 module's, so `recross_jax.partitioning` rules
apply unchanged):

    embeddings/word_embeddings/embedding              [vocab, embed]
    embeddings/position_embeddings/embedding          [None, embed]
    embeddings/token_type_embeddings/embedding        [None, embed]
    embeddings/layer_norm/{scale,bias}                [embed]
    layers_i/attention/{query,key,value}/kernel       [embed, joined_kv]   (bias [joined_kv])
    layers_i/attention/out/kernel                     [joined_kv, embed]   (bias [embed])
    layers_i/attention_layer_norm/{scale,bias}        [embed]
    layers_i/mlp/wi/kernel                            [embed, mlp]         (bias [mlp])
    layers_i/mlp/wo/kernel                            [mlp, embed]         (bias [embed])
    layers_i/mlp_layer_norm/{scale,bias}              [embed]
    pooler/kernel, pooler/bias                        [None, embed], [embed] (with_pooler only)

`BertModel.init` returns parameters boxed in `nn.LogicallyPartitioned`; `load_hf_bert` returns
the same tree unboxed, as host float32 numpy arrays. Parameters are float32; activations are
computed in `BertConfig.dtype` with layer norms and the softmax in float32.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recross_jax.errors import UserError
from recross_jax.models import adapters
from recross_jax.models.matmul import matmul, rounded

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# HF activation names: "gelu" is BERT's exact erf GELU, the others its tanh approximation.
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}
# Additive bias for padding keys; finite so a fully padded row stays NaN-free.
_MASKED_BIAS = -1e10
# At inference, self-attention takes the queries a block at a time when its logits would exceed
# either bound: ATTENTION_BLOCK_BYTES over the batch, or ATTENTION_BLOCK_LOGITS per row and head
# (queries x keys). Measured on 2 CPU cores, 12 heads: batch 64, one pass is fastest up to 256
# tokens (201 MB of logits); at 512 tokens blocks of 128 queries are 2.6x faster. With 4096
# tokens a call (8 rows of 512, 12 of 320, 16 of 256), blocks of 128 queries at 512 tokens are
# 1.5x faster than one pass and of 160 at 320 1.4x, while at 256 one pass stays best.
ATTENTION_BLOCK_BYTES = 256 << 20
ATTENTION_BLOCK_LOGITS = 1 << 16


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a BERT encoder; field names follow HF's `config.json`.

    Attributes:
      vocab_size: number of token ids.
      hidden_size: model width d.
      num_hidden_layers: encoder depth.
      num_attention_heads: heads; must divide `hidden_size`.
      intermediate_size: hidden width of the feed-forward block.
      hidden_act: feed-forward activation, an HF name ('gelu' is the exact erf GELU).
      max_position_embeddings: rows of the absolute position table (longest input).
      type_vocab_size: rows of the token type table (2: the halves of a pair).
      layer_norm_eps: epsilon of every layer norm.
      hidden_dropout_prob: dropout on embeddings and sublayer outputs.
      attention_probs_dropout_prob: dropout on attention weights.
      pad_token_id: the padding id, used when no attention mask is given.
      dtype: activation dtype, 'float32' or 'bfloat16'; parameters are always float32.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"BertConfig.hidden_size ({self.hidden_size}) is not divisible by "
                            f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in _ACTIVATIONS:
            raise UserError(f"BertConfig.hidden_act: unsupported activation {self.hidden_act!r}; "
                            f"known: {sorted(_ACTIVATIONS)}")
        if self.dtype not in _DTYPES:
            raise UserError(f"BertConfig.dtype must be one of {sorted(_DTYPES)}, "
                            f"got {self.dtype!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if not self.layer_norm_eps > 0:
            raise UserError("BertConfig.layer_norm_eps must be positive, got "
                            f"{self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def activation_dtype(self) -> jnp.dtype:
        """The jnp dtype of activations."""
        return _DTYPES[self.dtype]

    @classmethod
    def from_hf_dict(cls, data: Mapping[str, Any], **overrides: Any) -> BertConfig:
        """A config from the fields of an HF BERT `config.json`; `overrides` win (e.g. dtype).

        Only `model_type` 'bert' with absolute positions is accepted: other architectures
        (RoBERTa's offset positions, relative position variants) would load but compute
        something else.
        """
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise UserError(f"not a BERT config: model_type={model_type!r}")
        position_type = data.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise UserError(f"unsupported position_embedding_type={position_type!r} "
                            "(only 'absolute')")
        fields = {f.name for f in dataclasses.fields(cls)} - {"dtype"}
        values = {k: v for k, v in data.items() if k in fields}
        if data.get("pad_token_id") is None:
            values.pop("pad_token_id", None)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str, **overrides: Any) -> BertConfig:
        """Reads an HF `config.json`; a missing or malformed file is a UserError naming it."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise UserError(f"cannot read BERT config {path}: {e.strerror}") from e
        except ValueError as e:
            raise UserError(f"BERT config {path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise UserError(f"BERT config {path} must hold a JSON object")
        try:
            return cls.from_hf_dict(data, **overrides)
        except (UserError, TypeError) as e:
            raise UserError(f"{path}: {e}") from e


@flax.struct.dataclass
class BertOutput:
    """What `BertModel` returns.

    Attributes:
      last_hidden_state: [batch, length, hidden] in the activation dtype.
      pooled_output: tanh(Dense([CLS] state)) [batch, hidden] ([batch, texts, hidden] for
        packed rows), or None without a pooler.
    """

    last_hidden_state: Array
    pooled_output: Array | None = None


# ---------------------------------------------------------------------------------------------
# Layers.


def _param(module: nn.Module, name: str, init: Callable[..., Array], shape: tuple[int, ...],
           axes: tuple[str | None, ...]) -> Array:
    """A float32 parameter annotated with logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


_KERNEL_INIT = nn.initializers.truncated_normal(stddev=0.02)  # BERT's initializer_range


class Dense(nn.Module):
    """Affine projection of the last axis, kernel [in, features] and bias [features], then an
    optional activation; the bias and the activation apply to the float32 accumulator, before
    the one cast to `dtype`."""

    features: int
    kernel_axes: tuple[str | None, str | None]
    dtype: Any = jnp.float32
    activation: Callable[[Array], Array] | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = _param(self, "kernel", _KERNEL_INIT, (x.shape[-1], self.features),
                        self.kernel_axes)
        bias = _param(self, "bias", nn.initializers.zeros, (self.features,),
                      (self.kernel_axes[1],))
        y = matmul(x.astype(self.dtype), kernel.astype(self.dtype)) + bias
        if self.activation is not None:
            y = rounded(self.activation(y), self.dtype)  # one fusion for bias and activation
        return y.astype(self.dtype)


class LayerNorm(nn.Module):
    """Layer norm with scale and bias; statistics in float32."""

    epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        bias = _param(self, "bias", nn.initializers.zeros, (x.shape[-1],), ("embed",))
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale + bias).astype(self.dtype)


class Embed(nn.Module):
    """A lookup table [num_embeddings, features]."""

    num_embeddings: int
    features: int
    row_axis: str | None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: Array) -> Array:
        table = _param(self, "embedding", _KERNEL_INIT, (self.num_embeddings, self.features),
                       (self.row_axis, "embed"))
        return jnp.take(table, ids.astype(jnp.int32), axis=0).astype(self.dtype)


def _constrain(x: Array) -> Array:
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _constrain_tokens(x: Array) -> Array:
    """Constrains [batch * length, features] hidden states, flattened with batch outermost."""
    return nn.with_logical_constraint(x, ("batch", "embed"))


class Embeddings(nn.Module):
    """Word + absolute position + token type embeddings, then layer norm and dropout."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, position_ids: Array, token_type_ids: Array, *,
                 deterministic: bool) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        x = (Embed(cfg.vocab_size, cfg.hidden_size, "vocab", dtype, name="word_embeddings")(
                input_ids)
             + Embed(cfg.max_position_embeddings, cfg.hidden_size, None, dtype,
                     name="position_embeddings")(position_ids)
             + Embed(cfg.type_vocab_size, cfg.hidden_size, None, dtype,
                     name="token_type_embeddings")(token_type_ids))
        x = LayerNorm(cfg.layer_norm_eps, dtype, name="layer_norm")(x)
        return _constrain(nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic))


def query_blocks(batch: int, heads: int, length: int) -> int:
    """How many blocks to split the queries of self-attention over `length` tokens into: the
    fewest (a divisor of `length`) that keep one block's float32 logits [batch, heads, block,
    length] within `ATTENTION_BLOCK_BYTES` and each row and head's [block, length] within
    `ATTENTION_BLOCK_LOGITS`."""
    for blocks in range(1, length + 1):
        size = length // blocks
        if (length % blocks == 0 and size * length <= ATTENTION_BLOCK_LOGITS
                and batch * heads * size * length * 4 <= ATTENTION_BLOCK_BYTES):
            return blocks
    return length


class SelfAttention(nn.Module):
    """Multi-head self-attention with 1/sqrt(head_dim) scaling, over flattened hidden states.

    `tokens` is [batch * length, hidden] (rows outermost); `bias` is float32 [batch, 1, 1 or
    length, length]: 0 where a query may attend to a key, a large negative number where not.
    Returns [batch * length, hidden].
    """

    config: BertConfig

    @nn.compact
    def __call__(self, tokens: Array, bias: Array, *, deterministic: bool) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        batch, length = bias.shape[0], bias.shape[-1]

        def project(name: str) -> Array:
            y = Dense(cfg.hidden_size, ("embed", "joined_kv"), dtype, name=name)(tokens)
            y = y.reshape(batch, length, cfg.num_attention_heads, cfg.head_dim)
            return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

        query, key, value = project("query"), project("key"), project("value")
        # Both products take activation-dtype operands and accumulate in float32 (see
        # models.matmul); logits and softmax are float32: bf16 logits lose the small
        # differences that matter.
        # Scaling the queries rather than the logits costs length/head_dim times less.
        query = (query.astype(jnp.float32) * (1.0 / math.sqrt(cfg.head_dim))).astype(dtype)
        # Values laid out [b, h, k, d], and the softmax normalised after the product with them
        # (dividing [.., q, d] rather than [.., q, k]): on CPU this cuts the attention time of
        # 256-token rows about fivefold.
        value = value.transpose(0, 2, 1, 3)

        def softmax_parts(q: Array, bias_rows: Array) -> tuple[Array, Array]:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, key,
                                preferred_element_type=jnp.float32) + bias_rows
            weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
            return weights, weights.sum(axis=-1, keepdims=True)

        def weighted_values(weights: Array, total: Array) -> Array:
            out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(dtype), value,
                             preferred_element_type=jnp.float32)
            return (out / total).astype(dtype)

        blocks = 1 if not deterministic else query_blocks(batch, cfg.num_attention_heads, length)
        if blocks == 1:
            weights, total = softmax_parts(query, bias)
            weights = nn.Dropout(cfg.attention_probs_dropout_prob)(weights.astype(dtype),
                                                                   deterministic=deterministic)
            out = weighted_values(weights, total)
        else:
            # Long rows at inference: the queries in blocks, one after another, so each block's
            # logits stay small enough to be cache-friendly (same numbers, about 2.6x faster
            # at 512 tokens on CPU).
            size = length // blocks
            q_blocks = query.reshape(batch, blocks, size, *query.shape[2:]).swapaxes(0, 1)
            bias_blocks = (bias.reshape(batch, 1, blocks, size, length).transpose(2, 0, 1, 3, 4)
                           if bias.shape[2] > 1 else jnp.broadcast_to(bias, (blocks, *bias.shape)))

            out = jax.lax.map(lambda args: weighted_values(*softmax_parts(*args)),
                              (q_blocks, bias_blocks))  # [blocks, b, h, size, d]
            out = out.transpose(1, 2, 0, 3, 4).reshape(batch, cfg.num_attention_heads, length, -1)
        out = out.transpose(0, 2, 1, 3)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out = out.reshape(batch * length, cfg.hidden_size)
        return Dense(cfg.hidden_size, ("joined_kv", "embed"), dtype, name="out")(out)


class Mlp(nn.Module):
    """Feed-forward block: Dense → activation → Dense, on [batch * length, hidden]."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        hidden = Dense(cfg.intermediate_size, ("embed", "mlp"), cfg.activation_dtype,
                       _ACTIVATIONS[cfg.hidden_act], name="wi")(x)
        hidden = nn.with_logical_constraint(hidden, ("batch", "mlp"))
        return Dense(cfg.hidden_size, ("mlp", "embed"), cfg.activation_dtype, name="wo")(hidden)


class Layer(nn.Module):
    """One post-LN encoder layer over [batch * length, hidden]: x = LN(x + Attn(x));
    x = LN(x + Mlp(x)), with an adapter on each sublayer's output when `adapter_reduction` is
    set (`recross_jax.models.adapters`)."""

    config: BertConfig
    adapter_reduction: int | None = None

    @nn.compact
    def __call__(self, x: Array, bias: Array, *, deterministic: bool) -> Array:
        cfg = self.config
        dropout = nn.Dropout(cfg.hidden_dropout_prob)
        y = SelfAttention(cfg, name="attention")(x, bias, deterministic=deterministic)
        y = adapters.adapt(y, self.adapter_reduction, cfg.activation_dtype, "attention_adapter")
        x = LayerNorm(cfg.layer_norm_eps, cfg.activation_dtype, name="attention_layer_norm")(
            x + dropout(y, deterministic=deterministic))
        y = Mlp(cfg, name="mlp")(_constrain_tokens(x))
        y = adapters.adapt(y, self.adapter_reduction, cfg.activation_dtype, "mlp_adapter")
        x = LayerNorm(cfg.layer_norm_eps, cfg.activation_dtype, name="mlp_layer_norm")(
            x + dropout(y, deterministic=deterministic))
        return _constrain_tokens(x)


class BertModel(nn.Module):
    """The BERT encoder.

    Attributes:
      config: the hyperparameters.
      with_pooler: also compute tanh(Dense(h[CLS])), the input of BERT's classification heads.
      adapter_reduction: adapters in every layer (see `Layer`); None: none.
    """

    config: BertConfig
    with_pooler: bool = False
    adapter_reduction: int | None = None

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None, position_ids: Array | None = None,
                 segment_ids: Array | None = None, cls_index: Array | None = None, *,
                 deterministic: bool = True) -> BertOutput:
        """Encodes a batch.

        Args:
          input_ids: int [batch, length], at most `max_position_embeddings` long.
          attention_mask: [batch, length], nonzero where a token is real; default: where
            `segment_ids` is nonzero, else where the id is not `pad_token_id`.
          token_type_ids: int [batch, length]; default all 0 (a single segment).
          position_ids: int [batch, length]; default 0, 1, 2, ... along each row.
          segment_ids: int [batch, length] for packed rows: several texts per row, each with
            its own id (> 0), that attend only within themselves; pass `position_ids` that
            restart at 0 for each text. Default: one text per row.
          cls_index: int [batch, texts], with `with_pooler`: the positions of the tokens to
            pool (each packed text's [CLS]); default: each row's first token.
          deterministic: disable dropout (pass False and a 'dropout' rng to train).
        Returns:
          The hidden states of the last layer and, with `with_pooler`, the pooled output
          ([batch, hidden], or [batch, texts, hidden] with `cls_index`).
        """
        cfg = self.config
        if input_ids.shape[-1] > cfg.max_position_embeddings:
            raise ValueError(f"input length {input_ids.shape[-1]} exceeds "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = (input_ids != cfg.pad_token_id if segment_ids is None
                              else segment_ids != 0)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        mask = attention_mask.astype(jnp.bool_)[:, None, None, :]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        # Built once for all layers.
        bias = jnp.where(mask, 0.0, _MASKED_BIAS).astype(jnp.float32)
        x = Embeddings(cfg, name="embeddings")(input_ids, position_ids, token_type_ids,
                                               deterministic=deterministic)
        # The layers work on [batch * length, hidden]: XLA's CPU elementwise fusions (GELU,
        # residuals, layer norms) around the matmuls run faster over 2-D arrays (a MiniLM
        # layer on 16 x 256 tokens: 96 vs 103 ms).
        tokens = x.reshape(-1, cfg.hidden_size)
        for i in range(cfg.num_hidden_layers):
            tokens = Layer(cfg, self.adapter_reduction, name=f"layers_{i}")(
                tokens, bias, deterministic=deterministic)
        x = _constrain(tokens.reshape(x.shape))
        pooled = None
        if self.with_pooler:
            first = (x[:, 0] if cls_index is None
                     else jnp.take_along_axis(x, cls_index[..., None].astype(jnp.int32), axis=1))
            pooled = jnp.tanh(Dense(cfg.hidden_size, (None, "embed"), cfg.activation_dtype,
                                    name="pooler")(first))
        return BertOutput(last_hidden_state=x, pooled_output=pooled)


# ---------------------------------------------------------------------------------------------
# Import of HF weights.


def hf_weight_names(config: BertConfig, with_pooler: bool = False) -> dict[str, tuple[str, ...]]:
    """Maps each HF `BertModel` weight name to the path of our parameter it fills.

    HF Linear weights are [out, in] and become our [in, out] kernels (see `load_hf_bert`).
    """
    names: dict[str, tuple[str, ...]] = {}

    def add(hf: str, ours: tuple[str, ...], kind: str) -> None:
        suffix = {"linear": ("weight", "kernel"), "embed": ("weight", "embedding"),
                  "norm": ("weight", "scale")}[kind]
        names[f"{hf}.{suffix[0]}"] = ours + (suffix[1],)
        if kind != "embed":
            names[f"{hf}.bias"] = ours + ("bias",)

    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        add(f"embeddings.{table}", ("embeddings", table), "embed")
    add("embeddings.LayerNorm", ("embeddings", "layer_norm"), "norm")
    for i in range(config.num_hidden_layers):
        hf, ours = f"encoder.layer.{i}", (f"layers_{i}",)
        for proj in ("query", "key", "value"):
            add(f"{hf}.attention.self.{proj}", ours + ("attention", proj), "linear")
        add(f"{hf}.attention.output.dense", ours + ("attention", "out"), "linear")
        add(f"{hf}.attention.output.LayerNorm", ours + ("attention_layer_norm",), "norm")
        add(f"{hf}.intermediate.dense", ours + ("mlp", "wi"), "linear")
        add(f"{hf}.output.dense", ours + ("mlp", "wo"), "linear")
        add(f"{hf}.output.LayerNorm", ours + ("mlp_layer_norm",), "norm")
    if with_pooler:
        add("pooler.dense", ("pooler",), "linear")
    return names


_BACKBONE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
# Weights a BertModel checkpoint may hold that carry nothing we compute with.
_IGNORED = ("embeddings.position_ids",)


def load_hf_bert(safetensors_path: str, config: BertConfig, with_pooler: bool = False
                 ) -> dict[str, Any]:
    """Reads an HF BERT safetensors file into `BertModel`'s (unboxed) parameter tree.

    Accepts the bare `BertModel` names and the `bert.`-prefixed ones of the task models
    (e.g. `BertForSequenceClassification`, whose head weights are left to the caller). The
    arrays are float32 numpy on the host; `jax.device_put` them with the shardings wanted.

    Raises:
      UserError: unreadable file, or a backbone weight missing, unexpected (a config with
        fewer layers than the checkpoint) or of the wrong shape; the message names it.
    """
    from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
        tensors = load_file(safetensors_path)
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot read BERT weights {safetensors_path}: {e}") from e
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    expected = hf_weight_names(config, with_pooler)
    shapes = _expected_shapes(config, with_pooler)
    params: dict[str, Any] = {}
    for hf_name, path in expected.items():
        name = prefix + hf_name
        if name not in tensors:
            raise UserError(f"{safetensors_path}: missing weight {name!r}")
        is_kernel = path[-1] == "kernel"
        want = _lookup(shapes, path)
        want_hf = want[::-1] if is_kernel else want
        if tensors[name].shape != want_hf:
            raise UserError(f"{safetensors_path}: weight {name!r} has shape "
                            f"{tensors[name].shape}, the config needs {want_hf}")
        array = np.asarray(tensors[name], dtype=np.float32)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(array.T if is_kernel else array)
    for name in sorted(tensors):
        bare = name[len(prefix):]
        if (name.startswith(prefix) and bare.startswith(_BACKBONE_PREFIXES)
                and bare not in expected and bare not in _IGNORED
                and not (bare.startswith("pooler.") and not with_pooler)):
            raise UserError(f"{safetensors_path}: unexpected weight {name!r} (does the config "
                            "match the checkpoint?)")
    return params


def _expected_shapes(config: BertConfig, with_pooler: bool) -> Mapping[str, Any]:
    """Shapes of `BertModel`'s parameters, traced without allocating them."""
    model = BertModel(config, with_pooler=with_pooler)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i), ids)
    return jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(abstract["params"]))


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree
