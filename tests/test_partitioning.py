"""Meshes, logical axis rules and shardings on 1 and 8 (simulated) CPU devices.

tests/conftest.py asks XLA for 8 host devices before JAX is imported.
"""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from recross_jax import partitioning
from recross_jax.errors import UserError
from recross_jax.models.t5 import T5Config, Transformer

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32,
                  num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def make_batch(batch_size: int = 8):
    rng = np.random.RandomState(0)
    enc = rng.randint(1, 64, (batch_size, 10)).astype(np.int32)
    tgt = rng.randint(1, 64, (batch_size, 6)).astype(np.int32)
    enc[::3, 7:] = 0
    tgt[1::3, 4:] = 0
    return enc, np.pad(tgt[:, :-1], ((0, 0), (1, 0))), tgt


def init_fn(model: Transformer):
    enc, dec, tgt = make_batch(1)
    return lambda rng: model.init(rng, enc, dec, tgt)


def test_default_rules_and_batch_spec():
    rules = dict(partitioning.DEFAULT_RULES)
    assert rules["batch"] == "data"
    assert all(rules[a] == "model" for a in ("vocab", "mlp", "heads", "joined_kv"))
    assert all(rules[a] is None for a in ("embed", "length", "kv", "relpos_buckets"))
    assert partitioning.data_partition_spec() == P("data")
    extra = partitioning.logical_axis_rules([("embed", "data"), ("adapter", "model")])
    assert extra[:2] == (("embed", "data"), ("adapter", "model"))
    # Flax takes the first rule naming an axis: the extra one overrides the default.
    assert nn.logical_to_mesh_axes(("embed", "mlp"), extra) == P("data", "model")


def test_create_mesh_shapes_and_errors():
    mesh = partitioning.create_mesh()
    assert mesh.axis_names == ("data", "model")
    assert mesh.shape == {"data": jax.device_count(), "model": 1}
    with pytest.raises(UserError, match="num_partitions=3"):
        partitioning.create_mesh(3)
    single = partitioning.create_mesh(devices=jax.devices()[:1])
    assert single.devices.shape == (1, 1)


def test_param_shardings_follow_logical_axes():
    mesh = partitioning.create_mesh(devices=jax.devices()[:1])
    abstract = jax.eval_shape(init_fn(Transformer(CONFIG)), jax.random.PRNGKey(0))
    shardings = partitioning.param_shardings(abstract, mesh)["params"]
    assert shardings["token_embedder"]["embedding"].spec == P("model", None)
    layer = shardings["encoder"]["layers_0"]
    assert layer["attention"]["query"]["kernel"].spec == P(None, "model")
    assert layer["attention"]["out"]["kernel"].spec == P("model", None)
    assert layer["mlp"]["wo"]["kernel"].spec == P("model", None)
    assert layer["pre_mlp_layer_norm"]["scale"].spec == P(None)
    assert shardings["decoder"]["relpos_bias"]["rel_embedding"].spec == P("model", None)
    assert shardings["decoder"]["logits_dense"]["kernel"].spec == P(None, "model")


def test_optimizer_state_shardings_from_boxed_params():
    mesh = partitioning.create_mesh(devices=jax.devices()[:1])
    abstract = jax.eval_shape(init_fn(Transformer(CONFIG)), jax.random.PRNGKey(0))["params"]
    adam = partitioning.param_shardings(jax.eval_shape(optax.adamw(1e-3).init, abstract), mesh)
    mu = adam[0].mu
    assert mu["token_embedder"]["embedding"].spec == P("model", None)
    assert adam[0].count.spec == P()
    # Adafactor's factored moments keep the box but lose a dimension: replicated, not mislabelled.
    factored = partitioning.param_shardings(
        jax.eval_shape(optax.adafactor(1e-3, min_dim_size_to_factor=8).init, abstract), mesh)
    specs = {s.spec for s in jax.tree_util.tree_leaves(factored)}
    assert P() in specs


@needs_8
def test_sharded_forward_on_4x2_mesh_equals_single_device():
    model = Transformer(CONFIG)
    enc, dec, tgt = make_batch(8)
    single_mesh = partitioning.create_mesh(devices=jax.devices()[:1])
    params1, _ = partitioning.sharded_init(init_fn(model), jax.random.PRNGKey(0), single_mesh)
    reference = np.asarray(jax.jit(model.apply)(params1, enc, dec, tgt))

    mesh = partitioning.create_mesh(num_partitions=2)
    assert mesh.shape == {"data": 4, "model": 2}
    params, shardings = partitioning.sharded_init(init_fn(model), jax.random.PRNGKey(0), mesh)
    embedding = params["params"]["token_embedder"]["embedding"]
    assert embedding.sharding.spec == P("model", None)
    assert embedding.addressable_shards[0].data.shape == (32, 16)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params1)

    batch = partitioning.shard_batch((enc, dec, tgt), mesh)
    assert batch[0].addressable_shards[0].data.shape == (2, 10)
    data = partitioning.batch_sharding(mesh)
    with partitioning.activate(mesh):
        forward = jax.jit(model.apply, in_shardings=(shardings, data, data, data),
                          out_shardings=data)
        logits = forward(params, *batch)
    assert logits.sharding.spec == P("data")
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5, rtol=1e-5)


@needs_8
def test_shard_batch_rejects_indivisible_batch():
    mesh = partitioning.create_mesh(num_partitions=2)
    with pytest.raises(UserError, match="batch size 6 is not divisible by the 4"):
        partitioning.shard_batch({"x": np.zeros((6, 3))}, mesh)
