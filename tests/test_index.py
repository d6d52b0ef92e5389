"""Index tests: exact search against numpy brute force, ScaNN recall, save/load, manifest checks."""
import json
import os
import re

import numpy as np
import pytest

from recross_jax.errors import UserError
from recross_jax.retrieval.index import ScannConfig, build_index, l2_normalize, load_index


def _ids(n):
    return [f"task|train|t|#{i}" for i in range(n)]


def _numpy_top_k(queries, vectors, k):
    """Brute-force reference: descending score, ties to the lower pool row."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    rows = np.broadcast_to(np.arange(vectors.shape[0]), scores.shape)
    order = np.lexsort((rows, -scores), axis=-1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def _clustered(rng, n, dims, clusters, noise=0.3):
    centers = rng.normal(size=(clusters, dims))
    return (centers[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dims))).astype(
        np.float32)


@pytest.fixture(scope="module")
def clustered():
    """A clustered pool (20k x 64), held-out queries from the same clusters, and its ScaNN index."""
    rng = np.random.default_rng(0)
    data = _clustered(rng, 20_200, 64, 50)
    pool, queries = data[:20_000], data[20_000:]
    return pool, queries, build_index(pool, _ids(len(pool)), backend="scann")


def test_exact_equals_numpy_with_ties():
    # Small integer vectors: every score is exact in float32 and ties are plentiful.
    rng = np.random.default_rng(1)
    vectors = rng.integers(-2, 3, size=(1000, 12)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(11, 12)).astype(np.float32)
    # 96 does not divide 1000 (a padded last block); 4 queries per batch (a padded last batch).
    index = build_index(vectors, _ids(1000), backend="exact", block_size=96, query_batch=4)
    ids, scores = index.search(queries, 40)
    rows, ref_scores = _numpy_top_k(queries, vectors, 40)
    assert ids.shape == scores.shape == (11, 40)
    np.testing.assert_array_equal(ids, np.asarray(_ids(1000))[rows])
    np.testing.assert_array_equal(scores, ref_scores)
    assert len(np.unique(scores)) < scores.size // 4  # the check above did cover ties


def test_exact_cosine_equals_numpy():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(500, 32)).astype(np.float32) * rng.uniform(0.1, 10, (500, 1))
    queries = rng.normal(size=(6, 32)).astype(np.float32) * 3
    index = build_index(vectors, _ids(500), backend="exact", metric="cosine", block_size=128)
    ids, scores = index.search(queries, 10)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rows, ref_scores = _numpy_top_k(queries / np.linalg.norm(queries, axis=1, keepdims=True),
                                    unit, 10)
    np.testing.assert_array_equal(ids, np.asarray(_ids(500))[rows])
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert np.all(scores <= 1 + 1e-6)
    # Dot on the same data ranks by magnitude too, so it differs from cosine.
    dot_ids, _ = build_index(vectors, _ids(500), backend="exact").search(queries, 10)
    assert (dot_ids != ids).any()


@pytest.mark.parametrize("backend", ["exact", "scann"])
def test_k_above_pool_size_returns_whole_pool(backend):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(5, 8)).astype(np.float32)
    ids, scores = build_index(vectors, _ids(5), backend=backend).search(vectors[:2], 9)
    assert ids.shape == scores.shape == (2, 5)
    for row, row_scores in zip(ids, scores):
        assert sorted(row) == sorted(_ids(5))
        assert np.all(np.diff(row_scores) <= 0)


def test_scann_recall_at_10_on_clustered_pool(clustered):
    pool, queries, index = clustered
    assert not index.config.brute_force  # the tree + hashing path, not the small-pool fallback
    assert index.config.num_leaves == 141
    ids, scores = index.search(queries, 10)
    exact_ids, _ = build_index(pool, _ids(len(pool)), backend="exact").search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])
    assert recall >= 0.9, recall
    # Reordering re-scores exactly: returned scores are the true inner products.
    rows = np.array([[int(i.rsplit("#", 1)[1]) for i in row] for row in ids])
    true = np.einsum("qd,qkd->qk", queries, pool[rows])
    np.testing.assert_allclose(scores, true, rtol=1e-4, atol=1e-3)


def test_scann_searches_every_leaf_when_searched_leaves_are_too_small(clustered):
    pool, queries, _ = clustered
    # One leaf of ~140 rows cannot hold 1000 neighbours: those queries are searched again.
    index = build_index(pool, _ids(len(pool)), backend="scann", leaves_to_search=1)
    ids, scores = index.search(queries[:3], 1000)
    assert np.isfinite(scores).all()
    assert all(len(set(row)) == 1000 for row in ids)
    assert np.all(np.diff(scores, axis=1) <= 1e-4)


def test_scann_small_pool_is_brute_force_and_exact():
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    index = build_index(vectors, _ids(300), backend="scann", metric="cosine")
    assert index.config.brute_force
    ids, scores = index.search(queries, 20)
    exact_ids, exact_scores = build_index(vectors, _ids(300), backend="exact",
                                          metric="cosine").search(queries, 20)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_scann_config_scales_with_pool():
    big = ScannConfig.for_pool(1_000_000)
    assert (big.num_leaves, big.leaves_to_search, big.training_sample_size) == (1000, 40, 100_000)
    assert not big.brute_force
    assert ScannConfig.for_pool(5000).brute_force
    assert ScannConfig.for_pool(40_000, num_leaves=50).leaves_to_search == 8
    with pytest.raises(UserError, match="unknown ScaNN parameter 'leaves'"):
        ScannConfig.for_pool(40_000, leaves=3)
    with pytest.raises(UserError, match="partition_avq must be positive or None, got -1"):
        ScannConfig.for_pool(40_000, partition_avq=-1)
    with pytest.raises(UserError, match="leaves_to_search=300 exceeds num_leaves=200"):
        ScannConfig.for_pool(40_000, leaves_to_search=300)


@pytest.mark.parametrize("backend,metric", [("exact", "dot"), ("exact", "cosine"),
                                            ("scann", "dot"), ("scann", "cosine")])
def test_save_load_round_trip(tmp_path, clustered, backend, metric):
    pool, queries, _ = clustered
    pool = pool[:12_000]  # above the brute-force threshold: the tree and codebooks round-trip
    index = build_index(pool, _ids(len(pool)), backend=backend, metric=metric,
                        embedder={"checkpoint": "ckpt/100", "config_hash": "abc"})
    before = index.search(queries, 25)
    directory = tmp_path / "index"
    index.save(str(directory))
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["backend"] == backend and manifest["metric"] == metric
    assert (manifest["dims"], manifest["count"]) == (64, 12_000)
    assert manifest["embedder"] == {"checkpoint": "ckpt/100", "config_hash": "abc"}
    loaded = load_index(str(directory), expect={"dims": 64, "metric": metric})
    after = loaded.search(queries, 25)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1], before[1], rtol=1e-6)
    assert loaded.manifest == index.manifest
    assert os.listdir(tmp_path) == ["index"]  # no temporary directory left behind


def test_save_replaces_an_older_index(tmp_path):
    directory = str(tmp_path / "index")
    vectors = np.eye(4, dtype=np.float32)
    build_index(vectors, _ids(4), backend="exact").save(directory)
    build_index(vectors[:3], _ids(3), backend="exact").save(directory)
    assert load_index(directory).count == 3
    assert sorted(os.listdir(tmp_path)) == ["index"]


def test_save_refuses_a_directory_that_is_not_an_index(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no index"):
        build_index(np.eye(3, dtype=np.float32), _ids(3), backend="exact").save(str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("expect,message", [
    ({"dims": 128}, "has dims=8, expected 128"),
    ({"metric": "cosine"}, "has metric='dot', expected 'cosine'"),
    ({"count": 3}, "has count=10, expected 3"),
    ({"embedder": "minilm"}, "has embedder={'checkpoint': 'a'}, expected 'minilm'"),
])
def test_manifest_mismatch_refused(tmp_path, expect, message):
    directory = str(tmp_path / "index")
    build_index(np.ones((10, 8), np.float32) * np.arange(10)[:, None], _ids(10), backend="exact",
                embedder={"checkpoint": "a"}).save(directory)
    with pytest.raises(UserError, match="^" + re.escape(f"index at {directory} {message}") + "$"):
        load_index(directory, expect=expect)


def test_load_missing_index(tmp_path):
    with pytest.raises(UserError, match="no index at .*missing manifest.json"):
        load_index(str(tmp_path))


@pytest.mark.parametrize("vectors,ids,kwargs,message", [
    (np.ones(8), _ids(8), {},
     r"index vectors must be a 2-D numeric array \[rows, dims\], got shape \(8,\)"),
    (np.ones((0, 4)), [], {}, "cannot build an index over an empty pool"),
    (np.ones((3, 4)), _ids(2), {}, "got 2 ids for 3 vectors"),
    (np.ones((3, 4)), ["a", "b", "a"], {}, "duplicate index id 'a'"),
    (np.ones((2, 4)), ["a", ""], {}, "index ids must be non-empty strings, got ''"),
    (np.array([[1.0, np.nan]]), ["a"], {}, "index vectors row 0 holds a NaN or infinite value"),
    (np.ones((2, 4)), ["a", "b"], {"backend": "faiss"}, "unknown index backend 'faiss'"),
    (np.ones((2, 4)), ["a", "b"], {"metric": "l2"}, "unknown index metric 'l2'"),
    (np.ones((2, 4)), ["a", "b"], {"backend": "exact", "blocks": 3},
     "unknown exact index parameter 'blocks'"),
    (np.ones((2, 4)), ["a", "b"], {"backend": "exact", "block_size": 0},
     "block_size must be a positive integer, got 0"),
    (np.ones((2, 4)), ["a", "b"], {"embedder": object()}, "not JSON-serialisable"),
])
def test_bad_build_input(vectors, ids, kwargs, message):
    with pytest.raises(UserError, match=message):
        build_index(vectors, ids, **{"backend": "exact", **kwargs})


@pytest.mark.parametrize("queries,k,message", [
    (np.ones(4), 3, r"queries must be a 2-D numeric array \[rows, dims\], got shape \(4,\)"),
    (np.ones((2, 5)), 3, "queries have 5 dims, the index has 4"),
    (np.array([["x"] * 4]), 3, "queries must be a 2-D numeric array"),
    (np.ones((2, 4)), 0, "k must be a positive integer, got 0"),
    (np.ones((2, 4)), 2.5, "k must be a positive integer, got 2.5"),
    (np.full((2, 4), np.inf), 3, "queries row 0 holds a NaN or infinite value"),
])
def test_bad_search_input(queries, k, message):
    index = build_index(np.eye(4, dtype=np.float32), _ids(4), backend="exact")
    with pytest.raises(UserError, match=message):
        index.search(queries, k)


def test_no_queries_give_empty_results():
    ids, scores = build_index(np.eye(4, dtype=np.float32), _ids(4), backend="exact").search(
        np.zeros((0, 4), np.float32), 3)
    assert ids.shape == scores.shape == (0, 3)


def test_l2_normalize_keeps_zero_rows():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
