"""Scoring a ranking of source tasks against measured transfer (TaskWeb, Kim et al., 2023, §5).

- NDCG over the full list: relevance of a source = N − its gold rank (0-based), gain 2^rel − 1,
  discount log2(i + 2), normalised by the DCG of the gold order.
- Regret@k = (mean target score of the gold top k − mean target score of the predicted top k)
  / the former, on absolute target scores after source→target training.
- Spearman's ρ between two score tables over the pairs both hold (how alike an estimate or a
  measurement ranks transfer compared with TaskWeb's).

Rankings sort by score, highest first; ties keep the order of the candidate list (Python's
stable sort, as the authors' code).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from recross_jax.errors import UserError

DEFAULT_KS = (1, 3, 5)


def rank(scores: Mapping[str, float], candidates: Sequence[str]) -> list[str]:
    """`candidates` ordered by `scores`, highest first (ties: candidate order).

    Raises:
      UserError: a candidate without a score, or a score that is not a finite number.
    """
    for task in candidates:
        value = scores.get(task)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"no finite score for source {task!r}" if value is None
                            else f"score of source {task!r} is not a finite number: {value!r}")
    return sorted(candidates, key=lambda task: scores[task], reverse=True)


def dcg(pred: Sequence[str], gold: Sequence[str]) -> float:
    """DCG of `pred` with relevance N − (gold rank of each item)."""
    gold_rank = {task: i for i, task in enumerate(gold)}
    relevance = np.array([len(gold) - gold_rank[task] for task in pred], dtype=np.float64)
    return float(np.sum((2.0 ** relevance - 1.0) / np.log2(np.arange(len(pred)) + 2.0)))


def ndcg(pred: Sequence[str], gold: Sequence[str]) -> float:
    """DCG(pred) / DCG(gold); both lists hold the same items."""
    if sorted(pred) != sorted(gold):
        raise UserError("a predicted ranking must order the same sources as the gold one")
    return dcg(pred, gold) / dcg(gold, gold)


def regret_at_k(pred: Sequence[str], gold: Sequence[str], perf: Mapping[str, float], k: int) -> float:
    """(mean perf of gold[:k] − mean perf of pred[:k]) / mean perf of gold[:k]."""
    if k < 1:
        raise UserError(f"Regret@k needs k >= 1, got {k}")
    best = float(np.mean([perf[task] for task in gold[:k]]))
    got = float(np.mean([perf[task] for task in pred[:k]]))
    return (best - got) / best


def score_target(scores: Mapping[str, float], gold: Mapping[str, float], perf: Mapping[str, float],
                 candidates: Sequence[str], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """NDCG and Regret@k of one target's predicted source scores, over `candidates`."""
    pred_order = rank(scores, candidates)
    gold_order = rank(gold, candidates)
    row = {"ndcg": ndcg(pred_order, gold_order)}
    for k in ks:
        row[f"regret@{k}"] = regret_at_k(pred_order, gold_order, perf, k)
    return row


def evaluate(pred: Mapping[str, Mapping[str, float]], gold: Mapping[str, Mapping[str, float]],
             perf: Mapping[str, Mapping[str, float]], categories: Mapping[str, Sequence[str]],
             sources: Sequence[str], ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Leave-one-out evaluation over the targets of `categories`.

    For each target t the candidates are the `sources` other than t (in that order, which
    breaks ties); `pred[t]`, `gold[t]` and `perf[t]` must score them all.

    Returns:
      {"per_target": {t: row}, "per_category": {category: row}, "mean": row}, each row
      {"ndcg", "regret@k"...}, "n": targets averaged; the mean is over all evaluated targets,
      not over categories.
    """
    per_target, per_category = {}, {}
    for category, targets in categories.items():
        for target in targets:
            for name, table in (("predicted", pred), ("gold", gold), ("target score", perf)):
                if target not in table:
                    raise UserError(f"no {name} scores for target {target!r}")
            candidates = [s for s in sources if s != target]
            try:
                per_target[target] = score_target(pred[target], gold[target], perf[target], candidates, ks)
            except UserError as e:
                raise UserError(f"target {target!r}: {e}") from None
            except KeyError as e:
                raise UserError(f"target {target!r}: no target score after source {e.args[0]!r}") from None
        per_category[category] = _mean([per_target[t] for t in targets])
    return {"per_target": per_target, "per_category": per_category,
            "mean": _mean(list(per_target.values()))}


def _mean(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = list(rows[0]) if rows else []
    out = {key: float(np.mean([row[key] for row in rows])) for key in keys}
    out["n"] = len(rows)
    return out


def spearman(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]
             ) -> tuple[float, int]:
    """Spearman's ρ between two score tables over the (target, source) pairs both have (NaN
    under 3 pairs, or where either side is constant)."""
    pairs = [(a[t][s], b[t][s]) for t in a if t in b for s in a[t] if s in b[t]]
    if len(pairs) < 3:
        return float("nan"), len(pairs)
    x, y = zip(*pairs)
    return rank_correlation(x, y), len(pairs)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ of two paired sequences (NaN where either is constant: undefined)."""
    from scipy import stats  # pylint: disable=import-outside-toplevel
    if len(set(x)) < 2 or len(set(y)) < 2:  # scipy would warn on stderr
        return float("nan")
    return float(stats.spearmanr(x, y)[0])


def spearman_per_target(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]
                        ) -> tuple[float, int]:
    """The mean over shared targets of Spearman's ρ between their source scores (how alike
    the two rank the sources of one target), and the number of targets."""
    rhos = [spearman({t: a[t]}, {t: b[t]})[0] for t in a if t in b]
    rhos = [r for r in rhos if math.isfinite(r)]
    return (float(np.mean(rhos)) if rhos else float("nan")), len(rhos)
