"""Tests of tasks/bigbench.py against the tiny fake directory of bigbench_fixtures.

Real-data checks at the end skip unless a BIG-bench checkout is given ($RECROSS_BIGBENCH_DIR).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import bigbench_fixtures as fx
import gin
import pytest
import seqio

from recross_jax import assets, corpus, gin_utils
from recross_jax.errors import UserError
from tasks import bigbench as bb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                   "sentencepiece.model")
P = "fakebench"  # the fake tasks' namespace, apart from the real `bigbench.*` tasks


def _remove(names, prefix: str) -> None:
    for name in names:
        seqio.TaskRegistry.remove(name)
    for suffix in ("_upstream", "_upstream_sample", "_targets"):
        if prefix + suffix in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.remove(prefix + suffix)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake tasks registered under `fakebench.*` with the default cap (larger than any fake
    task); yields the tasks dir."""
    monkeypatch.setenv("RECROSS_CACHE", str(tmp_path / "cache"))
    tasks_dir = fx.write_tasks_dir(str(tmp_path))
    names = bb.register_bigbench(tasks_dir, prefix=P)
    yield tasks_dir
    _remove(names, P)


def _positions(rows) -> list[int]:
    return [int(row["example_id"].rsplit("#", 1)[1]) for row in rows]


def _by_position(name: str) -> dict[int, dict]:
    """Every example of a task, over all splits, by its position in task.json."""
    rows = [row for split in ("train", "validation", "test") for row in bb.examples(name, split)]
    return dict(zip(_positions(rows), rows, strict=True))


def test_tasks_and_subtasks_are_registered(fake):
    names = {n for n in seqio.TaskRegistry.names() if n.startswith(P + ".")}
    assert names == {f"{P}.{t}" for t in fx.UPSTREAM | fx.TARGETS | {"misconceptions_russian"}}
    # The container task and the programmatic task have no examples of their own.
    assert f"{P}.container" not in names and f"{P}.programmatic" not in names


def test_multiple_choice_format(fake):
    by_position = _by_position(f"{P}.mc_task")
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


def test_choice_order_is_seeded():
    raw = {"input": "q", "target_scores": {c: int(c == "c") for c in "abcdefgh"}}
    task = {"preferred_score": "multiple_choice_grade"}
    orders = [bb.format_example(raw, task, task="t", split="train", index=0, seed=s)
              ["answer_choices"] for s in (0, 0, 1)]
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[2]) == list("abcdefgh")


def test_generative_format(fake):
    rows = _by_position(f"{P}.gen_task")
    assert rows[0]["inputs"] == "Q: Say hi.\nA:"  # BIG-bench's default prefixes
    assert rows[0]["targets"] == "hi"  # the first of several targets
    assert rows[0]["answer_choices"] == []
    assert rows[1]["targets"] == "bye"
    # Scores that are only distractors of an exact-match task: generative, nothing listed.
    both = bb.examples(f"{P}.both_task", "train")[0]
    assert both["answer_choices"] == [] and "choice" not in both["inputs"]
    assert both["inputs"] == f"Q: {both['targets']} plus 0?\nA:"


def test_choices_are_listed_even_when_the_json_says_not_to(fake):
    quiet = bb.examples(f"{P}.quiet_choices", "train")[0]
    assert re.fullmatch(r"Q: Is \d+ even\?\n  choice: (yes|no)\n  choice: (yes|no)\nA:",
                        quiet["inputs"])
    custom = bb.examples(f"{P}.custom_choices", "train")[0]
    assert custom["inputs"].count("\n option: ") == 2
    # A target with scores in a multiple-choice task: the best-scored choice, not `target`.
    strategy = bb.examples(f"{P}.strategyqa", "train")[0]
    assert strategy["targets"] == "No" and sorted(strategy["answer_choices"]) == ["No", "Yes"]
    assert "choice: Yes" in strategy["inputs"]


def test_splits_are_disjoint_cover_every_distinct_example_and_drop_duplicates(fake):
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


def test_splits_are_stable_across_registrations_and_processes(fake, tmp_path):
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
        _remove(names, "otherbench")


def test_mixture_membership(fake):
    upstream = {t.name for t in seqio.MixtureRegistry.get(f"{P}_upstream").tasks}
    targets = {t.name for t in seqio.MixtureRegistry.get(f"{P}_targets").tasks}
    assert upstream == {f"{P}.{t}" for t in fx.UPSTREAM}
    assert targets == {f"{P}.{t}" for t in fx.TARGETS}
    for name in upstream:  # no target, and nothing whose name contains a target's
        assert not any(target in name for target in bb.TARGETS)
    assert f"{P}.misconceptions_russian" not in upstream | targets


def test_cap_is_the_rate_the_pool_size_and_the_train_split(fake):
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


def test_default_cap_is_read_from_gin_when_used(fake):
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


def test_counts_come_from_a_cached_index(fake):
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


def test_bad_input_is_a_one_line_user_error(fake, tmp_path):
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


def _run(script: str, env: dict[str, str]) -> list[str]:
    """Runs `script` in a fresh Python with `env` added (and $RECROSS_BIGBENCH_DIR only if in
    `env`); returns its output lines."""
    full = {k: v for k, v in os.environ.items() if k != bb.ENV_VAR} | env
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=full,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_import_without_a_checkout_registers_nothing_and_asking_says_what_to_set(tmp_path):
    checkout = fx.write_checkout(str(tmp_path / "BIG-bench"))
    lines = _run(f"""
        import os, seqio
        from recross_jax import gin_utils
        from recross_jax.errors import UserError
        from tasks import bigbench

        def registered():
            return (sorted(n for n in seqio.TaskRegistry.names() if n.startswith("bigbench.")),
                    sorted(n for n in seqio.MixtureRegistry.names() if n.startswith("bigbench_")))

        print(registered(), os.path.exists(os.environ["RECROSS_CACHE"]))
        for ask in (lambda: bigbench.examples("bigbench.strategyqa", "test"),
                    lambda: list(bigbench.pool("bigbench_upstream"))):
            try:
                ask()
            except UserError as e:
                print(e)
        # A checkout root bound in gin is registered when the config is finalized.
        gin_utils.parse([], ["tasks.bigbench.register_checkout.tasks_dir = {checkout!r}"])
        tasks, mixtures = registered()
        print(len(tasks), mixtures, bigbench.examples("bigbench.mc_task", "test")[0]["task"])
    """, {"RECROSS_CACHE": str(tmp_path / "cache")})
    assert lines == [
        "([], []) False",
        f"BIG-bench task 'bigbench.strategyqa': {bb.NO_CHECKOUT}",
        f"BIG-bench mixture 'bigbench_upstream': {bb.NO_CHECKOUT}",
        "10 ['bigbench_targets', 'bigbench_upstream', 'bigbench_upstream_sample'] bigbench.mc_task",
    ]
    assert bb.NO_CHECKOUT.startswith(
        "no BIG-bench checkout given: set $RECROSS_BIGBENCH_DIR or bind "
        "tasks.bigbench.register_checkout.tasks_dir to a clone of google/BIG-bench")


def test_env_var_registers_the_checkout_at_import(tmp_path):
    lines = _run("""
        import seqio
        from tasks import bigbench
        print(sorted(n for n in seqio.TaskRegistry.names() if n.startswith("bigbench.")))
        print([r["example_id"] for r in bigbench.examples("bigbench.mc_task", "test")])
    """, {bb.ENV_VAR: fx.write_tasks_dir(str(tmp_path)), "RECROSS_CACHE": str(tmp_path / "cache")})
    assert lines == [str(sorted(f"bigbench.{t}" for t in fx.UPSTREAM | fx.TARGETS
                                | {"misconceptions_russian"})),
                     str([f"bigbench.mc_task|test|zero_shot|#{i}" for i in GOLDEN_MC_TEST])]


def test_a_missing_checkout_is_a_one_line_user_error_naming_where_it_was_given(
        tmp_path, monkeypatch):
    missing = str(tmp_path / "missing")
    monkeypatch.setenv(bb.ENV_VAR, missing)
    with pytest.raises(UserError, match=rf"^\$RECROSS_BIGBENCH_DIR is not a directory: {missing}$"):
        bb._register_from_environment()  # what importing the module does
    with pytest.raises(UserError) as info:
        gin_utils.parse([], [f"tasks.bigbench.register_checkout.tasks_dir = '{missing}'"])
    assert str(info.value) == f"{bb.GIN_PARAMETER} is not a directory: {missing}"


def test_a_checkout_root_or_its_tasks_directory_is_accepted(tmp_path):
    root = fx.write_checkout(str(tmp_path / "BIG-bench"))
    tasks_dir = os.path.join(root, "bigbench", "benchmark_tasks")
    assert bb.benchmark_tasks_dir(root) == tasks_dir
    assert bb.benchmark_tasks_dir(tasks_dir) == tasks_dir


def test_seqio_dataset_has_the_schema_fields(fake, monkeypatch):
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


REAL = pytest.mark.skipif(not os.environ.get(bb.ENV_VAR),
                          reason=f"no BIG-bench checkout (${bb.ENV_VAR})")


@REAL
def test_real_registration_and_mixtures():
    # Counts differ between BIG-bench versions (1.0.0: 1001 tasks, 21 targets, 979 upstream).
    names = {n for n in seqio.TaskRegistry.names() if n.startswith("bigbench.")}
    targets = {t.name for t in seqio.MixtureRegistry.get("bigbench_targets").tasks}
    upstream = {t.name for t in seqio.MixtureRegistry.get("bigbench_upstream").tasks}
    assert {n.split(".")[1] for n in targets} == set(bb.TARGETS)
    assert len(upstream) > 500 and not targets & upstream
    assert not any(t in name for name in upstream for t in bb.TARGETS)
    # The rest are named after a target (misconceptions_russian).
    assert all(any(t in name for t in bb.TARGETS) for name in names - targets - upstream)


@REAL
def test_real_examples():
    rows = {s: bb.examples("bigbench.strategyqa", s) for s in ("train", "validation", "test")}
    ids = [r["example_id"] for split in rows.values() for r in split]
    assert len(ids) == len(set(ids)) > 2000  # 2289 in BIG-bench 1.0.0
    example = rows["test"][0]
    assert example["targets"] in ("Yes", "No")
    assert sorted(example["answer_choices"]) == ["No", "Yes"]
    assert example["inputs"].startswith("Q: ") and example["inputs"].endswith("\nA:")
    assert "\n  choice: Yes" in example["inputs"] and "\n  choice: No" in example["inputs"]
    addition = bb.examples("bigbench.arithmetic.1_digit_addition", "train")[0]
    assert addition["answer_choices"] == [] and re.fullmatch(r"Q: What is \d plus \d\?\nA:",
                                                             addition["inputs"])
    assert int(addition["targets"]) == sum(map(int, re.findall(r"\d", addition["inputs"])))


def test_commands_name_the_missing_checkout_for_bigbench_names(monkeypatch):
    monkeypatch.setattr(bb, "_checkout_given", lambda: False)
    with pytest.raises(UserError, match=r"unknown task or mixture: 'bigbench.nope' \(no BIG-bench "
                                        r"checkout given: set \$RECROSS_BIGBENCH_DIR"):
        corpus.get_provider("bigbench.nope")
