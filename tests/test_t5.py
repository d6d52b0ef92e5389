"""The T5 network: configs, parameter layout, masking, packing, KV-cache decoding, gin sizes."""
import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recross_jax.errors import UserError
from recross_jax.models import t5
from recross_jax.models.t5 import T5Config, Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"vocab_size": 50, "emb_dim": 16, "num_heads": 2, "head_dim": 8, "mlp_dim": 24,
        "num_encoder_layers": 2, "num_decoder_layers": 2, "dropout_rate": 0.1,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16}


@gin.configurable("test_t5_probe")
def _probe(config=gin.REQUIRED):
    return config


def shift_right(targets: np.ndarray) -> np.ndarray:
    return np.pad(targets[:, :-1], ((0, 0), (1, 0)))


def jit_apply(model: Transformer):
    """`model.apply` compiled once per signature; eager op-by-op dispatch is slow on CPU."""
    return jax.jit(model.apply, static_argnames=("method", "enable_dropout"))


def init(config: T5Config, seed: int = 0, enc_len: int = 6, dec_len: int = 5):
    model = Transformer(config)
    enc = np.ones((1, enc_len), np.int32)
    dec = np.ones((1, dec_len), np.int32)
    return model, jax.jit(model.init)(jax.random.PRNGKey(seed), enc, shift_right(dec), dec)


def flat_shapes(variables) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(variables)["params"])[0]
    return {"/".join(k.key for k in path): tuple(v.shape) for path, v in flat}


@pytest.fixture(scope="module")
def tiny():
    model, variables = init(T5Config(**TINY))
    return model, jit_apply(model), nn.unbox(variables)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.RandomState(0)
    enc = rng.randint(2, 50, (3, 9)).astype(np.int32)
    tgt = rng.randint(2, 50, (3, 6)).astype(np.int32)
    enc[1, 6:] = 0  # ragged rows
    tgt[2, 4:] = 0
    return enc, shift_right(tgt), tgt


def test_config_validation_and_json_round_trip():
    config = T5Config(**TINY, mlp_activations=["relu"], logits_via_embedding=True)
    assert config.mlp_activations == ("relu",)
    assert T5Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UserError, match="emb_dim"):
        T5Config(vocab_size=8, emb_dim=0)
    with pytest.raises(UserError, match="dtype"):
        T5Config(vocab_size=8, dtype="float16")
    with pytest.raises(UserError, match="'swiglu'"):
        T5Config(vocab_size=8, mlp_activations=("swiglu",))
    with pytest.raises(UserError, match="dropout_rate"):
        T5Config(vocab_size=8, dropout_rate=1.0)
    with pytest.raises(UserError, match="num_buckets"):
        T5Config(vocab_size=8, relative_attention_num_buckets=31)
    with pytest.raises(UserError, match="'emb_size'"):
        T5Config.from_dict({"vocab_size": 8, "emb_size": 4})


def test_parameter_names_shapes_and_axes():
    _, variables = init(T5Config(**TINY))
    shapes = flat_shapes(variables)
    expected = {
        "token_embedder/embedding": (50, 16),
        "encoder/relpos_bias/rel_embedding": (2, 8),
        "encoder/encoder_norm/scale": (16,),
        "decoder/relpos_bias/rel_embedding": (2, 8),
        "decoder/decoder_norm/scale": (16,),
        "decoder/logits_dense/kernel": (16, 50),
    }
    for i in range(2):
        e, d = f"encoder/layers_{i}", f"decoder/layers_{i}"
        expected.update({f"{e}/pre_attention_layer_norm/scale": (16,),
                         f"{e}/pre_mlp_layer_norm/scale": (16,),
                         f"{e}/mlp/wi_0/kernel": (16, 24), f"{e}/mlp/wi_1/kernel": (16, 24),
                         f"{e}/mlp/wo/kernel": (24, 16),
                         f"{d}/pre_self_attention_layer_norm/scale": (16,),
                         f"{d}/pre_cross_attention_layer_norm/scale": (16,),
                         f"{d}/pre_mlp_layer_norm/scale": (16,),
                         f"{d}/mlp/wi_0/kernel": (16, 24), f"{d}/mlp/wi_1/kernel": (16, 24),
                         f"{d}/mlp/wo/kernel": (24, 16)})
        for prefix in (f"{e}/attention", f"{d}/self_attention",
                       f"{d}/encoder_decoder_attention"):
            expected.update({f"{prefix}/{n}/kernel": (16, 16) for n in ("query", "key", "value")})
            expected[f"{prefix}/out/kernel"] = (16, 16)
    assert shapes == expected

    params = variables["params"]
    assert all(isinstance(x, nn.LogicallyPartitioned) for x in jax.tree_util.tree_leaves(
        params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))
    assert params["token_embedder"]["embedding"].names == ("vocab", "embed")
    layer = params["encoder"]["layers_0"]
    assert layer["attention"]["query"]["kernel"].names == ("embed", "joined_kv")
    assert layer["attention"]["out"]["kernel"].names == ("joined_kv", "embed")
    assert layer["mlp"]["wo"]["kernel"].names == ("mlp", "embed")
    assert params["decoder"]["relpos_bias"]["rel_embedding"].names == ("heads", "relpos_buckets")
    assert params["decoder"]["logits_dense"]["kernel"].names == ("embed", "vocab")
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(params)))


def test_t5_1_0_variant_is_tied_with_single_relu_projection():
    _, variables = init(T5Config(**{**TINY, "mlp_activations": ("relu",),
                                    "logits_via_embedding": True}))
    shapes = flat_shapes(variables)
    assert "decoder/logits_dense/kernel" not in shapes
    assert shapes["encoder/layers_0/mlp/wi/kernel"] == (16, 24)
    assert not any("wi_0" in k for k in shapes)


def test_logits_shape_deterministic_and_dropout(tiny, batch):
    _, apply, params = tiny
    logits = apply(params, *batch)
    assert logits.shape == (3, 6, 50) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, apply(params, *batch))
    assert np.isfinite(np.asarray(logits)).all()
    drop = [apply(params, *batch, enable_dropout=True,
                        rngs={"dropout": jax.random.PRNGKey(s)}) for s in (1, 1, 2)]
    np.testing.assert_array_equal(drop[0], drop[1])
    assert np.abs(drop[0] - drop[2]).max() > 1e-3
    assert np.abs(drop[0] - logits).max() > 1e-3


def test_encode_returns_final_normed_hidden_states(tiny, batch):
    _, apply, params = tiny
    encoded = apply(params, batch[0], method=Transformer.encode)
    assert encoded.shape == (3, 9, 16)
    # The final RMS norm has unit scale at init, so each row has unit root-mean-square.
    rms = np.sqrt(np.mean(np.square(np.asarray(encoded)), axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-4)


def test_padding_does_not_change_unpadded_outputs(tiny, batch):
    _, apply, params = tiny
    enc, dec, tgt = batch
    logits = np.asarray(apply(params, enc, dec, tgt))
    enc_pad = np.pad(enc, ((0, 0), (0, 4)))
    tgt_pad = np.pad(tgt, ((0, 0), (0, 3)))
    padded = np.asarray(apply(params, enc_pad, shift_right(tgt_pad), tgt_pad))
    keep = tgt > 0
    np.testing.assert_allclose(padded[:, :6][keep], logits[keep], atol=1e-5, rtol=1e-5)
    encoded = apply(params, enc, method=Transformer.encode)
    encoded_pad = apply(params, enc_pad, method=Transformer.encode)
    np.testing.assert_allclose(np.asarray(encoded_pad)[:, :9][enc > 0],
                               np.asarray(encoded)[enc > 0], atol=1e-5, rtol=1e-5)


def test_packed_segments_equal_separate_examples(tiny):
    _, apply, params = tiny
    rng = np.random.RandomState(1)
    inputs = [rng.randint(2, 50, n).astype(np.int32) for n in (4, 3)]
    targets = [rng.randint(2, 50, n).astype(np.int32) for n in (3, 2)]
    enc = np.concatenate(inputs)[None]
    tgt = np.concatenate(targets)[None]
    dec = np.concatenate([shift_right(t[None])[0] for t in targets])[None]
    enc_seg = np.repeat([1, 2], [4, 3])[None]
    dec_seg = np.repeat([1, 2], [3, 2])[None]
    packed = np.asarray(apply(params, enc, dec, tgt, encoder_segment_ids=enc_seg,
                                    decoder_segment_ids=dec_seg))
    offset = 0
    for i, t in zip(inputs, targets):
        alone = np.asarray(apply(params, i[None], shift_right(t[None]), t[None]))[0]
        np.testing.assert_allclose(packed[0, offset:offset + len(t)], alone, atol=1e-5,
                                   rtol=1e-5)
        offset += len(t)


def test_kv_cache_decoding_matches_full_sequence(tiny, batch):
    model, apply, params = tiny
    enc, dec, tgt = batch
    full = np.asarray(apply(params, enc, dec, tgt))
    length = tgt.shape[1]
    encoded = apply(params, enc, method=Transformer.encode)
    # The cache is shaped by a full-length `init` pass; its initial values are all zeros.
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), enc, np.ones_like(tgt), np.ones_like(tgt), decode=True,
        max_decode_length=length))["cache"]
    cache = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

    @jax.jit
    def step(cache, token):
        logits, mutated = model.apply(
            {**params, "cache": cache}, encoded, enc, token, token, decode=True,
            max_decode_length=length, method=Transformer.decode, mutable=["cache"])
        return logits, mutated["cache"]

    for i in range(length):
        logits, cache = step(cache, dec[:, i:i + 1])
        # Padded target positions are unmasked while decoding, so only compare real ones.
        keep = tgt[:, i] > 0
        np.testing.assert_allclose(np.asarray(logits)[:, 0][keep], full[:, i][keep],
                                   atol=1e-5, rtol=1e-5)
    index = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map_with_path(
            lambda p, x: x if p[-1].key == "cache_index" else None, cache))
    assert all(int(x) == length for x in index)


def test_bfloat16_activations_close_to_float32(batch):
    config32 = T5Config(**{**TINY, "dropout_rate": 0.0})
    config16 = T5Config(**{**TINY, "dropout_rate": 0.0, "dtype": "bfloat16"})
    model32, variables = init(config32)
    params = nn.unbox(variables)
    logits32 = np.asarray(jit_apply(model32)(params, *batch))
    apply16 = jit_apply(Transformer(config16))
    logits16 = apply16(params, *batch)
    assert logits16.dtype == jnp.float32
    encoded16 = apply16(params, batch[0], method=Transformer.encode)
    assert encoded16.dtype == jnp.bfloat16
    assert np.abs(np.asarray(logits16) - logits32).max() < 0.1 * np.abs(logits32).max()


def test_bfloat16_gated_mlp_rounds_once_after_activations():
    """T5 1.1's gated GELU multiplies the float32 accumulators of wi_0 and wi_1, activated, and
    rounds the product to bfloat16 once before wo."""
    block = t5.MlpBlock(intermediate_dim=24, activations=("gelu", "linear"), dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 16)), jnp.bfloat16)
    params = block.init(jax.random.PRNGKey(0), x)
    out = block.apply(params, x)
    assert out.dtype == jnp.bfloat16
    kernels = {k: nn.unbox(v["kernel"]).astype(jnp.bfloat16)
               for k, v in params["params"].items()}

    def accumulate(h, name):
        return jnp.dot(h, kernels[name], preferred_element_type=jnp.float32)

    hidden = (nn.gelu(accumulate(x, "wi_0")) * accumulate(x, "wi_1")).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out, np.float32),
                                  np.asarray(accumulate(hidden, "wo").astype(jnp.bfloat16),
                                             np.float32))


def test_relative_position_buckets_known_values():
    buckets = t5.relative_position_buckets(1, 300, bidirectional=True, num_buckets=32,
                                           max_distance=128)[0]
    # Offsets 0..7 exact; 8..127 log-spaced into 8..15; >= 128 clipped; +16 for "after".
    assert list(buckets[:8]) == [0] + list(range(17, 24))
    assert buckets[8] == 24 and buckets[16] == 26 and buckets[127] == 31 and buckets[299] == 31
    backward = t5.relative_position_buckets(300, 1, bidirectional=True, num_buckets=32,
                                            max_distance=128)[:, 0]
    assert list(backward[:8]) == list(range(8)) and backward[16] == 10 and backward[299] == 15
    causal = t5.relative_position_buckets(300, 300, bidirectional=False, num_buckets=32,
                                          max_distance=128)
    assert causal[0, 5] == 0 and causal[5, 0] == 5 and causal[299, 0] == 31
    assert causal[15, 0] == 15 and causal[16, 0] == 16 and causal[31, 0] == 21
    assert np.all(np.diff(causal[-1, ::-1]) >= 0)


@pytest.mark.parametrize("name", ["tiny", "mini", "small", "base", "large", "xl", "xxl"])
def test_gin_model_files_parse_and_build_configs(name):
    expected = {"tiny": (32, 64, 4, 8, 2, 8192), "mini": (256, 512, 4, 64, 4, 8192),
                "small": (512, 1024, 6, 64, 8, 32128), "base": (768, 2048, 12, 64, 12, 32128),
                "large": (1024, 2816, 16, 64, 24, 32128), "xl": (2048, 5120, 32, 64, 24, 32128),
                "xxl": (4096, 10240, 64, 64, 24, 32128)}[name]
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            [os.path.join(REPO, "gin", "models", f"t5_1_1_{name}.gin")],
            ["test_t5_probe.config = %MODEL_CONFIG"], finalize_config=False)
        config = _probe()
    finally:
        gin.clear_config()
    assert isinstance(config, T5Config)
    got = (config.emb_dim, config.mlp_dim, config.num_heads, config.head_dim,
           config.num_encoder_layers, config.vocab_size)
    assert got == expected and config.num_decoder_layers == config.num_encoder_layers
    assert config.mlp_activations == ("gelu", "linear") and not config.logits_via_embedding
