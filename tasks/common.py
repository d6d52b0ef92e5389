"""What every task family shares: the example schema, stable ids, hashed splits, registration.

Every example a task emits has the text fields of SPEC §0 -- `inputs`, `targets`,
`answer_choices` (empty for generative tasks), `task`, `template`, `example_id` -- plus
`gold_answers`, every acceptable answer (`targets` first; EM and SoftEM take the best), and, after
the task's preprocessors, the token ids `inputs` / `targets` with the text kept as
`inputs_pretokenized` / `targets_pretokenized`.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Mapping, Sequence

import seqio
import tensorflow as tf

from recross_jax.corpus import keep_tensorflow_on_host
from tasks.vocab import VOCABULARY

keep_tensorflow_on_host()  # before any task's pipeline runs a TensorFlow op

SPLITS = ("train", "validation", "test")
TEXT_FIELDS = ("inputs", "targets", "task", "template", "example_id")

OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True, required=True),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}

OUTPUT_SIGNATURE = {
    **{name: tf.TensorSpec(shape=(), dtype=tf.string) for name in TEXT_FIELDS},
    "answer_choices": tf.TensorSpec(shape=(None,), dtype=tf.string),
    "gold_answers": tf.TensorSpec(shape=(None,), dtype=tf.string),
}

ExamplesFn = Callable[[str], Iterable[Mapping[str, object]]]
# Registered task name -> the Python function behind its source, so its examples can be read
# without tf.data (e.g. to train a vocabulary).
_EXAMPLES_FNS: dict[str, ExamplesFn] = {}


def example_id(task: str, split: str, template: str, index: int) -> str:
    """The stable id of SPEC §0: "task|split|template|#index"."""
    return f"{task}|{split}|{template}|#{index}"


def hashed_split(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "") -> str:
    """Assigns `key` to train/validation/test by hashing, so the split never depends on order.

    Args:
      key: a stable identifier of the raw example (not of a prompted variant of it, so all
        templates of one example land in the same split).
      fractions: shares of train, validation and test; must sum to 1.
      salt: changes the assignment without changing the fractions.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative shares summing to 1: {fractions}")
    digest = hashlib.sha256(f"{salt}{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def make_example(*, inputs: str, targets: str, answer_choices: Sequence[str], task: str,
                 template: str, example_id: str,  # pylint: disable=redefined-outer-name
                 gold_answers: Sequence[str] | None = None) -> dict:
    """One example in the schema of SPEC §0 (plain Python strings); `gold_answers` defaults to
    the one target."""
    golds = list(gold_answers) if gold_answers else [targets]
    if golds[0] != targets:
        raise ValueError(f"gold_answers must start with the target {targets!r}, got {golds}")
    return {
        "inputs": inputs,
        "targets": targets,
        "answer_choices": list(answer_choices),
        "gold_answers": golds,
        "task": task,
        "template": template,
        "example_id": example_id,
    }


def dataset_from_examples(examples_fn: ExamplesFn, split: str) -> tf.data.Dataset:
    """A tf.data pipeline over the Python examples of one split.

    The examples are read when the dataset is built, not inside tf.data, so a missing file or
    a malformed line raises its `UserError` in the caller instead of a wrapped TF error.
    """
    rows = list(examples_fn(split))
    return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=OUTPUT_SIGNATURE)


def register_task(name: str, examples_fn: ExamplesFn, *,
                  metric_fns: Sequence[Callable] = (),
                  splits: Sequence[str] = SPLITS) -> seqio.Task:
    """Registers a seqio Task over `examples_fn(split)`, replacing any task of that name.

    The task tokenizes `inputs` and `targets` with the project vocabulary and appends EOS;
    the other fields pass through, so the pretokenized text stays available downstream.
    """
    _EXAMPLES_FNS[name] = examples_fn
    source = seqio.FunctionDataSource(
        dataset_fn=lambda split, shuffle_files, seed=None: dataset_from_examples(examples_fn, split),
        splits=tuple(splits),
    )
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=OUTPUT_FEATURES,
        metric_fns=list(metric_fns),
    )


def python_examples(name: str, split: str) -> list[dict] | None:
    """The examples of a task registered here, read in Python; None for any other task."""
    examples_fn = _EXAMPLES_FNS.get(name)
    return None if examples_fn is None else [dict(example) for example in examples_fn(split)]


def register_mixture(name: str, task_names: Sequence[str],
                     rate: float | Callable[[seqio.Task], float] = 1.0) -> seqio.Mixture:
    """Registers a seqio Mixture, replacing any mixture of that name."""
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, [(t, rate) for t in task_names])
