"""Mining's label reliability: split halves of a tuple's rounds against hand-computed values,
Spearman-Brown, and bad input to scripts/mining_reliability.py."""
import json
import os
import subprocess
import sys

import pytest

from recross_jax.errors import UserError
from recross_jax.rerank import reliability

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(round_scores, positives=("a",), negatives=("d",), index=0):
    scores = {i: sum(v) / len(v) for i, v in round_scores.items()}
    return {"index": index, "task": "up.x", "round_scores": round_scores, "candidate_scores": scores,
            "positive_ids": list(positives), "negative_ids": list(negatives)}


def test_spearman_brown_and_rounds_needed():
    assert reliability.spearman_brown(0.5, 2) == pytest.approx(2 / 3)
    assert reliability.spearman_brown(0.0, 4) == 0.0
    # Reliability 0.5 at 4 rounds: 0.8 needs 4 * (0.8 * 0.5) / (0.5 * 0.2) = 16 rounds.
    assert reliability.rounds_needed(0.5, 4, 0.8) == pytest.approx(16)
    assert reliability.rounds_needed(-0.1, 4, 0.8) == float("inf")


def test_halves_that_agree_and_that_disagree():
    # Rounds 0, 2 (even) and 1, 3 (odd): the halves order a < b < c < d alike.
    agree = reliability.tuple_reliability(record({
        "a": [1.0, 1.1, 1.0, 1.1], "b": [2.0, 2.2, 2.0, 2.2], "c": [3.0, 2.9, 3.0, 2.9],
        "d": [4.0, 4.5, 4.0, 4.5]}))
    assert agree["split_half"] == pytest.approx(1.0)
    assert agree["reliability"] == pytest.approx(1.0)
    assert agree["rounds"] == 4 and agree["candidates"] == 4
    assert agree["positive_overlap"] == agree["negative_overlap"] == 1.0
    assert agree["gap"] == pytest.approx(4.25 - 1.05)  # mean loss of d minus that of a
    # The odd rounds reverse the even ones: the best of one half is the worst of the other.
    disagree = reliability.tuple_reliability(record({
        "a": [1.0, 4.0], "b": [2.0, 3.0], "c": [3.0, 2.0], "d": [4.0, 1.0]}))
    assert disagree["split_half"] == pytest.approx(-1.0)
    assert disagree["positive_overlap"] == disagree["negative_overlap"] == 0.0


def test_summary_medians_and_markdown():
    tuples = [record({"a": [1.0, 1.0], "b": [2.0, 2.0], "c": [3.0, 3.0]}, ("a",), ("c",), 0),
              record({"a": [1.0, 3.0], "b": [2.0, 2.0], "c": [3.0, 1.0]}, ("a",), ("c",), 1),
              record({"a": [1.0, 2.0], "b": [2.0, 1.0], "c": [3.0, 3.0]}, ("a",), ("c",), 2)]
    summary = reliability.summarize(tuples)
    assert [row["split_half"] for row in summary["tuples"]] == pytest.approx([1.0, -1.0, 0.5])
    assert summary["median"]["split_half"] == pytest.approx(0.5)
    table = reliability.markdown(summary)
    assert "| **median** | | | | 0.50 | 0.67 |" in table
    assert "Rounds the median tuple needs for reliability 0.8 (Spearman-Brown): 4." in table


def test_tuples_without_rounds_are_refused():
    old = record({"a": [1.0, 2.0], "d": [2.0, 3.0]})
    del old["round_scores"]
    with pytest.raises(UserError, match="tuple 0 has no round_scores"):
        reliability.tuple_reliability(old)
    with pytest.raises(UserError, match="tuple 0 has 1 round: split halves need at least 2"):
        reliability.tuple_reliability(record({"a": [1.0], "d": [2.0]}))
    with pytest.raises(UserError, match="no tuples"):
        reliability.summarize([])


def test_agreement_of_two_minings_of_the_same_tuples():
    ours = record({"a": [1.0, 1.0], "b": [2.0, 2.0], "c": [3.0, 3.0], "d": [4.0, 4.0]})
    theirs = record({"a": [2.0, 2.0], "b": [1.0, 1.0], "c": [3.0, 3.0], "d": [4.0, 4.0]}, ("b",), ("d",))
    for r in (ours, theirs):
        r["query_ids"] = ["q1", "q2"]
    result = reliability.agreement([ours], [theirs])
    row, = result["tuples"]
    # Ranks 1 2 3 4 against 2 1 3 4: ρ = 1 - 6 * (1 + 1) / (4 * 15) = 0.8.
    assert row["spearman"] == pytest.approx(0.8)
    assert row["positive_overlap"] == 0.0 and row["negative_overlap"] == 1.0
    assert "| **median** | | | 0.80 | 0.00 | 1.00 |" in reliability.agreement_markdown(result)
    with pytest.raises(UserError, match="tuple 0 was drawn differently"):
        reliability.agreement([ours], [{**theirs, "query_ids": ["q3"]}])
    with pytest.raises(UserError, match="share no tuple"):
        reliability.agreement([ours], [{**theirs, "index": 7}])


def run_script(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "mining_reliability.py"), *args],
                          capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_script_writes_the_table_and_refuses_bad_input(tmp_path):
    path = tmp_path / "tuples.jsonl"
    path.write_text(json.dumps(record({"a": [1.0, 1.2], "b": [2.0, 2.1], "d": [3.0, 3.3]})) + "\n")
    done = run_script(str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "reliability.json").read_text())["median"]["split_half"] == 1.0
    assert (tmp_path / "out" / "reliability.md").read_text() == done.stdout
    for args, message in (([str(tmp_path / "missing.jsonl")], "cannot read tuples file"),
                          ([str(path), "--target", "1.5"], "--target must lie strictly between 0 and 1")):
        failed = run_script(*args)
        assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
        assert message in failed.stderr
