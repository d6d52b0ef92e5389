"""How reliable mining's labels are (issue 22): the agreement of a tuple's rounds with each other.

A candidate's score is the mean over rounds of its group's held-out loss (Algorithm 1). Its
group-mates change from round to round, so one round's score is the candidate's own effect plus
its mates' (noise). Splitting a tuple's rounds into two halves (even and odd rounds) and
correlating the halves' mean scores over the candidates (Spearman) measures that noise; the
Spearman-Brown formula projects the correlation to all the tuple's rounds, or to any other
number of rounds. The positives and negatives each half would pick, and their overlap, show
how stable the labels the reranker learns from are. `agreement` compares two minings of the
same tuples (e.g. other group sizes): whether they rank the same candidates alike.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from recross_jax.errors import UserError
from recross_jax.selection.ranking import rank_correlation


def spearman_brown(r: float, factor: float) -> float:
    """The reliability of a mean over `factor` times as many rounds as one of correlation `r`."""
    if math.isnan(r) or r <= -1 or (factor * r + 1 - r) == 0:
        return float("nan")
    return factor * r / (1 + (factor - 1) * r)


def rounds_needed(r: float, rounds: int, target: float) -> float:
    """Rounds a mean needs for reliability `target`, given reliability `r` at `rounds` rounds
    (inf where r <= 0)."""
    if math.isnan(r) or r <= 0:
        return float("inf")
    return rounds * target * (1 - r) / (r * (1 - target))


def _picks(scores: Mapping[str, float], count: int) -> tuple[set[str], set[str]]:
    """The `count` lowest-loss (positives) and highest-loss (negatives) ids, as mining picks them."""
    ranked = sorted(scores, key=scores.__getitem__)
    return set(ranked[:count]), set(ranked[::-1][:count])


def tuple_reliability(record: Mapping[str, Any]) -> dict:
    """Split-half agreement of one mined tuple's rounds (it must hold `round_scores`)."""
    rounds = record.get("round_scores")
    if not rounds:
        raise UserError(f"tuple {record.get('index')} has no round_scores (mined before they were "
                        "recorded); mine it again")
    ids = sorted(rounds)
    matrix = np.array([rounds[i] for i in ids], dtype=float)  # [candidates, rounds]
    if matrix.shape[1] < 2:
        raise UserError(f"tuple {record.get('index')} has {matrix.shape[1]} round: split halves "
                        "need at least 2 (raise num_rounds)")
    halves = [dict(zip(ids, matrix[:, start::2].mean(axis=1))) for start in (0, 1)]
    r = rank_correlation([halves[0][i] for i in ids], [halves[1][i] for i in ids])
    count = len(record["positive_ids"])
    (pos_a, neg_a), (pos_b, neg_b) = (_picks(h, count) for h in halves)
    scores = record["candidate_scores"]
    gap = (np.mean([scores[i] for i in record["negative_ids"]])
           - np.mean([scores[i] for i in record["positive_ids"]]))
    return {"index": record["index"], "task": record["task"], "candidates": len(ids),
            "rounds": matrix.shape[1], "split_half": r,
            "reliability": spearman_brown(r, 2),
            "positive_overlap": len(pos_a & pos_b) / count,
            "negative_overlap": len(neg_a & neg_b) / count,
            "gap": float(gap), "spread": float(matrix.mean(axis=1).std())}


def summarize(records: Sequence[Mapping[str, Any]], target: float = 0.8) -> dict:
    """Every tuple's reliability and their medians; `rounds_for_target`: rounds the median
    tuple would need for reliability `target`."""
    if not records:
        raise UserError("no tuples to measure")
    rows = [tuple_reliability(r) for r in records]
    keys = ("split_half", "reliability", "positive_overlap", "negative_overlap", "gap", "spread")
    median = {k: float(np.median([row[k] for row in rows])) for k in keys if k != "reliability"}
    # Spearman-Brown is monotone: the median tuple's reliability, defined where a tuple's own
    # (split halves at ρ = -1) is not.
    median["reliability"] = spearman_brown(median["split_half"], 2)
    rounds = rows[0]["rounds"]
    return {"tuples": rows, "median": median, "target": target,
            "rounds_for_target": rounds_needed(median["reliability"], rounds, target)}


def agreement(ours: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]]) -> dict:
    """Per tuple mined in both (same index, task and queries), the Spearman correlation of the
    two candidate scores over the candidates both scored, and the overlap of their positives
    and of their negatives; with the medians."""
    by_index = {r["index"]: r for r in theirs}
    rows = []
    for record in ours:
        other = by_index.get(record["index"])
        if other is None:
            continue
        if (other["task"], other["query_ids"]) != (record["task"], record["query_ids"]):
            raise UserError(f"tuple {record['index']} was drawn differently in the two minings "
                            "(another seed or index): nothing to compare")
        shared = sorted(set(record["candidate_scores"]) & set(other["candidate_scores"]))
        count = len(record["positive_ids"])

        def overlap(key: str) -> float:
            return len(set(record[key]) & set(other[key])) / count  # pylint: disable=cell-var-from-loop
        rows.append({"index": record["index"], "task": record["task"], "candidates": len(shared),
                     "spearman": rank_correlation([record["candidate_scores"][i] for i in shared],
                                           [other["candidate_scores"][i] for i in shared]),
                     "positive_overlap": overlap("positive_ids"),
                     "negative_overlap": overlap("negative_ids")})
    if not rows:
        raise UserError("the two minings share no tuple")
    keys = ("spearman", "positive_overlap", "negative_overlap")
    return {"tuples": rows, "median": {k: float(np.median([row[k] for row in rows])) for k in keys}}


def agreement_markdown(result: Mapping[str, Any]) -> str:
    """`agreement`'s tuples as rows, then the medians."""
    lines = ["| tuple | task | candidates | Spearman ρ | positives agree | negatives agree |",
             "|---" * 6 + "|"]
    lines += [f"| {r['index']} | {r['task']} | {r['candidates']} | {r['spearman']:.2f} | "
              f"{r['positive_overlap']:.2f} | {r['negative_overlap']:.2f} |" for r in result["tuples"]]
    m = result["median"]
    lines.append(f"| **median** | | | {m['spearman']:.2f} | {m['positive_overlap']:.2f} | "
                 f"{m['negative_overlap']:.2f} |")
    return "\n".join(lines) + "\n"


def markdown(summary: Mapping[str, Any]) -> str:
    """The tuples as rows, then the medians and the rounds a reliable label would need."""
    lines = ["| tuple | task | candidates | rounds | split-half ρ | reliability (all rounds) | "
             "positives agree | negatives agree | gap neg−pos (nats) | spread (sd, nats) |",
             "|---" * 10 + "|"]
    for row in summary["tuples"]:
        lines.append(f"| {row['index']} | {row['task']} | {row['candidates']} | {row['rounds']} | "
                     f"{row['split_half']:.2f} | {row['reliability']:.2f} | "
                     f"{row['positive_overlap']:.2f} | {row['negative_overlap']:.2f} | "
                     f"{row['gap']:.4f} | {row['spread']:.4f} |")
    m = summary["median"]
    lines.append(f"| **median** | | | | {m['split_half']:.2f} | {m['reliability']:.2f} | "
                 f"{m['positive_overlap']:.2f} | {m['negative_overlap']:.2f} | {m['gap']:.4f} | "
                 f"{m['spread']:.4f} |")
    lines += ["", f"Rounds the median tuple needs for reliability {summary['target']:.1f} "
              f"(Spearman-Brown): {summary['rounds_for_target']:.0f}."]
    return "\n".join(lines) + "\n"
