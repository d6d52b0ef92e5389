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
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from recross_jax import metrics as metrics_lib
from recross_jax import significance
from recross_jax.errors import UserError
from recross_jax.io_utils import atomic_path, write_json_atomic, write_text_atomic

METHOD_ORDER = ("base", "random", "sbert", "recross_dense", "recross")
# SoftEM of greedy decoding is the paper's metric (the headline); rank classification beside it.
METRICS = ("soft_em", "accuracy")
# The paper's claims, as (A, B) pairs whose paired difference A − B the report tests.
COMPARISONS = (("recross", "base"), ("recross", "sbert"), ("recross", "recross_dense"),
               ("recross", "random"), ("recross_dense", "base"))


def load_runs(results_dir: str, targets: Sequence[str] | None = None,
              methods: Sequence[str] | None = None, num_query_sets: int | None = None) -> list[dict]:
    """Every run JSON under `results_dir` (recursively), sorted by target, method, query set;
    only those of `targets`, `methods` and query sets below `num_query_sets` where given (a
    results directory may hold runs of an earlier, larger configuration)."""
    if num_query_sets is not None and (isinstance(num_query_sets, bool) or num_query_sets < 1):
        raise UserError(f"num_query_sets must be a positive integer, got {num_query_sets!r}")
    paths = sorted(glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True))
    found = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
        if {"target", "method", "query_set", "metrics"} <= run.keys():
            found.append(run)
    if not found:
        raise UserError(f"no run results (JSON with target, method, query_set, metrics) under {results_dir}")
    for kind, wanted in (("target", targets), ("method", methods)):
        present = {run[kind] for run in found}
        missing = [name for name in wanted or () if name not in present]
        if missing:
            raise UserError(f"no runs of {kind} {missing[0]!r} under {results_dir} "
                            f"(its {kind}s: {', '.join(sorted(present))})")
    runs = [run for run in found
            if (targets is None or run["target"] in targets) and (methods is None or run["method"] in methods)
            and (num_query_sets is None or run["query_set"] < num_query_sets)]
    if not runs:
        raise UserError(f"no runs of the targets and methods asked for under {results_dir} in query "
                        f"sets below {num_query_sets}")
    return sorted(runs, key=lambda r: (r["target"], _method_rank(r["method"]), r["query_set"]))


def primary_metric(runs: Sequence[dict], target: str) -> str:
    """SoftEM (the paper's metric) where the target's runs decoded, else accuracy."""
    names = set().union(*(r["metrics"] for r in runs if r["target"] == target))
    return "soft_em" if "soft_em" in names else "accuracy"


def scores_by_method(runs: Sequence[dict], metric: str | None = None
                     ) -> dict[str, dict[str, dict[int, float]]]:
    """{method: {target: {query set: score}}}; `metric=None` takes each target's primary one."""
    scores: dict[str, dict[str, dict[int, float]]] = collections.defaultdict(
        lambda: collections.defaultdict(dict))
    for run in runs:
        name = metric or primary_metric(runs, run["target"])
        if name not in run["metrics"]:
            raise UserError(f"run {run['target']}/{run['method']}/{run['query_set']} has no metric {name!r}")
        scores[run["method"]][run["target"]][run["query_set"]] = float(run["metrics"][name])
    return {method: dict(by_target) for method, by_target in scores.items()}


def summarize(runs: Sequence[dict], metric: str | None = None) -> dict:
    """SPEC §1.7 summary per method: {method: metrics.summarize_query_sets(...)}.

    `metric=None` uses each target's primary metric. Query sets are matched by their index.
    """
    scores = scores_by_method(runs, metric)
    summary = {}
    for method in sorted(scores, key=_method_rank):
        per_target = {t: [qs[i] for i in sorted(qs)] for t, qs in sorted(scores[method].items())}
        summary[method] = metrics_lib.summarize_query_sets(per_target)
    return summary


def comparisons(runs: Sequence[dict], metric: str, seed: int,
                pairs: Sequence[tuple[str, str]] = COMPARISONS) -> dict[str, dict]:
    """{"A - B": significance.compare(...)} for each pair of `pairs` whose methods both ran."""
    scores = scores_by_method(runs, metric)
    return {f"{a} - {b}": significance.compare(scores[a], scores[b], seed)
            for a, b in pairs if a in scores and b in scores}


def comparisons_markdown(results: Mapping[str, Mapping[str, dict]], scale: float = 100.0) -> str:
    """Per metric, one row per comparison: the mean paired difference, its bootstrap CI and
    wins / ties / losses over (target, query set) pairs, and the mean difference of each query set."""
    lines = []
    for metric, by_pair in results.items():
        lines += [f"### {metric}", "", "| comparison | mean difference | 95% CI | wins / ties / losses "
                  "| by query set |", "|---|---|---|---|---|"]
        for pair, c in by_pair.items():
            low, high = (scale * v for v in c["ci"])
            by_query_set = ", ".join(f"{scale * v:+.2f}" for v in c["per_query_set"].values())
            lines.append(f"| {pair} | {scale * c['mean']:+.2f} | [{low:+.2f}, {high:+.2f}] | "
                         f"{c['wins']} / {c['ties']} / {c['losses']} | {by_query_set} |")
        lines.append("")
    return "\n".join(lines)


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


def retrieved_share(runs: Iterable[dict], tasks: Iterable[str]) -> dict[str, dict[str, float]]:
    """{method: {target: share of its retrieved examples (over query sets) from `tasks`}}."""
    wanted = set(tasks)
    dist = retrieval_distribution(runs)
    return {method: {target: sum(n for t, n in counts.items() if t in wanted) / sum(counts.values())
                     for target, counts in dist[method].items()}
            for method in sorted(dist, key=_method_rank)}


def prediction_distribution(runs: Iterable[dict]) -> dict[str, dict[str, collections.Counter]]:
    """{method: {target: Counter(greedy prediction, lowercased, whitespace collapsed → count)}}
    over query sets, from the runs that kept their test examples' `outputs`."""
    dist: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter))
    for run in runs:
        predictions = [o["prediction"] for o in run.get("outputs", ()) if "prediction" in o]
        if predictions:
            dist[run["method"]][run["target"]].update(" ".join(p.lower().split()) for p in predictions)
    return dist


def _top_counts_markdown(dist: Mapping[str, Mapping[str, collections.Counter]], top: int,
                         max_chars: int = 40) -> str:
    """Targets as rows, methods as columns, each cell its `top` most common keys with their share."""
    def label(key: str) -> str:
        key = key if len(key) <= max_chars else key[:max_chars - 1] + "…"
        return (key or '""').replace("|", "\\|")

    methods = sorted(dist, key=_method_rank)
    targets = sorted(set().union(*(d.keys() for d in dist.values())))
    lines = ["| target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for target in targets:
        cells = []
        for method in methods:
            counts = dist[method].get(target, collections.Counter())
            total = sum(counts.values())
            shares = [f"{label(key)} {100 * n / total:.0f}%" for key, n in counts.most_common(top)]
            cells.append(", ".join(shares) or "–")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def retrieved_tasks_markdown(runs: Iterable[dict], top: int = 3) -> str:
    """Targets as rows, retrieval methods as columns: each method's `top` most retrieved upstream
    tasks with their share of R over all query sets (e.g. "snli 36%, quartz 25%")."""
    return _top_counts_markdown(retrieval_distribution(runs), top)


def frequent_predictions_markdown(runs: Iterable[dict], top: int = 3) -> str:
    """Targets as rows, methods as columns: each method's `top` most frequent greedy predictions
    (lowercased) with their share of the test examples over all query sets (e.g. "no 62%, yes 20%"),
    which shows a model that answers every target in one form."""
    return _top_counts_markdown(prediction_distribution(runs), top)


def answer_form_share(runs: Iterable[dict], golds: Mapping[str, Mapping[str, Sequence[str]]],
                      forms: Iterable[str]) -> dict[str, dict[str, dict[str, float]]]:
    """How far each method pulls a target's answers into a form the target does not use.

    `golds[target][example_id]`: that test example's gold answers. Over the test examples none of
    whose golds is one of `forms` (compared as `metrics.normalize_answer` leaves them, e.g. yes /
    no), per method and target: `share`, the share of greedy predictions that are one of `forms`
    anyway, and `examples`, how many such predictions there were (over query sets; runs without
    `outputs` are skipped). Returns {method: {target: {"share", "examples"}}}.
    """
    wanted = {metrics_lib.normalize_answer(f) for f in forms}
    off_form = {target: {example_id for example_id, answers in by_id.items()
                         if not any(metrics_lib.normalize_answer(a) in wanted for a in answers)}
                for target, by_id in golds.items()}
    counts: dict[str, dict[str, list[int]]] = collections.defaultdict(
        lambda: collections.defaultdict(lambda: [0, 0]))
    for run in runs:
        for output in run.get("outputs", ()):
            if "prediction" not in output or output["example_id"] not in off_form.get(run["target"], ()):
                continue
            cell = counts[run["method"]][run["target"]]
            cell[0] += metrics_lib.normalize_answer(output["prediction"]) in wanted
            cell[1] += 1
    return {method: {target: {"share": hits / total, "examples": total}
                     for target, (hits, total) in sorted(counts[method].items())}
            for method in sorted(counts, key=_method_rank)}


def answer_form_markdown(shares: Mapping[str, Mapping[str, Mapping[str, float]]],
                         forms: Sequence[str]) -> str:
    """`answer_form_share` as a table: targets as rows, methods as columns, percentages (of how
    many predictions), and the mean over the targets every method has."""
    methods = list(shares)
    targets = sorted(set().union(*(per_target.keys() for per_target in shares.values())))
    lines = [f"Share of greedy predictions that are {' / '.join(forms)} where no gold answer is "
             "(of how many such predictions, over query sets).", "",
             "| target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for target in targets:
        cells = [f"{100 * shares[m][target]['share']:.1f}% ({shares[m][target]['examples']})"
                 if target in shares[m] else "–" for m in methods]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    common = [t for t in targets if all(t in shares[m] for m in methods)]
    if common:
        means = [100 * float(np.mean([shares[m][t]["share"] for t in common])) for m in methods]
        lines.append(f"| **mean** ({len(common)} targets) | " + " | ".join(f"{v:.1f}%" for v in means) + " |")
    return "\n".join(lines) + "\n"


def source_shift(runs: Sequence[dict], tasks: Iterable[str], method: str, reference: str,
                 metric: str) -> dict:
    """Whether `method` loses (or gains) where it draws more of R from `tasks` than `reference` does.

    For every (target, query set) both methods ran: `share_change`, the change in the share of R
    from `tasks` (method − reference), and `score_change`, the change in `metric`; and over those
    pairs Spearman's `rho` between the two (NaN where either is constant). The pairs of a target
    share its test set, so they are not independent: read ρ as a description, not a test.
    """
    from recross_jax.selection.ranking import rank_correlation  # pylint: disable=import-outside-toplevel
    wanted = set(tasks)
    by_key = {(run["method"], run["target"], run["query_set"]): run for run in runs}
    pairs = []
    for (name, target, query_set), run in sorted(by_key.items(), key=lambda item: item[0][1:]):
        other = by_key.get((reference, target, query_set))
        if name != method or other is None:
            continue
        if not run.get("retrieved_tasks") or not other.get("retrieved_tasks"):
            raise UserError(f"{target} query set {query_set}: {method} and {reference} must both "
                            "have retrieved examples")
        share = [sum(t in wanted for t in r["retrieved_tasks"]) / len(r["retrieved_tasks"])
                 for r in (run, other)]
        pairs.append({"target": target, "query_set": query_set, "share_change": share[0] - share[1],
                      "score_change": run["metrics"][metric] - other["metrics"][metric]})
    if not pairs:
        raise UserError(f"no target and query set that both {method} and {reference} ran")
    rho = rank_correlation([p["share_change"] for p in pairs], [p["score_change"] for p in pairs])
    return {"pairs": pairs, "rho": rho, "metric": metric}


def source_shift_markdown(shift: Mapping[str, Any], scale: float = 100.0) -> str:
    """`source_shift` as a table of its pairs (points) with ρ below."""
    lines = [f"| target | query set | change in share of R | change in {shift['metric']} |",
             "|---|---|---|---|"]
    lines += [f"| {p['target']} | {p['query_set']} | {100 * p['share_change']:+.1f}% | "
              f"{scale * p['score_change']:+.2f} |" for p in shift["pairs"]]
    lines += ["", f"Spearman ρ over {len(shift['pairs'])} pairs: {shift['rho']:.2f}"]
    return "\n".join(lines) + "\n"


def transfer_alignment(runs: Iterable[dict], scores: Mapping[str, Mapping[str, float]],
                       top_sources: int = 3) -> dict[str, dict[str, dict[str, float]]]:
    """How well each method's retrieved examples agree with measured task transfer.

    `scores[target][source]` is a measured transfer score (e.g. TaskWeb's source → target gain)
    for the upstream tasks a target could draw from. For every method and target with scores:
    `expected`: the mean score of the source task of a retrieved example (over the examples
    whose source has a score); `top_share`: the share of R from the target's `top_sources`
    best-scoring sources; `coverage`: the share of R whose source has a score. Under the pseudo
    method "sources" are the references: `expected` = the plain mean over scored sources (a
    retriever blind to the target), `best` = the best source's score.
    """
    dist = retrieval_distribution(runs)
    out: dict[str, dict[str, dict[str, float]]] = collections.defaultdict(dict)
    for method in sorted(dist, key=_method_rank):
        for target, counts in sorted(dist[method].items()):
            if not scores.get(target):
                continue
            by_source = scores[target]
            best = sorted(by_source, key=by_source.get, reverse=True)[:top_sources]
            total = sum(counts.values())
            scored = sum(n for task, n in counts.items() if task in by_source)
            out[method][target] = {
                "expected": (sum(by_source[t] * n for t, n in counts.items() if t in by_source) / scored
                             if scored else float("nan")),
                "top_share": sum(counts[t] for t in best) / total,
                "coverage": scored / total}
            out["sources"][target] = {"expected": float(np.mean(list(by_source.values()))),
                                      "best": max(by_source.values())}
    return dict(out)


def alignment_markdown(alignment: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Targets as rows; per retrieval method "expected score (top-source share)", then the mean
    and best over sources; with several targets a last row averages each column over them."""
    methods = [m for m in alignment if m != "sources"]
    sources = alignment.get("sources", {})
    targets = sorted(sources)

    def mean(method: str, key: str) -> float:
        return float(np.mean([v[key] for v in alignment[method].values()]))

    def method_cell(expected: float, top_share: float) -> str:
        return f"{expected:+.3f} ({100 * top_share:.0f}%)"

    lines = ["| target | " + " | ".join(methods) + " | mean over sources | best source |",
             "|---" * (len(methods) + 3) + "|"]
    for target in targets:
        cells = [method_cell(alignment[m][target]["expected"], alignment[m][target]["top_share"])
                 if target in alignment[m] else "–" for m in methods]
        cells += [f"{sources[target]['expected']:+.3f}", f"{sources[target]['best']:+.3f}"]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    if len(targets) > 1:
        cells = [method_cell(mean(m, "expected"), mean(m, "top_share")) for m in methods]
        cells += [f"{mean('sources', 'expected'):+.3f}", f"{mean('sources', 'best'):+.3f}"]
        lines.append("| **mean** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def time_markdown(runs: Sequence[dict]) -> str:
    """Per method: its runs' count, mean seconds per run in each phase (retrieve, rerank, relearn,
    evaluate) and in all, and the hours of all its runs: what each method costs."""
    by_method: dict[str, list[dict]] = collections.defaultdict(list)
    for run in runs:
        if run.get("time"):
            by_method[run["method"]].append(run["time"])
    phases = [p for p in ("retrieve", "rerank", "relearn", "evaluate")
              if any(p in t for times in by_method.values() for t in times)]
    header = ["method", "runs", *(f"{p} (s)" for p in phases), "per run (s)", "all runs (h)"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method in sorted(by_method, key=_method_rank):
        times = by_method[method]
        cells = [f"{np.mean([t.get(p, 0.0) for t in times]):.1f}" for p in phases]
        totals = [sum(t.values()) for t in times]
        lines.append(f"| {method} | {len(times)} | " + " | ".join(cells)
                     + f" | {np.mean(totals):.1f} | {sum(totals) / 3600:.2f} |")
    return "\n".join(lines) + "\n"


def retrieval_grids(runs: Sequence[dict], top_tasks: int = 25
                    ) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """(targets, upstream columns, {method: targets × columns grid of the share of that target's
    retrieved examples, over query sets}). The `top_tasks` upstream tasks retrieved most often
    overall get their own column; the rest are summed into "other", so each row sums to 1."""
    dist = retrieval_distribution(runs)
    if not dist:
        raise UserError("no run retrieved anything: nothing to plot")
    targets = sorted(set().union(*(d.keys() for d in dist.values())))
    totals: collections.Counter = collections.Counter()
    for per_target in dist.values():
        for counts in per_target.values():
            totals.update(counts)
    columns = [task for task, _ in totals.most_common(top_tasks)]
    has_other = len(totals) > len(columns)
    grids = {}
    for method in sorted(dist, key=_method_rank):
        grid = np.zeros((len(targets), len(columns) + has_other))
        for i, target in enumerate(targets):
            counts = dist[method].get(target, collections.Counter())
            n = sum(counts.values()) or 1
            grid[i, :len(columns)] = [counts[c] / n for c in columns]
            if has_other:
                grid[i, -1] = sum(v for k, v in counts.items() if k not in columns) / n
        grids[method] = grid
    return targets, columns + (["other"] if has_other else []), grids


def plot_heatmap(runs: Sequence[dict], path: str, top_tasks: int = 25) -> None:
    """PNG: per method a panel (stacked) of `retrieval_grids`, on one colour scale so that the
    methods' panels compare cell by cell."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    targets, labels, grids = retrieval_grids(runs, top_tasks)
    vmax = max(max(grid.max() for grid in grids.values()), 1e-9)
    # One panel per method, stacked, so long task names stay readable on both axes.
    panel_height = 1.0 + 0.4 * len(targets)
    fig, axes = plt.subplots(len(grids), 1, squeeze=False, sharex=True, layout="constrained",
                             figsize=(max(8.0, 0.3 * len(labels) + 4.0), panel_height * len(grids) + 2.5))
    for ax, (method, grid) in zip(axes[:, 0], grids.items()):
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(method)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.tick_params(axis="x", labelbottom=ax is axes[-1, 0])
        ax.set_yticks(range(len(targets)), targets, fontsize=8)
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.03, label="share of retrieved examples")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(results_dir: str, out_dir: str, metric: str | None = None,
                 transfer_scores: Mapping[str, Mapping[str, float]] | None = None,
                 seed: int = 0, **select: Any) -> dict:
    """Writes `table.md`, `table.csv` and `summary.json` (`metric`, default each target's primary
    one) into out_dir, and for each of METRICS every run has, `table_<metric>.md` and the paired
    comparisons (`comparisons.md` / `.json`, bootstrap seeded by `seed`); where runs retrieved
    anything also `retrieved_tasks.md` and `retrieval_heatmap.png`, with `transfer_scores`
    (see `transfer_alignment`) `transfer_alignment.md`, where runs kept their outputs
    `predictions.md` (`frequent_predictions_markdown`), and where they timed their phases
    `times.md` (`time_markdown`). `select`: `load_runs`'s filters.
    Returns the summary."""
    runs = load_runs(results_dir, **select)
    summary = summarize(runs, metric)
    write_text_atomic(os.path.join(out_dir, "table.md"), markdown_table(summary))
    write_text_atomic(os.path.join(out_dir, "table.csv"), csv_table(summary))
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    measured = [m for m in METRICS if all(m in run["metrics"] for run in runs)]
    for name in measured:
        write_text_atomic(os.path.join(out_dir, f"table_{name}.md"), markdown_table(summarize(runs, name)))
    compared = {name: comparisons(runs, name, seed) for name in measured}
    if any(compared.values()):
        write_json_atomic(os.path.join(out_dir, "comparisons.json"), compared)
        write_text_atomic(os.path.join(out_dir, "comparisons.md"), comparisons_markdown(compared))
    if any(run.get("time") for run in runs):
        write_text_atomic(os.path.join(out_dir, "times.md"), time_markdown(runs))
    if prediction_distribution(runs):
        write_text_atomic(os.path.join(out_dir, "predictions.md"), frequent_predictions_markdown(runs))
    if retrieval_distribution(runs):
        write_text_atomic(os.path.join(out_dir, "retrieved_tasks.md"), retrieved_tasks_markdown(runs))
        plot_heatmap(runs, os.path.join(out_dir, "retrieval_heatmap.png"))
        alignment = transfer_alignment(runs, transfer_scores or {})
        if alignment:
            write_text_atomic(os.path.join(out_dir, "transfer_alignment.md"), alignment_markdown(alignment))
    return summary


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)
