"""BERT2BERT (Rothe, Narayan & Severyn, TACL 2020): an encoder-decoder of BERT layers, both stacks
warm-started from one BERT checkpoint (here all-MiniLM-L6-v2), in Flax linen.

The network is `transformers.EncoderDecoderModel` with a `BertModel` encoder and a
`BertLMHeadModel` decoder (`is_decoder=True, add_cross_attention=True`): post-LN layers, absolute
position and token type embeddings in both stacks (nothing shared between them), a causal decoder
self-attention, a cross-attention sublayer after it in every decoder layer, and BERT's LM head
(dense + activation + layer norm, then the decoder's word embeddings transposed plus a bias).

`Transformer` has `recross_jax.models.t5.Transformer`'s interface and T5X's conventions, so the
stages can take either family: id 0 is padding, and a decoder input id 0 is the decoder's start
token, embedded as BERT's `decoder_start_token_id` ([CLS], 101 in MiniLM's vocabulary); EOS is
[SEP] (102) at the vocabulary level (`recross_jax/wordpiece.py`); the KV cache lives in the `cache`
collection. Parameter names (logical axes as in `recross_jax.models.bert`):

    encoder/...                                         a `bert.BertModel` (no pooler)
    decoder/embeddings/...                              as `bert.Embeddings`
    decoder/layers_i/{attention,cross_attention}/{query,key,value,out}/{kernel,bias}
    decoder/layers_i/{attention,cross_attention,mlp}_layer_norm/{scale,bias}
    decoder/layers_i/mlp/{wi,wo}/{kernel,bias}
    decoder/lm_head/transform/{kernel,bias}             [None, embed], [embed]
    decoder/lm_head/transform_layer_norm/{scale,bias}   [embed]
    decoder/lm_head/bias                                [vocab] (the weights are the embeddings)
    {encoder,decoder}/layers_i/{attention,mlp}_adapter/{down,up}/{kernel,bias}
                                                        (only with `adapter_reduction` set)

`warm_start_from_bert` builds the parameters from a BERT safetensors file; `from_hf_encoder_decoder`
converts an `EncoderDecoderModel` state dict (the parity tests' reference).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recross_jax.errors import UserError
from recross_jax.models import adapters, bert
from recross_jax.models.matmul import matmul

Array = jax.Array

FAMILY = "bert2bert"
# BERT's initializer_range: HF draws new Linear kernels from N(0, 0.02).
_INIT_STDDEV = 0.02


@dataclasses.dataclass(frozen=True)
class Bert2BertConfig:
    """Hyperparameters of BERT2BERT; defaults are all-MiniLM-L6-v2's sizes.

    Attributes:
      vocab_size: number of token ids (embedding rows of both stacks, output rows).
      hidden_size: model width d.
      num_encoder_layers: encoder depth.
      num_decoder_layers: decoder depth.
      num_attention_heads: heads; must divide `hidden_size`.
      intermediate_size: hidden width of the feed-forward blocks.
      hidden_act: feed-forward and LM head activation, an HF name ('gelu': exact erf GELU).
      max_position_embeddings: rows of the position tables (longest input or target).
      type_vocab_size: rows of the token type tables (only type 0 is used).
      layer_norm_eps: epsilon of every layer norm.
      hidden_dropout_prob: dropout on embeddings and sublayer outputs.
      attention_probs_dropout_prob: dropout on attention weights.
      decoder_start_token_id: the id embedded where the decoder input holds 0 ([CLS]).
      dtype: activation dtype, 'float32' or 'bfloat16'; parameters are always float32.
      family: 'bert2bert', so a stored `model_config.json` says which network it describes.
      adapter_reduction: with r set, ELM's bottleneck adapter (width hidden_size / r) after
        every self-attention and MLP sublayer of both stacks (`recross_jax.models.adapters`).
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    decoder_start_token_id: int = 101
    dtype: str = "float32"
    family: str = FAMILY
    adapter_reduction: int | None = None

    @property
    def width(self) -> int:
        """The width of the encoder's hidden states (what the index embedder mean-pools)."""
        return self.hidden_size

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise UserError(f"Bert2BertConfig.family must be {FAMILY!r}, got {self.family!r}")
        try:  # BertConfig validates sizes, activation, dtype, dropout and epsilon
            self._bert_config(self.num_encoder_layers)
            self._bert_config(self.num_decoder_layers)
        except UserError as e:
            raise UserError(str(e).replace("BertConfig.", "Bert2BertConfig.")) from e
        start = self.decoder_start_token_id
        if isinstance(start, bool) or not isinstance(start, int) or not 0 < start < self.vocab_size:
            # 0 is padding, which the decoder input uses to mean "start".
            raise UserError("Bert2BertConfig.decoder_start_token_id must be an id in "
                            f"[1, vocab_size), got {start!r}")
        adapters.check_reduction(self.adapter_reduction, self.hidden_size, "Bert2BertConfig")

    def _bert_config(self, num_layers: int) -> bert.BertConfig:
        return bert.BertConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size, hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size, layer_norm_eps=self.layer_norm_eps,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob, pad_token_id=0,
            dtype=self.dtype)

    @property
    def encoder_config(self) -> bert.BertConfig:
        """The encoder stack as a `BertConfig`."""
        return self._bert_config(self.num_encoder_layers)

    @property
    def decoder_config(self) -> bert.BertConfig:
        """The decoder stack as a `BertConfig`."""
        return self._bert_config(self.num_decoder_layers)

    @property
    def activation_dtype(self) -> jnp.dtype:
        """The jnp dtype of activations."""
        return self.encoder_config.activation_dtype

    @classmethod
    def from_bert_config(cls, config: bert.BertConfig, **overrides: Any) -> Bert2BertConfig:
        """Both stacks shaped like `config` (e.g. a checkpoint's); `overrides` win."""
        values = {name: getattr(config, name) for name in (
            "vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
            "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "dtype")}
        values.update(num_encoder_layers=config.num_hidden_layers,
                      num_decoder_layers=config.num_hidden_layers)
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, `family` included (the adapter field only when set)."""
        return adapters.omit_when_off(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Bert2BertConfig:
        """Inverse of `to_dict`; unknown keys are an error so typos do not pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise UserError(f"Bert2BertConfig: unknown field {extra[0]!r}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# Layers.


def _bias(mask: Array) -> Array:
    """Boolean mask -> float32 additive attention bias."""
    return jnp.where(mask, 0.0, bert._MASKED_BIAS).astype(jnp.float32)


def segment_positions(segment_ids: Array) -> Array:
    """Positions that restart at 0 where the segment id changes along each row [batch, length].

    Packed rows need them for absolute position embeddings; callers that pack without positions
    (T5's relative attention never needed them) get the right ones this way.
    """
    length = segment_ids.shape[-1]
    index = jnp.broadcast_to(jnp.arange(length), segment_ids.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


class Attention(nn.Module):
    """BERT's multi-head attention with queries from `inputs_q` [batch, q, d] and keys and values
    from `inputs_kv` [batch, k, d], plus an optional incremental KV cache (the `cache` collection,
    as `t5.MultiHeadAttention`: the first `decode=True` call sizes it from full-length inputs, later
    calls take one token). `bias` is float32 [batch or 1, 1, q or 1, k], or None."""

    config: bert.BertConfig

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array | None, *,
                 deterministic: bool, decode: bool = False) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype

        def project(name: str, x: Array) -> Array:
            y = bert.Dense(cfg.hidden_size, ("embed", "joined_kv"), dtype, name=name)(x)
            y = y.reshape(*x.shape[:-1], cfg.num_attention_heads, cfg.head_dim)
            return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

        query, key, value = (project("query", inputs_q), project("key", inputs_kv),
                             project("value", inputs_kv))
        if decode:
            key, value, bias = self._use_cache(key, value, bias)
        # As bert.SelfAttention: scaled queries, float32 logits and softmax, the softmax
        # normalised after the product with the values.
        query = (query.astype(jnp.float32) * (1.0 / math.sqrt(cfg.head_dim))).astype(dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias
        weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
        total = weights.sum(axis=-1, keepdims=True)
        weights = nn.Dropout(cfg.attention_probs_dropout_prob)(weights.astype(dtype),
                                                               deterministic=deterministic)
        # Values laid out [b, h, k, d] for the product, as in bert.SelfAttention (faster on CPU).
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, value.transpose(0, 2, 1, 3),
                         preferred_element_type=jnp.float32)
        out = (out / total).astype(dtype).transpose(0, 2, 1, 3)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out = out.reshape(*out.shape[:2], cfg.hidden_size)
        return bert.Dense(cfg.hidden_size, ("joined_kv", "embed"), dtype, name="out")(out)

    def _use_cache(self, key: Array, value: Array, bias: Array | None
                   ) -> tuple[Array, Array, Array | None]:
        """Stores one step's key and value; returns what the step attends to."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                     value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:  # cache creation pass: a plain full-length call
            return key, value, bias
        batch, max_length, heads, head_dim = cached_key.value.shape
        if key.shape != (batch, 1, heads, head_dim):
            raise ValueError(f"decode step expects one token per row, cache "
                             f"{cached_key.value.shape} got key {key.shape}")
        index = cache_index.value
        key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
        value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
        cached_key.value, cached_value.value = key, value
        cache_index.value = index + 1
        # Every position written so far, this step's included, and nothing later.
        step_bias = _bias(jnp.arange(max_length) <= index)[None, None, None, :]
        return key, value, step_bias if bias is None else bias + step_bias


def _constrain(x: Array) -> Array:
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    """HF's BertLayer with cross-attention, post-LN: x = LN(x + SelfAttn(x));
    x = LN(x + CrossAttn(x, encoded)); x = LN(x + Mlp(x)), with an adapter on the self-attention
    and MLP outputs when `adapter_reduction` is set."""

    config: bert.BertConfig
    adapter_reduction: int | None = None

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_bias: Array | None, cross_bias: Array, *,
                 deterministic: bool, decode: bool) -> Array:
        cfg = self.config
        dropout = nn.Dropout(cfg.hidden_dropout_prob)

        def norm(name: str, y: Array) -> Array:
            return bert.LayerNorm(cfg.layer_norm_eps, cfg.activation_dtype, name=name)(y)

        y = Attention(cfg, name="attention")(x, x, self_bias, deterministic=deterministic,
                                             decode=decode)
        y = adapters.adapt(y, self.adapter_reduction, cfg.activation_dtype, "attention_adapter")
        x = _constrain(norm("attention_layer_norm", x + dropout(y, deterministic=deterministic)))
        y = Attention(cfg, name="cross_attention")(x, encoded, cross_bias,
                                                   deterministic=deterministic)
        x = _constrain(norm("cross_attention_layer_norm",
                            x + dropout(y, deterministic=deterministic)))
        # bert.Mlp works on flattened [batch * length, hidden] tokens.
        y = bert.Mlp(cfg, name="mlp")(x.reshape(-1, cfg.hidden_size)).reshape(x.shape)
        y = adapters.adapt(y, self.adapter_reduction, cfg.activation_dtype, "mlp_adapter")
        return _constrain(norm("mlp_layer_norm", x + dropout(y, deterministic=deterministic)))


class LmHead(nn.Module):
    """BertLMHeadModel's head: dense + activation + layer norm, then float32 logits against the
    (tied) word embeddings plus a per-token bias."""

    config: bert.BertConfig

    @nn.compact
    def __call__(self, x: Array, embedding: Array) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        x = bert.Dense(cfg.hidden_size, (None, "embed"), dtype,
                       bert._ACTIVATIONS[cfg.hidden_act], name="transform")(x)
        x = bert.LayerNorm(cfg.layer_norm_eps, dtype, name="transform_layer_norm")(x)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), jnp.float32)
        logits = matmul(x, embedding.T.astype(dtype)) + bias
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Decoder(nn.Module):
    """Embeddings (start id mapped), decoder layers and the LM head; float32 logits."""

    config: Bert2BertConfig

    @nn.compact
    def __call__(self, encoded: Array, tokens: Array, positions: Array | None,
                 self_bias: Array | None, cross_bias: Array, *, deterministic: bool,
                 decode: bool) -> Array:
        cfg = self.config
        bert_cfg = cfg.decoder_config
        if positions is None:
            positions = self._default_positions(tokens, decode)
        # Id 0 is never a real token: at a (segment) start it is the T5X start token, elsewhere
        # padding, whose keys are masked and whose outputs nobody reads.
        ids = jnp.where(tokens == 0, cfg.decoder_start_token_id, tokens)
        embeddings = bert.Embeddings(bert_cfg, name="embeddings")
        x = embeddings(ids, positions, jnp.zeros_like(ids), deterministic=deterministic)
        for i in range(cfg.num_decoder_layers):
            x = DecoderLayer(bert_cfg, cfg.adapter_reduction, name=f"layers_{i}")(
                x, encoded, self_bias, cross_bias, deterministic=deterministic, decode=decode)
        table = nn.unbox(embeddings.variables["params"]["word_embeddings"]["embedding"])
        return LmHead(bert_cfg, name="lm_head")(x, table)

    def _default_positions(self, tokens: Array, decode: bool) -> Array:
        """0, 1, 2, ... along each row; in a cached decode step, the number of steps so far."""
        if not decode:
            return jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
        initialized = self.has_variable("cache", "position")
        position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        if not initialized:  # cache creation pass
            return jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
        current = position.value
        position.value = current + 1
        return jnp.broadcast_to(current, tokens.shape)


class Transformer(nn.Module):
    """BERT2BERT with `t5.Transformer`'s methods and conventions (see the module docstring)."""

    config: Bert2BertConfig

    def setup(self) -> None:
        self.encoder = bert.BertModel(self.config.encoder_config,
                                      adapter_reduction=self.config.adapter_reduction)
        self.decoder = Decoder(self.config)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               enable_dropout: bool = False, encoder_positions: Array | None = None) -> Array:
        """Encoder hidden states [batch, length, hidden_size] in `dtype`.

        Packed rows (`encoder_segment_ids`) take `encoder_positions`, or positions restarting
        at each segment when none are given.
        """
        tokens = encoder_input_tokens
        if encoder_positions is None and encoder_segment_ids is not None:
            encoder_positions = segment_positions(encoder_segment_ids)
        return self.encoder(tokens, attention_mask=tokens > 0, position_ids=encoder_positions,
                            segment_ids=encoder_segment_ids,
                            deterministic=not enable_dropout).last_hidden_state

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: int | None = None) -> Array:
        """Decoder logits [batch, target_length, vocab] in float32.

        As `t5.Transformer.decode`: padding is read from `decoder_target_tokens`; with
        `decode=True` the `cache` collection must be mutable, the first call (full-length
        inputs) creates it and later calls feed one token per row, the position being the
        number of tokens fed so far. `max_decode_length` (the cache length) is checked against
        the position table. Positions default to 0, 1, 2, ... (restarting at each segment when
        packed).
        """
        length = max_decode_length if decode and max_decode_length else (
            decoder_input_tokens.shape[-1])
        if length > self.config.max_position_embeddings:
            raise ValueError(f"target length {length} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        cross_mask = (encoder_input_tokens > 0)[:, None, None, :]
        if decode:
            if encoder_segment_ids is not None or decoder_segment_ids is not None:
                raise ValueError("packed segment ids are not supported with decode=True")
            self_bias = None  # the KV cache supplies causality
        else:
            targets = decoder_target_tokens
            index = jnp.arange(targets.shape[-1])
            self_mask = (targets > 0)[:, None, None, :] & (index[None, :] <= index[:, None])
            if decoder_segment_ids is not None:
                self_mask &= (decoder_segment_ids[:, :, None]
                              == decoder_segment_ids[:, None, :])[:, None]
                if decoder_positions is None:
                    decoder_positions = segment_positions(decoder_segment_ids)
            if encoder_segment_ids is not None:
                if decoder_segment_ids is None:
                    raise ValueError("encoder_segment_ids given without decoder_segment_ids")
                cross_mask = cross_mask & (decoder_segment_ids[:, :, None]
                                           == encoder_segment_ids[:, None, :])[:, None]
            self_bias = _bias(self_mask)
        return self.decoder(encoded, decoder_input_tokens, decoder_positions, self_bias,
                            _bias(cross_mask), deterministic=not enable_dropout, decode=decode)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None,
                 encoder_positions: Array | None = None,
                 decoder_positions: Array | None = None, enable_dropout: bool = False,
                 decode: bool = False, max_decode_length: int | None = None) -> Array:
        """Logits [batch, target_length, vocab] (float32) for teacher-forced decoding;
        `decoder_input_tokens` is `decoder_target_tokens` shifted right behind a 0."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout,
                              encoder_positions)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                           decoder_positions, enable_dropout, decode, max_decode_length)


# ---------------------------------------------------------------------------------------------
# Weights: warm start from BERT, and import of an HF EncoderDecoderModel.


def param_shapes(config: Bert2BertConfig) -> dict[str, Any]:
    """Shapes of `Transformer`'s (unboxed) parameters, traced without allocating them."""
    dummy = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    abstract = jax.eval_shape(
        lambda t: Transformer(config).init(jax.random.PRNGKey(0), t, t, t), dummy)
    return jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(abstract["params"]))


def _fresh_decoder_params(config: Bert2BertConfig, rng: jax.Array) -> dict[str, Any]:
    """The decoder parameters a BERT checkpoint lacks (cross-attention and its layer norm, the LM
    head transform and bias), initialised as HF does: kernels N(0, 0.02), biases 0, scales 1."""
    shapes = param_shapes(config)["decoder"]
    fresh = {name: {key: shapes[name][key] for key in ("cross_attention",
                                                      "cross_attention_layer_norm")}
             for name in shapes if name.startswith("layers_")}
    fresh["lm_head"] = shapes["lm_head"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        fresh, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(rng, len(leaves))

    def init(path: tuple[Any, ...], shape: tuple[int, ...], key: jax.Array) -> np.ndarray:
        kind = path[-1].key
        if kind == "kernel":
            return np.asarray(jax.random.normal(key, shape, jnp.float32) * _INIT_STDDEV)
        return (np.ones if kind == "scale" else np.zeros)(shape, np.float32)

    return jax.tree_util.tree_unflatten(
        treedef, [init(path, shape, key) for (path, shape), key in zip(leaves, keys)])


def warm_start_from_bert(path: str, config: Bert2BertConfig, rng: jax.Array) -> dict[str, Any]:
    """BERT2BERT parameters warm-started from a BERT checkpoint, as
    `EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)` builds them.

    The encoder and the decoder each get their own copy of the checkpoint's embeddings and
    layers (EncoderDecoderModel ties nothing between them); the cross-attention sublayers and
    the LM head transform are new, drawn from `rng`; the output layer is the decoder's word
    embeddings (tied) plus a zero bias.

    Args:
      path: a BERT `model.safetensors` (bare or `bert.`-prefixed names), or a directory holding
        one (e.g. `recross_jax.assets.minilm_dir()`).
      config: the network; its sizes must match the checkpoint's.
      rng: a PRNG key for the new parameters.

    Returns:
      The unboxed parameter tree, float32 host numpy arrays.

    Raises:
      UserError: unreadable weights, weights that do not fit `config` (named), or a
        `config.json` beside them whose activation or layer norm epsilon differ from `config`'s
        (the shapes would fit, the network would compute something else).
    """
    weights = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
    hf_config = os.path.join(os.path.dirname(weights), "config.json")
    if os.path.isfile(hf_config):
        checkpoint = bert.BertConfig.from_json_file(hf_config)
        for name in ("hidden_act", "layer_norm_eps"):
            if getattr(checkpoint, name) != getattr(config, name):
                raise UserError(f"{hf_config}: {name}={getattr(checkpoint, name)!r}, the config "
                                f"has {getattr(config, name)!r}")
    params = {"encoder": bert.load_hf_bert(weights, config.encoder_config),
              "decoder": bert.load_hf_bert(weights, config.decoder_config)}
    for name, subtree in _fresh_decoder_params(config, rng).items():
        params["decoder"].setdefault(name, {}).update(subtree)
    return params


# EncoderDecoderModel's tied copies (same tensor as the value) and weights it computes nothing
# with here (the encoder's pooler).
_TIED = {"decoder.cls.predictions.decoder.weight": "decoder.bert.embeddings.word_embeddings.weight",
         "decoder.cls.predictions.decoder.bias": "decoder.cls.predictions.bias"}
_UNUSED_PREFIX = "encoder.pooler."


def hf_weight_names(config: Bert2BertConfig) -> dict[str, tuple[str, ...]]:
    """Maps each weight of an HF `EncoderDecoderModel` (BertModel encoder, BertLMHeadModel
    decoder) to the path of our parameter it fills; Linear weights are [out, in], our kernels
    [in, out]."""
    names = {f"encoder.{hf}": ("encoder",) + ours
             for hf, ours in bert.hf_weight_names(config.encoder_config).items()}
    names.update({f"decoder.bert.{hf}": ("decoder",) + ours
                  for hf, ours in bert.hf_weight_names(config.decoder_config).items()})

    def add(hf: str, ours: tuple[str, ...], kind: str) -> None:
        names[f"{hf}.weight"] = ours + (kind,)
        names[f"{hf}.bias"] = ours + ("bias",)

    for i in range(config.num_decoder_layers):
        hf, ours = f"decoder.bert.encoder.layer.{i}.crossattention", ("decoder", f"layers_{i}")
        for proj in ("query", "key", "value"):
            add(f"{hf}.self.{proj}", ours + ("cross_attention", proj), "kernel")
        add(f"{hf}.output.dense", ours + ("cross_attention", "out"), "kernel")
        add(f"{hf}.output.LayerNorm", ours + ("cross_attention_layer_norm",), "scale")
    head = "decoder.cls.predictions"
    add(f"{head}.transform.dense", ("decoder", "lm_head", "transform"), "kernel")
    add(f"{head}.transform.LayerNorm", ("decoder", "lm_head", "transform_layer_norm"), "scale")
    names[f"{head}.bias"] = ("decoder", "lm_head", "bias")
    return names


def from_hf_encoder_decoder(state_dict: Mapping[str, Any], config: Bert2BertConfig
                            ) -> dict[str, Any]:
    """An HF `EncoderDecoderModel`'s state dict (numpy or torch CPU arrays) as our parameters.

    Raises:
      UserError: a weight missing, unexpected or of the wrong shape, or an output layer that is
        not tied to the decoder's word embeddings (this network cannot represent it).
    """
    shapes = param_shapes(config)
    names = hf_weight_names(config)
    params: dict[str, Any] = {}
    for hf, path in names.items():
        if hf not in state_dict:
            raise UserError(f"EncoderDecoderModel state dict: missing weight {hf!r}")
        array = np.asarray(state_dict[hf], np.float32)
        array = array.T if path[-1] == "kernel" else array
        want = shapes
        for key in path:
            want = want[key]
        if array.shape != tuple(want):
            raise UserError(f"EncoderDecoderModel state dict: weight {hf!r} has shape "
                            f"{array.shape} (ours), the config needs {tuple(want)}")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(array)
    for tied, source in _TIED.items():
        if tied in state_dict and not np.array_equal(np.asarray(state_dict[tied]),
                                                     np.asarray(state_dict[source])):
            raise UserError(f"EncoderDecoderModel state dict: {tied!r} is not tied to {source!r}")
    for name in state_dict:
        if name not in names and name not in _TIED and not name.startswith(_UNUSED_PREFIX):
            raise UserError(f"EncoderDecoderModel state dict: unexpected weight {name!r} (does "
                            "the config match the model?)")
    return params
