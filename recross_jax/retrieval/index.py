"""Maximum-inner-product search over an embedded pool: exact blocked top-k in JAX, and ScaNN.

An index holds float vectors with one unique string id each and answers `search(queries, k)`
with the ids and scores of the k best rows per query, best first. `metric="dot"` scores by inner
product (SPEC §1.2); `"cosine"` L2-normalises the vectors at build time and the queries at search
time, then scores by inner product.

Backends:
  exact  the pool stays on the JAX device in fixed-size blocks; one jitted `lax.scan` scores a
         query batch against each block, keeps the block's top-k and merges it into a running
         top-k, so a (queries x pool) score matrix never exists. Ties go to the lower pool row.
  scann  ScaNN (imported only here): a k-means tree over the pool, anisotropic asymmetric hashing
         to score the searched leaves, and exact re-scoring ("reordering") of the best hashed
         candidates. Its parameters scale with the pool size (`ScannConfig.for_pool`); pools
         smaller than `brute_force_below` are searched exhaustively inside ScaNN.

An index directory holds `manifest.json` (backend, metric, dims, count, the embedder that made
the vectors, backend parameters), `ids.json`, and `vectors.npy` (exact) or `scann/` (ScaNN's
serialized assets). It is written to a temporary directory and renamed into place.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recross_jax.errors import UserError
from recross_jax.io_utils import read_json, read_json_object, write_json_atomic

BACKENDS = ("exact", "scann")
METRICS = ("dot", "cosine")
MANIFEST = "manifest.json"
IDS_FILE = "ids.json"
VECTORS_FILE = "vectors.npy"
SCANN_DIR = "scann"
EXACT_PARAMS = ("block_size", "query_batch")


class Index:
    """A searchable pool of vectors with string ids; use `build_index` or `load_index`."""

    backend = ""

    def __init__(self, ids: np.ndarray, metric: str, dims: int, embedder: Any, params: dict):
        self.ids = ids
        self.metric = metric
        self.dims = dims
        self.embedder = embedder
        self.params = params

    @property
    def count(self) -> int:
        """Number of vectors in the index."""
        return len(self.ids)

    def __len__(self) -> int:
        return self.count

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best pool rows for each query, best first.

        Args:
          queries: float array [q, dims].
          k: results per query; a k above the pool size returns the whole pool.
        Returns:
          ids: str array [q, min(k, count)]; scores: float32 array of the same shape, descending
          along each row (inner products; of L2-normalised vectors for cosine).
        """
        queries = _check_vectors(queries, "queries", dims=self.dims)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), self.count)
        if queries.shape[0] == 0:
            return np.zeros((0, k), dtype=self.ids.dtype), np.zeros((0, k), np.float32)
        if self.metric == "cosine":
            queries = l2_normalize(queries)
        rows, scores = self._search(queries, k)
        return self.ids[rows], np.asarray(scores, np.float32)

    @property
    def manifest(self) -> dict:
        """What `save` writes to manifest.json and `load_index` checks."""
        return {"backend": self.backend, "metric": self.metric, "dims": self.dims,
                "count": self.count, "embedder": self.embedder, "params": self.params}

    def save(self, directory: str) -> None:
        """Writes the index to `directory`, replacing an index already there, atomically."""
        def write(tmp: str) -> None:
            with open(os.path.join(tmp, IDS_FILE), "w", encoding="utf-8") as f:
                json.dump(self.ids.tolist(), f)
            self._save_backend(tmp)
            write_json_atomic(os.path.join(tmp, MANIFEST), self.manifest)
        _write_dir_atomic(directory, write)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Pool rows [q, k] and scores [q, k] for validated (normalised) queries, k <= count."""
        raise NotImplementedError

    def _save_backend(self, directory: str) -> None:
        raise NotImplementedError


class ExactIndex(Index):
    """Exact search: blocked matmul top-k in JAX, merged across blocks."""

    backend = "exact"

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, metric: str, embedder: Any,
                 block_size: int = 16384, query_batch: int = 256):
        for name, value in (("block_size", block_size), ("query_batch", query_batch)):
            if not isinstance(value, int) or value < 1:
                raise UserError(f"exact index parameter {name} must be a positive integer, "
                                f"got {value!r}")
        super().__init__(ids, metric, vectors.shape[1], embedder,
                         {"block_size": block_size, "query_batch": query_batch})
        # Small pools get one block of their own size rather than a mostly padded one.
        block = min(block_size, len(vectors))
        num_blocks = -(-len(vectors) // block)
        padded = np.zeros((num_blocks * block, vectors.shape[1]), np.float32)
        padded[:len(vectors)] = vectors
        self._blocks = jnp.asarray(padded.reshape(num_blocks, block, vectors.shape[1]))

    def vectors(self) -> np.ndarray:
        """The indexed vectors [count, dims] (normalised for cosine)."""
        return np.asarray(self._blocks).reshape(-1, self.dims)[:self.count]

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = [], []
        batch = self.params["query_batch"]
        for start in range(0, len(queries), batch):
            chunk = queries[start:start + batch]
            # Pad to a power of two so a stream of odd query counts compiles few shapes.
            size = min(batch, 1 << (len(chunk) - 1).bit_length())
            padded = np.zeros((size, self.dims), np.float32)
            padded[:len(chunk)] = chunk
            chunk_scores, chunk_rows = _blocked_top_k(self._blocks, padded, self.count, k)
            rows.append(np.asarray(chunk_rows)[:len(chunk)])
            scores.append(np.asarray(chunk_scores)[:len(chunk)])
        return np.concatenate(rows), np.concatenate(scores)

    def _save_backend(self, directory: str) -> None:
        np.save(os.path.join(directory, VECTORS_FILE), self.vectors())


@functools.partial(jax.jit, static_argnames=("k",))
def _blocked_top_k(blocks: jax.Array, queries: jax.Array, count: int,
                   k: int) -> tuple[jax.Array, jax.Array]:
    """Top-k (scores, rows) of `queries` [q, d] against `blocks` [nb, b, d] (first `count` rows)."""
    num_blocks, block, _ = blocks.shape
    block_k = min(k, block)

    def step(best, xs):
        best_scores, best_rows = best
        vectors, start = xs
        # HIGHEST keeps float32 products on accelerators whose default matmul is bf16.
        scores = jnp.dot(queries, vectors.T, precision=jax.lax.Precision.HIGHEST)
        rows = start + jnp.arange(block, dtype=jnp.int32)
        scores = jnp.where(rows < count, scores, -jnp.inf)
        top_scores, top_pos = jax.lax.top_k(scores, block_k)
        # Earlier blocks come first: lax.top_k is stable, so equal scores keep the lower row.
        merged_scores = jnp.concatenate([best_scores, top_scores], axis=1)
        merged_rows = jnp.concatenate([best_rows, rows[top_pos]], axis=1)
        new_scores, pos = jax.lax.top_k(merged_scores, k)
        return (new_scores, jnp.take_along_axis(merged_rows, pos, axis=1)), None

    init = (jnp.full((queries.shape[0], k), -jnp.inf, jnp.float32),
            jnp.full((queries.shape[0], k), -1, jnp.int32))
    starts = jnp.arange(num_blocks, dtype=jnp.int32) * block
    (scores, rows), _ = jax.lax.scan(step, init, (blocks, starts))
    return scores, rows


@dataclasses.dataclass(frozen=True)
class ScannConfig:
    """ScaNN parameters; `for_pool` scales them from the pool size.

    Attributes:
      brute_force: score every row exactly inside ScaNN (small pools); the rest is then unused.
      num_leaves: k-means tree partitions.
      leaves_to_search: partitions scored per query.
      training_sample_size: rows sampled to train the tree and the hashing codebooks.
      partition_avq: anisotropic weight of the tree's leaf assignment, which favours the
        inner-product error over the L2 one (None: plain k-means). At 1M x 384
        (scripts/bench_retrieval.py --noise 2, 40 leaves) recall@100 was 0.96-0.98 over two
        builds with 2.5 and 0.95-0.97 over three without; ScaNN's multi-threaded training
        makes large builds vary.
      dimensions_per_block: dims per asymmetric-hashing subspace (2 is ScaNN's recommendation).
      anisotropic_quantization_threshold: AVQ threshold (0.2 is ScaNN's choice for MIPS).
      reorder_k: hashed candidates re-scored exactly, at least ...
      reorder_multiplier: ... and at least this many times the requested k. In one 1M x 384
        build (--noise 2) recall@100 went 0.957 -> 0.972 from 250 to 500 re-scored
        candidates and stayed there at 1000 and 2000.
    """

    brute_force: bool
    num_leaves: int
    leaves_to_search: int
    training_sample_size: int
    partition_avq: float | None = 2.5
    dimensions_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder_k: int = 250
    reorder_multiplier: int = 5

    def __post_init__(self):
        for field in ("num_leaves", "leaves_to_search", "training_sample_size",
                      "dimensions_per_block", "reorder_k", "reorder_multiplier"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"ScaNN parameter {field} must be a positive integer, "
                                f"got {value!r}")
        if self.partition_avq is not None and not (
                isinstance(self.partition_avq, (int, float)) and self.partition_avq > 0):
            raise UserError(f"ScaNN parameter partition_avq must be positive or None, got "
                            f"{self.partition_avq!r}")
        if self.leaves_to_search > self.num_leaves:
            raise UserError(f"ScaNN leaves_to_search={self.leaves_to_search} exceeds "
                            f"num_leaves={self.num_leaves}")

    @classmethod
    def for_pool(cls, count: int, brute_force_below: int = 10_000,
                 search_fraction: float = 0.04, **overrides) -> ScannConfig:
        """Parameters for a pool of `count` rows, with explicit `overrides` on top.

        num_leaves ~ sqrt(count) keeps leaves and leaf size balanced (about 1000 x 1000 at 1M);
        `search_fraction` of the leaves is searched (at least 8); the tree and the codebooks
        train on a tenth of the pool, at least 100k rows (the whole pool when it is smaller).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            known = sorted(fields | {"brute_force_below", "search_fraction"})
            raise UserError(f"unknown ScaNN parameter {unknown[0]!r}; known: {', '.join(known)}")
        if not 0 < search_fraction <= 1:
            raise UserError(f"ScaNN search_fraction must be in (0, 1], got {search_fraction!r}")
        num_leaves = overrides.get("num_leaves", max(1, round(math.sqrt(count))))
        values = {
            "brute_force": count < brute_force_below,
            "num_leaves": num_leaves,
            "leaves_to_search": min(num_leaves, max(8, math.ceil(search_fraction * num_leaves))),
            "training_sample_size": min(count, max(100_000, count // 10)),
        }
        values.update(overrides)
        return cls(**values)


class ScannIndex(Index):
    """Approximate MIPS with ScaNN: tree + asymmetric hashing + exact reordering."""

    backend = "scann"

    def __init__(self, searcher: Any, ids: np.ndarray, metric: str, dims: int, embedder: Any,
                 config: ScannConfig):
        super().__init__(ids, metric, dims, embedder, dataclasses.asdict(config))
        self.config = config
        self._searcher = searcher

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, metric: str, embedder: Any,
              **params) -> ScannIndex:
        """Trains a ScaNN searcher on `vectors` (already normalised for cosine)."""
        config = ScannConfig.for_pool(len(vectors), **params)
        scann_ops_pybind = _import_scann()
        builder = scann_ops_pybind.builder(vectors, 10, "dot_product")
        if config.brute_force:
            builder = builder.score_brute_force()
        else:
            builder = (builder
                       .tree(num_leaves=config.num_leaves,
                             num_leaves_to_search=config.leaves_to_search,
                             training_sample_size=config.training_sample_size,
                             avq=config.partition_avq)
                       .score_ah(config.dimensions_per_block,
                                 anisotropic_quantization_threshold=(
                                     config.anisotropic_quantization_threshold),
                                 training_sample_size=config.training_sample_size)
                       .reorder(config.reorder_k))
        return cls(builder.build(), ids, metric, vectors.shape[1], embedder, config)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.config.brute_force:
            return self._run(queries, k, None, None)
        reorder = min(self.count, max(self.config.reorder_k, self.config.reorder_multiplier * k))
        rows, scores = self._run(queries, k, reorder, self.config.leaves_to_search)
        # ScaNN pads with NaN when the searched leaves hold fewer than k rows; those queries
        # are searched again over every leaf.
        short = np.isnan(scores).any(axis=1)
        if short.any():
            rows[short], scores[short] = self._run(queries[short], k, reorder,
                                                   self.config.num_leaves)
        return rows, scores

    def _run(self, queries: np.ndarray, k: int, reorder: int | None,
             leaves: int | None) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = self._searcher.search_batched_parallel(
            queries, final_num_neighbors=k, pre_reorder_num_neighbors=reorder,
            leaves_to_search=leaves)
        return np.asarray(rows, np.int64), np.asarray(scores, np.float32)

    def _save_backend(self, directory: str) -> None:
        os.makedirs(os.path.join(directory, SCANN_DIR))
        # Relative asset paths, so the directory stays valid after the atomic rename.
        self._searcher.serialize(os.path.join(directory, SCANN_DIR), relative_path=True)


def build_index(vectors: np.ndarray, ids: Sequence[str], backend: str = "scann",
                metric: str = "dot", embedder: Any = None, **params) -> Index:
    """Builds an index over `vectors` [n, d] with `ids[i]` naming row i.

    Args:
      vectors: the pool's embeddings, finite floats.
      ids: n unique strings (example ids).
      backend: "scann" or "exact".
      metric: "dot" (maximum inner product) or "cosine".
      embedder: JSON-serialisable description of what made the vectors (checkpoint and config
        hash, or "minilm"); saved in the manifest and checked by `load_index(expect=...)`.
      **params: backend parameters: `ScannConfig` fields, `brute_force_below` and
        `search_fraction` for ScaNN; `block_size` and `query_batch` for exact.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown index backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if metric not in METRICS:
        raise UserError(f"unknown index metric {metric!r}; choose one of {', '.join(METRICS)}")
    vectors = _check_vectors(vectors, "index vectors")
    if len(vectors) == 0:
        raise UserError("cannot build an index over an empty pool")
    ids = _check_ids(ids, len(vectors))
    try:
        json.dumps(embedder)  # Fail before the build, not at save time.
    except TypeError as e:
        raise UserError(f"index embedder description is not JSON-serialisable: {e}") from None
    if metric == "cosine":
        vectors = l2_normalize(vectors)
    if backend == "exact":
        unknown = sorted(set(params) - set(EXACT_PARAMS))
        if unknown:
            raise UserError(f"unknown exact index parameter {unknown[0]!r}; known: "
                            f"{', '.join(EXACT_PARAMS)}")
        return ExactIndex(vectors, ids, metric, embedder, **params)
    return ScannIndex.build(vectors, ids, metric, embedder, **params)


def load_index(directory: str, expect: dict | None = None) -> Index:
    """Loads an index saved by `Index.save`.

    Args:
      directory: the index directory.
      expect: manifest entries that must match, e.g. {"dims": 512, "metric": "dot",
        "embedder": {...}}; a mismatch raises a one-line UserError naming the entry.
    """
    manifest = read_manifest(directory)
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            raise UserError(f"index at {directory} has {key}={manifest.get(key)!r}, "
                            f"expected {value!r}")
    ids = np.asarray(read_json(os.path.join(directory, IDS_FILE), "index ids file"), dtype=str)
    if ids.ndim != 1 or len(ids) != manifest["count"]:
        raise UserError(f"index at {directory} is corrupt: {IDS_FILE} has {ids.size} ids, "
                        f"the manifest says {manifest['count']}")
    backend, metric, embedder = manifest["backend"], manifest["metric"], manifest["embedder"]
    if backend == "exact":
        path = os.path.join(directory, VECTORS_FILE)
        try:
            vectors = np.load(path)
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"index at {directory} is corrupt: cannot read {path} "
                            f"({_first_line(e)})") from None
        if vectors.shape != (manifest["count"], manifest["dims"]):
            raise UserError(f"index at {directory} is corrupt: {VECTORS_FILE} has shape "
                            f"{vectors.shape}, the manifest says "
                            f"({manifest['count']}, {manifest['dims']})")
        return ExactIndex(vectors, ids, metric, embedder, **manifest["params"])
    if backend == "scann":
        try:
            searcher = _import_scann().load_searcher(os.path.join(directory, SCANN_DIR))
        except (OSError, RuntimeError, ValueError) as e:
            raise UserError(f"index at {directory} is corrupt: cannot load "
                            f"{os.path.join(directory, SCANN_DIR)} ({_first_line(e)})"
                            ) from None
        return ScannIndex(searcher, ids, metric, manifest["dims"], embedder,
                          ScannConfig(**manifest["params"]))
    raise UserError(f"index at {directory} has unknown backend {backend!r}")


def read_manifest(directory: str) -> dict:
    """The manifest of an index directory, checked for the entries `load_index` needs.

    Raises:
      UserError: no index there, or an unreadable or incomplete manifest (named).
    """
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"no index at {directory} (missing {MANIFEST})")
    manifest = read_json_object(path, "index manifest",
                                ("backend", "metric", "dims", "count", "embedder", "params"))
    if not isinstance(manifest["params"], dict):
        raise UserError(f"index manifest {path} is corrupt: 'params' must be a JSON object")
    return manifest


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()),
                type(error).__name__)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)


def _check_vectors(vectors: Any, name: str, dims: int | None = None) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.floating)
                               or np.issubdtype(array.dtype, np.integer)):
        raise UserError(f"{name} must be a 2-D numeric array [rows, dims], got shape "
                        f"{array.shape} of {array.dtype}")
    if array.shape[1] == 0:
        raise UserError(f"{name} have zero dims")
    if dims is not None and array.shape[1] != dims:
        raise UserError(f"{name} have {array.shape[1]} dims, the index has {dims}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise UserError(f"{name} row {row} holds a NaN or infinite value")
    return array


def _check_ids(ids: Sequence[str], count: int) -> np.ndarray:
    if len(ids) != count:
        raise UserError(f"got {len(ids)} ids for {count} vectors")
    bad = next((i for i in ids if not isinstance(i, (str, np.str_)) or not i), None)
    if bad is not None:
        shown = str(bad) if isinstance(bad, np.str_) else bad
        raise UserError(f"index ids must be non-empty strings, got {shown!r}")
    array = np.asarray(ids, dtype=str)
    unique, counts = np.unique(array, return_counts=True)
    if len(unique) != count:
        raise UserError(f"duplicate index id {str(unique[np.argmax(counts > 1)])!r}")
    return array


def _import_scann():
    # ScaNN's package __init__ imports TensorFlow, so it is only imported by this backend.
    from scann import scann_ops_pybind  # pylint: disable=import-outside-toplevel
    return scann_ops_pybind


def _write_dir_atomic(directory: str, write: Callable[[str], None]) -> None:
    """Runs `write(tmp_dir)` then renames tmp_dir onto `directory` (an older index is replaced)."""
    directory = os.path.abspath(directory)
    if os.path.isdir(directory) and os.listdir(directory) and not os.path.isfile(
            os.path.join(directory, MANIFEST)):
        raise UserError(f"refusing to replace {directory}: it is not empty and holds no index")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"cannot save an index to {directory}: it is a file")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(directory)}-", dir=parent)
    try:
        write(tmp)
        if os.path.exists(directory):
            old = tmp + ".old"
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old)
        else:
            os.rename(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
