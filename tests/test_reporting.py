"""Result tables reproduce hand-computed statistics; the heatmap is written."""
import json

import pytest

from recross_jax import cli, reporting
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
    retrieved = (tmp_path / "report" / "retrieved_tasks.md").read_text()
    assert retrieved.splitlines()[0] == "| target | recross |"
    assert "| cb | up.a 67%, up.b 33% |" in retrieved
    assert not (tmp_path / "report" / "transfer_alignment.md").exists()  # no scores given
    reporting.write_report(str(tmp_path), str(tmp_path / "report"), transfer_scores=TRANSFER)
    alignment = (tmp_path / "report" / "transfer_alignment.md").read_text()
    assert "| cb | +0.100 (100%) | +0.200 | +0.500 |" in alignment


def test_load_runs_selects_targets_methods_and_query_sets(tmp_path):
    write_runs(tmp_path)
    picked = reporting.load_runs(str(tmp_path), targets=["cb"], methods=["recross"], num_query_sets=2)
    assert [(r["target"], r["method"], r["query_set"]) for r in picked] == [("cb", "recross", 0),
                                                                            ("cb", "recross", 1)]
    # A leftover query set of an earlier, larger run no longer breaks the summary.
    extra = {"target": "cb", "method": "base", "query_set": 3, "metrics": {"accuracy": 0.9}}
    (tmp_path / "leftover.json").write_text(json.dumps(extra))
    with pytest.raises(UserError, match="query-set scores"):
        reporting.summarize(reporting.load_runs(str(tmp_path)))
    summary = reporting.write_report(str(tmp_path), str(tmp_path / "report"), num_query_sets=3)
    assert summary["base"]["per_task"]["cb"]["n"] == 3
    # A target or method with no runs is named, not silently left out of the tables.
    with pytest.raises(UserError, match=r"no runs of target 'copa' under .* \(its targets: cb, wic\)"):
        reporting.load_runs(str(tmp_path), targets=["cb", "copa"])
    with pytest.raises(UserError, match="no runs of method 'sbert'"):
        reporting.load_runs(str(tmp_path), methods=["sbert"])
    with pytest.raises(UserError, match="num_query_sets must be a positive integer, got 0"):
        reporting.load_runs(str(tmp_path), num_query_sets=0)


def test_retrieval_distribution_counts_over_query_sets(tmp_path):
    write_runs(tmp_path)
    dist = reporting.retrieval_distribution(reporting.load_runs(str(tmp_path)))
    assert "base" not in dist
    assert dist["recross"]["cb"] == {"up.a": 1 + 2 + 3, "up.b": 3}


# Measured source -> target transfer: for cb, sources up.c and up.a are the two best.
TRANSFER = {"cb": {"up.a": 0.2, "up.b": -0.1, "up.c": 0.5}, "wic": {"up.a": 0.3}}


def test_retrieval_grids_are_shares_with_the_rest_as_other():
    runs = [{"target": "cb", "method": "recross", "retrieved_tasks": ["a", "a", "b", "c"]},
            {"target": "wic", "method": "recross", "retrieved_tasks": ["a", "c", "c", "c"]},
            {"target": "cb", "method": "sbert", "retrieved_tasks": ["b", "b"]},
            {"target": "cb", "method": "base", "retrieved_tasks": []}]
    targets, labels, grids = reporting.retrieval_grids(runs, top_tasks=2)
    assert targets == ["cb", "wic"] and labels == ["c", "a", "other"]  # c 4, a 3, b 3 (first seen)
    assert list(grids) == ["sbert", "recross"]  # in the methods' order; base retrieved nothing
    assert grids["recross"].tolist() == [[0.25, 0.5, 0.25], [0.75, 0.25, 0.0]]
    assert grids["sbert"].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]  # wic: no sbert run
    with pytest.raises(UserError, match="no run retrieved anything"):
        reporting.retrieval_grids(runs[-1:])


def test_frequent_predictions_show_each_methods_answer_forms(tmp_path):
    def outputs(*predictions):
        return [{"example_id": str(i), "prediction": p} for i, p in enumerate(predictions)]

    runs = [{"target": "cb", "method": "base", "query_set": 0,
             "outputs": outputs("No", "yes", " no ", "a|b")},
            {"target": "cb", "method": "base", "query_set": 1, "outputs": outputs("no", "maybe")},
            {"target": "cb", "method": "recross", "query_set": 0, "outputs": outputs("x" * 50, "")},
            {"target": "wic", "method": "recross", "query_set": 0}]  # a run without outputs
    dist = reporting.prediction_distribution(runs)
    assert dist["base"]["cb"] == {"no": 3, "yes": 1, "a|b": 1, "maybe": 1}
    assert "wic" not in dist["recross"]
    table = reporting.frequent_predictions_markdown(runs, top=2)
    assert table.splitlines()[0] == "| target | base | recross |"
    assert "| cb | no 50%, yes 17% | " + "x" * 39 + "… 50%, \"\" 50% |" in table
    assert "a\\|b" in reporting.frequent_predictions_markdown(runs, top=4)  # escaped for markdown
    for q, run in enumerate(runs[:2]):
        run["metrics"] = {"accuracy": 0.5}
        (tmp_path / f"run{q}.json").write_text(json.dumps(run))
    reporting.write_report(str(tmp_path), str(tmp_path / "report"))
    assert (tmp_path / "report" / "predictions.md").read_text().startswith("| target | base |")


def test_time_table_gives_each_methods_cost_per_phase():
    phases = ("retrieve", "rerank", "relearn", "evaluate")
    runs = [{"method": "recross", "time": dict(zip(phases, (1.0, 10.0, 20.0, 5.0)))},
            {"method": "recross", "time": dict(zip(phases, (3.0, 30.0, 40.0, 7.0)))},
            {"method": "base", "time": {"evaluate": 6.0}}, {"method": "sbert"}]  # sbert: untimed
    table = reporting.time_markdown(runs).splitlines()
    assert table[0] == ("| method | runs | retrieve (s) | rerank (s) | relearn (s) | evaluate (s) "
                        "| per run (s) | all runs (h) |")
    assert table[2] == "| base | 1 | 0.0 | 0.0 | 0.0 | 6.0 | 6.0 | 0.00 |"
    assert table[3] == "| recross | 2 | 2.0 | 20.0 | 30.0 | 6.0 | 58.0 | 0.03 |"
    assert len(table) == 4


def test_answer_form_share_counts_yes_no_only_where_the_golds_are_not():
    golds = {"cb": {"1": ["Yes"], "2": ["Maybe"], "3": ["True", "correct"], "4": ["no"]},
             "wic": {"1": ["False"]}}
    def run(target, method, query_set, predictions):
        return {"target": target, "method": method, "query_set": query_set,
                "outputs": [{"example_id": i, "prediction": p} for i, p in predictions.items()]}

    runs = [run("cb", "base", 0, {"1": "yes", "2": "No.", "3": "true", "4": "yes"}),
            run("cb", "base", 1, {"1": "no", "2": "maybe", "3": "The yes"}),
            run("cb", "recross", 0, {"2": "yes", "3": "yes", "9": "yes"}),  # 9: no golds known
            run("wic", "recross", 0, {"1": "no"}), {"target": "wic", "method": "base", "query_set": 0}]
    shares = reporting.answer_form_share(runs, golds, ["yes", "no"])
    # cb's examples 1 and 4 have a yes / no gold and are left out; "No." and "The yes" normalize to forms.
    assert shares["base"] == {"cb": {"share": 0.5, "examples": 4}}
    assert shares["recross"] == {"cb": {"share": 1.0, "examples": 2}, "wic": {"share": 1.0, "examples": 1}}
    table = reporting.answer_form_markdown(shares, ["yes", "no"])
    assert "| cb | 50.0% (4) | 100.0% (2) |" in table and "| wic | – | 100.0% (1) |" in table
    assert "| **mean** (1 targets) | 50.0% | 100.0% |" in table


def test_transfer_alignment_matches_hand_computation(tmp_path):
    write_runs(tmp_path)
    runs = reporting.load_runs(str(tmp_path))
    alignment = reporting.transfer_alignment(runs, TRANSFER, top_sources=2)
    assert set(alignment) == {"recross", "sources"}  # base retrieved nothing
    # recross on cb retrieved up.a 6 times and up.b 3 times over its query sets.
    cb = alignment["recross"]["cb"]
    assert cb["expected"] == pytest.approx((0.2 * 6 - 0.1 * 3) / 9)
    assert cb["top_share"] == pytest.approx(6 / 9) and cb["coverage"] == pytest.approx(1.0)
    # wic has a score only for up.a: the mean is over scored examples, coverage says how many.
    wic = alignment["recross"]["wic"]
    assert wic["expected"] == pytest.approx(0.3) and wic["coverage"] == pytest.approx(6 / 9)
    assert alignment["sources"]["cb"] == pytest.approx({"expected": 0.2, "best": 0.5})
    table = reporting.alignment_markdown(alignment)
    assert table.splitlines()[0] == "| target | recross | mean over sources | best source |"
    assert "| wic | +0.300 (67%) | +0.300 | +0.300 |" in table
    assert "| **mean** | +0.200 (67%) | +0.250 | +0.400 |" in table
    assert reporting.transfer_alignment(runs, {"other": {"up.a": 1.0}}) == {}  # no target scored


def test_primary_metric_is_soft_em_else_accuracy(tmp_path):
    runs = [{"target": "squad", "method": "base", "query_set": 0, "metrics": {"soft_em": 0.3, "em": 0.1}},
            {"target": "cb", "method": "base", "query_set": 0, "metrics": {"soft_em": 0.3, "accuracy": 0.5}},
            {"target": "copa", "method": "base", "query_set": 0, "metrics": {"accuracy": 0.5}}]
    assert [reporting.primary_metric(runs, t) for t in ("squad", "cb", "copa")] == [
        "soft_em", "soft_em", "accuracy"]


def test_comparisons_are_paired_over_query_sets(tmp_path):
    write_runs(tmp_path)
    reporting.write_report(str(tmp_path), str(tmp_path / "report"), seed=5)
    compared = json.loads((tmp_path / "report" / "comparisons.json").read_text())
    assert list(compared) == ["accuracy"] and list(compared["accuracy"]) == ["recross - base"]
    # cb: +0.1, +0.2, +0.3; wic: +0.1, 0, -0.1 -> mean over targets (0.2 + 0.0) / 2
    result = compared["accuracy"]["recross - base"]
    assert result["mean"] == pytest.approx(0.1)
    assert (result["wins"], result["ties"], result["losses"]) == (4, 1, 1)
    low, high = (100 * v for v in result["ci"])
    table = (tmp_path / "report" / "comparisons.md").read_text()
    # Per query set over the two targets: (0.1 + 0.1) / 2, (0.2 + 0.0) / 2, (0.3 - 0.1) / 2.
    assert result["per_query_set"] == pytest.approx({"0": 0.1, "1": 0.1, "2": 0.1})
    assert (f"| recross - base | +10.00 | [{low:+.2f}, {high:+.2f}] | 4 / 1 / 1 "
            "| +10.00, +10.00, +10.00 |") in table
    report = tmp_path / "report"
    assert (report / "table_accuracy.md").read_text() == (report / "table.md").read_text()


def test_errors(tmp_path):
    with pytest.raises(UserError, match="no run results"):
        reporting.load_runs(str(tmp_path))
    runs = [{"target": "cb", "method": "base", "query_set": 0, "metrics": {"accuracy": 0.5}}]
    with pytest.raises(UserError, match="has no metric 'em'"):
        reporting.summarize(runs, metric="em")


def test_cli_report_with_transfer_scores(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    write_runs(tmp_path / "runs")
    scores = [{"target": t, "source": s, "pc_mean": v} for t, by in TRANSFER.items() for s, v in by.items()]
    (tmp_path / "transfer.json").write_text(json.dumps(scores))
    args = ["report", "--results", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--transfer_scores", str(tmp_path / "transfer.json")]
    assert cli.main(args) == 0
    assert "| cb | 50.00 ± 0.00 | 70.00 ± 8.16 |" in capsys.readouterr().out
    assert "| wic | +0.300 (67%) |" in (tmp_path / "out" / "transfer_alignment.md").read_text()
    assert cli.main(args[:-1] + [str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "transfer score file not found: " + str(tmp_path / "missing.json") in err
    assert cli.main(args + ["--upstream", "no_such_mixture", "--tasks_module", "tasks.common"]) == 2
    assert "no_such_mixture" in capsys.readouterr().err
