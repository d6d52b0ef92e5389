"""A trained reranker on its own dev tuples, as ReCross uses it (issue 22: is it above chance?).

`train_reranker` reports pair accuracy over the dev tuples' (query, candidate) pairs, which are
not independent: a tuple's pairs share its candidates. Here each dev tuple is one unit: its
pair accuracy, and its ranking AUC -- the share of (positive, negative) pairs in which the
positive's utility (mean positive logit over the tuple's queries, what ReCross reranks by) is
higher, ties counting half. Means over tuples get a bootstrap confidence interval over tuples.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from recross_jax import io_utils, significance
from recross_jax.errors import UserError
from recross_jax.rerank import cross_encoder


def ranking_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a positive outscores a negative), ties counting half."""
    if len(positive) == 0 or len(negative) == 0:
        raise UserError("ranking AUC needs at least one positive and one negative")
    p, n = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def dev_tuples(reranker_dir: str, tuples_path: str) -> list[dict]:
    """The tuples `reranker_dir`'s training held out as dev (its recorded split)."""
    with open(os.path.join(reranker_dir, "reranker.json"), encoding="utf-8") as f:
        settings = json.load(f)["settings"]
    if io_utils.sha256_file(tuples_path) != settings["tuples_sha256"]:
        raise UserError(f"{reranker_dir} was trained on other tuples than {tuples_path}: its dev "
                        "split would not be its dev tuples")
    tuples = cross_encoder.read_tuples(tuples_path)
    _, dev = cross_encoder.split_tuples(len(tuples), settings["dev_fraction"], settings["seed"])
    return [tuples[i] for i in dev]


def evaluate(reranker: Any, tuples: Sequence[dict], seed: int = 0) -> dict:
    """Per dev tuple: pair accuracy and ranking AUC; their means over tuples with 95% CIs."""
    rows = []
    for record in tuples:
        firsts, seconds, labels = cross_encoder.tuple_pairs(record)
        accuracy = cross_encoder.dev_metrics(reranker.logits(firsts, seconds), np.asarray(labels))["accuracy"]
        utility = reranker.utility(record["queries"], record["positives"] + record["negatives"])
        count = len(record["positives"])
        rows.append({"index": record.get("index"), "task": record.get("task"), "pairs": len(labels),
                     "pair_accuracy": accuracy,
                     "ranking_auc": ranking_auc(utility[:count], utility[count:])})
    summary = {"tuples": rows}
    for key in ("pair_accuracy", "ranking_auc"):
        values = [row[key] for row in rows]
        summary[key] = {"mean": float(np.mean(values)), "ci95": _tuple_bootstrap_ci(values, seed)}
    return summary


def _tuple_bootstrap_ci(values: Sequence[float], seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean over tuples, resampling tuples (each its own unit)."""
    return significance.bootstrap_mean_ci({str(i): [v] for i, v in enumerate(values)}, seed)


def markdown(summary: dict) -> str:
    """Dev tuples as rows, then the means with their intervals."""
    lines = ["| dev tuple | task | pairs | pair accuracy | ranking AUC |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['index']} | {r['task']} | {r['pairs']} | {r['pair_accuracy']:.3f} | "
              f"{r['ranking_auc']:.3f} |" for r in summary["tuples"]]
    cells = []
    for key in ("pair_accuracy", "ranking_auc"):
        low, high = summary[key]["ci95"]
        cells.append(f"**{summary[key]['mean']:.3f}** [{low:.3f}, {high:.3f}]")
    lines.append(f"| **mean** (95% CI over tuples) | | | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"
