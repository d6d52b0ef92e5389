"""scripts/elm_study.py: the ELM study end to end on toy tasks with tiny models, and its
selections (RoE's merge, the best single expert with and without the target's labels)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
from test_experts import cli_world  # noqa: F401  (the fixture)

from recross_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")


@pytest.fixture()
def study(monkeypatch):
    monkeypatch.syspath_prepend(SCRIPTS)  # the script imports zero_shot beside it
    spec = importlib.util.spec_from_file_location("elm_study", os.path.join(SCRIPTS,
                                                                           "elm_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("zero_shot", None)


def test_top_voted_keeps_library_order_on_ties_and_drops_unvoted(study):
    votes = {"a": 1, "b": 4, "c": 0, "d": 4, "e": 2}
    assert study.top_voted(votes, 3) == ["b", "d", "e"]
    assert study.top_voted(votes, 1) == ["b"]
    assert study.top_voted({"a": 0, "b": 32, "c": 0}, 3) == ["b"]
    assert study.merge_name(["b", "d"]) == "merge:b+d"


def test_best_single_expert_with_and_without_the_targets_labels(study):
    scores = {"x": {"t1": 0.9, "t2": 0.1, "t3": 0.2},
              "y": {"t1": 0.3, "t2": 0.4, "t3": 0.4},
              "z": {"t1": 0.3, "t2": 0.4, "t3": 0.4}}
    assert study.best_by_mean(scores, ["t1", "t2", "t3"]) == "x"   # 0.40 vs 0.37
    assert study.best_by_mean(scores, ["t2", "t3"]) == "y"         # ties: the earliest
    assert study.best_by_mean(scores, ["t1"]) == "x"


def test_study_runs_resumes_and_reports(cli_world, study, capsys):  # noqa: F811
    tmp_path, bert_dir = cli_world
    out = str(tmp_path / "study")
    argv = ["run", "--backbone", str(tmp_path / "backbone"), "--upstream", str(tmp_path / "other"),
            "--out", out, "--tasks_module", "toy_expert_tasks", "--task_prefix", "",
            "--experts", "toy_red", "toy_blue", "--targets", "toy_red", "toy_blue",
            "--max_eval_examples", "6", "--merge_top", "2",
            "--gin.experts.settings.reduction=4", "--gin.experts.settings.epochs=1",
            "--gin.experts.settings.batch_size=4", "--gin.experts.settings.queries_per_target=4",
            f"--gin.experts.settings.embedder_dir='{bert_dir}'"]
    assert study.main(argv) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    rows = results["targets"]
    assert set(rows) == {"toy_red", "toy_blue"}
    for target, row in rows.items():
        assert row["n"] == 6 and set(row["experts"]) == {"toy_red", "toy_blue"}
        assert row["oracle"]["accuracy"] == max(row["experts"].values())
        roe = row["roe"]
        assert roe["accuracy"] == row["experts"][roe["expert"]]
        assert sum(roe["votes"].values()) == 4 and set(roe["votes"]) == {"toy_red", "toy_blue"}
        merged = row["roe_merge"]
        in_order = {e: roe["votes"][e] for e in ("toy_red", "toy_blue")}  # the library's
        assert merged["experts"] == study.top_voted(in_order, 2)
        assert merged["experts"][0] == roe["expert"]
        if len(merged["experts"]) == 1:  # every vote for one expert: the merge is that expert
            assert merged["accuracy"] == roe["accuracy"]
        else:
            assert os.path.exists(os.path.join(out, "evals", "merge:toy_red+toy_blue",
                                               f"{target}.json"))
            assert 0.0 <= merged["accuracy"] <= 1.0
        for key in ("backbone", "upstream", "majority"):
            assert 0.0 <= row[key] <= 1.0
    assert set(results["means"]) == {"all"}
    table = open(os.path.join(out, "table.md")).read()
    assert "| toy_red | 6 |" in table and "**mean, all**" in table
    assert os.path.getsize(os.path.join(out, "votes_heatmap.png")) > 0
    assert set(json.load(open(os.path.join(out, "timings.json")))) >= {
        "train experts", "library", "retrieve", "evaluate backbone, upstream, experts"}
    # A second run finds everything done: nothing is trained or evaluated again.
    stamps = {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(out)
              for p in files if p.endswith(".json") and root != out}
    assert study.main(argv) == 0
    assert stamps == {p: os.path.getmtime(os.path.join(root, p)) for root, _, files
                      in os.walk(out) for p in files if p.endswith(".json") and root != out}
    assert study.main(["report", "--out", out]) == 0
    assert json.load(open(os.path.join(out, "results.json")))["targets"] == rows
    with pytest.raises(UserError, match="no results.json"):
        study.main(["report", "--out", str(tmp_path / "nothing")])
    capsys.readouterr()
