"""`recross eval`: restore a model, score and decode one task's split, write predictions and metrics.

For every example of the split: rank classification over its answer choices (when it has any)
and a greedy decode, compared with the target by EM, SoftEM and ROUGE-L (SPEC §1.7). The run
directory gets `predictions.jsonl` (one line per example), `metrics.json` and the `config.gin`
in force, each written atomically.

    recross eval --checkpoint DIR --task T [--split S] [--out D] [--gin.run_eval.batch_size=64]
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import gin
import numpy as np
from jax.sharding import Mesh

from recross_jax import checkpoints, corpus, gin_utils, inference, metrics, models, partitioning, task_modules
from recross_jax.errors import UserError
from recross_jax.io_utils import atomic_path, write_json_atomic
from recross_jax.models import ModelConfig

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


@dataclasses.dataclass(frozen=True)
class EvalExample:
    """One example of the evaluated split, as text and as (truncated, EOS-ended) token ids."""

    example_id: str
    inputs: str
    targets: str
    answer_choices: tuple[str, ...]
    input_tokens: tuple[int, ...]
    target_tokens: tuple[int, ...]
    choice_tokens: tuple[tuple[int, ...], ...]
    gold_answers: tuple[str, ...] = ()  # every acceptable answer; () means just `targets`

    @property
    def golds(self) -> tuple[str, ...]:
        """The answers EM and SoftEM compare with (the best one counts)."""
        return self.gold_answers or (self.targets,)

    @property
    def label(self) -> int | None:
        """Index of the target among the answer choices (exact, else normalized); None if absent."""
        for same in (lambda c: c == self.targets,
                     lambda c: metrics.normalize_answer(c) == metrics.normalize_answer(self.targets)):
            for i, choice in enumerate(self.answer_choices):
                if same(choice):
                    return i
        return None


def majority_rate(examples: Sequence[EvalExample]) -> float | None:
    """The accuracy of always answering the most frequent gold position among the answer
    choices, over the examples whose gold is one of them (None: no such example)."""
    labels = [e.label for e in examples if e.label is not None]
    if not labels:
        return None
    return collections.Counter(labels).most_common(1)[0][1] / len(labels)


# Greedy decoding stops at EOS or after this many tokens, whatever the labels: 99.8% of the gold
# answers of the release's Table-1 and BIG-bench test sets fit in 64 MiniLM tokens (99% in 31;
# the longest, a piqa solution, has 140).
MAX_DECODE_LENGTH = 64


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _eos_ended(tokens: Sequence[int], max_length: int, eos_id: int) -> tuple[int, ...]:
    """`tokens` cut to max_length - 1 with EOS appended, as seqio's append_eos_after_trim."""
    return tuple(int(t) for t in tokens[:max_length - 1]) + (eos_id,)


def load_examples(task_name: str, split: str, *, max_examples: int | None = None,
                  max_input_length: int = 512, max_target_length: int = 128
                  ) -> tuple[list[EvalExample], Any]:
    """The split's examples in order, tokenized by the task, and the targets vocabulary.

    Raises:
      UserError: an unknown task or split, or an empty split.
    """
    import seqio  # pylint: disable=import-outside-toplevel
    if task_name not in seqio.TaskRegistry.names():
        raise UserError(f"unknown task: {task_name!r} (see `recross data list`)")
    task = seqio.TaskRegistry.get(task_name)
    if split not in task.splits:
        raise UserError(f"task {task_name!r} has no split {split!r} (splits: "
                        f"{', '.join(task.splits)})")
    corpus.prepare_datasets(task)
    vocabulary = task.output_features["targets"].vocabulary
    dataset = task.get_dataset(
        sequence_length={"inputs": max_input_length, "targets": max_target_length},
        split=split, shuffle=False, num_epochs=1, use_cached=False)
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    examples = []
    for row in dataset.as_numpy_iterator():
        choices = tuple(_text(c) for c in row.get("answer_choices", ()))
        examples.append(EvalExample(
            example_id=_text(row["example_id"]),
            inputs=_text(row["inputs_pretokenized"]),
            targets=_text(row["targets_pretokenized"]),
            answer_choices=choices,
            input_tokens=tuple(int(t) for t in row["inputs"]),
            target_tokens=tuple(int(t) for t in row["targets"]),
            choice_tokens=tuple(_eos_ended(vocabulary.encode(c), max_target_length,
                                           vocabulary.eos_id) for c in choices),
            gold_answers=tuple(_text(g) for g in row.get("gold_answers", ()))))
    if not examples:
        raise UserError(f"task {task_name!r} split {split!r} has no examples")
    return examples, vocabulary


def _decoded_text(vocabulary: Any, tokens: np.ndarray) -> str:
    tokens = [int(t) for t in tokens]
    if vocabulary.eos_id in tokens:
        tokens = tokens[:tokens.index(vocabulary.eos_id)]
    return vocabulary.decode(tokens)


@gin.configurable(denylist=["model_dir", "task", "split", "out_dir"])
def run_eval(model_dir: str, task: str, split: str = "test", out_dir: str | None = None, *,
             step: int | None = None, batch_size: int = inference.DEFAULT_BATCH_SIZE,
             max_examples: int | None = None, length_normalize: bool = False,
             decode: bool = True, max_input_length: int = 512, max_target_length: int = 128,
             max_decode_length: int = MAX_DECODE_LENGTH, num_partitions: int = 1,
             progress: bool = True) -> dict[str, Any]:
    """Evaluates a model directory's checkpoint on one task's split.

    Args:
      model_dir: a model directory (or one of its `checkpoint_<step>` directories).
      task: a registered seqio task.
      split: the split to evaluate.
      out_dir: where the outputs go; `<model_dir>/eval/<task>.<split>` by default.
      step: the checkpoint step; the latest by default.
      batch_size: examples per device step (rank classification decodes batch_size x
        answer choices targets per step).
      max_examples: evaluate only the split's first examples.
      length_normalize: rank choices by mean instead of summed token log-likelihood.
      decode: greedy-decode every example and report EM, SoftEM and ROUGE-L.
      max_input_length: inputs are cut to this many tokens (EOS kept), as in training.
      max_target_length: targets and answer choices are cut likewise.
      max_decode_length: decode at most this many tokens (a fixed budget: it never depends on
        the labels, which an unsupervised method must not see).
      num_partitions: model-parallel width of the mesh over all devices.
      progress: show a progress bar.

    Returns:
      The metrics, as written to `metrics.json`: `accuracy` over the examples whose target is
      one of their answer choices (absent when none has choices), `em`, `soft_em` and
      `rouge_l` of the greedy decodes (when `decode`), and example counts. All in [0, 1].
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    if not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir}")
    config = checkpoints.read_model_config(model_dir)
    examples, vocabulary = load_examples(task, split, max_examples=max_examples,
                                         max_input_length=max_input_length,
                                         max_target_length=max_target_length)
    if vocabulary.vocab_size > config.vocab_size:
        raise UserError(f"task {task!r} uses {vocabulary.vocab_size} token ids but the model in "
                        f"{model_dir} has only {config.vocab_size}")
    model = models.build(config)
    mesh = partitioning.create_mesh(num_partitions)
    _, params = checkpoints.restore_model(model_dir, step,
                                          shardings=inference.param_shardings(model, mesh))
    results, predictions, choice_scores = evaluate_params(
        config, params, examples, vocabulary, mesh=mesh, batch_size=batch_size,
        length_normalize=length_normalize, decode=decode, max_decode_length=max_decode_length,
        progress=progress, desc=f"eval {task}:{split}")
    results.update(task=task, split=split, checkpoint=os.path.abspath(model_dir), step=step,
                   length_normalize=length_normalize)
    out_dir = out_dir or os.path.join(model_dir, "eval", f"{task}.{split}")
    _write_outputs(out_dir, examples, predictions, choice_scores, results)
    return results


def evaluate_params(config: ModelConfig, params: Any, examples: Sequence[EvalExample],
                    vocabulary: Any, *, mesh: Mesh,
                    batch_size: int = inference.DEFAULT_BATCH_SIZE,
                    length_normalize: bool = False, decode: bool = True,
                    max_decode_length: int = MAX_DECODE_LENGTH, progress: bool = True,
                    desc: str = "eval") -> tuple[dict[str, Any], list[str | None],
                                                 list[list[float] | None]]:
    """Rank classification and greedy decoding of in-memory `params` on `examples`.

    Returns (metrics, predictions, choice scores); see `run_eval` for the metrics. Re-learning
    (`generalize.py`) evaluates its fine-tuned copies through this without writing a checkpoint.
    The parameters may live anywhere; they are placed on `mesh` as the model's rules say.
    """
    if not examples:
        raise UserError("no examples to evaluate")
    import tqdm  # pylint: disable=import-outside-toplevel
    model = models.build(config)
    n = len(examples)
    inputs = inference.pad_tokens([e.input_tokens for e in examples])
    choices = inference.pad_choices([e.choice_tokens for e in examples])
    with_choices = np.array([bool(e.answer_choices) for e in examples])
    if max_decode_length < 1:
        raise UserError(f"max_decode_length must be positive, got {max_decode_length}")
    predictions: list[str | None] = [None] * n
    choice_scores: list[list[float] | None] = [None] * n
    with tqdm.tqdm(total=n, desc=desc, unit="ex", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rows = start + np.nonzero(with_choices[start:stop])[0]
            if rows.size:
                _, scores = inference.rank_classify(
                    model, params, inputs[rows], choices[rows], length_normalize, mesh=mesh,
                    batch_size=batch_size)
                for row, row_scores in zip(rows, scores):
                    choice_scores[row] = [float(s) for s in
                                          row_scores[:len(examples[row].answer_choices)]]
            if decode:
                tokens, _ = inference.greedy_decode(
                    model, params, inputs[start:stop], max_decode_length=max_decode_length,
                    eos_id=vocabulary.eos_id, mesh=mesh, batch_size=batch_size)
                for row, row_tokens in zip(range(start, stop), tokens):
                    predictions[row] = _decoded_text(vocabulary, row_tokens)
            bar.update(stop - start)
    results = _metrics(examples, predictions, choice_scores, decode)
    results["max_decode_length"] = max_decode_length
    return results, predictions, choice_scores


def _metrics(examples: Sequence[EvalExample], predictions: Sequence[str | None],
             choice_scores: Sequence[list[float] | None], decode: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"num_examples": len(examples)}
    labeled = [(int(np.argmax(s)), e.label) for e, s in zip(examples, choice_scores)
               if s is not None and e.label is not None]
    results["num_choice_examples"] = sum(s is not None for s in choice_scores)
    results["num_accuracy_examples"] = len(labeled)
    if labeled:
        results["accuracy"] = metrics.accuracy(*zip(*labeled))
    if decode:
        results.update(metrics.text_metrics(predictions, [e.golds for e in examples]))
    return results


def _write_outputs(out_dir: str, examples: Sequence[EvalExample],
                   predictions: Sequence[str | None], choice_scores: Sequence[list[float] | None],
                   results: dict[str, Any]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with (atomic_path(os.path.join(out_dir, PREDICTIONS_FILE)) as tmp,
          open(tmp, "w", encoding="utf-8") as f):
        for example, prediction, scores in zip(examples, predictions, choice_scores):
            record: dict[str, Any] = {"example_id": example.example_id,
                                      "inputs": example.inputs, "targets": example.targets}
            if prediction is not None:
                record["prediction"] = prediction
            if scores is not None:
                record.update(answer_choices=list(example.answer_choices), choice_scores=scores,
                              choice_prediction=example.answer_choices[int(np.argmax(scores))])
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    write_json_atomic(os.path.join(out_dir, METRICS_FILE), results)
    gin_utils.write_config(out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """`recross eval` (also `python -m recross_jax.evaluate`): prints the metrics as JSON."""
    parser = argparse.ArgumentParser(
        prog="recross eval", description="Evaluate a checkpoint on a task's split: rank "
        "classification accuracy, and EM / SoftEM / ROUGE-L of greedy decodes.")
    parser.add_argument("--checkpoint", required=True,
                        help="model directory (or one of its checkpoint_<step> directories)")
    parser.add_argument("--task", required=True, help="registered seqio task")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=None,
                        help="output directory (default: CHECKPOINT/eval/TASK.SPLIT)")
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--length_normalize", action="store_true", default=None,
                        help="rank choices by mean token log-likelihood")
    parser.add_argument("--no_decode", dest="decode", action="store_false", default=None,
                        help="skip greedy decoding (rank classification only)")
    parser.add_argument("--tasks_module", action="append", default=None,
                        help="module registering tasks (repeatable; default: "
                             f"{', '.join(task_modules.DEFAULT_TASK_MODULES)})")
    gin_utils.add_gin_flags(parser)
    args = parser.parse_args(argv)
    task_modules.import_task_modules(args.tasks_module)
    gin_utils.parse_gin_flags(args)
    # Flags left unset fall through to gin bindings and run_eval's defaults.
    overrides = {name: getattr(args, name) for name in ("max_examples", "length_normalize",
                                                         "decode")
                 if getattr(args, name) is not None}
    results = run_eval(args.checkpoint, args.task, args.split, args.out, **overrides)
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"recross eval: error: {error}", file=sys.stderr)
        sys.exit(2)
