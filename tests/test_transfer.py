"""Loading TaskWeb's measured transfer scores: values, prefixes, source filter, bad files."""
import json
import os

import pytest
import shared_data

from recross_jax.errors import UserError
from recross_jax.selection import transfer

RECORDS = [
    {"target": "cb", "source": "snli", "pc_mean": 0.12, "pm_mean": 0.75,
     "settings": {"finetune/t5l": [0.3, 1.0]}},
    {"target": "cb", "source": "imdb", "pc_mean": -0.05, "pm_mean": 0.25,
     "settings": {"finetune/t5l": [-0.1, 0.0]}},
    {"target": "wic", "source": "snli", "pc_mean": 0.01, "pm_mean": 0.5, "settings": {}},
]
SHARED = os.path.join(shared_data.TASKWEB_ROOT, "transfer_scores.json")


def write(tmp_path, obj, name="transfer.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_scores_by_metric_prefix_and_sources(tmp_path):
    path = write(tmp_path, RECORDS)
    assert transfer.load_transfer_scores(path) == {"cb": {"snli": 0.12, "imdb": -0.05}, "wic": {"snli": 0.01}}
    assert transfer.load_transfer_scores(path, "pm_mean")["cb"] == {"snli": 0.75, "imdb": 0.25}
    assert transfer.load_transfer_scores(path, "pc_mean", prefix="p3.", sources={"p3.imdb"}) == {
        "p3.cb": {"p3.imdb": -0.05}}
    with pytest.raises(UserError, match=r"record 2 \(snli -> wic\) has no 'finetune/t5l' score"):
        transfer.load_transfer_scores(path, "finetune/t5l")
    assert transfer.load_transfer_scores(path, "finetune/t5l", sources={"imdb"}) == {"cb": {"imdb": -0.1}}


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="transfer score file not found"):
        transfer.load_transfer_scores(str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match="is not valid JSON"):
        transfer.load_transfer_scores(write(tmp_path, "[{"))
    with pytest.raises(UserError, match="must hold a list of records"):
        transfer.load_transfer_scores(write(tmp_path, {"cb": {}}))
    with pytest.raises(UserError, match="record 0 lacks 'target' or 'source'"):
        transfer.load_transfer_scores(write(tmp_path, [{"target": "cb"}]))


@pytest.mark.skipif(not os.path.isfile(SHARED), reason="../shared/data/taskweb not present")
def test_the_released_matrix():
    scores = transfer.load_transfer_scores(SHARED)
    assert len(scores) == 21 and sum(len(v) for v in scores.values()) == 441
    assert all(target not in sources for target, sources in scores.items())


def test_combined_score(tmp_path):
    path = write(tmp_path, RECORDS)
    combined = transfer.load_transfer_scores(path, "combined", sources={"snli", "imdb"})
    assert combined["cb"]["snli"] == pytest.approx(0.5 * 0.12 + 0.5 * (0.2 * 0.75 - 0.1))
    assert transfer.load_transfer_scores(path, "combined:finetune/t5l", sources={"imdb"}) == {
        "cb": {"imdb": transfer.combine(-0.1, 0.0)}}
    with pytest.raises(UserError, match=r"has no 'combined:finetune/t5l' score"):
        transfer.load_transfer_scores(path, "combined:finetune/t5l")


@pytest.mark.skipif(not os.path.isfile(SHARED), reason="../shared/data/taskweb not present")
def test_the_released_matrix_is_the_embedded_one():
    from recross_jax.selection import taskweb
    assert transfer.load_transfer_scores(SHARED, "combined:finetune/t5l") == taskweb.transfer()
    assert transfer.load_transfer_scores(SHARED, "combined") == taskweb.transfer("mean")
