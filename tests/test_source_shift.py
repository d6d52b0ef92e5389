"""reporting.source_shift and scripts/source_shift.py: does a method lose where it draws more of R
from some upstream datasets than another method does?"""
import importlib.util
import json
import math
import os

import pytest

from recross_jax import reporting
from recross_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("source_shift",
                                              os.path.join(REPO, "scripts", "source_shift.py"))
source_shift = importlib.util.module_from_spec(spec)
spec.loader.exec_module(source_shift)


def _run(method, target, query_set, qqp, score):
    """A run whose R of 4 holds `qqp` glue_qqp examples."""
    return {"method": method, "target": target, "query_set": query_set, "metrics": {"soft_em": score},
            "retrieved_tasks": ["glue_qqp"] * qqp + ["sciq"] * (4 - qqp)}


RUNS = [_run("recross_dense", "a", 0, 1, 0.5), _run("recross", "a", 0, 3, 0.3),   # +50%, -0.2
        _run("recross_dense", "a", 1, 1, 0.5), _run("recross", "a", 1, 1, 0.6),   # 0, +0.1
        _run("recross_dense", "b", 0, 0, 0.2), _run("recross", "b", 0, 1, 0.2),   # +25%, 0
        _run("recross", "b", 1, 4, 0.0),                                           # no reference: skipped
        {**_run("base", "a", 0, 0, 0.4), "retrieved_tasks": []}]


def test_pairs_each_target_and_query_set_and_ranks_the_changes():
    shift = reporting.source_shift(RUNS, ["glue_qqp"], "recross", "recross_dense", "soft_em")
    changes = [(p["target"], p["query_set"], p["share_change"], p["score_change"]) for p in shift["pairs"]]
    assert changes == [("a", 0, 0.5, pytest.approx(-0.2)), ("a", 1, 0.0, pytest.approx(0.1)),
                       ("b", 0, 0.25, 0.0)]
    assert shift["rho"] == pytest.approx(-1.0)  # the larger the rise, the larger the loss
    table = reporting.source_shift_markdown(shift)
    assert "| a | 0 | +50.0% | -20.00 |" in table and table.endswith("Spearman ρ over 3 pairs: -1.00\n")


def test_constant_changes_give_nan_and_missing_pairs_are_refused():
    flat = [_run("recross_dense", "a", 0, 1, 0.5), _run("recross", "a", 0, 1, 0.4),
            _run("recross_dense", "a", 1, 2, 0.5), _run("recross", "a", 1, 2, 0.3)]
    shift = reporting.source_shift(flat, ["glue_qqp"], "recross", "recross_dense", "soft_em")
    assert math.isnan(shift["rho"])
    with pytest.raises(UserError, match="no target and query set that both recross and sbert ran"):
        reporting.source_shift(RUNS, ["glue_qqp"], "recross", "sbert", "soft_em")
    with pytest.raises(UserError, match="a query set 0: recross and base must both have retrieved examples"):
        reporting.source_shift(RUNS, ["glue_qqp"], "recross", "base", "soft_em")


def test_the_script_writes_its_table_and_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    for i, run in enumerate(RUNS):
        (tmp_path / "runs" / f"{i}.json").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "runs" / f"{i}.json").write_text(json.dumps(run))
    monkeypatch.setattr("sys.argv", ["source_shift.py", "--results", str(tmp_path / "runs"), "--sources",
                                     "glue_qqp", "--out", str(tmp_path / "out")])
    source_shift.main()
    assert "Spearman ρ over 3 pairs: -1.00" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "source_shift.json").read_text())["rho"] == pytest.approx(-1.0)
    nowhere = tmp_path / "nowhere"
    for argv, message in (
            (["--results", str(nowhere)], f"results directory not found: {nowhere}"),
            (["--results", str(tmp_path / "runs"), "--metric", "accuracy"],
             "metric 'accuracy' is not in the runs of a")):
        monkeypatch.setattr("sys.argv", ["source_shift.py", "--sources", "glue_qqp", "--out",
                                         str(tmp_path / "out2"), *argv])
        with pytest.raises(SystemExit) as exit_info:
            source_shift.main()
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"error: {message}\n"
        assert not (tmp_path / "out2").exists()
