"""Re-learning's rate is chosen from upstream runs' gains of ReCross† over base."""
import json

import pytest

from recross_jax import relearn_rate
from recross_jax.errors import UserError


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
    result = relearn_rate.gains(str(tmp_path), ["up.a", "up.b"], 2, "accuracy")
    assert result["per_task"] == pytest.approx({"up.a": 0.15, "up.b": -0.05})
    assert result["mean"] == pytest.approx(0.05)
    by_rate = {1e-4: {"mean": 0.05, "per_task": {"up.a": 0.1, "up.b": 0.0}},
               3e-5: {"mean": 0.05, "per_task": {"up.a": 0.0, "up.b": 0.1}},
               3e-4: {"mean": -0.2, "per_task": {"up.a": -0.2, "up.b": -0.2}}}
    assert relearn_rate.choose(by_rate) == 3e-5  # a tie goes to the smaller rate
    table = relearn_rate.markdown(by_rate, 3e-5, "accuracy")
    assert "| 3e-05 (chosen) | +0.00 | +10.00 | +5.00 |" in table
    assert table.index("| 3e-05") < table.index("| 0.0001") < table.index("| 0.0003")
    with pytest.raises(UserError, match="no learning rate"):
        relearn_rate.choose({})
