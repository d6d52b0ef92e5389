"""Text metrics of SPEC §1.7 (EM, SoftEM, accuracy, ROUGE-L) and their aggregation.

Pure Python and numpy. Every per-example score and every corpus score is a fraction in [0, 1];
reports multiply by 100 where they print percentages.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

import numpy as np

from recross_jax.errors import UserError

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# rouge-score's default tokenizer: lowercase, anything but [a-z0-9] separates tokens.
_ROUGE_NON_ALNUM = re.compile(r"[^a-z0-9]+")

Golds = str | Sequence[str]


def normalize_answer(text: str) -> str:
    """Lowercases, removes punctuation and the words a/an/the, and collapses whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(golds: Golds) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: Golds) -> float:
    """1.0 if the normalized prediction equals some normalized gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(gold) for gold in _as_list(golds)))


def soft_exact_match(prediction: str, golds: Golds) -> float:
    """EM, or 1.0 when prediction and a gold answer are non-empty and one contains the other."""
    pred = normalize_answer(prediction)
    for gold in map(normalize_answer, _as_list(golds)):
        if pred == gold or (pred and gold and (pred in gold or gold in pred)):
            return 1.0
    return 0.0


def rouge_tokenize(text: str) -> list[str]:
    """Tokens as rouge-score's default tokenizer makes them (no stemming)."""
    return _ROUGE_NON_ALNUM.sub(" ", text.lower()).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, with one row of the DP table in memory."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j], row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, golds: Golds) -> float:
    """ROUGE-L F-measure (rouge-score's `rougeL`, default settings), max over gold answers."""
    pred = rouge_tokenize(prediction)
    best = 0.0
    for gold in map(rouge_tokenize, _as_list(golds)):
        lcs = _lcs_length(pred, gold)
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def accuracy(predictions: Sequence[object], labels: Sequence[object]) -> float:
    """Fraction of positions where prediction equals label."""
    _check_lengths(predictions, labels)
    if not predictions:
        return 0.0
    return float(np.mean([p == y for p, y in zip(predictions, labels)]))


def text_metrics(predictions: Sequence[str], golds: Sequence[Golds]) -> dict[str, float]:
    """Corpus EM, SoftEM and ROUGE-L: each the mean over examples of the per-example score."""
    _check_lengths(predictions, golds)
    fns = {"em": exact_match, "soft_em": soft_exact_match, "rouge_l": rouge_l}
    return {name: mean([fn(p, g) for p, g in zip(predictions, golds)]) for name, fn in fns.items()}


def mean(values: Sequence[float]) -> float:
    """Mean over examples; 0.0 for no examples (a metric over an empty set reports nothing found)."""
    return float(np.mean(values)) if len(values) else 0.0


def summarize_query_sets(results: Mapping[str, Sequence[float]]) -> dict:
    """Summary of SPEC §1.7 over query sets.

    Args:
      results: task name -> one score per query set (the same number of query sets, in the
        same seed order, for every task).

    Returns:
      {"per_task": {task: {"mean", "std", "n"}},
       "overall": {"mean", "std", "min", "max", "median", "per_query_set"}}, where
      `per_query_set[i]` is the mean over tasks of the scores of query set i and the overall
      statistics are over those averages. Standard deviations are population ones (ddof=0).
    """
    if not results:
        raise UserError("no results to summarize: the task -> scores mapping is empty")
    counts = {task: len(scores) for task, scores in results.items()}
    first_task, n = next(iter(counts.items()))
    for task, count in counts.items():
        if count == 0:
            raise UserError(f"task {task!r} has no query-set scores")
        if count != n:
            raise UserError(f"task {task!r} has {count} query-set scores but {first_task!r} has {n}")
    table = np.asarray([list(scores) for scores in results.values()], dtype=np.float64)
    per_task = {
        task: {"mean": float(row.mean()), "std": float(row.std()), "n": int(row.size)}
        for task, row in zip(results, table)
    }
    averages = table.mean(axis=0)
    overall = {
        "mean": float(averages.mean()),
        "std": float(averages.std()),
        "min": float(averages.min()),
        "max": float(averages.max()),
        "median": float(np.median(averages)),
        "per_query_set": [float(v) for v in averages],
    }
    return {"per_task": per_task, "overall": overall}


def _check_lengths(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} references")
