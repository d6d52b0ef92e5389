"""The positive control's table: the sentiment family's share of R and the scores per method."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("positive_control",
                                              os.path.join(REPO, "scripts", "positive_control.py"))
positive_control = importlib.util.module_from_spec(spec)
spec.loader.exec_module(positive_control)


def test_family_share_and_scores(tmp_path):
    family, other = positive_control.FAMILY[0], "recross.ag_news"
    retrieved = {"base": [], "random": [family, other, other, other], "recross_dense": [family] * 3 + [other]}
    for method, tasks in retrieved.items():
        for q, accuracy in enumerate((0.5, 0.7)):
            run = {"target": positive_control.TARGET, "method": method, "query_set": q,
                   "metrics": {"accuracy": accuracy + (0.1 if method == "recross_dense" else 0.0)},
                   "retrieved_tasks": tasks}
            path = tmp_path / method / f"q{q}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(run))
    rows, table = positive_control.control_table(str(tmp_path), num_query_sets=2)
    assert rows["random"]["family_share"] == pytest.approx(0.25)
    assert rows["recross_dense"]["family_share"] == pytest.approx(0.75)
    assert rows["base"]["family_share"] is None
    assert rows["recross_dense"]["accuracy"]["mean"] == pytest.approx(0.7)
    assert "| recross_dense | 75.0% | 70.00 ± 10.00 |" in table
    assert "| base | – | 60.00 ± 10.00 |" in table
