"""Re-learning's rate is chosen from upstream runs' gains of ReCross† over base."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("choose_relearn_lr",
                                              os.path.join(REPO, "scripts", "choose_relearn_lr.py"))
choose_relearn_lr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(choose_relearn_lr)


def write_run(root, target, method, query_set, accuracy):
    path = root / "runs" / target / method / f"query_set_{query_set}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"target": target, "method": method, "query_set": query_set,
                                "metrics": {"accuracy": accuracy, "soft_em": 0.0}}))


def test_gains_choice_and_table(tmp_path):
    for target, base, relearned in (("up.a", 0.5, (0.6, 0.7)), ("up.b", 0.4, (0.4, 0.3))):
        for q, value in enumerate(relearned):
            write_run(tmp_path, target, "base", q, base)
            write_run(tmp_path, target, "recross_dense", q, value)
    write_run(tmp_path, "up.a", "recross_dense", 5, 0.0)  # beyond num_query_sets: ignored
    result = choose_relearn_lr.gains(str(tmp_path), ["up.a", "up.b"], 2, "accuracy")
    assert result["per_task"] == pytest.approx({"up.a": 0.15, "up.b": -0.05})
    assert result["mean"] == pytest.approx(0.05)
    by_rate = {1e-4: {"mean": 0.05, "per_task": {"up.a": 0.1, "up.b": 0.0}},
               3e-5: {"mean": 0.05, "per_task": {"up.a": 0.0, "up.b": 0.1}},
               3e-4: {"mean": -0.2, "per_task": {"up.a": -0.2, "up.b": -0.2}}}
    assert choose_relearn_lr.choose(by_rate) == 3e-5  # a tie goes to the smaller rate
    table = choose_relearn_lr.markdown(by_rate, 3e-5, "accuracy")
    assert "| 3e-05 (chosen) | +0.00 | +10.00 | +5.00 |" in table
    assert table.index("| 3e-05") < table.index("| 0.0001") < table.index("| 0.0003")


def test_bad_rates_end_in_one_line(tmp_path, capsys):
    code = choose_relearn_lr.main(["--model_dir", "m", "--index_dir", "i", "--out", str(tmp_path),
                                   "--learning_rates", "0"])
    assert code == 2
    assert capsys.readouterr().err == "error: --learning_rates must be positive, got [0.0]\n"
    code = choose_relearn_lr.main(["--model_dir", str(tmp_path / "m"), "--index_dir", "i", "--out",
                                   str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err == f"error: no model_config.json in model directory {tmp_path / 'm'}\n"
    assert not (tmp_path / "out").exists()
