"""The SentencePiece vocabulary every task tokenizes with, resolved lazily so gin can bind it.

Tasks are registered when their module is imported (often from a gin file, before the rest of
the gin file is parsed), so the vocabulary object built at import time only learns its model
file on first use: from the gin binding `tasks.vocab.vocabulary_path.path`, else from
`$RECROSS_VOCAB`, else the default file under the asset cache that `recross vocab train`
writes. An official T5 `.model` file works the same way.
"""
from __future__ import annotations

import functools
import os

import gin
import seqio

from recross_jax import assets
from recross_jax.errors import UserError

EXTRA_IDS = 100
DEFAULT_VOCAB_NAME = "recross_bigbench_upstream_8k.model"


def default_vocab_path() -> str:
    """Where `make demo` and `recross vocab train` put the project's default vocabulary."""
    return os.path.join(assets.cache_dir(), "vocab", DEFAULT_VOCAB_NAME)


@gin.configurable
def vocabulary_path(path: str | None = None) -> str:
    """The SentencePiece model file to use: gin binding, else `$RECROSS_VOCAB`, else default."""
    path = path or os.environ.get("RECROSS_VOCAB") or default_vocab_path()
    if not os.path.isfile(path):
        raise UserError(
            f"vocabulary file not found: {path} (run `recross vocab train --mixture "
            "bigbench_upstream --size 8000 --out PATH` and bind tasks.vocab.vocabulary_path.path)")
    return path


class LazySentencePieceVocabulary(seqio.Vocabulary):
    """A `seqio.SentencePieceVocabulary` whose model file is looked up on first use."""

    def __init__(self, extra_ids: int = EXTRA_IDS):
        super().__init__(extra_ids=extra_ids)

    @functools.cached_property
    def _vocab(self) -> seqio.SentencePieceVocabulary:
        return seqio.SentencePieceVocabulary(vocabulary_path(), extra_ids=self.extra_ids)

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
        return isinstance(other, LazySentencePieceVocabulary) and self.extra_ids == other.extra_ids

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.extra_ids))


VOCABULARY = LazySentencePieceVocabulary()
