"""The JSONL task family: fields, both split rules, errors naming file and line, TaskWeb."""
import json
import os

import gin
import pytest
import seqio
import shared_data

from recross_jax.errors import UserError
from tasks import jsonl

TASKWEB_DIR = shared_data.TASKWEB_TASKS
needs_taskweb = pytest.mark.skipif(not os.path.isdir(TASKWEB_DIR),
                                   reason="TaskWeb data not present")


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def _rows(n, task="sentiment"):
    return [{"inputs": f"Review {i}: the film was {'great' if i % 2 else 'dull'}. Positive?",
             "targets": "yes" if i % 2 else "no", "choices": ["no", "yes"], "task": task,
             "source": "extra fields are ignored"} for i in range(n)]


def test_hashed_split_is_disjoint_complete_and_independent_of_line_order(tmp_path):
    rows = _rows(60)
    jsonl.register_jsonl_task("test_jsonl.hashed", _write(tmp_path / "a.jsonl", rows))
    splits = {s: jsonl.examples("test_jsonl.hashed", s) for s in ("train", "validation", "test")}
    inputs = {s: [e["inputs"] for e in examples] for s, examples in splits.items()}
    assert all(inputs.values())
    assert sorted(sum(inputs.values(), [])) == sorted(r["inputs"] for r in rows)
    assert 36 <= len(inputs["train"]) <= 57  # about 80% of 60
    first = splits["train"][0]
    line = [r["inputs"] for r in rows].index(first["inputs"])
    assert first["example_id"] == f"test_jsonl.hashed|train|default|#{line}"
    assert (first["task"], first["template"], first["answer_choices"]) == (
        "sentiment", "default", ["no", "yes"])

    jsonl.register_jsonl_task("test_jsonl.reversed", _write(tmp_path / "b.jsonl", rows[::-1]))
    reordered = jsonl.examples("test_jsonl.reversed", "test")
    assert {e["inputs"] for e in reordered} == set(inputs["test"])
    jsonl.register_jsonl_task("test_jsonl.salted", str(tmp_path / "a.jsonl"), salt="other")
    assert {e["inputs"] for e in jsonl.examples("test_jsonl.salted", "test")} != set(inputs["test"])


def _variants(n_raw, raw_id=True):
    """Three prompted variants (templates) of each of `n_raw` raw examples."""
    rows = []
    for i in range(n_raw):
        for template, prompt in (("ask", "Is {} even?"), ("say", "Say whether {} is even."),
                                 ("tf", "{} is even. True or false?")):
            rows.append({"inputs": prompt.format(i), "targets": "yes" if i % 2 == 0 else "no",
                         "template": template, "task": "parity"}
                        | ({"raw_id": f"number {i}"} if raw_id else {}))
    return rows


def test_prompt_variants_sharing_a_raw_id_land_in_one_split(tmp_path):
    rows = _variants(40)
    jsonl.register_jsonl_task("test_jsonl.raw", _write(tmp_path / "raw.jsonl", rows))
    raw_of = {r["inputs"]: r["raw_id"] for r in rows}
    split_of = {}
    for split in ("train", "validation", "test"):
        examples = jsonl.examples("test_jsonl.raw", split)
        assert examples, split
        for example in examples:
            assert split_of.setdefault(raw_of[example["inputs"]], split) == split
    assert len(split_of) == 40
    assert sum(len(jsonl.examples("test_jsonl.raw", s)) for s in ("train", "validation", "test")) == 120

    # Without raw_id each line is hashed on its own: the variants of some raw examples straddle.
    jsonl.register_jsonl_task("test_jsonl.per_line", _write(tmp_path / "lines.jsonl",
                                                            _variants(40, raw_id=False)))
    splits_of_raw = {}
    for split in ("train", "validation", "test"):
        for example in jsonl.examples("test_jsonl.per_line", split):
            splits_of_raw.setdefault(raw_of[example["inputs"]], set()).add(split)
    assert any(len(splits) > 1 for splits in splits_of_raw.values())


def test_row_task_false_names_examples_by_the_registered_task_and_keeps_the_split(tmp_path):
    path = _write(tmp_path / "a.jsonl", _rows(40))
    jsonl.register_jsonl_task("test_jsonl.by_row", path)
    jsonl.register_jsonl_task("test_jsonl.by_name", path, row_task=False)
    for split in ("train", "validation", "test"):
        by_row, by_name = (jsonl.examples(t, split) for t in ("test_jsonl.by_row", "test_jsonl.by_name"))
        assert [e["inputs"] for e in by_row] == [e["inputs"] for e in by_name]
        assert {e["task"] for e in by_row} == {"sentiment"} and {e["task"] for e in by_name} == {
            "test_jsonl.by_name"}


def test_per_split_files_define_the_splits(tmp_path):
    _write(tmp_path / "d" / "train.jsonl", _rows(3))
    _write(tmp_path / "d" / "validation.jsonl", _rows(2, task="other"))
    task = jsonl.register_jsonl_task("test_jsonl.dir", str(tmp_path / "d"))
    assert task.splits == ("train", "validation")
    validation = jsonl.examples("test_jsonl.dir", "validation")
    assert [e["example_id"] for e in validation] == [
        "test_jsonl.dir|validation|default|#0", "test_jsonl.dir|validation|default|#1"]
    assert {e["task"] for e in validation} == {"other"}
    assert len(jsonl.examples("test_jsonl.dir", "train")) == 3
    with pytest.raises(UserError, match="has no split 'test'.*train.jsonl, validation.jsonl"):
        jsonl.examples("test_jsonl.dir", "test")


def test_optional_fields_and_unlabeled_lines(tmp_path):
    path = _write(tmp_path / "train.jsonl", [
        {"inputs": "Translate: chat", "targets": ["cat", "kitty"]},
        {"inputs": "", "choices": ["a", "b"], "targets": None},
        "",
        {"inputs": "2+2=", "targets": "4", "choices": None, "template": "arith"},
    ])
    jsonl.register_jsonl_task("test_jsonl.fields", os.path.dirname(path))
    examples = jsonl.examples("test_jsonl.fields", "train")
    assert examples == [
        {"inputs": "Translate: chat", "targets": "cat", "gold_answers": ["cat", "kitty"],
         "answer_choices": [], "task": "test_jsonl.fields", "template": "default",
         "example_id": "test_jsonl.fields|train|default|#0"},
        {"inputs": "2+2=", "targets": "4", "gold_answers": ["4"], "answer_choices": [],
         "task": "test_jsonl.fields", "template": "arith",
         "example_id": "test_jsonl.fields|train|arith|#3"},
    ]


def test_seqio_source_yields_the_schema(tmp_path):
    task = jsonl.register_jsonl_task(
        "test_jsonl.seqio", os.path.dirname(_write(tmp_path / "s" / "test.jsonl", _rows(2))))
    rows = list(task.source.get_dataset(split="test", shuffle=False).as_numpy_iterator())
    assert [r["targets"] for r in rows] == [b"no", b"yes"]
    assert rows[1]["answer_choices"].tolist() == [b"no", b"yes"]
    assert rows[0]["example_id"] == b"test_jsonl.seqio|test|default|#0"


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"targets": "x"}', "`inputs` must be a string, got null"),
    ('{"inputs": "x", "targets": 3}', "`targets` must be a string or a non-empty list"),
    ('{"inputs": "x", "targets": []}', "`targets` must be a string or a non-empty list"),
    ('{"inputs": "x", "targets": "y", "choices": "y"}', "`choices` must be a list of strings"),
    ('{"inputs": "x", "targets": "y", "choices": [1]}', "`choices` must be a list of strings"),
    ('{"inputs": "x", "targets": "y", "task": 7}', "`task` must be a string"),
    ('{"inputs": "x", "targets": "y", "raw_id": 7}', "`raw_id` must be a string, got int"),
    ('{"inputs": "x", "targets": "y", "raw_id": null}', "`raw_id` must be a string, got null"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
    path = _write(tmp_path / "bad" / "train.jsonl", _rows(2) + [line])
    jsonl.register_jsonl_task("test_jsonl.bad", os.path.dirname(path))
    with pytest.raises(UserError, match=f"^{path}:3: {problem}") as info:
        jsonl.examples("test_jsonl.bad", "train")
    assert "\n" not in str(info.value)
    # A single (hashed) file checks its lines the same way.
    jsonl.register_jsonl_task("test_jsonl.bad_hashed", path)
    with pytest.raises(UserError, match=f"^{path}:3: {problem}"):
        jsonl.examples("test_jsonl.bad_hashed", "test")


def test_missing_or_empty_paths_and_bad_fractions(tmp_path):
    with pytest.raises(UserError, match="JSONL data not found for task 'test_jsonl.missing'"):
        jsonl.register_jsonl_task("test_jsonl.missing", str(tmp_path / "nope.jsonl"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="no train.jsonl, validation.jsonl, test.jsonl in"):
        jsonl.register_jsonl_task("test_jsonl.empty", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="split fractions"):
        jsonl.register_jsonl_task("test_jsonl.fractions", _write(tmp_path / "f.jsonl", _rows(1)),
                                  fractions=(0.5, 0.5, 0.5))
    assert "test_jsonl.missing" not in seqio.TaskRegistry.names()
    with pytest.raises(UserError, match="unknown JSONL task"):
        jsonl.examples("test_jsonl.never_registered", "train")


def test_taskweb_directory_is_resolved_when_iterated(tmp_path, monkeypatch):
    monkeypatch.setenv("RECROSS_TASKWEB_DIR", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="TaskWeb data directory not found: .*absent"):
        jsonl.examples("p3mini.cb", "train")
    _write(tmp_path / "tw" / "cb.jsonl", _rows(20, task="cb"))
    with gin.unlock_config():
        gin.bind_parameter("tasks.jsonl.taskweb_dir.path", str(tmp_path / "tw"))
    try:
        examples = [e for s in ("train", "validation", "test")
                    for e in jsonl.examples("p3mini.cb", s)]
        assert len(examples) == 20 and {e["task"] for e in examples} == {"p3mini.cb"}
        with pytest.raises(UserError,
                           match=r"JSONL data not found for task 'p3mini.piqa': .*piqa\.jsonl"):
            jsonl.examples("p3mini.piqa", "train")
    finally:
        with gin.unlock_config():
            gin.bind_parameter("tasks.jsonl.taskweb_dir.path", None)


def test_p3mini_mixtures_follow_spec_split():
    upstream = [t.name for t in seqio.MixtureRegistry.get("p3mini_upstream").tasks]
    targets = [t.name for t in seqio.MixtureRegistry.get("p3mini_targets").tasks]
    assert len(upstream) == 13 and len(targets) == 10
    assert "p3mini.squad_v2" in upstream and "p3mini.anli_r3" in targets
    assert not set(upstream) & set(targets)


@needs_taskweb
def test_taskweb_tasks_read_the_release(monkeypatch):
    monkeypatch.delenv("RECROSS_TASKWEB_DIR", raising=False)
    counts = {s: len(jsonl.examples("p3mini.copa", s)) for s in ("train", "validation", "test")}
    assert sum(counts.values()) == 688  # 689 lines, one of them unlabeled
    # The hashed split of the release (the same since it was first registered).
    assert counts == {"train": 571, "validation": 65, "test": 52}
    example = jsonl.examples("p3mini.cb", "train")[0]
    # Examples carry the registered task name (the rows say "cb").
    assert example["task"] == "p3mini.cb" and example["answer_choices"] == ["True", "False", "Neither"]
    assert example["targets"] in example["answer_choices"]
    ids = [e["example_id"] for s in ("train", "validation", "test")
           for e in jsonl.examples("p3mini.cb", s)]
    assert len(ids) == len(set(ids)) == 698
