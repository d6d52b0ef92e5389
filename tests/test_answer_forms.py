"""scripts/answer_forms.py: yes / no answers where the gold is neither, from the runs' outputs and
the target's own gold answers."""
import importlib.util
import json
import os

import pytest
from tiny_models import SEQIO_TEST_VOCAB

from recross_jax import evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("answer_forms",
                                              os.path.join(REPO, "scripts", "answer_forms.py"))
answer_forms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(answer_forms)
TARGET = "recross.super_glue_cb"


def _run(path, method, outputs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"target": TARGET, "method": method, "query_set": 0, "metrics": {},
                                "config": {"eval_split": "test"}, "outputs": outputs}))


def test_counts_yes_no_against_the_targets_gold_answers(tmp_path, monkeypatch, capsys):
    # Any vocabulary serves the golds; the test-wide one, since tasks resolve theirs once per process.
    monkeypatch.setenv("RECROSS_VOCAB", SEQIO_TEST_VOCAB)
    answer_forms.task_modules.import_task_modules(["tasks.recross"])
    examples, _ = evaluate.load_examples(TARGET, "test", max_examples=40)
    yes_no = [e for e in examples if e.golds[0].lower() in ("yes", "no")][:2]
    other = [e for e in examples if e.golds[0].lower() not in ("yes", "no")][:3]
    assert len(yes_no) == 2 and len(other) == 3
    outputs = [{"example_id": e.example_id, "prediction": "yes"} for e in yes_no + other[:2]]
    outputs.append({"example_id": other[2].example_id, "prediction": other[2].golds[0]})
    _run(tmp_path / "runs" / "recross.json", "recross", outputs)
    _run(tmp_path / "runs" / "base.json", "base", [])  # no outputs kept: skipped
    monkeypatch.setattr("sys.argv", ["answer_forms.py", "--results", str(tmp_path),
                                     "--out", str(tmp_path / "out")])
    answer_forms.main()
    assert "| recross.super_glue_cb | 66.7% (3) |" in capsys.readouterr().out
    recorded = json.loads((tmp_path / "out" / "answer_forms.json").read_text())
    assert recorded == {"recross": {TARGET: {"share": pytest.approx(2 / 3), "examples": 3}}}


def test_runs_without_outputs_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    _run(tmp_path / "runs" / "base.json", "base", [])
    monkeypatch.setattr("sys.argv", ["answer_forms.py", "--results", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        answer_forms.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: no run under {tmp_path} kept its test outputs (runs written "
                                       "before outputs were recorded have none)\n")


def test_a_missing_results_directory_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["answer_forms.py", "--results", str(tmp_path / "nowhere"),
                                     "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        answer_forms.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: results directory not found: {tmp_path / 'nowhere'}\n"
    assert not (tmp_path / "out").exists()
