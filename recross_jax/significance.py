"""Paired comparisons of two methods over the same (target, query set) runs, with a bootstrap CI.

For methods A and B, d[t, q] = score_A − score_B on target t and query set q (the runs share the
query set, so the difference is paired). The overall difference is the SPEC §1.7 mean: over
targets of the mean over query sets. Its confidence interval comes from a two-level bootstrap
(targets resampled with replacement, then query sets within each drawn target), so it speaks
for other tasks like these as well as for other query sets; a target with a single query set
adds only target-level variation.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from recross_jax.errors import UserError

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95


def paired_differences(scores_a: Mapping[str, Mapping[int, float]],
                       scores_b: Mapping[str, Mapping[int, float]]) -> dict[str, list[float]]:
    """{target: [a − b per query set, in query-set order]} over the targets and query sets both
    methods ran (`scores_x[target][query_set]` = score)."""
    diffs = {}
    for target in sorted(set(scores_a) & set(scores_b)):
        shared = _shared_query_sets(scores_a[target], scores_b[target])
        if shared:
            diffs[target] = [float(scores_a[target][q]) - float(scores_b[target][q]) for q in shared]
    if not diffs:
        raise UserError("the two methods share no (target, query set) run: nothing to compare")
    return diffs


def _shared_query_sets(a: Mapping[int, float], b: Mapping[int, float]) -> list[int]:
    """The query sets both of one target's score maps hold, in order."""
    return sorted(set(a) & set(b))


def bootstrap_mean_ci(diffs: Mapping[str, Sequence[float]], seed: int,
                      resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Percentile CI of the mean over targets of per-target mean differences, resampling targets
    and then query sets within each (see the module docstring); deterministic in `seed`."""
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise UserError(f"bootstrap needs resamples >= 1 and 0 < confidence < 1, got {resamples}, "
                        f"{confidence}")
    rng = np.random.default_rng(seed)
    rows = [np.asarray(v, dtype=np.float64) for v in diffs.values()]
    picks = rng.integers(0, len(rows), size=(resamples, len(rows)))
    means = np.empty(picks.shape)  # [resample, slot]: a drawn target's mean over drawn query sets
    for target, row in enumerate(rows):
        chosen = picks == target
        draws = rng.integers(0, row.size, size=(int(chosen.sum()), row.size))
        means[chosen] = row[draws].mean(axis=1)
    totals = means.mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(totals, [tail, 100.0 - tail])
    return float(low), float(high)


def compare(scores_a: Mapping[str, Mapping[int, float]], scores_b: Mapping[str, Mapping[int, float]],
            seed: int, resamples: int = DEFAULT_RESAMPLES,
            confidence: float = DEFAULT_CONFIDENCE) -> dict:
    """A − B: per target the mean and (population) std of the paired differences; per query set
    the mean difference over the targets that ran it; overall the mean over targets, its
    bootstrap CI, and wins / ties / losses over the (target, query set) pairs."""
    diffs = paired_differences(scores_a, scores_b)
    flat = np.concatenate([np.asarray(v) for v in diffs.values()])
    low, high = bootstrap_mean_ci(diffs, seed, resamples, confidence)
    by_query_set: dict[int, list[float]] = {}
    for target, row in diffs.items():
        for q, diff in zip(_shared_query_sets(scores_a[target], scores_b[target]), row):
            by_query_set.setdefault(q, []).append(diff)
    return {
        "per_target": {t: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                       for t, v in diffs.items()},
        "per_query_set": {q: float(np.mean(v)) for q, v in sorted(by_query_set.items())},
        "mean": float(np.mean([np.mean(v) for v in diffs.values()])),
        "ci": [low, high], "confidence": confidence, "resamples": resamples,
        "wins": int((flat > 0).sum()), "ties": int((flat == 0).sum()), "losses": int((flat < 0).sum()),
    }
