"""Result tables reproduce hand-computed statistics; the heatmap is written."""
import json

import pytest

from recross_jax import reporting
from recross_jax.errors import UserError

# Two targets, two methods, three query sets; hand-computed below.
SCORES = {
    ("cb", "base"): [0.50, 0.50, 0.50],
    ("cb", "recross"): [0.60, 0.70, 0.80],
    ("wic", "base"): [0.40, 0.40, 0.40],
    ("wic", "recross"): [0.50, 0.40, 0.30],
}


def write_runs(tmp_path):
    for (target, method), values in SCORES.items():
        for q, value in enumerate(values):
            run = {"target": target, "method": method, "query_set": q, "metrics": {"accuracy": value},
                   "retrieved_tasks": [] if method == "base" else ["up.a"] * (q + 1) + ["up.b"]}
            (tmp_path / f"{target}-{method}-{q}.json").write_text(json.dumps(run))
    (tmp_path / "unrelated.json").write_text(json.dumps({"not": "a run"}))


def test_summary_matches_hand_computation(tmp_path):
    write_runs(tmp_path)
    summary = reporting.summarize(reporting.load_runs(str(tmp_path)))
    assert list(summary) == ["base", "recross"]
    cb = summary["recross"]["per_task"]["cb"]
    assert cb["mean"] == pytest.approx(0.7) and cb["std"] == pytest.approx((0.02 / 3) ** 0.5)
    overall = summary["recross"]["overall"]
    # per-query-set averages over tasks: (0.6+0.5)/2, (0.7+0.4)/2, (0.8+0.3)/2 = 0.55 each
    assert overall["per_query_set"] == pytest.approx([0.55, 0.55, 0.55])
    assert overall["mean"] == pytest.approx(0.55) and overall["std"] == pytest.approx(0.0)
    assert overall["min"] == pytest.approx(0.55) and overall["max"] == pytest.approx(0.55)
    base = summary["base"]["overall"]
    assert base["median"] == pytest.approx(0.45) and base["mean"] == pytest.approx(0.45)


def test_markdown_and_csv(tmp_path):
    write_runs(tmp_path)
    summary = reporting.write_report(str(tmp_path), str(tmp_path / "report"))
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| target | base | recross |" in table
    assert "| cb | 50.00 ± 0.00 | 70.00 ± 8.16 |" in table
    assert "| **overall median** | 45.00 | 55.00 |" in table
    rows = (tmp_path / "report" / "table.csv").read_text().splitlines()
    assert "recross,cb,0.700000,0.081650,3" in rows
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    png = (tmp_path / "report" / "retrieval_heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000


def test_retrieval_distribution_counts_over_query_sets(tmp_path):
    write_runs(tmp_path)
    dist = reporting.retrieval_distribution(reporting.load_runs(str(tmp_path)))
    assert "base" not in dist
    assert dist["recross"]["cb"] == {"up.a": 1 + 2 + 3, "up.b": 3}


def test_primary_metric_falls_back_to_soft_em(tmp_path):
    runs = [{"target": "squad", "method": "base", "query_set": 0, "metrics": {"soft_em": 0.3, "em": 0.1}}]
    assert reporting.primary_metric(runs, "squad") == "soft_em"


def test_errors(tmp_path):
    with pytest.raises(UserError, match="no run results"):
        reporting.load_runs(str(tmp_path))
    runs = [{"target": "cb", "method": "base", "query_set": 0, "metrics": {"accuracy": 0.5}}]
    with pytest.raises(UserError, match="has no metric 'em'"):
        reporting.summarize(runs, metric="em")
