"""Paired differences and the two-level bootstrap reproduce hand-computed values."""
import numpy as np
import pytest

from recross_jax import significance
from recross_jax.errors import UserError


def test_paired_differences_keep_only_shared_runs():
    a = {"cb": {0: 0.6, 1: 0.7, 2: 0.8}, "wic": {0: 0.5}, "only_a": {0: 1.0}}
    b = {"cb": {0: 0.5, 2: 0.5}, "wic": {0: 0.4, 1: 0.4}}
    diffs = significance.paired_differences(a, b)
    assert list(diffs) == ["cb", "wic"]
    assert diffs["cb"] == pytest.approx([0.1, 0.3]) and diffs["wic"] == pytest.approx([0.1])
    with pytest.raises(UserError, match="share no"):
        significance.paired_differences({"cb": {0: 0.1}}, {"wic": {0: 0.1}})


def test_bootstrap_of_one_target_is_the_distribution_of_query_set_means():
    # Two query sets: a resample's mean is 0.1, 0.2 or 0.3 with probability 1/4, 1/2, 1/4,
    # so the 95% percentile interval is [0.1, 0.3].
    low, high = significance.bootstrap_mean_ci({"cb": [0.1, 0.3]}, seed=0, resamples=4000)
    assert (low, high) == pytest.approx((0.1, 0.3))
    # Constant differences give a degenerate interval at the difference.
    constant = significance.bootstrap_mean_ci({"cb": [0.2, 0.2], "wic": [0.2]}, seed=1)
    assert constant == pytest.approx((0.2, 0.2))


def test_bootstrap_resamples_targets():
    # No query-set variation: only the targets' draw varies (mean of two draws of 0.1 / 0.3).
    low, high = significance.bootstrap_mean_ci({"cb": [0.1, 0.1], "wic": [0.3, 0.3]}, seed=0,
                                               resamples=4000, confidence=0.9)
    assert (low, high) == pytest.approx((0.1, 0.3))
    # The share of resamples at the middle value approaches 1/2.
    central = significance.bootstrap_mean_ci({"cb": [0.1, 0.1], "wic": [0.3, 0.3]}, seed=0,
                                             resamples=4000, confidence=0.4)
    assert central == pytest.approx((0.2, 0.2))


def test_compare_and_determinism():
    a = {"cb": {0: 0.6, 1: 0.7, 2: 0.8}, "wic": {0: 0.5, 1: 0.4, 2: 0.3}}
    b = {"cb": {0: 0.5, 1: 0.5, 2: 0.5}, "wic": {0: 0.4, 1: 0.4, 2: 0.4}}
    result = significance.compare(a, b, seed=3, resamples=2000)
    assert result["mean"] == pytest.approx((0.2 + 0.0) / 2)
    assert (result["wins"], result["ties"], result["losses"]) == (4, 1, 1)
    assert result["per_query_set"] == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1})
    assert result["per_target"]["cb"] == pytest.approx({"mean": 0.2, "std": np.std([0.1, 0.2, 0.3]), "n": 3})
    low, high = result["ci"]
    assert low < result["mean"] < high and low >= -0.1 and high <= 0.3
    assert significance.compare(a, b, seed=3, resamples=2000) == result
    assert significance.compare(a, b, seed=4, resamples=2000)["ci"] != result["ci"]
    with pytest.raises(UserError, match="resamples >= 1"):
        significance.bootstrap_mean_ci({"cb": [0.1]}, seed=0, resamples=0)
