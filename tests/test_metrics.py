"""Table-driven tests of the SPEC §1.7 metrics and their aggregation."""
import math

import numpy as np
import pytest

from recross_jax import metrics
from recross_jax.errors import UserError


@pytest.mark.parametrize("text, expected", [
    ("The Cat", "cat"),
    ("  a   dog  ", "dog"),
    ("An apple, the pear and a plum.", "apple pear and plum"),
    ("Hello, World!", "hello world"),
    ("", ""),
    ("   ", ""),
    ("the", ""),
    ("theater another anthem", "theater another anthem"),  # articles only as whole words
    ("A.B.C", "abc"),
    ("can't", "cant"),
    ("Tab\tand\nnewline", "tab and newline"),
    ("the-end", "theend"),  # punctuation goes before article removal, as in SQuAD
    ("(A) yes", "yes"),
    ("Über Straße", "über straße"),
])
def test_normalize_answer(text, expected):
    assert metrics.normalize_answer(text) == expected


@pytest.mark.parametrize("prediction, golds, em, soft_em", [
    ("Paris", "paris", 1.0, 1.0),
    ("The Paris.", ["paris"], 1.0, 1.0),
    ("paris france", ["paris"], 0.0, 1.0),           # gold inside prediction
    ("paris", ["paris france"], 0.0, 1.0),           # prediction inside gold
    ("london", ["paris", "rome"], 0.0, 0.0),
    ("rome", ["paris", "Rome!"], 1.0, 1.0),          # max over several gold answers
    ("", [""], 1.0, 1.0),                            # both empty: equal, so EM
    ("", ["paris"], 0.0, 0.0),                       # empty is no substring match
    ("the", ["a"], 1.0, 1.0),                        # both normalize to empty
    ("yes", ["", "no"], 0.0, 0.0),                   # empty gold never soft-matches
    ("  yes  ", ["Yes"], 1.0, 1.0),
    ("no", ["not sure"], 0.0, 1.0),                  # substring on characters, not words
    ("A cat.", ["the cat", "dog"], 1.0, 1.0),
    ("cat", [], 0.0, 0.0),                           # no gold answers at all
])
def test_exact_and_soft_match(prediction, golds, em, soft_em):
    assert metrics.exact_match(prediction, golds) == em
    assert metrics.soft_exact_match(prediction, golds) == soft_em


def _rouge_l_by_hand(lcs, n_pred, n_gold):
    p, r = lcs / n_pred, lcs / n_gold
    return 2 * p * r / (p + r)


@pytest.mark.parametrize("prediction, golds, expected", [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("the cat was on the mat", "the cat sat on the mat", _rouge_l_by_hand(5, 6, 6)),
    ("police killed the gunman", "the gunman was shot down by police", _rouge_l_by_hand(2, 4, 7)),
    ("a b c d", "d c b a", _rouge_l_by_hand(1, 4, 4)),
    ("", "the cat", 0.0),
    ("the cat", "", 0.0),
    ("!!!", "???", 0.0),
    ("Hello, World", "hello world", 1.0),              # rouge tokenizer drops case and punctuation
    ("x y", ["a b", "x z", "x y"], 1.0),               # max over references
    ("x y", ["a b", "x z"], _rouge_l_by_hand(1, 2, 2)),
    ("don't stop", "do n t stop", _rouge_l_by_hand(2, 3, 4)),  # [don, t, stop] vs [do, n, t, stop]
])
def test_rouge_l_hand_computed(prediction, golds, expected):
    assert metrics.rouge_l(prediction, golds) == pytest.approx(expected)


def test_rouge_l_matches_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "A", "dog", "ran,", "fast!", "42", "É"]
    for _ in range(200):
        pred = " ".join(rng.choice(words, size=rng.integers(0, 9)))
        gold = " ".join(rng.choice(words, size=rng.integers(0, 9)))
        expected = scorer.score(gold, pred)["rougeL"].fmeasure
        assert metrics.rouge_l(pred, gold) == pytest.approx(expected, abs=1e-12), (pred, gold)


def test_lcs_length_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(100):
        a = list(rng.integers(0, 3, size=rng.integers(0, 7)))
        b = list(rng.integers(0, 3, size=rng.integers(0, 7)))
        brute = 0
        for mask in range(1 << len(a)):
            sub = [x for i, x in enumerate(a) if mask >> i & 1]
            it = iter(b)
            if all(x in it for x in sub):  # `in` on an iterator consumes it: a subsequence test
                brute = max(brute, len(sub))
        assert metrics._lcs_length(a, b) == brute  # pylint: disable=protected-access


@pytest.mark.parametrize("predictions, labels, expected", [
    ([0, 1, 2, 3], [0, 1, 2, 3], 1.0),
    ([0, 1, 2, 3], [0, 0, 2, 0], 0.5),
    (["a", "b", "c"], ["x", "b", "y"], 1 / 3),
    ([], [], 0.0),
])
def test_accuracy(predictions, labels, expected):
    assert metrics.accuracy(predictions, labels) == pytest.approx(expected)


def test_accuracy_and_text_metrics_reject_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        metrics.text_metrics(["a"], ["a", "b"])


def test_text_metrics_are_means_over_examples():
    predictions = ["Paris", "paris france", "rome", "the cat was on the mat"]
    golds = [["paris"], "paris", ["milan", "turin"], "the cat sat on the mat"]
    result = metrics.text_metrics(predictions, golds)
    assert result["em"] == pytest.approx(1 / 4)
    assert result["soft_em"] == pytest.approx(2 / 4)
    assert result["rouge_l"] == pytest.approx((1 + _rouge_l_by_hand(1, 2, 1) + 0 + 5 / 6) / 4)
    assert metrics.text_metrics([], []) == {"em": 0.0, "soft_em": 0.0, "rouge_l": 0.0}


def test_summarize_query_sets():
    results = {"copa": [0.5, 0.6, 0.7, 0.8, 0.9], "cb": [0.1, 0.2, 0.3, 0.4, 0.5]}
    summary = metrics.summarize_query_sets(results)
    assert summary["per_task"]["copa"]["mean"] == pytest.approx(0.7)
    assert summary["per_task"]["copa"]["std"] == pytest.approx(math.sqrt(0.02))
    assert summary["per_task"]["cb"] == {"mean": pytest.approx(0.3), "std": pytest.approx(math.sqrt(0.02)),
                                         "n": 5}
    overall = summary["overall"]
    assert overall["per_query_set"] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    assert overall["mean"] == pytest.approx(0.5)
    assert overall["std"] == pytest.approx(math.sqrt(0.02))
    assert (overall["min"], overall["max"], overall["median"]) == pytest.approx((0.3, 0.7, 0.5))


def test_summarize_query_sets_uneven_averages():
    summary = metrics.summarize_query_sets({"a": [1.0, 0.0, 0.0], "b": [0.0, 0.0, 1.0], "c": [1.0, 0.0, 0.5]})
    averages = [2 / 3, 0.0, 0.5]
    assert summary["overall"]["per_query_set"] == pytest.approx(averages)
    assert summary["overall"]["median"] == pytest.approx(0.5)
    assert summary["overall"]["std"] == pytest.approx(np.std(averages))


@pytest.mark.parametrize("results, message", [
    ({}, "empty"),
    ({"a": [0.1, 0.2], "b": [0.3]}, "task 'b' has 1 query-set scores but 'a' has 2"),
    ({"a": []}, "task 'a' has no query-set scores"),
])
def test_summarize_query_sets_errors(results, message):
    with pytest.raises(UserError, match=message):
        metrics.summarize_query_sets(results)
