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
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from recross_jax.errors import UserError
from recross_jax.io_utils import atomic_path, read_json_object, read_jsonl, write_json_atomic

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
    with tqdm(total=total, initial=done, desc="embedding", unit="ex", disable=not progress) as bar:
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
            path = _shard_path(pool_dir, shard["index"], "vectors")
            try:
                vectors.append(np.load(path))
            except (OSError, ValueError, EOFError) as e:
                reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"embedding pool {pool_dir} is corrupt: cannot read {path} "
                                f"({reason})") from None
        path = _shard_path(pool_dir, shard["index"], "rows")
        rows.extend(row for _, row in read_jsonl(path, "embedding pool rows file"))
    if not with_vectors:
        return None, rows, manifest
    dims = manifest.get("dims") or 0
    return (np.concatenate(vectors) if vectors else np.zeros((0, dims), np.float32)), rows, manifest


def read_manifest(pool_dir: str) -> dict:
    """The manifest of a pool directory, or a UserError naming the directory."""
    path = os.path.join(pool_dir, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"no embedding pool at {pool_dir} (missing {MANIFEST})")
    manifest = read_json_object(path, "embedding pool manifest",
                                ("embedder", "dims", "count", "shards"))
    if not isinstance(manifest["shards"], list) or not isinstance(manifest["count"], int):
        raise UserError(f"embedding pool manifest {path} is corrupt: 'shards' must be a list "
                        "and 'count' an integer")
    return manifest


def check_resumable(pool_dir: str, description: dict) -> dict:
    """The manifest of the pool at `pool_dir`, which a build by `description` may resume.

    Raises:
      UserError: the pool was built by another embedder (or is corrupt).
    """
    manifest = read_manifest(pool_dir)
    recorded = manifest["embedder"]
    if isinstance(recorded, dict) and "vocabulary" not in recorded:  # built before it was recorded
        description = {k: v for k, v in description.items() if k != "vocabulary"}
    if recorded != description:
        raise UserError(f"{pool_dir} holds a pool built by another embedder "
                        f"({manifest['embedder']}); use a new directory or delete it")
    return manifest


def config_hash(obj: dict) -> str:
    """A short stable hash of a JSON-serialisable description."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _start_or_resume(out_dir: str, description: dict) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(path):
        manifest = check_resumable(out_dir, description)
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
    appended, as seqio's `append_eos_after_trim` does) and packed into length-bucketed batches
    (`retrieval.packing`): short texts share a row as separate segments, which T5's relative
    attention allows exactly (offsets within a segment are those of the text alone, and
    attention across segments is masked). `batch_size` counts rows of 64 tokens per call. The
    batch is sharded over the mesh's `data` axis and the parameters by the model's logical
    axis rules.
    """

    def __init__(self, config, params, tokenize: Callable[[str], Sequence[int]], eos_id: int,
                 description: dict, max_length: int = 512, batch_size: int = 64, mesh=None):
        import jax  # pylint: disable=import-outside-toplevel

        from recross_jax import models, partitioning  # pylint: disable=import-outside-toplevel
        from recross_jax.retrieval import packing  # pylint: disable=import-outside-toplevel
        self.description = description
        self.tokenize = tokenize
        self.eos_id = eos_id
        self.max_length = max_length
        self.dims = config.width
        self.mesh = mesh or partitioning.create_mesh()
        self._packer = packing.Packer(max_length, batch_size, self.mesh.shape["data"])
        model = models.build(config)
        dummy = np.ones((1, 1), np.int32)
        boxed = jax.eval_shape(lambda rng: model.init(rng, dummy, dummy, dummy), jax.random.PRNGKey(0))
        param_shardings = partitioning.param_shardings(boxed["params"], self.mesh)
        self.params = jax.device_put(params, param_shardings)
        batch_sharding = partitioning.batch_sharding(self.mesh)
        max_segments = self._packer.max_segments

        def encode(params, tokens, segments):
            hidden = model.apply({"params": params}, tokens, segments, method="encode")
            return packing.segment_mean(hidden, segments, max_segments[tokens.shape[1]])

        jitted = jax.jit(encode, in_shardings=(param_shardings, batch_sharding, batch_sharding),
                         out_shardings=batch_sharding)

        def embed_batch(batch: packing.Batch):
            # Positions unused: relative attention only.
            with partitioning.activate(self.mesh):  # returns before the batch is computed
                return jitted(self.params, batch.ids, batch.segments)

        self._embed_batch = embed_batch

    def __call__(self, rows: Sequence[dict]) -> np.ndarray:
        return self.embed_texts([row["inputs"] for row in rows])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [len(texts), emb_dim] in the order of `texts`."""
        from recross_jax.retrieval import packing  # pylint: disable=import-outside-toplevel
        tokens = [self._tokens(text) for text in texts]
        return packing.run_packed(self._packer.batches([(0, tokens, None)]), len(texts),
                                  self.dims, self._embed_batch)

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenize(text))[:self.max_length - 1] + [self.eos_id]
