"""Looking at registered SeqIO data: list tasks and mixtures, show examples, summarise lengths.

This is what `recross data ...` runs. Tasks are registered by importing `tasks.*` modules (the
CLI does that by name), so nothing here imports `tasks/`.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import sys
from typing import Callable, Iterator, Sequence

import numpy as np

from recross_jax.errors import UserError

PERCENTILES = (50, 90, 99, 100)

# (num_sets, num_queries, seed) -> query sets, each a list of example rows (SPEC §0 fields).
QuerySource = Callable[[int, int, int], list[list[dict]]]
# Task name -> where its query sets come from, for task families that ship their own (the ReCross
# release's BIG-bench targets come with the authors' query sets).
_QUERY_SOURCES: dict[str, QuerySource] = {}
# Name prefix -> a function saying why such a name is unknown (or None), for task families whose
# tasks register only when asked (e.g. `bigbench.*` needs a BIG-bench checkout).
_UNKNOWN_NAME_HINTS: dict[str, Callable[[], str | None]] = {}


@dataclasses.dataclass(frozen=True)
class TaskStats:
    """Size and token lengths of one task's split."""
    task: str
    examples: int
    inputs_percentiles: tuple[int, ...]
    targets_percentiles: tuple[int, ...]
    with_choices: int


def list_names(mixtures: bool = False) -> list[str]:
    """Names of the registered tasks, or of the registered mixtures."""
    import seqio  # pylint: disable=import-outside-toplevel
    registry = seqio.MixtureRegistry if mixtures else seqio.TaskRegistry
    return sorted(registry.names())


def get_provider(name: str):
    """The registered task or mixture `name`, or a UserError saying what to do instead."""
    import seqio  # pylint: disable=import-outside-toplevel
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    if name in seqio.MixtureRegistry.names():
        return seqio.MixtureRegistry.get(name)
    hints = (hint() for prefix, hint in _UNKNOWN_NAME_HINTS.items() if name.startswith(prefix))
    reason = next((h for h in hints if h), "see `recross data list [--mixtures]`")
    raise UserError(f"unknown task or mixture: {name!r} ({reason})")


def register_unknown_name_hint(prefix: str, hint: Callable[[], str | None]) -> None:
    """Makes an unknown name starting with `prefix` explain itself with `hint()` (when not None)."""
    _UNKNOWN_NAME_HINTS[prefix] = hint


def raw_example_id(example_id: str) -> str:
    """The raw example behind a prompted example: its id ("task|split|template|#index") without
    the template, so the prompted variants of one raw example share it."""
    parts = example_id.split("|")
    if len(parts) < 4:
        return example_id
    return "|".join(parts[:2] + parts[-1:])


def held_out_examples(task: str, split: str = "validation") -> list[dict]:
    """`task`'s `split` examples (Python dicts) less those sharing a raw example with its `train`
    split: data a model trained on the task has not seen (the ReCross release's upstream and
    validation files share raw examples)."""
    from tasks import vocab  # pylint: disable=import-outside-toplevel  (tasks import this module)
    trained = {raw_example_id(row["example_id"]) for row in vocab.task_examples(task, "train")}
    return [row for row in vocab.task_examples(task, split)
            if raw_example_id(row["example_id"]) not in trained]


def register_query_source(task: str, source: QuerySource) -> None:
    """Makes `source` give the query sets of target `task` (see `QuerySource`)."""
    _QUERY_SOURCES[task] = source


def query_source(task: str) -> QuerySource | None:
    """The registered query source of `task`, or None (query sets are then drawn by the caller)."""
    return _QUERY_SOURCES.get(task)


@functools.cache
def keep_tensorflow_on_host() -> None:
    """Hides GPUs from TensorFlow, as T5X does: tf.data runs on the host, and a TensorFlow GPU
    context would take most of the accelerator's memory from JAX. Call it before TensorFlow runs
    an op (later, its devices are fixed and this changes nothing).

    TensorFlow's device probe logs "failed call to cuInit" at ERROR level on a machine without
    a CUDA driver, on stderr's file descriptor; as TensorFlow gets no GPU either way, that line
    is discarded.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's devices were initialized before this call
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def prepare_datasets(provider) -> None:
    """Host-side setup before a dataset of `provider` is built: TensorFlow kept off the
    accelerators, and the vocabulary of every output feature of its tasks loaded now, so that a
    missing vocabulary file is its own UserError rather than a TensorFlow StagingError raised
    from inside the traced tokenize map of a dataset."""
    keep_tensorflow_on_host()
    for task in getattr(provider, "tasks", [provider]):
        for feature in task.output_features.values():
            _ = feature.vocabulary.vocab_size


def tasks_of(name: str) -> list:
    """The tasks of a mixture, or the task itself as a one-element list."""
    provider = get_provider(name)
    return list(getattr(provider, "tasks", [provider]))


def iter_examples(task, split: str) -> Iterator[dict]:
    """Tokenized examples of one task's split as Python values (strings decoded, ids as lists)."""
    if split not in task.splits:
        raise UserError(f"task {task.name!r} has no split {split!r} (it has: {', '.join(task.splits)})")
    prepare_datasets(task)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
    for example in dataset.as_numpy_iterator():
        yield {key: _to_python(value) for key, value in example.items()}


def show(name: str, n: int, split: str = "train") -> list[dict]:
    """The first `n` examples of a task (of each task, in order, for a mixture; `n` overall)."""
    if n < 1:
        raise UserError(f"-n must be at least 1, got {n}")
    shown = []
    for task in tasks_of(name):
        shown.extend(itertools.islice(iter_examples(task, split), n - len(shown)))
        if len(shown) >= n:
            break
    return shown


def stats(name: str, split: str = "train", max_examples_per_task: int | None = None,
          progress: bool = True) -> list[TaskStats]:
    """Examples per task and token-length percentiles (50/90/99/max) of inputs and targets."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    result = []
    for task in tqdm(tasks_of(name), desc=f"stats {name}", unit="task", disable=not progress):
        examples = itertools.islice(iter_examples(task, split), max_examples_per_task)
        inputs_len, targets_len, with_choices = [], [], 0
        for example in examples:
            inputs_len.append(len(example["inputs"]))
            targets_len.append(len(example["targets"]))
            with_choices += bool(example.get("answer_choices"))
        result.append(TaskStats(task.name, len(inputs_len), _percentiles(inputs_len),
                                _percentiles(targets_len), with_choices))
    return result


def format_stats(rows: Sequence[TaskStats]) -> str:
    """A plain-text table of `stats` rows with a total line."""
    header = ("task", "examples", "mc", "inputs p50/p90/p99/max", "targets p50/p90/p99/max")
    lines = [(r.task, str(r.examples), str(r.with_choices), "/".join(map(str, r.inputs_percentiles)),
              "/".join(map(str, r.targets_percentiles))) for r in rows]
    total = sum(r.examples for r in rows)
    lines.append((f"TOTAL ({len(rows)} tasks)", str(total), str(sum(r.with_choices for r in rows)), "", ""))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])


def format_example(example: dict) -> str:
    """A readable multi-line rendering of one example's text fields."""
    lines = [f"[{example['example_id']}]  task={example['task']}  template={example['template']}",
             f"  inputs : {example.get('inputs_pretokenized', example['inputs'])}",
             f"  targets: {example.get('targets_pretokenized', example['targets'])}"]
    if example.get("answer_choices"):
        lines.append(f"  choices: {' ||| '.join(example['answer_choices'])}")
    return "\n".join(lines)


def _percentiles(values: list[int]) -> tuple[int, ...]:
    if not values:
        return tuple(0 for _ in PERCENTILES)
    return tuple(int(np.percentile(values, p, method="higher")) for p in PERCENTILES)


def _to_python(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OS":
            return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()]
        return value.tolist()
    return value
