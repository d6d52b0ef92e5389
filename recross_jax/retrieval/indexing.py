"""Building a retrieval index over a mixture, and retrieving for query examples.

An index directory holds `pool/` (the embedded examples, see `embed.py`) and `index/` (the
searchable structure, see `index.py`). Two embedders: `model` (the upstream T5's mean-pooled
last encoder layer, ReCross) and `sbert` (all-MiniLM-L6-v2, the SBERT baseline). The pool
manifest records which one, so queries are always embedded the same way as the pool.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import sys
from typing import Callable, Iterator, Sequence

import numpy as np

from recross_jax import corpus, io_utils
from recross_jax.errors import UserError
from recross_jax.retrieval import aggregate as aggregate_lib
from recross_jax.retrieval import embed
from recross_jax.retrieval import index as index_lib

EMBEDDERS = ("model", "sbert")
# The token limit of SBERT pools whose description predates recording it (`from_minilm`'s).
_SBERT_UNRECORDED_MAX_LENGTH = 256


def pool_rows(mixture: str, split: str = "train", max_examples_per_task: int | None = None) -> Iterator[dict]:
    """The text rows of a mixture's tasks, task by task in registry order (deterministic)."""
    for task in corpus.tasks_of(mixture):
        for example in itertools.islice(corpus.iter_examples(task, split), max_examples_per_task):
            yield {"example_id": example["example_id"], "task": example["task"],
                   "inputs": example["inputs_pretokenized"], "targets": example["targets_pretokenized"],
                   "answer_choices": example["answer_choices"]}


def make_embedder(kind: str, mixture: str, model_dir: str | None = None, max_length: int = 512,
                  batch_size: int = 64, num_partitions: int = 1,
                  dtype: str | None = None) -> embed.Embedder:
    """The pool/query embedder of `kind`; `model` needs the upstream `model_dir`.

    `dtype` is the activation dtype ('float32' or 'bfloat16'; default: the checkpoint's for
    `model`, float32 for `sbert`); bfloat16 embeds about twice as fast on CPUs with AMX and on
    accelerators, at a cosine of about 0.9999 to the float32 vectors.
    """
    from recross_jax import partitioning  # pylint: disable=import-outside-toplevel
    if kind == "sbert":  # batches split over every device's 'data' shard, parameters replicated
        from recross_jax.retrieval import sentence  # pylint: disable=import-outside-toplevel
        encoder = sentence.SentenceEmbedder.from_minilm(
            max_length=max_length, batch_size=batch_size, dtype=dtype or "float32",
            mesh=partitioning.create_mesh())
        return _TextEmbedder(encoder, {"kind": "sbert", "model": "all-MiniLM-L6-v2",
                                       "max_length": max_length, "dtype": encoder.config.dtype})
    if kind != "model":
        raise UserError(f"unknown embedder {kind!r} (choose from {', '.join(EMBEDDERS)})")
    if not model_dir:
        raise UserError("embedder 'model' needs the upstream model directory (model_dir)")
    from recross_jax import checkpoints  # pylint: disable=import-outside-toplevel
    config, params = checkpoints.restore_model(model_dir)
    if dtype is not None:
        config = dataclasses.replace(config, dtype=dtype)
    manager = checkpoints.CheckpointManager(model_dir, read_only=True)
    step = manager.latest_step()
    manager.close()
    vocabulary = corpus.tasks_of(mixture)[0].output_features["inputs"].vocabulary
    description = {"kind": "model", "model_dir": os.path.abspath(model_dir), "step": int(step),
                   "config_hash": embed.config_hash(config.to_dict()), "max_length": max_length,
                   "vocab_size": int(vocabulary.vocab_size), "dtype": config.dtype}
    return embed.T5EncoderEmbedder(config, params, vocabulary.encode, vocabulary.eos_id, description,
                                   max_length=max_length, batch_size=batch_size,
                                   mesh=partitioning.create_mesh(num_partitions))


def build(mixture: str, out_dir: str, embedder: str = "model",
          model_dir: str | None = None, split: str = "train", max_examples_per_task: int | None = 1000,
          max_length: int = 512, batch_size: int = 64, shard_size: int = 4096, backend: str = "scann",
          metric: str = "dot", num_partitions: int = 1, dtype: str | None = None,
          progress: bool = True, on_start: Callable[[str], object] | None = None) -> index_lib.Index:
    """Embeds the mixture's pool into `out_dir/pool` (resumable) and indexes it in `out_dir/index`.

    gin binds it in `gin/runs/index.gin` (`recross index build`); `on_start(out_dir)` runs once the
    directory exists (the CLI writes the resolved config.gin there). `max_length` and `dtype`
    (see `make_embedder`) are recorded, so queries are embedded the same way.
    """
    # First, so a bad embedder setting (kind, model_dir, dtype) leaves no directory behind.
    embedder_fn = make_embedder(embedder, mixture, model_dir, max_length, batch_size, num_partitions,
                                dtype)
    os.makedirs(out_dir, exist_ok=True)
    if on_start:
        on_start(out_dir)
    pool_dir = os.path.join(out_dir, "pool")
    manifest = embed.build_pool(pool_rows(mixture, split, max_examples_per_task), embedder_fn, pool_dir,
                                shard_size=shard_size, progress=progress)
    vectors, rows, _ = embed.load_pool(pool_dir)
    if not rows:
        raise UserError(f"mixture {mixture!r} has no {split!r} examples to index")
    index = index_lib.build_index(vectors, [r["example_id"] for r in rows], backend=backend, metric=metric,
                                  embedder={**manifest["embedder"], "mixture": mixture})
    index.save(os.path.join(out_dir, "index"))
    return index


def read_queries(path: str) -> list[str]:
    """Query inputs from a JSONL file with a non-empty string `inputs` on every line."""
    queries = []
    for number, record in io_utils.read_jsonl(path, what="queries file"):
        text = record.get("inputs")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}:{number}: each line needs a non-empty string field 'inputs'")
        queries.append(text)
    if not queries:
        raise UserError(f"{path}: no queries (the file is empty)")
    return queries


class Retriever:
    """An index directory opened for repeated retrieval: the index, its pool rows, and the
    embedder the manifest names (so queries are embedded exactly as the pool was)."""

    def __init__(self, index_dir: str, batch_size: int = 64):
        self.index = index_lib.load_index(os.path.join(index_dir, "index"))
        _, rows, _ = embed.load_pool(os.path.join(index_dir, "pool"), with_vectors=False)
        if len(rows) != len(self.index):
            raise UserError(f"{index_dir}: the index has {len(self.index)} entries but the pool {len(rows)}")
        self.rows = rows
        self.rows_by_id = {row["example_id"]: row for row in rows}
        described = self.index.embedder
        self.embedder = make_embedder(described["kind"], described.get("mixture", ""),
                                      described.get("model_dir"),
                                      described.get("max_length", _SBERT_UNRECORDED_MAX_LENGTH),
                                      batch_size, dtype=described.get("dtype"))

    def retrieve(self, queries: Sequence[str], num_candidates: int, mode: str = "concat",
                 exclude_tasks: Sequence[str] = ()) -> list[dict]:
        """SPEC §1.2: the aggregated top `num_candidates` pool rows for the queries, with scores.

        `exclude_tasks` drops candidates of these tasks, or of their subtasks (`name.*`), before
        aggregation (mining's same-task rule and the group-removal ablation); the search then
        goes deeper to make up.
        """
        if num_candidates < 1:
            raise UserError(f"--k must be at least 1, got {num_candidates}")
        if isinstance(self.embedder, embed.T5EncoderEmbedder):
            _warn_truncation(queries, self.embedder)
        vectors = self.embedder([{"inputs": q} for q in queries])
        k = aggregate_lib.needed_k(len(queries), num_candidates, mode)
        excluded = tuple(exclude_tasks)
        while True:
            ids, scores = self.index.search(vectors, min(k, len(self.index)))
            if excluded:
                keep = np.array([[not in_groups(self.rows_by_id[i]["task"], excluded) for i in row]
                                 for row in ids])
                depth = int(keep.sum(axis=1).min())
                ids = np.stack([row[mask][:depth] for row, mask in zip(ids, keep)])
                scores = np.stack([row[mask][:depth] for row, mask in zip(scores, keep)])
            enough = ids.shape[1] >= aggregate_lib.needed_k(len(queries), num_candidates, mode)
            if enough or k >= len(self.index):
                break
            k *= 2
        agg_ids, agg_scores = aggregate_lib.aggregate(ids, scores, num_candidates, mode)
        return [{**self.rows_by_id[i], "score": float(s)} for i, s in zip(agg_ids, agg_scores)]


def retrieve(index_dir: str, queries: Sequence[str], num_candidates: int, mode: str = "concat",
             batch_size: int = 64) -> list[dict]:
    """`Retriever(index_dir).retrieve(...)` for a single use (the CLI)."""
    if num_candidates < 1:
        raise UserError(f"--k must be at least 1, got {num_candidates}")
    return Retriever(index_dir, batch_size).retrieve(queries, num_candidates, mode)


def task_distribution(rows: Sequence[dict]) -> str:
    """A table of retrieved examples per upstream task, most frequent first."""
    counts = collections.Counter(row["task"] for row in rows)
    width = max(len(task) for task in counts)
    lines = [f"{'upstream task'.ljust(width)}  count  share"]
    lines += [f"{task.ljust(width)}  {n:5d}  {n / len(rows):5.1%}" for task, n in counts.most_common()]
    return "\n".join(lines)


def in_groups(task: str, groups: tuple[str, ...]) -> bool:
    """Whether `task` is one of `groups` or a subtask of one (`group.subtask`)."""
    return any(task == group or task.startswith(group + ".") for group in groups)


def _warn_truncation(queries: Sequence[str], embedder: embed.T5EncoderEmbedder) -> None:
    for number, query in enumerate(queries, 1):
        length = len(embedder.tokenize(query)) + 1
        if length > embedder.max_length:
            print(f"warning: query {number} has {length} tokens; truncated to {embedder.max_length}",
                  file=sys.stderr)


class _TextEmbedder:
    """Adapts a sentence embedder (`.encode(texts)`) to pool rows."""

    def __init__(self, sentence_embedder, description: dict):
        self.sentence_embedder = sentence_embedder
        self.description = description

    def __call__(self, rows: Sequence[dict]) -> np.ndarray:
        return self.sentence_embedder.encode([row["inputs"] for row in rows])
