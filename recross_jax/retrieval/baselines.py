"""The retrieval side of the Random and SBERT baselines (SPEC §1.6).

Random: |R| ids drawn uniformly without replacement from the pool, from a seed.
SBERT: the pool and the queries embedded by a sentence embedder (all-MiniLM-L6-v2: mean pooling
and L2 norm) instead of the upstream model's encoder, then the same index and aggregation as
ReCross. Any object with `.encode(texts) -> np.ndarray [n, d]` serves as the embedder.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np

from recross_jax.errors import UserError
from recross_jax.retrieval.aggregate import retrieve
from recross_jax.retrieval.index import Index, build_index


class TextEncoder(Protocol):
    """A sentence embedder, e.g. `recross_jax.retrieval.sentence.SentenceEmbedder`."""

    def encode(self, texts: list[str]) -> np.ndarray:
        ...


def random_retrieval(pool_ids: Sequence[str], num: int, seed: int) -> np.ndarray:
    """`num` distinct ids sampled uniformly from `pool_ids`; the same seed gives the same sample."""
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise UserError(f"number of random examples must be a positive integer, got {num!r}")
    if num > len(pool_ids):
        raise UserError(f"cannot sample {num} random examples from a pool of {len(pool_ids)}")
    rows = np.random.default_rng(seed).choice(len(pool_ids), size=num, replace=False)
    return np.asarray(pool_ids, dtype=str)[rows]


@dataclasses.dataclass
class SbertRetriever:
    """An index over sentence embeddings of the pool, queried with the same encoder."""

    encoder: TextEncoder
    index: Index

    @classmethod
    def build(cls, encoder: TextEncoder, texts: Sequence[str], ids: Sequence[str],
              embedder: Any = None, backend: str = "scann", metric: str = "dot",
              **params) -> SbertRetriever:
        """Embeds the pool `texts` (named by `ids`) and indexes them.

        `embedder` describes the encoder in the index manifest (default: the encoder's
        `description`, else its class name); `metric="dot"` equals cosine for an L2-normalising
        encoder such as MiniLM. `params` go to `build_index`.
        """
        if embedder is None:
            embedder = getattr(encoder, "description", type(encoder).__name__)
        vectors = cls._encode(encoder, texts)
        return cls(encoder, build_index(vectors, ids, backend=backend, metric=metric,
                                        embedder=embedder, **params))

    def search(self, query_texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-query top-k (ids, scores) [q, k] of the query texts."""
        return self.index.search(self._encode(self.encoder, query_texts), k)

    def retrieve(self, query_texts: Sequence[str], num_candidates: int,
                 mode: str = "concat") -> tuple[np.ndarray, np.ndarray]:
        """The |R'| aggregated candidates of the query texts (see `aggregate`)."""
        return retrieve(self.index, self._encode(self.encoder, query_texts), num_candidates,
                        mode)

    @staticmethod
    def _encode(encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise UserError("expected a list of texts, got a single string")
        return encoder.encode(list(texts))
