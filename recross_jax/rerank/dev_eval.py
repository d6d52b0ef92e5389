"""A trained reranker on its own dev tuples, or on test tuples mined apart, as ReCross uses it
(issue 22: is it above chance?).

`train_reranker` reports pair accuracy over the dev tuples' (query, candidate) pairs, which are
not independent: a tuple's pairs share its candidates. Here each dev tuple is one unit: its
pair accuracy, and its ranking AUC -- the share of (positive, negative) pairs in which the
positive's utility (mean positive logit over the tuple's queries, what ReCross reranks by) is
higher, ties counting half. Means over tuples get a bootstrap confidence interval over tuples.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

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


def recorded_split(reranker_dir: str, tuples_path: str) -> tuple[list[dict], list[dict]]:
    """(train, dev) tuples as `reranker_dir`'s training split them (its recorded settings)."""
    with open(os.path.join(reranker_dir, "reranker.json"), encoding="utf-8") as f:
        settings = json.load(f)["settings"]
    if io_utils.sha256_file(tuples_path) != settings["tuples_sha256"]:
        raise UserError(f"{reranker_dir} was trained on other tuples than {tuples_path}: its dev "
                        "split would not be its dev tuples")
    tuples = cross_encoder.read_tuples(tuples_path)
    train, dev = cross_encoder.split_tuples(len(tuples), settings["dev_fraction"], settings["seed"])
    return [tuples[i] for i in train], [tuples[i] for i in dev]


def unseen_tuples(tuples_path: str, seen: Sequence[dict]) -> list[dict]:
    """The tuples of `tuples_path` (mined apart, e.g. with another seed), refused if any has the
    queries of a tuple in `seen` (what the reranker trained on or chose its epoch by)."""
    tuples = cross_encoder.read_tuples(tuples_path)
    known = {tuple(record["queries"]) for record in seen}
    repeated = [record.get("index") for record in tuples if tuple(record["queries"]) in known]
    if repeated:
        raise UserError(f"{tuples_path}: tuples {repeated[:5]} have the queries of tuples the reranker "
                        "trained or chose its epoch on; mine test tuples with another seed")
    return tuples


def dev_tuples(reranker_dir: str, tuples_path: str) -> list[dict]:
    """The tuples `reranker_dir`'s training held out as dev (its recorded split)."""
    return recorded_split(reranker_dir, tuples_path)[1]


SOURCE_LEVELS = ("dataset", "template")


def source_of(example_id: str, level: str) -> str:
    """An upstream example's source: its dataset ('dataset') or dataset and prompt ('template'),
    from an id `dataset|split|template|#n`."""
    parts = example_id.split("|")
    if level not in SOURCE_LEVELS or len(parts) < 3:
        raise UserError(f"cannot take the {level!r} of example id {example_id!r}")
    return parts[0] if level == "dataset" else f"{parts[0]}|{parts[2]}"


class SourcePrior:
    """A baseline that never reads the query: a candidate's score is how often examples of its
    source (dataset, or dataset and template) were positives in the training tuples, Laplace
    smoothed ((positives + 1) / (positives + negatives + 2); an unseen source scores 1/2). If
    it ranks the dev tuples as well as the reranker does, the reranker learned which sources
    help, not which examples help which query."""

    def __init__(self, train: Sequence[dict], level: str, scored: Sequence[dict] = ()):
        counts: dict[str, list[int]] = {}
        for record in train:
            for key, ids in ((1, record["positive_ids"]), (0, record["negative_ids"])):
                for example_id in ids:
                    counts.setdefault(source_of(example_id, level), [0, 0])[key] += 1
        self.rate = {source: (pos + 1) / (pos + neg + 2) for source, (neg, pos) in counts.items()}
        # The texts the evaluation passes, back to their ids' sources.
        self.source = {text: source_of(example_id, level) for record in (*train, *scored)
                       for text, example_id in zip(record["positives"] + record["negatives"],
                                                   record["positive_ids"] + record["negative_ids"])}

    def utility(self, queries: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """Each candidate's source rate (the queries are ignored)."""
        del queries
        return np.array([self.rate.get(self.source[c], 0.5) for c in candidates])

    def logits(self, firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        """[n, 2] pair logits whose softmax is (1 - rate, rate)."""
        rate = self.utility(firsts, seconds)
        return np.stack([np.zeros_like(rate), np.log(rate) - np.log1p(-rate)], axis=1)


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


def markdown(summary: dict, unit: str = "dev tuple") -> str:
    """The evaluated tuples as rows (`unit` heads their column), then the means with intervals."""
    lines = [f"| {unit} | task | pairs | pair accuracy | ranking AUC |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['index']} | {r['task']} | {r['pairs']} | {r['pair_accuracy']:.3f} | "
              f"{r['ranking_auc']:.3f} |" for r in summary["tuples"]]
    cells = []
    for key in ("pair_accuracy", "ranking_auc"):
        low, high = summary[key]["ci95"]
        cells.append(f"**{summary[key]['mean']:.3f}** [{low:.3f}, {high:.3f}]")
    lines.append(f"| **mean** (95% CI over tuples) | | | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def compared(summaries: Mapping[str, dict], reference: str, seed: int = 0) -> dict[str, dict]:
    """Per scorer of `summaries` (evaluations of the same dev tuples) other than `reference`:
    reference − scorer in pair accuracy and ranking AUC, paired by tuple, with 95% CIs."""
    result = {}
    for name, summary in summaries.items():
        if name == reference:
            continue
        result[name] = {}
        for key in ("pair_accuracy", "ranking_auc"):
            diffs = [a[key] - b[key] for a, b in zip(summaries[reference]["tuples"], summary["tuples"])]
            result[name][key] = {"mean": float(np.mean(diffs)), "ci95": _tuple_bootstrap_ci(diffs, seed)}
    return result


def comparison_markdown(summaries: Mapping[str, dict], differences: Mapping[str, dict],
                        reference: str) -> str:
    """One row per scorer: its means with intervals, and `reference` minus it."""
    def cell(stat: dict, signed: bool = False) -> str:
        low, high = stat["ci95"]
        form = "+.3f" if signed else ".3f"
        return f"{stat['mean']:{form}} [{low:{form}}, {high:{form}}]"

    lines = [f"| scorer | pair accuracy | ranking AUC | {reference} − it: pair accuracy | "
             f"{reference} − it: ranking AUC |", "|---|---:|---:|---:|---:|"]
    for name, summary in summaries.items():
        diff = differences.get(name)
        extra = [cell(diff[k], True) for k in ("pair_accuracy", "ranking_auc")] if diff else ["", ""]
        lines.append(f"| {name} | {cell(summary['pair_accuracy'])} | {cell(summary['ranking_auc'])} | "
                     + " | ".join(extra) + " |")
    return "\n".join(lines) + "\n"

