"""The vocabulary every task tokenizes with, resolved lazily so gin can bind it.

Tasks are registered when their module is imported (often from a gin file, before the rest of
the gin file is parsed), so the vocabulary object built at import time only learns its file on
first use: from the gin binding `tasks.vocab.vocabulary_path.path`, else from `$RECROSS_VOCAB`,
else the default file under the asset cache that `recross vocab train` writes. A SentencePiece
`.model` (ours or an official T5 one) gives a SentencePiece vocabulary; `minilm`, or a
`tokenizer.json` (or a directory holding one), gives a WordPiece vocabulary
(`recross_jax.wordpiece`, the BERT2BERT family's, which `gin/models/minilm2minilm.gin` binds).

`train_vocabulary` trains such a file (SentencePiece unigram with T5's special ids: pad 0,
eos 1, unk 2, no bos; seqio appends the 100 extra ids above the trained pieces), and
`train_vocabulary_from_tasks` feeds it the text of registered tasks.
"""
from __future__ import annotations

import functools
import io
import itertools
import os
import random
import re
from typing import Iterable, Iterator, Sequence

import gin
import seqio

from recross_jax import assets
from recross_jax.errors import UserError
from recross_jax.io_utils import atomic_path, write_text_atomic
from recross_jax.wordpiece import WordPieceVocabulary

EXTRA_IDS = 100
MINILM = "minilm"  # a vocabulary_path naming all-MiniLM-L6-v2's WordPiece tokenizer (the asset's)
DEFAULT_VOCAB_NAME = "recross_t0_upstream_8k.model"


def default_vocab_path() -> str:
    """Where `make demo` and `recross vocab train` put the project's default vocabulary."""
    return os.path.join(assets.cache_dir(), "vocab", DEFAULT_VOCAB_NAME)


@gin.configurable
def vocabulary_path(path: str | None = None) -> str:
    """The vocabulary file to use: gin binding, else `$RECROSS_VOCAB`, else the default; or
    `minilm` for MiniLM's WordPiece tokenizer."""
    path = path or os.environ.get("RECROSS_VOCAB") or default_vocab_path()
    if path != MINILM and not os.path.exists(path):
        raise UserError(
            f"vocabulary file not found: {path} (run `recross vocab train --mixture "
            "t0_upstream --size 8000 --out PATH` and bind tasks.vocab.vocabulary_path.path)")
    return path


def _is_wordpiece(path: str) -> bool:
    return path == MINILM or path.endswith(".json") or os.path.isdir(path)


class LazyVocabulary(seqio.Vocabulary):
    """The project vocabulary (SentencePiece with `extra_ids`, or WordPiece), looked up on
    first use."""

    def __init__(self, extra_ids: int = EXTRA_IDS):
        super().__init__(extra_ids=extra_ids)

    @functools.cached_property
    def resolved(self) -> seqio.Vocabulary:
        """The vocabulary in force (what an index records)."""
        path = vocabulary_path()
        if _is_wordpiece(path):
            vocab = WordPieceVocabulary(None if path == MINILM else path)
            _ = vocab.vocab_size  # reads the tokenizer now: an unreadable one is a UserError here
            return vocab
        vocab = seqio.SentencePieceVocabulary(path, extra_ids=self._extra_ids)
        try:  # seqio reads the file lazily; read it now, so a bad file is a UserError here
            _ = vocab.vocab_size
        except Exception as e:  # pylint: disable=broad-except  (protobuf DecodeError and kin)
            raise UserError(f"vocabulary file {path} is not a SentencePiece model "
                            f"({type(e).__name__}); bind tasks.vocab.vocabulary_path.path to a "
                            "`.model` file written by `recross vocab train` or T5") from None
        return vocab

    @property
    def extra_ids(self) -> int:
        return self._vocab.extra_ids

    @property
    def _vocab(self) -> seqio.Vocabulary:
        return self.resolved

    @property
    def vocab_size(self) -> int:
        # seqio's SentencePieceVocabulary writes the extra ids into the model itself, so its
        # base size already counts them; the generic base + extra_ids would count them twice.
        return self._vocab.vocab_size

    @property
    def eos_id(self) -> int:
        return self._vocab.eos_id

    @property
    def unk_id(self) -> int:
        return self._vocab.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self._vocab._base_vocab_size  # pylint: disable=protected-access

    def _encode(self, s: str):
        return self._vocab._encode(s)  # pylint: disable=protected-access

    def _decode(self, ids):
        return self._vocab._decode(ids)  # pylint: disable=protected-access

    def _encode_tf(self, s):
        return self._vocab._encode_tf(s)  # pylint: disable=protected-access

    def _decode_tf(self, ids):
        return self._vocab._decode_tf(ids)  # pylint: disable=protected-access

    def __eq__(self, other) -> bool:
        return isinstance(other, LazyVocabulary)  # one project vocabulary, resolved once

    def __hash__(self) -> int:
        return hash(type(self).__name__)


VOCABULARY = LazyVocabulary()


def train_vocabulary(texts: Iterable[str], size: int, out: str, seed: int = 0, *,
                     character_coverage: float = 0.9995, max_sentences: int = 0,
                     max_sentence_length: int = 16384) -> str:
    """Trains a SentencePiece unigram model with T5's conventions and writes it atomically.

    Training is deterministic for a given text order and seed: SentencePiece runs on one thread
    without its own sampling (its random generator is seeded once per process, so it could not
    honour a per-call seed); the one random step, sampling `max_sentences` sentences, is done
    here with `seed`.

    Args:
      texts: the training text, one sentence per item (empty items are skipped).
      size: number of pieces, including pad (0), eos (1) and unk (2).
      out: the `.model` path; the human-readable `.vocab` is written beside it.
      seed: seeds the sampling of `max_sentences` sentences.
      character_coverage: share of characters kept as pieces; the rest map to unk.
      max_sentences: train on a seeded sample of this many sentences, kept in their order
        (0: all of them).
      max_sentence_length: longer sentences (in bytes) are skipped.

    Returns:
      `out`.

    Raises:
      UserError: `out` does not end in `.model`, there is no text, or `size` does not fit it.
    """
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    if not out.endswith(".model"):
        raise UserError(f"vocabulary output must end in .model: {out}")
    if size < 4:
        raise UserError(f"vocabulary size must be at least 4 (3 special pieces), got {size}")
    if max_sentences < 0:
        raise UserError(f"max_sentences must be 0 (all) or positive, got {max_sentences}")
    sentences = _NonEmpty(texts)
    sample = _sample(sentences, max_sentences, seed) if max_sentences else sentences
    # Trained in memory: with a file prefix, SentencePiece records that (temporary) path in
    # the model, and two otherwise identical runs would differ.
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=model, model_type="unigram",
            vocab_size=size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            character_coverage=character_coverage, input_sentence_size=0,
            shuffle_input_sentence=False, max_sentence_length=max_sentence_length,
            num_threads=1, minloglevel=2)
    except RuntimeError as e:
        if not sentences.count:
            raise UserError("no text to train the vocabulary on") from e
        # SentencePiece prefixes its reason with the failed check's source location.
        reason = re.sub(r"^\w+: \S+\(\d+\) \[(.*?)\]\s*", "", " ".join(str(e).split())) or str(e)
        used = len(sample) if max_sentences else sentences.count
        raise UserError(f"cannot train a {size}-piece vocabulary on {used} sentences: "
                        f"{reason}") from e
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    # The .vocab format of spm_train: piece, tab, score. It goes first because the .model
    # appearing is what marks a finished vocabulary.
    write_text_atomic(out[:-len(".model")] + ".vocab", "".join(
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
        for i in range(processor.get_piece_size())))
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(model.getvalue())
    return out


def _sample(texts: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of `k` texts (reservoir sampling), in their original order."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        if i < k:
            reservoir.append((i, text))
        else:
            j = rng.randrange(i + 1)
            if j < k:
                reservoir[j] = (i, text)
    return [text for _, text in sorted(reservoir)]


class _NonEmpty:
    """Iterates the non-empty texts once, counting them (for error messages)."""

    def __init__(self, texts: Iterable[str]):
        self._texts = texts
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            if text:
                self.count += 1
                yield text


def train_vocabulary_from_tasks(task_names: Sequence[str], size: int, out: str,
                                max_examples_per_task: int | None = 2000, seed: int = 0,
                                split: str = "train", max_sentences: int = 100_000) -> str:
    """Trains a vocabulary on the inputs, targets and answer choices of registered tasks.

    SentencePiece's time and memory grow with the text it reads (about a minute per 10M
    characters on one CPU thread), so a large mixture is sampled down to `max_sentences`.

    Args:
      task_names: seqio task (or mixture) names; tasks are read in this order.
      size: number of pieces, as in `train_vocabulary`.
      out: the `.model` path.
      max_examples_per_task: the first this many examples of each task (None: all).
      seed: as in `train_vocabulary`.
      split: the split to read.
      max_sentences: train on a seeded sample of this many texts (0: all of them).

    Raises:
      UserError: an unknown task, or any error of `train_vocabulary`.
    """
    def texts() -> Iterator[str]:
        for name in _expand(task_names):
            for example in task_examples(name, split, max_examples_per_task):
                yield example["inputs"]
                yield example["targets"]
                yield from example["answer_choices"]

    return train_vocabulary(texts(), size, out, seed, max_sentences=max_sentences)


def _expand(names: Sequence[str]) -> list[str]:
    """Task names, with each mixture replaced by its tasks."""
    tasks = []
    for name in names:
        if name in seqio.MixtureRegistry.names():
            tasks.extend(task.name for task in seqio.MixtureRegistry.get(name).tasks)
        elif name in seqio.TaskRegistry.names():
            tasks.append(name)
        else:
            raise UserError(f"unknown task or mixture: {name!r} (see `recross data list`)")
    return tasks


def task_examples(name: str, split: str, limit: int | None = None) -> list[dict]:
    """The first `limit` examples of a registered task as plain Python dicts (SPEC §0 fields).

    Tasks registered through `tasks.common.register_task` are read in Python; any other seqio
    task through its source as numpy.
    """
    from tasks import common  # pylint: disable=import-outside-toplevel  (common imports this module)
    examples = common.python_examples(name, split)
    return examples[:limit] if examples is not None else _seqio_examples(name, split, limit)


def _seqio_examples(name: str, split: str, limit: int | None) -> list[dict]:
    if name not in seqio.TaskRegistry.names():
        raise UserError(f"unknown task: {name!r} (see `recross data list`)")
    source = seqio.TaskRegistry.get(name).source
    if split not in source.splits:
        raise UserError(f"task {name!r} has no split {split!r} "
                        f"(it has: {', '.join(source.splits)})")
    rows = source.get_dataset(split=split, shuffle=False).as_numpy_iterator()
    return [_decode(row) for row in itertools.islice(rows, limit)]


def _decode(row: dict) -> dict:
    example = {key: _text(value) for key, value in row.items() if key != "answer_choices"}
    example["answer_choices"] = [_text(choice) for choice in row.get("answer_choices", ())]
    return example


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
