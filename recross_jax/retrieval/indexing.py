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
                  dtype: str | None = None, vocabulary: dict | None = None,
                  step: int | None = None) -> embed.Embedder:
    """The pool/query embedder of `kind`; `model` needs the upstream `model_dir`.

    `dtype` is the activation dtype ('float32' or 'bfloat16'; default: the checkpoint's for
    `model`, float32 for `sbert`); bfloat16 embeds about twice as fast on CPUs with AMX and on
    accelerators, at a cosine of about 0.9999 to the float32 vectors. `vocabulary` is the
    SentencePiece file an index recorded ({"path", "extra_ids"}); without it the `model`
    embedder tokenizes with the vocabulary of `mixture`'s tasks (and records that file).
    `step` is the checkpoint of `model_dir` to embed with (default the latest; an index's
    queries use the step its manifest records, whatever was trained since).
    """
    from recross_jax import partitioning  # pylint: disable=import-outside-toplevel
    _check_embedder_settings(kind, model_dir, max_length, batch_size, num_partitions)
    if kind == "sbert":  # batches split over every device's 'data' shard, parameters replicated
        from recross_jax.retrieval import sentence  # pylint: disable=import-outside-toplevel
        encoder = sentence.SentenceEmbedder.from_minilm(
            max_length=max_length, batch_size=batch_size, dtype=dtype or "float32",
            mesh=partitioning.create_mesh())
        return _TextEmbedder(encoder, {"kind": "sbert", "model": "all-MiniLM-L6-v2",
                                       "max_length": max_length, "dtype": encoder.config.dtype})
    from recross_jax import checkpoints  # pylint: disable=import-outside-toplevel
    config, params = checkpoints.restore_model(model_dir, step)
    if dtype is not None:
        config = dataclasses.replace(config, dtype=dtype)
    if step is None:
        manager = checkpoints.CheckpointManager(model_dir, read_only=True)
        step = manager.latest_step()
        manager.close()
    vocab = (_recorded_vocabulary(vocabulary) if vocabulary
             else corpus.tasks_of(mixture)[0].output_features["inputs"].vocabulary)
    description = {"kind": "model", "model_dir": os.path.abspath(model_dir), "step": int(step),
                   "config_hash": embed.config_hash(config.to_dict()), "max_length": max_length,
                   "vocab_size": int(vocab.vocab_size), "dtype": config.dtype,
                   "vocabulary": vocabulary or _vocabulary_record(vocab)}
    embedder = embed.T5EncoderEmbedder(config, params, vocab.encode, vocab.eos_id, description,
                                       max_length=max_length, batch_size=batch_size,
                                       mesh=partitioning.create_mesh(num_partitions))
    embedder.vocabulary = vocab
    return embedder


def _check_embedder_settings(kind: str, model_dir: str | None, max_length: int, batch_size: int,
                             num_partitions: int) -> None:
    """The embedder's settings, checked before anything is loaded or written (the configs
    check `dtype` as they are built, before anything is written too)."""
    if kind not in EMBEDDERS:
        raise UserError(f"unknown embedder {kind!r} (choose from {', '.join(EMBEDDERS)})")
    if kind == "model" and not model_dir:
        raise UserError("embedder 'model' needs the upstream model directory (model_dir)")
    for name, value in (("max_length", max_length), ("batch_size", batch_size),
                        ("num_partitions", num_partitions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"indexing {name} must be a positive integer, got {value!r}")


def _vocabulary_record(vocabulary) -> dict | None:
    """What an index records of the vocabulary that tokenized its pool: the SentencePiece file
    and its extra ids, or the WordPiece `tokenizer.json`, so queries need no task module or
    binding to be tokenized the same way."""
    from recross_jax.wordpiece import WordPieceVocabulary  # pylint: disable=import-outside-toplevel
    vocabulary = getattr(vocabulary, "resolved", vocabulary)  # the project's lazy vocabulary
    if isinstance(vocabulary, WordPieceVocabulary):
        return {"kind": "wordpiece", "path": vocabulary.tokenizer_file}
    path = getattr(vocabulary, "sentencepiece_model_file", None)
    if not path:
        return None
    return {"kind": "sentencepiece", "path": os.path.abspath(path),
            "extra_ids": int(vocabulary.extra_ids)}


def _recorded_vocabulary(record: dict):
    """The vocabulary an index recorded (see `_vocabulary_record`)."""
    import seqio  # pylint: disable=import-outside-toplevel
    path = record.get("path") if isinstance(record, dict) else None
    if not isinstance(path, str) or not os.path.isfile(path):
        raise UserError(f"the vocabulary this index was embedded with is gone: {path} (restore "
                        "the file, or rebuild the index)")
    if record.get("kind") == "wordpiece":
        from recross_jax.wordpiece import WordPieceVocabulary  # pylint: disable=import-outside-toplevel
        vocabulary = WordPieceVocabulary(path)
        _ = vocabulary.vocab_size  # an unreadable tokenizer is a UserError now
        return vocabulary
    try:
        vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=int(record.get("extra_ids", 0)))
        _ = vocabulary.vocab_size
    except Exception as e:  # pylint: disable=broad-except  (protobuf/sentencepiece errors)
        raise UserError(f"the vocabulary this index was embedded with, {path}, is not a "
                        f"SentencePiece model ({type(e).__name__})") from None
    return vocabulary


def check_index(index_dir: str, kind: str | None = None, model_dir: str | None = None) -> dict:
    """Checks, without loading vectors, that `index_dir` holds a finished index (naming what is
    wrong: incomplete, corrupt, missing) and, with `kind`, that it was embedded by that kind of
    embedder -- with `model_dir` too, by that model. Returns the index's embedder description.

    A stage that needs the upstream model's own index must not silently search another one (an
    SBERT index would give SBERT's retrieval under the model's name).
    """
    if not os.path.isdir(index_dir):
        raise UserError(f"index directory not found: {index_dir} (see `recross index build`)")
    pool_dir = os.path.join(index_dir, "pool")
    index_manifest = os.path.join(index_dir, "index", index_lib.MANIFEST)
    if os.path.isfile(os.path.join(pool_dir, embed.MANIFEST)):
        pool = embed.read_manifest(pool_dir)
        if not pool.get("complete") or not os.path.isfile(index_manifest):
            raise UserError(f"index {index_dir} is incomplete ({pool['count']} examples embedded "
                            "so far; the build was interrupted): re-run the same `recross index "
                            "build` command to resume it")
    elif not os.path.isfile(index_manifest):
        raise UserError(f"no index at {index_dir} (neither pool/ nor index/ holds a "
                        f"{embed.MANIFEST}; see `recross index build`)")
    described = index_lib.read_manifest(os.path.join(index_dir, "index"))["embedder"]
    if not isinstance(described, dict):
        raise UserError(f"index {index_dir} does not say what embedded it ({described!r}); "
                        "rebuild it with `recross index build`")
    made_by = described.get("kind")
    if kind is not None and made_by != kind:
        raise UserError(f"index {index_dir} was embedded by {made_by!r} "
                        f"({described.get('model', described.get('model_dir', 'unknown'))}), "
                        f"but this stage needs an index embedded by {kind!r}")
    if kind == "model" and model_dir is not None:
        from recross_jax import checkpoints  # pylint: disable=import-outside-toplevel
        config = checkpoints.read_model_config(model_dir)
        if described.get("dtype"):
            config = dataclasses.replace(config, dtype=described["dtype"])
        if described.get("config_hash") != embed.config_hash(config.to_dict()):
            raise UserError(f"index {index_dir} was embedded by another model "
                            f"({described.get('model_dir')}) than {model_dir}: its config "
                            "differs; build the index with this model")
    return described


def build(mixture: str, out_dir: str, embedder: str = "model",
          model_dir: str | None = None, split: str = "train", max_examples_per_task: int | None = 1000,
          max_length: int = 512, batch_size: int = 64, shard_size: int = 4096, backend: str = "scann",
          metric: str = "dot", num_partitions: int = 1, dtype: str | None = None,
          progress: bool = True, on_start: Callable[[str], object] | None = None) -> index_lib.Index:
    """Embeds the mixture's pool into `out_dir/pool` (resumable) and indexes it in `out_dir/index`.

    gin binds it in `gin/runs/index.gin` (`recross index build`); `on_start(out_dir)` runs once
    every setting is checked and the directory exists (the CLI writes the resolved config.gin
    there). `max_length`, `dtype` and the vocabulary (see `make_embedder`) are recorded, so
    queries are embedded the same way.
    """
    # Every setting first, so that bad input leaves no directory behind.
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UserError(f"shard_size must be a positive integer, got {shard_size!r}")
    if max_examples_per_task is not None and (not isinstance(max_examples_per_task, int)
                                              or max_examples_per_task < 1):
        raise UserError(f"max_examples_per_task must be a positive integer or None, got "
                        f"{max_examples_per_task!r}")
    if backend not in index_lib.BACKENDS:
        raise UserError(f"unknown index backend {backend!r}; choose one of "
                        f"{', '.join(index_lib.BACKENDS)}")
    if metric not in index_lib.METRICS:
        raise UserError(f"unknown index metric {metric!r}; choose one of "
                        f"{', '.join(index_lib.METRICS)}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"INDEX_DIR {out_dir} is a file, not a directory")
    tasks = corpus.tasks_of(mixture)
    if any(split not in task.splits for task in tasks):
        task = next(task for task in tasks if split not in task.splits)
        raise UserError(f"task {task.name!r} of {mixture!r} has no split {split!r} (it has: "
                        f"{', '.join(task.splits)})")
    embedder_fn = make_embedder(embedder, mixture, model_dir, max_length, batch_size, num_partitions,
                                dtype)
    pool_dir = os.path.join(out_dir, "pool")
    if os.path.isfile(os.path.join(pool_dir, embed.MANIFEST)):  # resuming: the same embedder?
        embed.check_resumable(pool_dir, embedder_fn.description)
    os.makedirs(out_dir, exist_ok=True)
    if on_start:
        on_start(out_dir)
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

    def __init__(self, index_dir: str, batch_size: int = 64, kind: str | None = None,
                 model_dir: str | None = None):
        check_index(index_dir, kind, model_dir)
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
                                      batch_size, dtype=described.get("dtype"),
                                      vocabulary=described.get("vocabulary"),
                                      step=described.get("step"))
        # The upstream model's tokenizer (None for SBERT indexes).
        self.vocabulary = getattr(self.embedder, "vocabulary", None)

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
    """One line for all queries longer than the embedder takes (a study retrieves thousands of
    times: a line per query would bury its progress bar)."""
    lengths = [len(embedder.tokenize(query)) + 1 for query in queries]
    long = [n for n in lengths if n > embedder.max_length]
    if long:
        print(f"warning: {len(long)} of {len(queries)} queries are longer than {embedder.max_length} "
              f"tokens (longest {max(long)}) and are truncated to it", file=sys.stderr)


class _TextEmbedder:
    """Adapts a sentence embedder (`.encode(texts)`) to pool rows."""

    def __init__(self, sentence_embedder, description: dict):
        self.sentence_embedder = sentence_embedder
        self.description = description

    def __call__(self, rows: Sequence[dict]) -> np.ndarray:
        return self.sentence_embedder.encode([row["inputs"] for row in rows])
