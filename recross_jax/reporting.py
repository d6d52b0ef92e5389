"""Result tables (markdown, CSV, JSON) and the retrieval-distribution heatmap.

Inputs are the per-run JSON files that `recross generalize` writes, one per (target, method,
query set), each holding at least `target`, `method`, `query_set`, `metrics` (name → value) and
`retrieved_tasks` (the upstream task of each retrieved example; empty for `base`).
"""
from __future__ import annotations

import collections
import csv
import glob
import io
import json
import os
from typing import Iterable, Sequence

import numpy as np

from recross_jax import metrics as metrics_lib
from recross_jax.errors import UserError
from recross_jax.io_utils import atomic_path, write_json_atomic, write_text_atomic

METHOD_ORDER = ("base", "random", "sbert", "recross_dense", "recross")


def load_runs(results_dir: str) -> list[dict]:
    """Every run JSON under `results_dir` (recursively), sorted by target, method, query set."""
    paths = sorted(glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True))
    runs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
        if {"target", "method", "query_set", "metrics"} <= run.keys():
            runs.append(run)
    if not runs:
        raise UserError(f"no run results (JSON with target, method, query_set, metrics) under {results_dir}")
    return sorted(runs, key=lambda r: (r["target"], _method_rank(r["method"]), r["query_set"]))


def primary_metric(runs: Sequence[dict], target: str) -> str:
    """Accuracy (rank classification) where the target has answer choices, else SoftEM."""
    names = set().union(*(r["metrics"] for r in runs if r["target"] == target))
    return "accuracy" if "accuracy" in names else "soft_em"


def summarize(runs: Sequence[dict], metric: str | None = None) -> dict:
    """SPEC §1.7 summary per method: {method: metrics.summarize_query_sets(...) + "metric"}.

    `metric=None` uses each target's primary metric. Query sets are matched by their index.
    """
    scores: dict[str, dict[str, dict[int, float]]] = collections.defaultdict(
        lambda: collections.defaultdict(dict))
    for run in runs:
        name = metric or primary_metric(runs, run["target"])
        if name not in run["metrics"]:
            raise UserError(f"run {run['target']}/{run['method']}/{run['query_set']} has no metric {name!r}")
        scores[run["method"]][run["target"]][run["query_set"]] = float(run["metrics"][name])
    summary = {}
    for method in sorted(scores, key=_method_rank):
        per_target = {t: [qs[i] for i in sorted(qs)] for t, qs in sorted(scores[method].items())}
        summary[method] = metrics_lib.summarize_query_sets(per_target)
    return summary


def markdown_table(summary: dict, scale: float = 100.0) -> str:
    """Targets as rows, methods as columns ("mean ± std"), then overall mean/std/min/max/median."""
    methods = list(summary)
    targets = sorted(set().union(*(s["per_task"] for s in summary.values())))
    fmt = lambda v: f"{scale * v:.2f}"  # noqa: E731
    lines = ["| target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for target in targets:
        cells = []
        for method in methods:
            row = summary[method]["per_task"].get(target)
            cells.append(f"{fmt(row['mean'])} ± {fmt(row['std'])}" if row else "–")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    for stat in ("mean", "std", "min", "max", "median"):
        cells = [fmt(summary[m]["overall"][stat]) for m in methods]
        lines.append(f"| **overall {stat}** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summary: dict) -> str:
    """One row per (method, target or overall statistic), raw values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "row", "mean", "std", "n"])
    for method, s in summary.items():
        for target, row in s["per_task"].items():
            writer.writerow([method, target, f"{row['mean']:.6f}", f"{row['std']:.6f}", row["n"]])
        for stat in ("mean", "std", "min", "max", "median"):
            writer.writerow([method, f"overall_{stat}", f"{s['overall'][stat]:.6f}", "", ""])
    return out.getvalue()


def retrieval_distribution(runs: Iterable[dict]) -> dict[str, dict[str, collections.Counter]]:
    """{method: {target: Counter(upstream task → number of retrieved examples)}} over query sets."""
    dist: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter))
    for run in runs:
        if run.get("retrieved_tasks"):
            dist[run["method"]][run["target"]].update(run["retrieved_tasks"])
    return dist


def plot_heatmap(runs: Sequence[dict], path: str, top_tasks: int = 25) -> None:
    """PNG: per method a panel (stacked) of targets × upstream tasks, cells = share of retrieved examples.

    The `top_tasks` upstream tasks retrieved most often overall get their own column; the rest
    are summed into "other".
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    dist = retrieval_distribution(runs)
    if not dist:
        raise UserError("no run retrieved anything: nothing to plot")
    methods = sorted(dist, key=_method_rank)
    targets = sorted(set().union(*(d.keys() for d in dist.values())))
    totals = collections.Counter()
    for per_target in dist.values():
        for counts in per_target.values():
            totals.update(counts)
    columns = [task for task, _ in totals.most_common(top_tasks)]
    has_other = len(totals) > len(columns)
    labels = columns + (["other"] if has_other else [])
    # One panel per method, stacked, so long task names stay readable on both axes.
    panel_height = 1.0 + 0.4 * len(targets)
    fig, axes = plt.subplots(len(methods), 1, squeeze=False, sharex=True,
                             figsize=(max(8.0, 0.3 * len(labels) + 4.0), panel_height * len(methods) + 2.5))
    for ax, method in zip(axes[:, 0], methods):
        grid = np.zeros((len(targets), len(labels)))
        for i, target in enumerate(targets):
            counts = dist[method].get(target, collections.Counter())
            n = sum(counts.values()) or 1
            grid[i, :len(columns)] = [counts[c] / n for c in columns]
            if has_other:
                grid[i, -1] = sum(v for k, v in counts.items() if k not in columns) / n
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(grid.max(), 1e-9))
        ax.set_title(method)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.tick_params(axis="x", labelbottom=ax is axes[-1, 0])
        ax.set_yticks(range(len(targets)), targets, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.03, label="share of retrieved examples")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(results_dir: str, out_dir: str, metric: str | None = None) -> dict:
    """Writes `table.md`, `table.csv`, `summary.json` and `retrieval_heatmap.png` into out_dir."""
    runs = load_runs(results_dir)
    summary = summarize(runs, metric)
    write_text_atomic(os.path.join(out_dir, "table.md"), markdown_table(summary))
    write_text_atomic(os.path.join(out_dir, "table.csv"), csv_table(summary))
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    if retrieval_distribution(runs):
        plot_heatmap(runs, os.path.join(out_dir, "retrieval_heatmap.png"))
    return summary


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)
