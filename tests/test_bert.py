"""BERT encoder: config, HF import, parity with transformers' BertModel, masks, packing, mesh."""
from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_bert
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from recross_jax import partitioning
from recross_jax.errors import UserError
from recross_jax.models import bert
from recross_jax.models.bert import BertConfig, BertModel, load_hf_bert

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)


def _tiny(**overrides) -> BertConfig:
    return BertConfig(**{**TINY, **overrides})


@functools.cache
def _jitted_apply(config: BertConfig, with_pooler: bool):
    return jax.jit(BertModel(config, with_pooler).apply, static_argnames=("deterministic",))


def _apply(model: BertModel, params: dict, *args, **kwargs):
    """`model.apply` under jit: one compilation per shape instead of one per primitive."""
    return _jitted_apply(model.config, model.with_pooler)({"params": params}, *args, **kwargs)


def _hf_dict(config: BertConfig) -> dict:
    return {"model_type": "bert", "hidden_act": config.hidden_act,
            "layer_norm_eps": config.layer_norm_eps, **TINY}


def _random_params(config: BertConfig, with_pooler: bool = False, seed: int = 0) -> dict:
    ids = jnp.ones((1, 4), jnp.int32)
    variables = jax.jit(BertModel(config, with_pooler).init)(jax.random.PRNGKey(seed), ids)
    return jax.tree_util.tree_map(np.asarray, nn.unbox(variables["params"]))


def _batch(rng: np.random.Generator, lengths: list[int], width: int) -> tuple[np.ndarray, ...]:
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(1, TINY["vocab_size"], n)
        mask[r, :n] = 1
    types = np.where(np.arange(width) >= width // 2, 1, 0)[None].repeat(len(lengths), 0) * mask
    return ids, mask, types.astype(np.int32)


# --- config -------------------------------------------------------------------------------------


def test_config_from_hf_dict_reads_fields_and_ignores_the_rest():
    config = BertConfig.from_hf_dict({**_hf_dict(_tiny()), "architectures": ["BertModel"],
                                      "pad_token_id": None}, dtype="bfloat16")
    assert config == _tiny(dtype="bfloat16")
    assert config.head_dim == 8


@pytest.mark.parametrize("data, message", [
    ({"model_type": "roberta"}, "not a BERT config: model_type='roberta'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
    ({"num_attention_heads": 5}, "hidden_size (32) is not divisible by num_attention_heads (5)"),
    ({"hidden_act": "swish"}, "unsupported activation 'swish'"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
])
def test_config_refuses_what_it_cannot_compute(data, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BertConfig.from_hf_dict({**_hf_dict(_tiny()), **data})


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match=f"BERT config {path} is not valid JSON"):
        BertConfig.from_json_file(str(path))
    with pytest.raises(UserError, match="cannot read BERT config"):
        BertConfig.from_json_file(str(tmp_path / "missing.json"))


# --- parameters and logical axes ----------------------------------------------------------------


def test_parameters_carry_logical_axes():
    ids = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    abstract = jax.eval_shape(lambda i: BertModel(_tiny(), True).init(jax.random.PRNGKey(0), i),
                              ids)
    specs = nn.get_partition_spec(abstract)["params"]
    layer = specs["layers_1"]
    assert specs["embeddings"]["word_embeddings"]["embedding"] == P("vocab", "embed")
    assert specs["embeddings"]["position_embeddings"]["embedding"] == P(None, "embed")
    assert layer["attention"]["query"]["kernel"] == P("embed", "joined_kv")
    assert layer["attention"]["query"]["bias"] == P("joined_kv")
    assert layer["attention"]["out"]["kernel"] == P("joined_kv", "embed")
    assert layer["mlp"]["wi"]["kernel"] == P("embed", "mlp")
    assert layer["mlp"]["wo"]["kernel"] == P("mlp", "embed")
    assert layer["mlp_layer_norm"]["scale"] == P("embed")
    assert specs["pooler"]["kernel"] == P(None, "embed")


def test_hf_round_trip_restores_every_parameter(tmp_path):
    config = _tiny()
    params = _random_params(config, with_pooler=True)
    path = str(tmp_path / "model.safetensors")
    save_file(tiny_bert.to_hf(params, config, with_pooler=True), path)
    loaded = load_hf_bert(path, config, with_pooler=True)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    # Without the pooler its weights are skipped, not refused.
    assert "pooler" not in load_hf_bert(path, config)


def test_import_errors_name_the_weight(tmp_path):
    config = _tiny()
    weights = tiny_bert.to_hf(_random_params(config), config)
    path = str(tmp_path / "model.safetensors")

    missing = dict(weights)
    del missing["encoder.layer.1.output.dense.bias"]
    save_file(missing, path)
    with pytest.raises(UserError, match="missing weight 'encoder.layer.1.output.dense.bias'"):
        load_hf_bert(path, config)

    wrong = {**weights, "encoder.layer.0.intermediate.dense.weight": np.zeros((50, 32), np.float32)}
    save_file(wrong, path)
    with pytest.raises(UserError, match=r"'encoder.layer.0.intermediate.dense.weight' has shape "
                                        r"\(50, 32\), the config needs \(48, 32\)"):
        load_hf_bert(path, config)

    save_file(weights, path)
    with pytest.raises(UserError, match="unexpected weight 'encoder.layer.1.attention"):
        load_hf_bert(path, _tiny(num_hidden_layers=1))

    (tmp_path / "broken.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot read BERT weights"):
        load_hf_bert(str(tmp_path / "broken.safetensors"), config)


# --- the forward pass ---------------------------------------------------------------------------


def test_matches_transformers_bert_model(tmp_path):
    """Hidden states and pooled output of transformers' BertModel (PyTorch) from the same file."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _tiny()
    torch.manual_seed(0)
    reference = transformers.BertModel(transformers.BertConfig(**_hf_dict(config))).eval()
    reference.save_pretrained(tmp_path)  # model.safetensors + config.json
    loaded = BertConfig.from_json_file(str(tmp_path / "config.json"))
    params = load_hf_bert(str(tmp_path / "model.safetensors"), loaded, with_pooler=True)

    ids, mask, types = _batch(np.random.default_rng(0), [12, 5, 1, 9], 12)
    with torch.no_grad():
        want = reference(input_ids=torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types,
                                                                                       dtype=torch.long))
    got = _apply(BertModel(loaded, with_pooler=True), params, ids, mask, types)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got.last_hidden_state)[real],
                               want.last_hidden_state.numpy()[real], atol=2e-5)
    np.testing.assert_allclose(np.asarray(got.pooled_output), want.pooler_output.numpy(),
                               atol=2e-5)


def test_bert_prefixed_task_checkpoint_loads_its_backbone(tmp_path):
    """BertForSequenceClassification (the cross-encoder's HF form) names weights 'bert.*'."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _tiny()
    torch.manual_seed(1)
    classifier = transformers.BertForSequenceClassification(
        transformers.BertConfig(**_hf_dict(config), num_labels=2)).eval()
    classifier.save_pretrained(tmp_path)
    assert "classifier.weight" in load_file(str(tmp_path / "model.safetensors"))
    params = load_hf_bert(str(tmp_path / "model.safetensors"), config, with_pooler=True)
    ids, mask, types = _batch(np.random.default_rng(1), [7, 10], 10)
    with torch.no_grad():
        want = classifier.bert(input_ids=torch.tensor(ids, dtype=torch.long),
                               attention_mask=torch.tensor(mask),
                               token_type_ids=torch.tensor(types, dtype=torch.long)).pooler_output
    got = _apply(BertModel(config, with_pooler=True), params, ids, mask, types)
    np.testing.assert_allclose(np.asarray(got.pooled_output), want.numpy(), atol=2e-5)


def test_padding_does_not_change_real_tokens():
    config = _tiny()
    params = _random_params(config)
    model = BertModel(config)
    ids, mask, _ = _batch(np.random.default_rng(2), [6, 3], 6)
    short = _apply(model, params, ids, mask).last_hidden_state
    wide = np.pad(ids, ((0, 0), (0, 10)))
    long = _apply(model, params, wide, np.pad(mask, ((0, 0), (0, 10))))
    # The default mask is ids != pad_token_id, the same here.
    default = _apply(model, params, wide).last_hidden_state
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(long.last_hidden_state)[:, :6][real],
                               np.asarray(short)[real], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(default), np.asarray(long.last_hidden_state))


def test_packed_segments_equal_separate_rows():
    config = _tiny()
    params = _random_params(config)
    model = BertModel(config)
    rng = np.random.default_rng(3)
    a, b = rng.integers(1, 64, 5), rng.integers(1, 64, 7)
    alone_a = _apply(model, params, a[None]).last_hidden_state[0]
    alone_b = _apply(model, params, b[None]).last_hidden_state[0]
    ids = np.concatenate([a, b, np.zeros(4, np.int64)])[None]
    segments = np.array([[1] * 5 + [2] * 7 + [0] * 4])
    positions = np.array([list(range(5)) + list(range(7)) + [0] * 4])
    packed = _apply(model, params, ids, position_ids=positions,
                         segment_ids=segments).last_hidden_state[0]
    np.testing.assert_allclose(np.asarray(packed[:5]), np.asarray(alone_a), atol=1e-5)
    np.testing.assert_allclose(np.asarray(packed[5:12]), np.asarray(alone_b), atol=1e-5)


def test_pooler_at_packed_cls_positions_equals_separate_rows():
    config = _tiny()
    model = BertModel(config, with_pooler=True)
    params = _random_params(config, with_pooler=True)
    rng = np.random.default_rng(4)
    a, b = rng.integers(1, 64, 6), rng.integers(1, 64, 3)
    alone = [_apply(model, params, x[None]).pooled_output[0] for x in (a, b)]
    ids = np.concatenate([a, b, np.zeros(3, np.int64)])[None]
    segments = np.array([[1] * 6 + [2] * 3 + [0] * 3])
    positions = np.array([list(range(6)) + list(range(3)) + [0] * 3])
    pooled = _apply(model, params, ids, position_ids=positions, segment_ids=segments,
                    cls_index=np.array([[0, 6]])).pooled_output
    assert pooled.shape == (1, 2, config.hidden_size)
    np.testing.assert_allclose(np.asarray(pooled[0]), np.stack(alone), atol=1e-5)


def test_query_blocks_keep_each_block_within_the_budget():
    assert bert.query_blocks(64, 12, 256) == 1  # 201 MB of logits: one pass
    assert bert.query_blocks(64, 12, 512) == 4  # 805 MB: blocks of 128 queries
    assert bert.query_blocks(8, 12, 512) == 4  # 101 MB, but 512 x 512 logits a row and head
    assert bert.query_blocks(12, 12, 320) == 2  # blocks of 160 queries
    assert bert.query_blocks(16, 12, 256) == 1  # 256 x 256: one pass
    assert bert.query_blocks(64, 12, 384) == 3  # 192 x 384 logits a row and head: too many
    assert bert.query_blocks(1, 1, 7) == 1


@pytest.mark.parametrize("packed", [False, True])
def test_blocked_attention_equals_one_pass(monkeypatch, packed):
    config = _tiny()
    params = _random_params(config)
    rng = np.random.default_rng(4)
    ids, mask, types = _batch(rng, [12, 7, 3], 12)
    extra = {}
    if packed:  # rows of two segments: the bias has a row per query, split with the queries
        extra = dict(segment_ids=np.where(np.arange(12) < 5, 1, 2)[None].repeat(3, 0) * mask,
                     position_ids=np.array([list(range(5)) + list(range(7))] * 3))

    def run():
        model = BertModel(config)
        return np.asarray(jax.jit(model.apply)({"params": params}, ids, mask, types,
                                               **extra).last_hidden_state)

    whole = run()
    # 3 rows x 4 heads x 12 x 12 float32 logits = 6912 bytes: a budget of 2000 gives 4 blocks.
    monkeypatch.setattr(bert, "ATTENTION_BLOCK_BYTES", 2000)
    assert bert.query_blocks(3, 4, 12) == 4
    np.testing.assert_allclose(run(), whole, rtol=0, atol=1e-6)


def test_token_types_and_dropout_change_the_output():
    config = _tiny()
    params = _random_params(config)
    model = BertModel(config)
    ids, mask, types = _batch(np.random.default_rng(4), [10, 10], 10)
    plain = _apply(model, params, ids, mask).last_hidden_state
    typed = _apply(model, params, ids, mask, types).last_hidden_state
    assert not np.allclose(plain, typed)
    train = _apply(model, params, ids, mask, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(0)}).last_hidden_state
    assert not np.allclose(plain, train)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=40"):
        _apply(model, params, np.ones((1, 41), np.int32))


def test_bfloat16_activations_stay_close_to_float32():
    params = _random_params(_tiny())
    ids, mask, _ = _batch(np.random.default_rng(5), [8, 4], 8)
    full = _apply(BertModel(_tiny()), params, ids, mask).last_hidden_state
    half = _apply(BertModel(_tiny(dtype="bfloat16")), params, ids, mask)
    assert half.last_hidden_state.dtype == jnp.bfloat16
    a = np.asarray(full, np.float32)[mask.astype(bool)]
    b = np.asarray(half.last_hidden_state, np.float32)[mask.astype(bool)]
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() > 0.99


def test_bfloat16_dense_rounds_once_after_bias_and_activation():
    """The bias and the activation apply to the float32 accumulator; only the result is
    rounded to bfloat16 (rounding the product before the bias and the GELU loses bits)."""
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(6, 16)), jnp.bfloat16)
    kernel, bias = rng.normal(size=(16, 32)).astype(np.float32), rng.normal(size=32)
    params = {"params": {"kernel": kernel, "bias": bias.astype(np.float32)}}
    gelu = bert._ACTIVATIONS["gelu"]
    dense = bert.Dense(32, ("embed", "mlp"), jnp.bfloat16, gelu)
    out = dense.apply(params, x)
    assert out.dtype == jnp.bfloat16
    accumulator = jnp.dot(x, jnp.asarray(kernel, jnp.bfloat16),
                          preferred_element_type=jnp.float32) + bias.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(out, np.float32),
                                  np.asarray(gelu(accumulator).astype(jnp.bfloat16), np.float32))


def test_sharded_over_a_mesh_matches_one_device():
    """Parameters laid out by their logical axes (T5X rules) on a 2x4 mesh, batch over 'data'."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    config = _tiny()
    model = BertModel(config, with_pooler=True)
    ids, mask, types = _batch(np.random.default_rng(6), [9, 3, 12, 7], 12)
    boxed = jax.jit(model.init)(jax.random.PRNGKey(0), ids[:1])["params"]
    params = nn.unbox(boxed)
    want = _apply(model, params, ids, mask, types)

    mesh = partitioning.create_mesh(num_partitions=4)
    shardings = partitioning.param_shardings(boxed, mesh)
    sharded = jax.device_put(params, shardings)
    assert sharded["layers_0"]["mlp"]["wi"]["kernel"].sharding.spec == P(None, "model")
    assert sharded["layers_0"]["attention"]["out"]["kernel"].sharding.spec == P("model", None)
    rows = partitioning.batch_sharding(mesh)
    with partitioning.activate(mesh):
        got = jax.jit(model.apply, in_shardings=({"params": shardings}, rows, rows, rows))(
            {"params": sharded}, ids, mask, types)
    np.testing.assert_allclose(np.asarray(got.last_hidden_state),
                               np.asarray(want.last_hidden_state), atol=2e-5)
    np.testing.assert_allclose(np.asarray(got.pooled_output), np.asarray(want.pooled_output),
                               atol=2e-5)


def test_loads_the_real_minilm_checkpoint():
    """all-MiniLM-L6-v2's weights fit the config of its config.json (skipped without the asset)."""
    from recross_jax import assets
    try:
        directory = assets.minilm_dir()
    except UserError as e:
        pytest.skip(f"MiniLM asset unavailable: {e}")
    config = BertConfig.from_json_file(os.path.join(directory, "config.json"))
    assert (config.hidden_size, config.num_hidden_layers, config.hidden_act) == (384, 6, "gelu")
    params = load_hf_bert(os.path.join(directory, "model.safetensors"), config, with_pooler=True)
    assert params["layers_5"]["mlp"]["wi"]["kernel"].shape == (384, 1536)
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["vocab_size"] == params["embeddings"]["word_embeddings"][
            "embedding"].shape[0]
