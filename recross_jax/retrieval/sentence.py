"""Sentence embeddings with a BERT-style sentence-transformers model (all-MiniLM-L6-v2) in JAX.

Computes what sentence-transformers computes for such a model: WordPiece tokens with [CLS]/[SEP]
truncated to `max_length`, the encoder's last hidden states, their mean over real tokens, and an
L2 normalisation.

For speed on large inputs, texts are packed into rows of a few fixed lengths
(`retrieval.packing`): short texts several to a row, each with its own segment id, positions
restarting at 0 and attention confined to itself, so every vector is the one of the text run
alone (masked attention weights are exactly 0).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from recross_jax.errors import UserError
from recross_jax.models.bert import BertConfig, BertModel, load_hf_bert
from recross_jax.retrieval import packing

_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"
_TOKENIZER = "tokenizer.json"
# Texts tokenized at once: bounds host memory on large pools while giving the packer
# enough texts to fill rows.
_CHUNK_TEXTS = 4096


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / max(||x||, 1e-12) over the last axis, as torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class SentenceEmbedder:
    """Embeds texts into L2-normalised vectors with a BERT encoder and mean pooling.

    Build it with `from_minilm()` (all-MiniLM-L6-v2 from the project's assets) or `from_dir()`
    (any BERT-style sentence-transformers directory), then call `encode(texts)`.
    """

    def __init__(self, config: BertConfig, params: Any, tokenizer: Any, *, max_length: int,
                 batch_size: int = 64, normalize: bool = True, progress: bool = True,
                 mesh: jax.sharding.Mesh | None = None, name: str = "bert",
                 weights_path: str | None = None):
        """Wraps loaded parts; most callers want `from_dir` or `from_minilm`.

        Args:
          config: the encoder's config (its dtype is the activation dtype).
          params: `BertModel` parameters (host or device arrays).
          tokenizer: a `tokenizers.Tokenizer` that adds [CLS]/[SEP]; its truncation and
            padding settings are replaced.
          max_length: tokens per text, special tokens included; longer texts are truncated.
          batch_size: size of an encoder call in rows of 64 tokens (`batch_size * 64`
            tokens); as texts per call, it is about sentence-transformers' batch size.
          normalize: L2-normalise the mean-pooled vectors.
          progress: show a progress bar for inputs of more than one chunk (4096 texts).
          mesh: shard each batch over the mesh's 'data' axis (parameters replicated);
            None runs on the default device.
          name: a short name for `description`.
          weights_path: the weights file, hashed into `description`.
        """
        if not 0 < max_length <= config.max_position_embeddings:
            raise UserError(f"max_length must be in [1, {config.max_position_embeddings}] for "
                            f"this model, got {max_length}")
        if batch_size < 1:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        self.config = config
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.progress = progress
        self.name = name
        self._weights_path = weights_path
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        self._mesh = mesh
        self._packer = packing.Packer(max_length, batch_size,
                                      1 if mesh is None else mesh.shape["data"])
        self._params, self._embed = self._compile(params)

    @classmethod
    def from_dir(cls, path: str, *, max_length: int | None = None, dtype: str = "float32",
                 **kwargs: Any) -> SentenceEmbedder:
        """Loads a sentence-transformers directory of a BERT model with mean pooling.

        It needs `config.json`, `model.safetensors` and `tokenizer.json`; a
        `1_Pooling/config.json` must ask for mean pooling, and `sentence_bert_config.json`
        supplies the default `max_length` (else the model's position limit).

        Args:
          path: the directory.
          max_length: tokens per text; default: the directory's `max_seq_length`.
          dtype: activation dtype, 'float32' or 'bfloat16'.
          **kwargs: `batch_size`, `normalize`, `progress`, `mesh` of the constructor.
        """
        from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
        if not os.path.isdir(path):
            raise UserError(f"no sentence-transformers model directory at {path}")
        for filename in (_CONFIG, _WEIGHTS, _TOKENIZER):
            if not os.path.isfile(os.path.join(path, filename)):
                raise UserError(f"sentence-transformers model {path} lacks {filename}")
        _check_pooling(path)
        config = BertConfig.from_json_file(os.path.join(path, _CONFIG), dtype=dtype)
        weights = os.path.join(path, _WEIGHTS)
        params = load_hf_bert(weights, config)
        try:
            tokenizer = Tokenizer.from_file(os.path.join(path, _TOKENIZER))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise UserError(f"cannot read tokenizer {os.path.join(path, _TOKENIZER)}: {e}") from e
        if max_length is None:
            max_length = _read_json(path, "sentence_bert_config.json").get(
                "max_seq_length", config.max_position_embeddings)
        name = os.path.basename(os.path.normpath(path))
        return cls(config, params, tokenizer, max_length=max_length, name=name,
                   weights_path=weights, **kwargs)

    @classmethod
    def from_minilm(cls, max_length: int = 256, batch_size: int = 64, dtype: str = "float32",
                    **kwargs: Any) -> SentenceEmbedder:
        """all-MiniLM-L6-v2 (384 dims), fetched into the asset cache on first use."""
        from recross_jax import assets  # pylint: disable=import-outside-toplevel
        embedder = cls.from_dir(assets.minilm_dir(), max_length=max_length, batch_size=batch_size,
                                dtype=dtype, **kwargs)
        embedder.name = "all-MiniLM-L6-v2"
        return embedder

    @property
    def dims(self) -> int:
        """Width of the vectors."""
        return self.config.hidden_size

    @functools.cached_property
    def description(self) -> dict:
        """What produced the vectors, for index and pool manifests."""
        digest = None
        if self._weights_path is not None:
            sha = hashlib.sha256()
            with open(self._weights_path, "rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
            digest = sha.hexdigest()[:16]
        return {"kind": "sentence", "name": self.name, "weights_sha256": digest,
                "max_length": self.max_length, "dtype": self.config.dtype, "pooling": "mean",
                "normalize": self.normalize, "dims": self.dims}

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, [CLS] ... [SEP], truncated to `max_length`."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """Embeds `texts` into a float32 array [len(texts), dims], in input order.

        Raises:
          UserError: `texts` is a single string or holds a non-string (named by index).
        """
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel
        if isinstance(texts, str):
            raise UserError("encode expects a list of strings, got a single string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"encode: text #{i} is a {type(text).__name__}, not a string")
        show = (self.progress if progress is None else progress) and len(texts) > _CHUNK_TEXTS
        with tqdm(total=len(texts), desc="embedding", unit="text", disable=not show) as bar:
            return packing.run_packed(
                self._packer.batches(self._chunks(texts)), len(texts), self.dims,
                lambda b: self._embed(self._params, b.ids, b.segments, b.positions), bar.update)

    def _chunks(self, texts: Sequence[str]) -> Iterator[packing.Chunk]:
        """(position of the first text, token ids, no types) of `_CHUNK_TEXTS` texts at a
        time."""
        for start in range(0, len(texts), _CHUNK_TEXTS):
            yield start, self.tokenize(texts[start:start + _CHUNK_TEXTS]), None

    def _compile(self, params: Any) -> tuple[Any, Any]:
        """Places the parameters and builds the jitted (ids, segments, positions) -> vectors."""
        from recross_jax import partitioning  # pylint: disable=import-outside-toplevel
        model = BertModel(self.config)
        normalize = self.normalize
        max_segments = self._packer.max_segments

        def embed(params: Any, ids: jax.Array, segments: jax.Array, positions: jax.Array
                  ) -> jax.Array:
            hidden = model.apply({"params": params}, ids, position_ids=positions,
                                 segment_ids=segments).last_hidden_state
            pooled = packing.segment_mean(hidden, segments, max_segments[ids.shape[1]])
            return l2_normalize(pooled) if normalize else pooled

        if self._mesh is None:
            return jax.device_put(params), jax.jit(embed)
        replicated = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
        rows = partitioning.batch_sharding(self._mesh)
        return (jax.device_put(params, replicated),
                jax.jit(embed, in_shardings=(replicated, rows, rows, rows), out_shardings=rows))


def _read_json(directory: str, filename: str) -> dict:
    """An optional JSON object file of a model directory ({} when absent)."""
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


def _check_pooling(directory: str) -> None:
    """Refuses a sentence-transformers directory that pools other than by the mean."""
    pooling = _read_json(directory, os.path.join("1_Pooling", "config.json"))
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if pooling and modes != ["pooling_mode_mean_tokens"]:
        raise UserError(f"{os.path.join(directory, '1_Pooling', 'config.json')}: only mean "
                        f"pooling is supported, found {modes or 'none'}")
