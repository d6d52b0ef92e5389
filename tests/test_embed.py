"""Pool embedding: sharding, manifest, resume after a kill, mismatch refusal, the T5 embedder."""
import json
import os

import numpy as np
import pytest

from recross_jax.errors import UserError
from recross_jax.retrieval import embed


class HashEmbedder:
    """A deterministic stand-in embedder: vector from the example id, optionally dying mid-way."""

    def __init__(self, dims=4, fail_after_calls=None, name="hash"):
        self.description = {"kind": name, "dims": dims}
        self.dims = dims
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def __call__(self, rows):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        seeds = [int(r["example_id"].split("#")[1]) for r in rows]
        return np.stack([np.random.default_rng(s).normal(size=self.dims) for s in seeds]).astype(np.float32)


def rows(n):
    return [{"example_id": f"t{i % 3}|train|tpl|#{i}", "task": f"t{i % 3}", "inputs": f"in {i}",
             "targets": f"out {i}", "answer_choices": []} for i in range(n)]


def test_build_writes_shards_and_manifest(tmp_path):
    manifest = embed.build_pool(rows(10), HashEmbedder(), str(tmp_path), shard_size=4, progress=False)
    assert manifest["count"] == 10 and manifest["dims"] == 4 and manifest["complete"]
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2]
    vectors, loaded_rows, _ = embed.load_pool(str(tmp_path))
    assert vectors.shape == (10, 4)
    assert [r["example_id"] for r in loaded_rows] == [r["example_id"] for r in rows(10)]
    assert loaded_rows[4]["task"] == "t1" and loaded_rows[4]["inputs"] == "in 4"
    np.testing.assert_array_equal(vectors[7], HashEmbedder()([rows(10)[7]])[0])


def test_killed_build_resumes_from_last_complete_shard(tmp_path):
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    embed.build_pool(rows(11), HashEmbedder(), str(straight_dir), shard_size=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        embed.build_pool(rows(11), HashEmbedder(fail_after_calls=2), str(resumed_dir), shard_size=3,
                         progress=False)
    partial = embed.read_manifest(str(resumed_dir))
    assert partial["count"] == 6 and not partial["complete"]
    with pytest.raises(UserError, match="incomplete"):
        embed.load_pool(str(resumed_dir))
    resumer = HashEmbedder()
    embed.build_pool(rows(11), resumer, str(resumed_dir), shard_size=3, progress=False)
    assert resumer.calls == 2  # only the two missing shards were embedded
    a, rows_a, _ = embed.load_pool(str(straight_dir))
    b, rows_b, _ = embed.load_pool(str(resumed_dir))
    np.testing.assert_array_equal(a, b)
    assert rows_a == rows_b
    assert not [f for f in os.listdir(resumed_dir) if f.startswith(".tmp")]


def test_failed_build_closes_its_progress_bar_so_the_error_starts_a_line(tmp_path, capsys):
    try:
        embed.build_pool(rows(11), HashEmbedder(fail_after_calls=2), str(tmp_path), shard_size=3,
                         progress=True, total=11)
    except KeyboardInterrupt:  # read while the traceback still holds the bar, as the CLI does
        err = capsys.readouterr().err
    assert "6/11" in err and err.endswith("\n")


def test_other_embedder_and_expectations_refused(tmp_path):
    embed.build_pool(rows(5), HashEmbedder(), str(tmp_path), shard_size=4, progress=False)
    with pytest.raises(UserError, match="another embedder"):
        embed.build_pool(rows(5), HashEmbedder(name="other"), str(tmp_path), progress=False)
    with pytest.raises(UserError, match="dims=4, expected 8"):
        embed.load_pool(str(tmp_path), expect={"dims": 8})
    with pytest.raises(UserError, match="no embedding pool"):
        embed.load_pool(str(tmp_path / "missing"))


def test_manifest_is_valid_json_with_embedder(tmp_path):
    embed.build_pool(rows(3), HashEmbedder(), str(tmp_path), progress=False)
    with open(tmp_path / embed.MANIFEST) as f:
        assert json.load(f)["embedder"] == {"kind": "hash", "dims": 4}


def test_t5_encoder_embedder_matches_direct_mean_pool():
    import flax.linen as nn
    import jax

    from recross_jax import partitioning
    from recross_jax.models import t5

    config = t5.T5Config(vocab_size=64, dtype="float32", emb_dim=16, num_heads=2, num_encoder_layers=1,
                         num_decoder_layers=1, head_dim=8, mlp_dim=32, dropout_rate=0.0)
    model = t5.Transformer(config)
    dummy = np.ones((1, 4), np.int32)
    params = jax.tree_util.tree_map(
        np.asarray, nn.unbox(model.init(jax.random.PRNGKey(0), dummy, dummy, dummy))["params"])
    tokenize = lambda text: [3 + (ord(c) % 60) for c in text]  # noqa: E731
    texts = ["a", "hello world", "x" * 40, "mid length text"]
    mesh = partitioning.create_mesh(num_partitions=2) if jax.device_count() >= 8 else None
    embedder = embed.T5EncoderEmbedder(config, params, tokenize, eos_id=1, description={"kind": "t5"},
                                       max_length=32, batch_size=3, mesh=mesh)
    got = embedder([{"inputs": t} for t in texts])
    assert got.shape == (4, 16)
    for text, vector in zip(texts, got):
        ids = np.asarray([(tokenize(text)[:31] + [1])], np.int32)
        hidden = model.apply({"params": params}, ids, method=t5.Transformer.encode)
        np.testing.assert_allclose(vector, np.asarray(hidden).mean(axis=1)[0], atol=2e-5)
