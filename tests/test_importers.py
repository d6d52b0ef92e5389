"""Importers: HF T5 parity (1.1 and 1.0) against transformers' PyTorch model, T5X round trip."""
import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization
from safetensors import safe_open
from safetensors.numpy import save_file

from recross_jax.errors import UserError
from recross_jax.importers import import_hf_t5, import_t5x_checkpoint
from recross_jax.models.t5 import T5Config, Transformer, relative_position_buckets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_TINY = {"vocab_size": 40, "d_model": 16, "d_kv": 4, "d_ff": 24, "num_layers": 2,
           "num_decoder_layers": 3, "num_heads": 3, "relative_attention_num_buckets": 8,
           "relative_attention_max_distance": 12, "dropout_rate": 0.1}


def random_hf_model(seed: int, **config):
    """A T5ForConditionalGeneration with every weight random (norm scales and relative biases
    included, so a swapped or misplaced tensor changes the logits)."""
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_TINY, **config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name == "shared.weight":
                param.normal_(0.0, 1.0)
            elif "relative_attention_bias" in name:
                param.normal_(0.0, 0.5)
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5)
    return model.eval()


def batch(seed: int = 0):
    rng = np.random.RandomState(seed)
    # Longer than max_distance so the logarithmic and clipped buckets are exercised.
    enc = rng.randint(2, 40, (3, 20)).astype(np.int64)
    tgt = rng.randint(2, 40, (3, 15)).astype(np.int64)
    enc[1, 13:] = 0
    tgt[2, 9:] = 0
    return enc, np.pad(tgt[:, :-1], ((0, 0), (1, 0))), tgt


def hf_logits(model, enc, dec, tgt) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(enc), attention_mask=torch.from_numpy(enc > 0),
                    decoder_input_ids=torch.from_numpy(dec),
                    decoder_attention_mask=torch.from_numpy(tgt > 0))
    return out.logits.numpy()


def our_logits(config, params, enc, dec, tgt) -> np.ndarray:
    apply = jax.jit(Transformer(config).apply)
    return np.asarray(apply({"params": params}, enc.astype(np.int32), dec.astype(np.int32),
                            tgt.astype(np.int32)))


def assert_parity(hf_model, config, params):
    enc, dec, tgt = batch()
    ref = hf_logits(hf_model, enc, dec, tgt)
    ours = our_logits(config, params, enc, dec, tgt)
    keep = tgt > 0
    assert np.abs(ref[keep]).max() > 1.0  # a meaningful comparison, not two near-zero tensors
    assert np.abs(ours[keep] - ref[keep]).max() <= 1e-4


def test_hf_t5_1_1_parity_gated_gelu_untied(tmp_path):
    model = random_hf_model(0, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    with torch.no_grad():  # transformers 5 ties the head by default; give it its own weights
        model.lm_head.weight = torch.nn.Parameter(torch.randn(40, 16) * 0.25)
    model.save_pretrained(tmp_path)
    config, params = import_hf_t5(str(tmp_path))
    assert config.mlp_activations == ("gelu", "linear") and not config.logits_via_embedding
    assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim) == (16, 3, 4, 24)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
    assert (config.relative_attention_num_buckets,
            config.relative_attention_max_distance) == (8, 12)
    np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"],
                                  model.lm_head.weight.detach().numpy().T)
    assert_parity(model, config, params)


def test_hf_t5_1_0_parity_relu_tied_from_pytorch_bin(tmp_path):
    model = random_hf_model(1, feed_forward_proj="relu")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    config, params = import_hf_t5(str(tmp_path))
    assert config.mlp_activations == ("relu",) and config.logits_via_embedding
    assert "logits_dense" not in params["decoder"]
    assert "wi" in params["encoder"]["layers_0"]["mlp"]
    assert_parity(model, config, params)


def test_hf_unscaled_shared_head_becomes_untied_copy(tmp_path):
    """transformers 5 saves a 1.1 model with its head tied to `shared` and no output scaling."""
    model = random_hf_model(2, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model.save_pretrained(tmp_path)
    config, params = import_hf_t5(str(tmp_path))
    assert not config.logits_via_embedding
    np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"],
                                  params["token_embedder"]["embedding"].T)
    assert_parity(model, config, params)


def test_relative_position_buckets_match_hf():
    hf_bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    offsets = torch.arange(-300, 300)
    for bidirectional in (True, False):
        for num_buckets, max_distance in ((32, 128), (8, 12), (64, 256)):
            # Row 300 of a 600x600 table holds key offsets -300..299.
            ours = relative_position_buckets(301, 600, bidirectional, num_buckets,
                                             max_distance)[300]
            ref = hf_bucket(offsets, bidirectional, num_buckets, max_distance).numpy()
            np.testing.assert_array_equal(ours, ref)


def test_hf_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="HF model directory not found"):
        import_hf_t5(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        import_hf_t5(str(tmp_path / "empty"))

    good = tmp_path / "good"
    random_hf_model(3, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False).save_pretrained(good)
    with safe_open(str(good / "model.safetensors"), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not iterable

    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    name = "decoder.block.1.layer.1.EncDecAttention.k.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, str(missing / "model.safetensors"))
    with pytest.raises(UserError, match=rf"missing tensor {name} \(for decoder/layers_1/"
                                        r"encoder_decoder_attention/key/kernel, shape \[16, 12\]"):
        import_hf_t5(str(missing))

    extra = tmp_path / "extra"
    shutil.copytree(good, extra)
    save_file({**tensors, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight":
               np.zeros((8, 3), np.float32)}, str(extra / "model.safetensors"))
    with pytest.raises(UserError, match="unexpected tensor encoder.block.1.layer.0"):
        import_hf_t5(str(extra))

    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    hf_config = json.loads((good / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**hf_config, "d_ff": 32}))
    with pytest.raises(UserError, match=r"decoder.block.0.layer.2.DenseReluDense.wi_0.weight "
                                        r"\(for decoder/layers_0/mlp/wi_0/kernel\) has shape "
                                        r"\[16, 24\], the config expects \[16, 32\]"):
        import_hf_t5(str(wrong))

    (wrong / "config.json").write_text(json.dumps({**hf_config, "feed_forward_proj": "gelu"}))
    with pytest.raises(UserError, match="feed_forward_proj 'gelu' is not supported"):
        import_hf_t5(str(wrong))
    (wrong / "model.safetensors").unlink()
    (wrong / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        import_hf_t5(str(wrong))


# ---------------------------------------------------------------------------------------------
# T5X legacy checkpoints.

T5X_CONFIG = T5Config(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24,
                      num_encoder_layers=2, num_decoder_layers=2)


def write_t5x_checkpoint(directory, params) -> None:
    """Writes `params` as t5x/checkpoints.py does: zarr arrays (gzip) under
    `target.<dotted path>` referenced by relative TensorStore specs, the unpartitioned
    (1-D) ones inline in the msgpack file, next to an optimizer `state`."""
    os.makedirs(directory, exist_ok=True)

    def write(path, value):
        value = np.asarray(value)
        if value.ndim == 1:
            return value
        name = "target." + ".".join(path)
        spec = {"driver": "zarr", "dtype": "float32",
                "kvstore": {"driver": "file", "path": name},
                "metadata": {"compressor": {"id": "gzip"}, "shape": list(value.shape),
                             "chunks": np.array(value.shape)}}
        absolute = json.loads(json.dumps({**spec, "metadata": {**spec["metadata"],
                                                                "chunks": list(value.shape)}}))
        absolute["kvstore"]["path"] = os.path.join(directory, name)
        ts.open(absolute, create=True, open=True).result().write(value).result()
        return spec

    target = jax.tree_util.tree_map_with_path(
        lambda p, v: write(tuple(k.key for k in p), v), params)
    state = {"step": np.int32(1234),
             "param_states": jax.tree_util.tree_map(lambda v: np.zeros(1, np.float32), params)}
    blob = serialization.msgpack_serialize(
        {"version": 3, "optimizer": {"target": target, "state": state}})
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
        f.write(blob)


@pytest.fixture(scope="module")
def t5x_params():
    dummy = np.ones((1, 4), np.int32)
    variables = jax.jit(Transformer(T5X_CONFIG).init)(jax.random.PRNGKey(0), dummy, dummy,
                                                      dummy)
    return jax.tree_util.tree_map(np.asarray, nn.unbox(variables)["params"])


def test_t5x_checkpoint_round_trip(tmp_path, t5x_params):
    write_t5x_checkpoint(str(tmp_path / "checkpoint_1234"), t5x_params)
    assert (tmp_path / "checkpoint_1234" / "target.encoder.layers_0.attention.key.kernel"
            / ".zarray").is_file()
    for where in (tmp_path / "checkpoint_1234", tmp_path / "checkpoint_1234" / "checkpoint"):
        params = import_t5x_checkpoint(str(where), T5X_CONFIG)
        jax.tree_util.tree_map(np.testing.assert_array_equal, params, t5x_params)
    # Moved checkpoints still load: the array paths are relative to the checkpoint.
    shutil.move(str(tmp_path / "checkpoint_1234"), str(tmp_path / "moved"))
    params = import_t5x_checkpoint(str(tmp_path / "moved"), T5X_CONFIG)
    enc, dec, tgt = (x.astype(np.int32) for x in batch())
    np.testing.assert_array_equal(our_logits(T5X_CONFIG, params, enc, dec, tgt),
                                  our_logits(T5X_CONFIG, t5x_params, enc, dec, tgt))


def test_t5x_checkpoint_errors_name_the_first_bad_parameter(tmp_path, t5x_params):
    with pytest.raises(UserError, match="T5X checkpoint not found"):
        import_t5x_checkpoint(str(tmp_path / "nothing"), T5X_CONFIG)
    ckpt = tmp_path / "ckpt"
    write_t5x_checkpoint(str(ckpt), t5x_params)

    wider = T5Config(**{**T5X_CONFIG.to_dict(), "mlp_dim": 48})
    with pytest.raises(UserError, match=r"parameter decoder/layers_0/mlp/wi_0/kernel has shape "
                                        r"\[16, 24\], the config expects \[16, 48\]"):
        import_t5x_checkpoint(str(ckpt), wider)
    tied = T5Config(**{**T5X_CONFIG.to_dict(), "logits_via_embedding": True})
    with pytest.raises(UserError, match="unexpected parameter decoder/logits_dense/kernel"):
        import_t5x_checkpoint(str(ckpt), tied)
    deeper = T5Config(**{**T5X_CONFIG.to_dict(), "num_encoder_layers": 3})
    with pytest.raises(UserError, match=r"missing parameter encoder/layers_2/attention/key/"
                                        r"kernel \(shape \[16, 16\]\)"):
        import_t5x_checkpoint(str(ckpt), deeper)

    shutil.rmtree(ckpt / "target.decoder.layers_1.mlp.wo.kernel")
    with pytest.raises(UserError, match="decoder/layers_1/mlp/wo/kernel: array not found"):
        import_t5x_checkpoint(str(ckpt), T5X_CONFIG)
    (ckpt / "checkpoint").write_bytes(b"\x00not msgpack")
    with pytest.raises(UserError, match="cannot parse T5X checkpoint"):
        import_t5x_checkpoint(str(ckpt), T5X_CONFIG)
