"""A reranker's dev tuples as units: ranking AUC and pair accuracy against hand-computed values,
the recorded dev split, and the bootstrap interval."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recross_jax import io_utils, significance
from recross_jax.errors import UserError
from recross_jax.rerank import cross_encoder, dev_eval


class LengthReranker:
    """Scores a candidate by its length: longer is better (positive logit = length)."""

    def logits(self, firsts, seconds):
        del firsts
        return np.array([[0.0, len(s) - 2.5] for s in seconds])

    def utility(self, queries, candidates):
        del queries
        return np.array([float(len(c)) for c in candidates])


def test_ranking_auc_counts_ties_half():
    assert dev_eval.ranking_auc([3, 2], [1, 2]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert dev_eval.ranking_auc([0], [1]) == 0.0
    with pytest.raises(UserError, match="at least one positive and one negative"):
        dev_eval.ranking_auc([], [1])


def test_interval_resamples_tuples_as_units():
    tuples = [{"index": i, "task": "a", "queries": ["q"], "positives": ["x" * (2 + i % 3)],
               "negatives": ["xx"]} for i in range(6)]
    summary = dev_eval.evaluate(LengthReranker(), tuples, seed=3)
    values = [row["ranking_auc"] for row in summary["tuples"]]
    low, high = summary["ranking_auc"]["ci95"]
    assert (low, high) == significance.bootstrap_mean_ci({str(i): [v] for i, v in enumerate(values)}, 3)
    assert low < np.mean(values) < high and min(values) <= low and high <= max(values)
    assert summary["ranking_auc"] == dev_eval.evaluate(LengthReranker(), tuples, seed=3)["ranking_auc"]


def test_tuples_are_units():
    tuples = [{"index": 0, "task": "a", "queries": ["q"], "positives": ["xxx", "xx"],
               "negatives": ["x", "xx"]},
              {"index": 1, "task": "b", "queries": ["q", "r"], "positives": ["x"], "negatives": ["xxxx"]}]
    summary = dev_eval.evaluate(LengthReranker(), tuples)
    first, second = summary["tuples"]
    # Tuple 0: positive logits 0.5, -0.5 (labels 1, 1), -1.5, -0.5 (labels 0, 0): 3 of 4 right.
    assert (first["pairs"], first["pair_accuracy"], first["ranking_auc"]) == (4, 0.75, 0.875)
    # Tuple 1: the positive is shorter (logit -1.5), the negative longer (1.5), on both queries.
    assert (second["pairs"], second["pair_accuracy"], second["ranking_auc"]) == (4, 0.0, 0.0)
    assert summary["ranking_auc"]["mean"] == pytest.approx(0.4375)
    assert summary["pair_accuracy"]["mean"] == pytest.approx(0.375)
    assert "| **mean** (95% CI over tuples) | | | **0.375** [0.000, 0.750] | **0.438** [0.000, 0.875] |" in (
        dev_eval.markdown(summary))


def _sourced(index, positives, negatives):
    """A tuple whose candidates' ids name their sources `dataset:template`, the text their id."""
    def ids(names):
        return [f"{n.split(':')[0]}|train|{n.split(':')[1]}|#{i}" for i, n in enumerate(names)]
    return {"index": index, "task": "t", "queries": ["q"], "positive_ids": ids(positives),
            "negative_ids": ids(negatives), "positives": [f"{index}{p}{i}" for i, p in enumerate(positives)],
            "negatives": [f"{index}{n}{i}" for i, n in enumerate(negatives)]}


def test_source_prior_scores_a_candidate_by_its_sources_positive_rate():
    train = [_sourced(0, ["qqp:meaning", "qqp:meaning"], ["qqp:answer", "imdb:x"]),
             _sourced(1, ["qqp:answer"], ["imdb:x"])]
    dev = [_sourced(2, ["qqp:meaning", "new:y"], ["imdb:x", "qqp:answer"])]
    by_dataset = dev_eval.SourcePrior(train, "dataset", dev)
    # qqp: 3 positives, 1 negative -> 4/6; imdb: 0 and 2 -> 1/4; an unseen source 1/2.
    np.testing.assert_allclose(by_dataset.utility([], dev[0]["positives"] + dev[0]["negatives"]),
                               [4 / 6, 1 / 2, 1 / 4, 4 / 6])
    by_template = dev_eval.SourcePrior(train, "template", dev)
    np.testing.assert_allclose(by_template.utility([], dev[0]["positives"] + dev[0]["negatives"]),
                               [3 / 4, 1 / 2, 1 / 4, 2 / 4])
    probabilities = np.exp(by_template.logits(["q"], dev[0]["positives"][:1]))
    np.testing.assert_allclose(probabilities / probabilities.sum(-1, keepdims=True), [[1 / 4, 3 / 4]])
    summary = dev_eval.evaluate(by_template, dev)
    assert summary["tuples"][0]["ranking_auc"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    both = {"reranker": summary, "prior": summary}
    table = dev_eval.comparison_markdown(both, dev_eval.compared(both, "reranker"), "reranker")
    assert "| prior | 0.750 [0.750, 0.750] | 0.875 [0.875, 0.875] | +0.000 [+0.000, +0.000] | +0.000" in table
    with pytest.raises(UserError, match="cannot take the 'task' of example id"):
        dev_eval.source_of("a|b|c|#1", "task")


def test_reranker_is_compared_with_a_scorer_tuple_by_tuple():
    summaries = {"reranker": {"tuples": [{"pair_accuracy": 0.9, "ranking_auc": 1.0},
                                         {"pair_accuracy": 0.5, "ranking_auc": 0.5}]},
                 "prior": {"tuples": [{"pair_accuracy": 0.5, "ranking_auc": 0.5},
                                      {"pair_accuracy": 0.5, "ranking_auc": 0.5}]}}
    differences = dev_eval.compared(summaries, "reranker")
    assert list(differences) == ["prior"]
    assert differences["prior"]["pair_accuracy"]["mean"] == pytest.approx(0.2)
    assert differences["prior"]["ranking_auc"]["ci95"] == (0.0, 0.5)  # 2 tuples: 0, 0.25 or 0.5


def test_dev_tuples_follow_the_recorded_split(tmp_path):
    path = tmp_path / "tuples.jsonl"
    path.write_text("".join(json.dumps({"index": i, "queries": ["q"], "positives": ["p"],
                                        "negatives": ["n"]}) + "\n" for i in range(10)))
    reranker = tmp_path / "reranker"
    reranker.mkdir()
    settings = {"dev_fraction": 0.2, "seed": 4, "tuples_sha256": io_utils.sha256_file(str(path))}
    (reranker / "reranker.json").write_text(json.dumps({"settings": settings}))
    _, dev = cross_encoder.split_tuples(10, 0.2, 4)
    assert [t["index"] for t in dev_eval.dev_tuples(str(reranker), str(path))] == list(dev)
    other = tmp_path / "other.jsonl"
    other.write_text(path.read_text().replace('"q"', '"r"'))
    with pytest.raises(UserError, match="was trained on other tuples"):
        dev_eval.dev_tuples(str(reranker), str(other))


def test_test_tuples_must_be_unseen(tmp_path):
    seen = [{"index": i, "queries": [f"q{i}", "r"], "positives": ["p"], "negatives": ["n"]} for i in range(3)]
    path = tmp_path / "test.jsonl"
    fresh = [{**record, "index": 10 + i, "queries": [f"s{i}", "r"]} for i, record in enumerate(seen)]
    path.write_text("".join(json.dumps(record) + "\n" for record in fresh))
    assert dev_eval.unseen_tuples(str(path), seen) == fresh
    path.write_text("".join(json.dumps(record) + "\n" for record in fresh + seen[1:2]))
    with pytest.raises(UserError, match=r"tuples \[1\] have the queries of tuples the reranker trained"):
        dev_eval.unseen_tuples(str(path), seen)
    summary = dev_eval.evaluate(LengthReranker(), fresh)
    assert dev_eval.markdown(summary, "test tuple").startswith("| test tuple | task | pairs |")


def test_script_refuses_a_missing_reranker_in_one_line(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(repo, "scripts", "reranker_dev.py"), "--reranker",
                           str(tmp_path / "none"), "--tuples", str(tmp_path / "t.jsonl"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and "none" in done.stderr
    assert not (tmp_path / "out").exists()
