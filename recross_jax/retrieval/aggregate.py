"""Query aggregation (SPEC §1.2): from |Q| per-query rankings to one list of |R'| candidates.

Modes, on the (q, k) `ids` and `scores` of `Index.search` (each row best first), with
K = ceil(|R'| / |Q|):
  concat  the top K of query 0, then the top K of query 1, ..., cut to |R'|. Duplicates are kept
          on purpose: an example near several queries is re-learned more often. (Default.)
  dedup   the concat order with repeats dropped (first occurrence kept); while fewer than |R'|
          distinct ids are found, go deeper round-robin: rank K of every query in query order,
          then rank K+1, ... Scores are those of the kept occurrences.
  mean    over the per-query top-D lists, where D is the smallest depth >= K whose lists hold at
          least |R'| distinct ids: each distinct id's score is the mean of its scores over the
          queries whose top-D list holds it (a query that did not retrieve it is not counted, not
          counted as zero). Sorted by that mean, descending; ties by first occurrence in the
          concat order of the top-D lists; cut to |R'|.
A pool smaller than the ranking depth a mode needs yields fewer than |R'| candidates.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from recross_jax.errors import UserError

MODES = ("concat", "dedup", "mean")


class Searchable(Protocol):
    """What `retrieve` needs of an index (see `recross_jax.retrieval.index.Index`)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ...


def needed_k(num_queries: int, num_candidates: int, mode: str = "concat") -> int:
    """The ranking depth per query that `aggregate` needs to fill |R'| candidates in `mode`.

    concat needs K = ceil(|R'| / |Q|). dedup and mean need |R'|: when every query retrieves the
    same rows, one query's ranking alone must hold |R'| distinct ids.
    """
    _check_mode(mode)
    _check_positive("number of queries", num_queries)
    _check_positive("number of candidates", num_candidates)
    if mode == "concat":
        return math.ceil(num_candidates / num_queries)
    return num_candidates


def aggregate(ids: np.ndarray, scores: np.ndarray, num_candidates: int,
              mode: str = "concat") -> tuple[np.ndarray, np.ndarray]:
    """Aggregates per-query rankings into at most `num_candidates` candidates (see module doc).

    Args:
      ids: [q, k] ids, each row one query's ranking, best first, as from `Index.search` called
        with k >= `needed_k(q, num_candidates, mode)`.
      scores: [q, k] scores matching `ids`.
      num_candidates: |R'|.
      mode: "concat", "dedup" or "mean".
    Returns:
      ids [n] and float32 scores [n], n <= num_candidates (less only when the rankings are
      shorter than the mode needs).
    """
    ids, scores = np.asarray(ids), np.asarray(scores, np.float32)
    if ids.ndim != 2 or ids.shape != scores.shape:
        raise UserError(f"aggregate needs ids and scores of one shape [queries, k], got "
                        f"{ids.shape} and {scores.shape}")
    _check_mode(mode)
    depth = min(needed_k(ids.shape[0], num_candidates, "concat"), ids.shape[1])
    if mode == "concat":
        top_ids, top_scores = ids[:, :depth].reshape(-1), scores[:, :depth].reshape(-1)
        return top_ids[:num_candidates], top_scores[:num_candidates]
    if mode == "dedup":
        # Concat order for ranks < K, then rank by rank across queries (round-robin).
        order_ids = np.concatenate([ids[:, :depth].reshape(-1), ids[:, depth:].T.reshape(-1)])
        order_scores = np.concatenate([scores[:, :depth].reshape(-1),
                                       scores[:, depth:].T.reshape(-1)])
        keep = np.sort(np.unique(order_ids, return_index=True)[1])[:num_candidates]
        return order_ids[keep], order_scores[keep]
    return _mean_scores(ids, scores, num_candidates, depth)


def retrieve(index: Searchable, queries: np.ndarray, num_candidates: int,
             mode: str = "concat") -> tuple[np.ndarray, np.ndarray]:
    """Searches `index` deep enough for `mode` and aggregates: the |R'| candidates of Q."""
    k = needed_k(len(queries), num_candidates, mode)
    ids, scores = index.search(queries, k)
    return aggregate(ids, scores, num_candidates, mode)


def _mean_scores(ids: np.ndarray, scores: np.ndarray, num_candidates: int,
                 min_depth: int) -> tuple[np.ndarray, np.ndarray]:
    k = ids.shape[1]
    if k == 0:
        return ids.reshape(-1), scores.reshape(-1)
    unique, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    # The rank at which each distinct id first appears in some query's list; their cumulative
    # counts give the number of distinct ids within each depth.
    first_rank = np.full(len(unique), k, np.int64)
    np.minimum.at(first_rank, inverse, np.broadcast_to(np.arange(k), ids.shape))
    distinct_within = np.cumsum(np.bincount(first_rank, minlength=k))  # [d - 1] -> depth d
    reaching = np.nonzero(distinct_within[min_depth - 1:] >= num_candidates)[0]
    depth = min_depth + int(reaching[0]) if len(reaching) else k
    top = inverse[:, :depth].reshape(-1)
    sums = np.bincount(top, weights=scores[:, :depth].reshape(-1).astype(np.float64),
                       minlength=len(unique))
    counts = np.bincount(top, minlength=len(unique))
    present = np.nonzero(counts)[0]
    means = sums[present] / counts[present]
    # Ties break by first position in the concat order of the top-depth lists.
    first_seen = np.full(len(unique), top.size, np.int64)
    np.minimum.at(first_seen, top, np.arange(top.size))
    order = np.lexsort((first_seen[present], -means))[:num_candidates]
    return unique[present[order]], means[order].astype(np.float32)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown aggregation mode {mode!r}; choose one of {', '.join(MODES)}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
