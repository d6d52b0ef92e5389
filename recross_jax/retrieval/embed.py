"""Embedding a pool of examples into shards on disk, resumably.

A pool directory holds `vectors-NNNNN.npy` (float32 [n, d]) and `rows-NNNNN.jsonl` (one line per
vector: `example_id`, `task`, `inputs`, `targets`, `answer_choices`) per shard, and a
`manifest.json` listing the complete shards with their counts, the embedder that made them
(checkpoint, config hash), the dims and the total count. A shard is listed only once both of its
files are written (atomically), so a killed build resumes from its last complete shard.

Two embedders: the upstream T5's last encoder layer mean-pooled over non-padding tokens (SPEC
§1.2, `T5EncoderEmbedder`) and any sentence embedder with `.encode(texts)` (the SBERT baseline).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from recross_jax.errors import UserError
from recross_jax.io_utils import atomic_path, write_json_atomic

MANIFEST = "manifest.json"
ROW_FIELDS = ("example_id", "task", "inputs", "targets", "answer_choices")


class Embedder(Protocol):
    """Turns a batch of pool rows into one float32 vector each."""

    description: dict

    def __call__(self, rows: Sequence[dict]) -> np.ndarray:
        ...


def build_pool(rows: Iterable[dict], embedder: Embedder, out_dir: str, shard_size: int = 4096,
               progress: bool = True, total: int | None = None) -> dict:
    """Embeds `rows` into shards under `out_dir`, resuming after the last complete shard.

    Args:
      rows: pool examples in a deterministic order (the resume point is a count of rows).
      embedder: maps a shard's rows to vectors; its `description` goes into the manifest and
        must match the one of an existing partial build.
      out_dir: the pool directory.
      shard_size: rows per shard.
      progress: show a progress bar.
      total: number of rows, for the progress bar only.
    Returns:
      The final manifest.
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    if shard_size < 1:
        raise UserError(f"shard_size must be positive, got {shard_size}")
    manifest = _start_or_resume(out_dir, embedder.description)
    done = manifest["count"]
    bar = tqdm(total=total, initial=done, desc="embedding", unit="ex", disable=not progress)
    for shard_rows in _chunks(itertools.islice(rows, done, None), shard_size):
        vectors = np.asarray(embedder(shard_rows), dtype=np.float32)
        if vectors.shape[0] != len(shard_rows) or vectors.ndim != 2:
            raise ValueError(f"embedder returned {vectors.shape} for {len(shard_rows)} rows")
        index = len(manifest["shards"])
        _write_shard(out_dir, index, shard_rows, vectors)
        manifest["shards"].append({"index": index, "count": len(shard_rows)})
        manifest["count"] += len(shard_rows)
        manifest["dims"] = int(vectors.shape[1])
        write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
        bar.update(len(shard_rows))
    bar.close()
    manifest["complete"] = True
    write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


def load_pool(pool_dir: str, expect: dict | None = None,
              with_vectors: bool = True) -> tuple[np.ndarray | None, list[dict], dict]:
    """Loads a complete pool: (vectors [n, d] or None without `with_vectors`, rows, manifest).

    `expect` holds manifest entries (e.g. {"embedder": {...}, "dims": 512}) that must match.
    """
    manifest = read_manifest(pool_dir)
    if not manifest.get("complete"):
        raise UserError(f"embedding pool {pool_dir} is incomplete ({manifest['count']} rows so far): "
                        "run the build again to resume it")
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            raise UserError(f"embedding pool {pool_dir} has {key}={manifest.get(key)!r}, expected {value!r}")
    vectors, rows = [], []
    for shard in manifest["shards"]:
        if with_vectors:
            vectors.append(np.load(_shard_path(pool_dir, shard["index"], "vectors")))
        with open(_shard_path(pool_dir, shard["index"], "rows"), encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f)
    if not with_vectors:
        return None, rows, manifest
    dims = manifest.get("dims") or 0
    return (np.concatenate(vectors) if vectors else np.zeros((0, dims), np.float32)), rows, manifest


def read_manifest(pool_dir: str) -> dict:
    """The manifest of a pool directory, or a UserError naming the directory."""
    path = os.path.join(pool_dir, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"no embedding pool at {pool_dir} (missing {MANIFEST})")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def mean_pool(hidden: "jax.Array", tokens: "jax.Array") -> "jax.Array":  # noqa: F821
    """Mean of `hidden` [b, l, d] over the positions where `tokens` [b, l] is not padding (0)."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    mask = (tokens != 0).astype(hidden.dtype)[..., None]
    return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


def row_lengths(max_length: int, shortest: int) -> tuple[int, ...]:
    """The padded lengths of jitted batches, from `shortest` (>= 8) to `max_length`: 64, 80, 96,
    112, 128, 160, ... in steps of a quarter of the last power of two, so a sequence pads by less
    than a quarter of its length while a few shapes (four per doubling) are compiled.
    """
    lengths, size = [], shortest
    while size < max_length:
        lengths.append(size)
        size += 1 << (size.bit_length() - 3)
    return tuple(lengths) + (max_length,)


def bucket_length(length: int, max_length: int, shortest: int = 16) -> int:
    """The padded length for a sequence: the shortest of `row_lengths` that holds it."""
    lengths = row_lengths(max_length, shortest)
    return lengths[min(int(np.searchsorted(lengths, length)), len(lengths) - 1)]


def config_hash(obj: dict) -> str:
    """A short stable hash of a JSON-serialisable description."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def batches_by_length(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches over rows sorted by length, so each batch pads to a similar length."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def embed_sorted(lengths: Sequence[int], batch_size: int,
                 embed_batch: Callable[[np.ndarray], Any]) -> np.ndarray:
    """Runs `embed_batch(indices)` over length-sorted batches and puts vectors back in order.

    `embed_batch` returns vectors for at least `len(indices)` rows (extra padding rows are
    dropped), possibly still being computed (a jax.Array): each batch is read back only after the
    next one is dispatched, so the host prepares a batch while the device runs the previous one.
    """
    out = np.zeros((0, 0), np.float32)

    def collect(indices: np.ndarray, vectors: Any) -> None:
        nonlocal out
        vectors = np.asarray(vectors, dtype=np.float32)[:len(indices)]
        if not out.size:
            out = np.zeros((len(lengths), vectors.shape[1]), np.float32)
        out[indices] = vectors

    previous = None
    for indices in batches_by_length(lengths, batch_size):
        current = (indices, embed_batch(indices))
        if previous is not None:
            collect(*previous)
        previous = current
    if previous is not None:
        collect(*previous)
    return out


def _start_or_resume(out_dir: str, description: dict) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(path):
        manifest = read_manifest(out_dir)
        if manifest["embedder"] != description:
            raise UserError(f"{out_dir} holds a pool built by another embedder "
                            f"({manifest['embedder']}); use a new directory or delete it")
        manifest["complete"] = False
        return manifest
    os.makedirs(out_dir, exist_ok=True)
    return {"embedder": description, "dims": None, "count": 0, "shards": [], "complete": False}


def _write_shard(out_dir: str, index: int, rows: Sequence[dict], vectors: np.ndarray) -> None:
    with atomic_path(_shard_path(out_dir, index, "vectors")) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, vectors)
    with atomic_path(_shard_path(out_dir, index, "rows")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: row.get(k) for k in ROW_FIELDS}) + "\n")


def _shard_path(pool_dir: str, index: int, kind: str) -> str:
    return os.path.join(pool_dir, f"{kind}-{index:05d}.{'npy' if kind == 'vectors' else 'jsonl'}")


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class T5EncoderEmbedder:
    """SPEC §1.2: the upstream model's last encoder layer, mean-pooled over non-padding tokens.

    Rows are tokenized from their `inputs` text (trimmed to `max_length - 1`, then EOS
    appended, as seqio's `append_eos_after_trim` does),
    sorted by length and run in fixed-size batches padded to the `row_lengths` buckets, so the
    jitted encoder compiles once per bucket. The batch is sharded over the mesh's
    `data` axis and the parameters by the model's logical axis rules.
    """

    def __init__(self, config, params, tokenize: Callable[[str], Sequence[int]], eos_id: int,
                 description: dict, max_length: int = 512, batch_size: int = 64, mesh=None):
        import jax  # pylint: disable=import-outside-toplevel

        from recross_jax import partitioning  # pylint: disable=import-outside-toplevel
        from recross_jax.models import t5  # pylint: disable=import-outside-toplevel
        self.description = description
        self.tokenize = tokenize
        self.eos_id = eos_id
        self.max_length = max_length
        self.mesh = mesh or partitioning.create_mesh()
        data_size = self.mesh.shape["data"]
        self.batch_size = -(-batch_size // data_size) * data_size
        model = t5.Transformer(config)
        dummy = np.ones((1, 1), np.int32)
        boxed = jax.eval_shape(lambda rng: model.init(rng, dummy, dummy, dummy), jax.random.PRNGKey(0))
        param_shardings = partitioning.param_shardings(boxed["params"], self.mesh)
        self.params = jax.device_put(params, param_shardings)
        self._batch_sharding = partitioning.batch_sharding(self.mesh)

        def encode(params, tokens):
            hidden = model.apply({"params": params}, tokens, method=t5.Transformer.encode)
            return mean_pool(hidden.astype(np.float32), tokens)

        self._encode = jax.jit(encode, in_shardings=(param_shardings, self._batch_sharding),
                               out_shardings=self._batch_sharding)

    def __call__(self, rows: Sequence[dict]) -> np.ndarray:
        return self.embed_texts([row["inputs"] for row in rows])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [len(texts), emb_dim] in the order of `texts`."""
        token_lists = [self._tokens(text) for text in texts]
        return embed_sorted([len(t) for t in token_lists], self.batch_size,
                            lambda indices: self._embed_batch([token_lists[i] for i in indices]))

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenize(text))[:self.max_length - 1] + [self.eos_id]

    def _embed_batch(self, token_lists: list[list[int]]) -> np.ndarray:
        import jax  # pylint: disable=import-outside-toplevel

        from recross_jax import partitioning  # pylint: disable=import-outside-toplevel
        length = bucket_length(max(len(t) for t in token_lists), self.max_length)
        tokens = np.zeros((self.batch_size, length), np.int32)
        for i, ids in enumerate(token_lists):
            tokens[i, :len(ids)] = ids
        with partitioning.activate(self.mesh):  # returns before the batch is computed
            return self._encode(self.params, jax.device_put(tokens, self._batch_sharding))
