"""all-MiniLM-L6-v2's WordPiece tokenizer as a SeqIO vocabulary, for the BERT2BERT family.

The tokenizer is the checkpoint's own `tokenizer.json`, run by the `tokenizers` library. Texts
are encoded without special tokens: EOS is [SEP] (102), which seqio's `append_eos` adds; the
decoder's start is id 0, which `recross_jax.models.bert2bert` embeds as [CLS]; padding is 0
([PAD]) as in T5. Decoding skips the special tokens.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import seqio
import tensorflow as tf
from tokenizers import Tokenizer

from recross_jax import assets
from recross_jax.errors import UserError


class WordPieceVocabulary(seqio.Vocabulary):
    """A `tokenizer.json` WordPiece tokenizer (MiniLM's by default), loaded on first use.

    Args:
      tokenizer_path: a `tokenizer.json`, or a directory holding one; default: the MiniLM
        asset (`recross_jax.assets.minilm_dir()`), fetched when first needed.
    """

    def __init__(self, tokenizer_path: str | None = None):
        super().__init__(extra_ids=0)  # BERT's vocabulary has no sentinel ids
        self._tokenizer_path = tokenizer_path

    @functools.cached_property
    def tokenizer_file(self) -> str:
        """The `tokenizer.json` in use (what an index records)."""
        path = self._tokenizer_path or assets.minilm_dir()
        return os.path.abspath(os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path)

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer`."""
        path = self.tokenizer_file
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception for unreadable files
            raise UserError(f"cannot read WordPiece tokenizer {path}: {e}") from e
        # sentence-transformers' tokenizer.json pads and truncates to 128 tokens; lengths are
        # the task's features' business here.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise UserError(f"WordPiece tokenizer has no {token} token")
        return token_id

    @property
    def eos_id(self) -> int:
        return self._special_id("[SEP]")

    @property
    def unk_id(self) -> int:
        return self._special_id("[UNK]")

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def _encode(self, s: str) -> list[int]:
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """A scalar string -> int32 ids [length], inside tf.data via `tf.numpy_function`."""
        def encode(text: bytes) -> np.ndarray:
            return np.asarray(self._encode(text.decode("utf-8")), np.int32)

        ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., length] -> strings [...]."""
        def decode(rows: np.ndarray) -> np.ndarray:
            flat = rows.reshape(-1, rows.shape[-1])
            texts = self.tokenizer.decode_batch([[int(i) for i in row] for row in flat],
                                                skip_special_tokens=True)
            return np.asarray([t.encode("utf-8") for t in texts], object).reshape(
                rows.shape[:-1])

        texts = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        texts.set_shape(ids.shape[:-1])
        return texts

    def __eq__(self, other) -> bool:
        return (isinstance(other, WordPieceVocabulary)
                and self._tokenizer_path == other._tokenizer_path)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._tokenizer_path))
