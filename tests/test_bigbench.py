"""Tests of tasks/bigbench.py against the tiny fake directory of bigbench_fixtures.

Real-data checks at the end skip when the BIG-bench asset has not been fetched.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys

import bigbench_fixtures as fx
import gin
import pytest
import seqio

from recross_jax import assets
from recross_jax.errors import UserError

SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                   "sentencepiece.model")
P = "fakebench"  # the fake tasks' namespace, apart from the real `bigbench.*` tasks


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    """tasks.bigbench, imported from the fake directory when the real asset is absent."""
    if ("tasks.bigbench" not in sys.modules and not assets.is_complete("bigbench")
            and not os.environ.get("RECROSS_BIGBENCH_DIR")):
        with pytest.MonkeyPatch.context() as mp:
            root = tmp_path_factory.mktemp("fallback")
            mp.setenv("RECROSS_BIGBENCH_DIR", fx.write_tasks_dir(str(root)))
            mp.setenv("RECROSS_CACHE", str(root / "cache"))
            return importlib.import_module("tasks.bigbench")
    return importlib.import_module("tasks.bigbench")


@pytest.fixture
def fake(bb, tmp_path, monkeypatch):
    """The fake tasks registered under `fakebench.*` with the default cap (larger than any fake
    task); yields the tasks dir."""
    monkeypatch.setenv("RECROSS_CACHE", str(tmp_path / "cache"))
    tasks_dir = fx.write_tasks_dir(str(tmp_path))
    names = bb.register_bigbench(tasks_dir, prefix=P)
    yield tasks_dir
    for name in names:
        seqio.TaskRegistry.remove(name)
    for name in (f"{P}_upstream", f"{P}_targets"):
        seqio.MixtureRegistry.remove(name)


def _positions(rows) -> list[int]:
    return [int(row["example_id"].rsplit("#", 1)[1]) for row in rows]


def _by_position(bb, name: str) -> dict[int, dict]:
    """Every example of a task, over all splits, by its position in task.json."""
    rows = [row for split in ("train", "validation", "test") for row in bb.examples(name, split)]
    return dict(zip(_positions(rows), rows, strict=True))


def test_tasks_and_subtasks_are_registered(bb, fake):
    names = {n for n in seqio.TaskRegistry.names() if n.startswith(P + ".")}
    assert names == {f"{P}.{t}" for t in fx.UPSTREAM | fx.TARGETS | {"misconceptions_russian"}}
    # The container task and the programmatic task have no examples of their own.
    assert f"{P}.container" not in names and f"{P}.programmatic" not in names


def test_multiple_choice_format(bb, fake):
    by_position = _by_position(bb, f"{P}.mc_task")
    rows = list(by_position.values())
    largest = by_position[0]
    assert sorted(largest["answer_choices"]) == ["cat", "dog", "whale"]
    assert largest["targets"] == "whale"  # the best score, not the first choice
    assert largest["inputs"] == ("Answer the question.\n\nQuestion: Which is largest?"
                                 + "".join(f"\n  choice: {c}" for c in largest["answer_choices"])
                                 + "\nAnswer:")
    assert by_position[1]["targets"] == "a"  # a tie goes to the first best-scored choice
    assert {r["task"] for r in rows} == {f"{P}.mc_task"}
    assert {r["template"] for r in rows} == {"zero_shot"}
    # The JSON lists the answer first; the seeded shuffle must not keep it there.
    first = [r["answer_choices"].index(r["targets"]) == 0 for r in rows]
    assert 0.1 < sum(first) / len(first) < 0.5


def test_choice_order_is_seeded(bb):
    raw = {"input": "q", "target_scores": {c: int(c == "c") for c in "abcdefgh"}}
    task = {"preferred_score": "multiple_choice_grade"}
    orders = [bb.format_example(raw, task, task="t", split="train", index=0, seed=s)
              ["answer_choices"] for s in (0, 0, 1)]
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[2]) == list("abcdefgh")


def test_generative_format(bb, fake):
    rows = _by_position(bb, f"{P}.gen_task")
    assert rows[0]["inputs"] == "Q: Say hi.\nA:"  # BIG-bench's default prefixes
    assert rows[0]["targets"] == "hi"  # the first of several targets
    assert rows[0]["answer_choices"] == []
    assert rows[1]["targets"] == "bye"
    # Scores that are only distractors of an exact-match task: generative, nothing listed.
    both = bb.examples(f"{P}.both_task", "train")[0]
    assert both["answer_choices"] == [] and "choice" not in both["inputs"]
    assert both["inputs"] == f"Q: {both['targets']} plus 0?\nA:"


def test_choices_are_listed_even_when_the_json_says_not_to(bb, fake):
    quiet = bb.examples(f"{P}.quiet_choices", "train")[0]
    assert re.fullmatch(r"Q: Is \d+ even\?\n  choice: (yes|no)\n  choice: (yes|no)\nA:",
                        quiet["inputs"])
    custom = bb.examples(f"{P}.custom_choices", "train")[0]
    assert custom["inputs"].count("\n option: ") == 2
    # A target with scores in a multiple-choice task: the best-scored choice, not `target`.
    strategy = bb.examples(f"{P}.strategyqa", "train")[0]
    assert strategy["targets"] == "No" and sorted(strategy["answer_choices"]) == ["No", "Yes"]
    assert "choice: Yes" in strategy["inputs"]


def test_splits_are_disjoint_cover_every_distinct_example_and_drop_duplicates(bb, fake):
    for name in (f"{P}.mc_task", f"{P}.gen_task"):
        splits = {s: _positions(bb.examples(name, s)) for s in ("train", "validation", "test")}
        seen = [p for positions in splits.values() for p in positions]
        assert len(seen) == len(set(seen))
        raw = fx.MC_EXAMPLES if name.endswith("mc_task") else fx.GEN_EXAMPLES
        assert set(seen) == set(range(len(raw))) - ({len(raw) - 1} if raw is fx.MC_EXAMPLES
                                                    else set())
        for split, rows in ((s, bb.examples(name, s)) for s in splits):
            assert all(r["example_id"].startswith(f"{name}|{split}|zero_shot|#") for r in rows)
            assert bb.num_examples(name, split) == len(rows)
        assert len(splits["train"]) > len(splits["test"])


# Computed once in another process; a change means every downstream split moved.
GOLDEN_MC_TEST = [22]
GOLDEN_MC_VALIDATION = [9, 7, 16]


def test_splits_are_stable_across_registrations_and_processes(bb, fake, tmp_path):
    assert _positions(bb.examples(f"{P}.mc_task", "test")) == GOLDEN_MC_TEST
    assert _positions(bb.examples(f"{P}.mc_task", "validation")) == GOLDEN_MC_VALIDATION
    # A copy elsewhere, registered under another name, splits the same way.
    copy = shutil.copytree(fake, tmp_path / "copy")
    names = bb.register_bigbench(str(copy), prefix="otherbench")
    try:
        for split in ("train", "validation", "test"):
            assert (_positions(bb.examples("otherbench.mc_task", split))
                    == _positions(bb.examples(f"{P}.mc_task", split)))
    finally:
        for name in names:
            seqio.TaskRegistry.remove(name)
        for name in ("otherbench_upstream", "otherbench_targets"):
            seqio.MixtureRegistry.remove(name)


def test_mixture_membership(bb, fake):
    upstream = {t.name for t in seqio.MixtureRegistry.get(f"{P}_upstream").tasks}
    targets = {t.name for t in seqio.MixtureRegistry.get(f"{P}_targets").tasks}
    assert upstream == {f"{P}.{t}" for t in fx.UPSTREAM}
    assert targets == {f"{P}.{t}" for t in fx.TARGETS}
    for name in upstream:  # no target, and nothing whose name contains a target's
        assert not any(target in name for target in bb.TARGETS)
    assert f"{P}.misconceptions_russian" not in upstream | targets


def test_cap_is_the_rate_the_pool_size_and_the_train_split(bb, fake):
    uncapped = {t.name: bb.num_examples(t.name, "train")
                for t in seqio.MixtureRegistry.get(f"{P}_upstream").tasks}
    full_mc = bb.examples(f"{P}.mc_task", "train")
    bb.register_bigbench(fake, cap=5, prefix=P)
    mixture = seqio.MixtureRegistry.get(f"{P}_upstream")
    for task in mixture.tasks:
        count = bb.num_examples(task.name, "train")
        assert count == min(uncapped[task.name], 5)
        assert mixture.get_rate(task) == count
    assert uncapped[f"{P}.mc_task"] > 5
    # Upstream data D is capped at the source: the first 5 of the hash-ordered train split.
    assert bb.examples(f"{P}.mc_task", "train") == full_mc[:5]
    assert bb.num_examples(f"{P}.mc_task", "validation") == len(bb.examples(f"{P}.mc_task", "validation"))
    pool = list(bb.pool(f"{P}_upstream"))
    for task in mixture.tasks:
        head = bb.examples(task.name, "train")[:5]
        assert [r for r in pool if r["task"] == task.name] == head
    assert len(pool) == sum(min(bb.num_examples(t.name, "train"), 5) for t in mixture.tasks)
    # The targets are not capped.
    targets = seqio.MixtureRegistry.get(f"{P}_targets")
    assert all(targets.get_rate(t) == bb.num_examples(t.name, "train") for t in targets.tasks)


def test_default_cap_is_read_from_gin_when_used(bb, fake):
    names = bb.register_bigbench(fake, prefix=P)  # cap=None: the gin-configurable default
    mixture = seqio.MixtureRegistry.get(f"{P}_upstream")
    task = seqio.TaskRegistry.get(f"{P}.mc_task")
    count = bb.num_examples(task.name, "train")
    assert mixture.get_rate(task) == min(count, bb.DEFAULT_CAP) == count
    with gin.unlock_config():
        gin.bind_parameter("tasks.bigbench.upstream_cap.cap", 3)
    try:
        assert mixture.get_rate(task) == 3
        assert len([r for r in bb.pool(f"{P}_upstream") if r["task"] == task.name]) == 3
    finally:
        with gin.unlock_config():
            gin.bind_parameter("tasks.bigbench.upstream_cap.cap", bb.DEFAULT_CAP)
    assert len(names) == 10


def test_counts_come_from_a_cached_index(bb, fake):
    count = bb.num_examples(f"{P}.gen_task", "train")
    index_dir = os.path.join(assets.cache_dir(), "bigbench_index")
    (index_file,) = os.listdir(index_dir)
    with open(os.path.join(index_dir, index_file), encoding="utf-8") as f:
        assert json.load(f)["gen_task/task.json"]["train"] == count
    # Editing a task file changes the fingerprint: the next registration re-counts it.
    path = os.path.join(fake, "gen_task", "task.json")
    with open(path, encoding="utf-8") as f:
        task = json.load(f)
    task["examples"] = task["examples"][:3]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(task, f)
    bb.register_bigbench(fake, cap=5, prefix=P)
    assert sum(bb.num_examples(f"{P}.gen_task", s) for s in ("train", "validation", "test")) == 3
    assert len(os.listdir(index_dir)) == 2


def test_bad_input_is_a_one_line_user_error(bb, fake, tmp_path):
    with pytest.raises(UserError, match=r"unknown BIG-bench task 'fakebench\.nope'"):
        bb.examples(f"{P}.nope", "train")
    with pytest.raises(UserError, match=r"unknown split 'dev' for fakebench\.gen_task"):
        bb.examples(f"{P}.gen_task", "dev")
    with pytest.raises(UserError, match=r"unknown BIG-bench mixture 'nope_upstream'"):
        list(bb.pool("nope_upstream"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no BIG-bench task.json files under .*empty"):
        bb.register_bigbench(str(tmp_path / "empty"), prefix="emptybench")
    with pytest.raises(UserError, match="BIG-bench tasks directory not found"):
        bb.register_bigbench(str(tmp_path / "missing"), prefix="emptybench")
    with pytest.raises(UserError, match="cap must be positive, got 0"):
        bb.register_bigbench(fake, cap=0, prefix="emptybench")

    broken = os.path.join(fake, "gen_task", "task.json")
    with open(broken, "w", encoding="utf-8") as f:
        f.write('{"examples": [')
    with pytest.raises(UserError, match=f"cannot read BIG-bench task file {re.escape(broken)}"):
        bb.examples(f"{P}.gen_task", "train")
    with open(broken, "w", encoding="utf-8") as f:
        json.dump({"examples": [{"input": "x", "target": "y"}, {"input": "no target"}]}, f)
    with pytest.raises(UserError, match=re.escape(broken) + ": example 1 needs 'input' and"):
        bb.examples(f"{P}.gen_task", "train")


def test_seqio_dataset_has_the_schema_fields(bb, fake, monkeypatch):
    # Binds the tiny seqio model unless a vocabulary was already resolved in this process.
    monkeypatch.setenv("RECROSS_VOCAB", SPM)
    from tasks.vocab import VOCABULARY  # pylint: disable=import-outside-toplevel
    task = seqio.get_mixture_or_task(f"{P}.mc_task")
    rows = list(task.get_dataset(sequence_length=None, split="validation", shuffle=False)
                .as_numpy_iterator())
    expected = bb.examples(f"{P}.mc_task", "validation")
    assert len(rows) == len(expected) > 0
    for row, example in zip(rows, expected, strict=True):
        assert set(row) >= {"inputs", "targets", "inputs_pretokenized", "targets_pretokenized",
                            "answer_choices", "task", "template", "example_id"}
        assert row["inputs_pretokenized"].decode() == example["inputs"]
        assert row["targets_pretokenized"].decode() == example["targets"]
        assert [c.decode() for c in row["answer_choices"]] == example["answer_choices"]
        assert row["example_id"].decode() == example["example_id"]
        assert row["task"].decode() == f"{P}.mc_task"
        assert list(row["inputs"]) == VOCABULARY.encode(example["inputs"]) + [VOCABULARY.eos_id]
        assert list(row["targets"]) == VOCABULARY.encode(example["targets"]) + [VOCABULARY.eos_id]


REAL = pytest.mark.skipif(not assets.is_complete("bigbench"), reason="BIG-bench asset not fetched")


@REAL
def test_real_registration_and_mixtures(bb):
    names = {n for n in seqio.TaskRegistry.names() if n.startswith("bigbench.")}
    assert len(names) == 1001  # 127 tasks with examples + 874 subtasks of 40 containers
    targets = {t.name for t in seqio.MixtureRegistry.get("bigbench_targets").tasks}
    upstream = {t.name for t in seqio.MixtureRegistry.get("bigbench_upstream").tasks}
    assert {n.split(".")[1] for n in targets} == set(bb.TARGETS)
    assert len(targets) == 21 and len(upstream) == 979
    assert names - targets - upstream == {"bigbench.misconceptions_russian"}
    assert not any(t in name for name in upstream for t in bb.TARGETS)


@REAL
def test_real_examples(bb):
    rows = {s: bb.examples("bigbench.strategyqa", s) for s in ("train", "validation", "test")}
    ids = [r["example_id"] for split in rows.values() for r in split]
    assert len(ids) == len(set(ids)) == 2289
    example = rows["test"][0]
    assert example["targets"] in ("Yes", "No")
    assert sorted(example["answer_choices"]) == ["No", "Yes"]
    assert example["inputs"].startswith("Q: ") and example["inputs"].endswith("\nA:")
    assert "\n  choice: Yes" in example["inputs"] and "\n  choice: No" in example["inputs"]
    addition = bb.examples("bigbench.arithmetic.1_digit_addition", "train")[0]
    assert addition["answer_choices"] == [] and re.fullmatch(r"Q: What is \d plus \d\?\nA:",
                                                             addition["inputs"])
    assert int(addition["targets"]) == sum(map(int, re.findall(r"\d", addition["inputs"])))
