"""Few-example estimators F(s→t) of how well a source task s transfers to a target t.

An estimator is any callable `F(target_examples, source_examples) -> {source: score}` (the
`Estimator` protocol), where `source_examples` maps each source task to a few of its prompted
examples: TaskShop (`taskshop.py`) takes the table it produces, so a user can plug in their own.
Two are built in, both `EmbeddingEstimator`s (an embedding function and a text format):

- **Retrieval-of-Experts** (Jang et al., 2023; TaskWeb's F, SPEC §2): all-MiniLM-L6-v2
  (mean pooling, L2 norm) over the text `"{answer choices as a Python list}</s>{input}"` (the
  authors' `roe_predict.py`), a [n_t × n_s] matrix of dot products, the max over the source's
  examples, then the mean over the target's (`roe_similarity`).
- **The upstream model's own embeddings** (the ReCross idea applied to task selection): the
  T5 encoder's last layer mean-pooled over the input text (`retrieval.embed.T5EncoderEmbedder`),
  L2-normalised, scored the same way.

Examples are dicts with `inputs` and `choices` (TaskWeb's JSONL) or `answer_choices` (the
project's examples). `taskweb_examples` reads TaskWeb's prompted examples from
`../shared/data/taskweb/tasks` (not embedded) and samples a few with a seed.
"""
from __future__ import annotations

import os
import random
import zlib
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from recross_jax import io_utils
from recross_jax.errors import UserError

Example = Mapping[str, object]
EmbedFn = Callable[[Sequence[str]], np.ndarray]
PROMPT_SAMPLES = "prompt_samples"


class Estimator(Protocol):
    """F: a few target examples and a few examples per source task → a score per source."""

    def __call__(self, target_examples: Sequence[Example],
                 source_examples: Mapping[str, Sequence[Example]]) -> dict[str, float]:
        ...


def choices_of(example: Example) -> list[str]:
    """The example's answer choices (`choices` or `answer_choices`; none for generative)."""
    choices = example.get("choices", example.get("answer_choices")) or []
    return [str(c) for c in choices]


def roe_text(example: Example) -> str:
    """Retrieval-of-Experts' text: `f"{choices}</s>{input}"`, the choices printed as a Python
    list, or `None` for a generative example (as the authors' examples print)."""
    choices = choices_of(example)
    return f"{choices if choices else None}</s>{example['inputs']}"


def inputs_text(example: Example) -> str:
    """The model's own input text."""
    return str(example["inputs"])


def roe_similarity(target_vectors: np.ndarray, source_vectors: np.ndarray) -> float:
    """Mean over target rows of the max over source rows of their dot products."""
    if len(target_vectors) == 0 or len(source_vectors) == 0:
        raise UserError("Retrieval-of-Experts needs at least one target and one source example")
    sims = np.asarray(target_vectors, np.float64) @ np.asarray(source_vectors, np.float64).T
    return float(sims.max(axis=1).mean())


class EmbeddingEstimator:
    """F from an embedding function: embed each task's examples (as `text(example)`), then
    `roe_similarity` between the target's and each source's vectors."""

    def __init__(self, embed: EmbedFn, text: Callable[[Example], str] = roe_text,
                 name: str = "embedding", min_examples: int = 1):
        self.embed = embed
        self.text = text
        self.name = name
        self.min_examples = min_examples

    def vectors(self, task: str, examples: Sequence[Example]) -> np.ndarray:
        """The embeddings of one task's examples."""
        check_examples(task, examples, self.min_examples)
        try:
            texts = [self.text(example) for example in examples]
        except (KeyError, TypeError) as e:
            raise UserError(f"task {task!r}: an example lacks its text ({e})") from None
        vectors = np.asarray(self.embed(texts), np.float64)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise UserError(f"the {self.name} embedding function returned shape {vectors.shape} "
                            f"for {len(texts)} texts")
        return vectors

    def __call__(self, target_examples: Sequence[Example],
                 source_examples: Mapping[str, Sequence[Example]], target: str = "target"
                 ) -> dict[str, float]:
        target_vectors = self.vectors(target, target_examples)
        return {source: roe_similarity(target_vectors, self.vectors(source, examples))
                for source, examples in source_examples.items() if source != target}

    def table(self, target_examples: Mapping[str, Sequence[Example]],
              source_examples: Mapping[str, Sequence[Example]]) -> dict[str, dict[str, float]]:
        """`{t: {s: F(s→t)}}` for every target and every other source, each task embedded once."""
        sources = {s: self.vectors(s, ex) for s, ex in source_examples.items()}
        out = {}
        for target, examples in target_examples.items():
            vectors = self.vectors(target, examples)
            out[target] = {s: roe_similarity(vectors, v) for s, v in sources.items() if s != target}
        return out


def check_examples(task: str, examples: Sequence[Example], minimum: int) -> None:
    """A UserError unless `examples` holds at least `minimum` examples."""
    if len(examples) < max(minimum, 1):
        raise UserError(f"task {task!r} has {len(examples)} example(s); at least "
                        f"{max(minimum, 1)} are needed")


def minilm_roe(max_length: int = 256, batch_size: int = 64, min_examples: int = 1
               ) -> EmbeddingEstimator:
    """Retrieval-of-Experts with all-MiniLM-L6-v2 (from the asset cache)."""
    from recross_jax.retrieval import sentence  # pylint: disable=import-outside-toplevel
    encoder = sentence.SentenceEmbedder.from_minilm(max_length=max_length, batch_size=batch_size,
                                                    progress=False)
    return EmbeddingEstimator(lambda texts: encoder.encode(list(texts), progress=False), roe_text,
                              "roe", min_examples)


def normalized(embed: EmbedFn) -> EmbedFn:
    """`embed` followed by an L2 normalisation of each vector."""
    def run(texts: Sequence[str]) -> np.ndarray:
        vectors = np.asarray(embed(texts), np.float64)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return run


def model_embedding(embedder, normalize: bool = True, min_examples: int = 1) -> EmbeddingEstimator:
    """F from an upstream model's mean-pooled encoder embeddings of the input texts.

    `embedder` has `embed_texts(texts) -> [n, d]` (a `retrieval.embed.T5EncoderEmbedder`) or is
    such a function itself.
    """
    embed = getattr(embedder, "embed_texts", embedder)
    return EmbeddingEstimator(normalized(embed) if normalize else embed, inputs_text, "model",
                              min_examples)


def model_embedding_from_dir(model_dir: str, max_length: int = 512, batch_size: int = 64,
                             normalize: bool = True, min_examples: int = 1) -> EmbeddingEstimator:
    """`model_embedding` of the upstream checkpoint in `model_dir`, tokenized with the project's
    vocabulary (`tasks.vocab`: gin binding, `$RECROSS_VOCAB` or the default)."""
    from recross_jax import checkpoints  # pylint: disable=import-outside-toplevel
    from recross_jax.retrieval import embed  # pylint: disable=import-outside-toplevel
    from tasks import vocab  # pylint: disable=import-outside-toplevel
    config, params = checkpoints.restore_model(model_dir)
    vocabulary = vocab.VOCABULARY
    description = {"kind": "model", "model_dir": os.path.abspath(model_dir)}
    embedder = embed.T5EncoderEmbedder(config, params, vocabulary.encode, vocabulary.eos_id,
                                       description, max_length=max_length, batch_size=batch_size)
    return model_embedding(embedder, normalize, min_examples)


def sample(examples: Sequence[Example], n: int | None, seed: int, key: str = "") -> list[Example]:
    """`n` examples drawn without replacement (seeded by `seed` and `key`, e.g. the task
    name), in file order; all of them when n is None or ≥ their number."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise UserError(f"the number of examples to sample must be positive, got {n}")
    rng = random.Random(seed * 1_000_003 + zlib.crc32(key.encode()))
    return [examples[i] for i in sorted(rng.sample(range(len(examples)), n))]


def read_examples(path: str, task: str | None = None) -> list[dict]:
    """The examples of a JSONL file (lines with `inputs`, optional `choices`); a UserError
    naming the line for a malformed one."""
    rows = []
    for number, row in io_utils.read_jsonl(path, what="examples file"):
        if not isinstance(row.get("inputs"), str):
            raise UserError(f"{path}:{number}: an example needs a string 'inputs'")
        choices = row.get("choices", row.get("answer_choices"))
        if choices is not None and not isinstance(choices, list):
            raise UserError(f"{path}:{number}: 'choices' must be a list or null")
        if task is None or row.get("task", task) == task:
            rows.append(row)
    return rows


def taskweb_examples(task: str, directory: str | None = None,
                     pool: str | None = PROMPT_SAMPLES) -> list[dict]:
    """TaskWeb's prompted examples of `task` (`<taskweb tasks dir>/<task>.jsonl`, see
    `tasks.jsonl.taskweb_dir`); `pool` keeps the lines of that `source` (the authors' 32 per
    prompt samples, which their RoE scores drew on) where the file has any."""
    from recross_jax.selection import taskweb  # pylint: disable=import-outside-toplevel
    from tasks import jsonl  # pylint: disable=import-outside-toplevel
    taskweb.check_task(task)
    directory = jsonl.taskweb_dir(directory)
    rows = read_examples(os.path.join(directory, f"{task}.jsonl"))
    kept = [row for row in rows if pool is None or row.get("source") == pool]
    return kept or rows


def taskweb_sample(tasks: Iterable[str], n: int | None, seed: int, directory: str | None = None
                   ) -> dict[str, list[dict]]:
    """`{task: n sampled TaskWeb examples}`."""
    return {task: sample(taskweb_examples(task, directory), n, seed, task) for task in tasks}
