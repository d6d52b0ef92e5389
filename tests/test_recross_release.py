"""The embedded ReCross release (`tasks/recross.py`): manifest checks, splits, answer choices,
mixtures, query sets and the CLI on it."""
import json
import lzma
import os
import shutil
import subprocess
import sys

import pytest
import seqio

from recross_jax import cli, corpus, evaluate, generalize
from recross_jax.errors import UserError
from tasks import recross

SEQIO_TEST_VOCAB = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                                "sentencepiece.model")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _manifest() -> dict:
    with open(os.path.join(recross.DEFAULT_DATA_DIR, recross.MANIFEST), encoding="utf-8") as f:
        return json.load(f)["files"]


def test_every_embedded_file_reads_through_the_manifest():
    files = _manifest()
    assert len(files) == 178
    total = sum(os.path.getsize(os.path.join(recross.DEFAULT_DATA_DIR, path + ".xz")) for path in files)
    assert total < 30 * 2**20
    assert os.path.isfile(os.path.join(recross.DEFAULT_DATA_DIR, "LICENSE"))
    for path, entry in files.items():
        data = recross.read_file(path)
        if entry["rows"] is not None:
            assert len(data) == entry["rows"], path
    recross._read_verified.cache_clear()  # pylint: disable=protected-access


@pytest.fixture()
def release_copy(tmp_path, monkeypatch):
    """A copy of the embedded release that a test may damage, in force for tasks.recross."""
    copy = tmp_path / "release"
    shutil.copytree(recross.DEFAULT_DATA_DIR, copy)
    monkeypatch.setenv("RECROSS_RELEASE_DIR", str(copy))
    monkeypatch.setenv("RECROSS_VOCAB", SEQIO_TEST_VOCAB)
    yield copy
    recross._read_verified.cache_clear()  # pylint: disable=protected-access


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_a_damaged_file_is_one_line_and_exit_2(release_copy, damage, capsys):
    path = release_copy / "super_glue-cb" / "test-1000.json.xz"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        rows = json.loads(lzma.decompress(path.read_bytes()))
        rows[0][1] = ["Never"]
        path.write_bytes(lzma.compress(json.dumps(rows).encode()))
    code = cli.main(["data", "show", "recross.super_glue_cb", "--split", "test", "-n", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(path) in err
    assert ("corrupt or truncated" if damage == "truncate" else "does not match its manifest") in err


def test_import_reads_no_data_file():
    code = ("import tasks.recross as r; import seqio;"
            "assert r._read_verified.cache_info().misses == 0;"
            "assert 'recross.super_glue_cb' in seqio.TaskRegistry.names()")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_examples_have_the_release_ids_templates_and_golds():
    rows = recross.examples("recross.super_glue_cb", "test")
    assert len(rows) == 280
    first = rows[0]
    assert set(first) == {"inputs", "targets", "answer_choices", "gold_answers", "task", "template",
                          "example_id"}
    assert first["task"] == "recross.super_glue_cb"
    dataset, split, template, index = first["example_id"].split("|")
    assert (dataset, split, template) == ("super_glue-cb", "validation", first["template"])
    assert index.startswith("#") and first["gold_answers"][0] == first["targets"]
    assert first["targets"] in first["answer_choices"]


def test_splits_are_the_release_files_and_disjoint():
    ids = {split: {r["example_id"] for r in recross.examples("recross.super_glue_cb", split)}
           for split in ("train", "validation", "test")}
    assert [len(ids[s]) for s in ("train", "validation", "test")] == [250, 1000, 280]
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"]
                or ids["validation"] & ids["test"])
    assert recross.splits_of("strategyqa") == ("test",)
    with pytest.raises(UserError, match=r"recross.strategyqa' has no split 'train'"):
        recross.examples("recross.strategyqa", "train")


def test_standin_datasets_split_validation_1000_by_raw_example():
    name = recross.task_name("hellaswag")
    train, validation = (recross.examples(name, split) for split in ("train", "validation"))
    assert len(train) + len(validation) == recross.file_rows("hellaswag", "validation-1000.json")
    raw = {split: {corpus.raw_example_id(r["example_id"]) for r in rows}
           for split, rows in (("train", train), ("validation", validation))}
    assert not raw["train"] & raw["validation"]
    share = len(raw["validation"]) / (len(raw["train"]) + len(raw["validation"]))
    assert 0.15 < share < 0.25  # standin_split's default 0.2
    assert recross.num_examples(name, "train") == len(train)


def test_split_order_is_a_hash_not_the_file_order():
    rows = recross.examples("recross.super_glue_cb", "test")
    indices = [r["example_id"].split("|")[-1] for r in rows[:10]]
    assert indices != sorted(indices)
    assert rows == recross.examples("recross.super_glue_cb", "test")


# Share of test examples with answer choices (and the gold answer among them), as measured on the
# embedded release; README's data section reports these.
CHOICE_SHARES = {"anli_r3": 1.0, "super_glue-cb": 1.0, "super_glue-wic": 1.0,
                 "super_glue-wsc.fixed": 1.0, "hellaswag": 1.0, "piqa": 1.0, "openbookqa-main": 1.0,
                 "winogrande-winogrande_xl": 1.0, "ai2_arc-ARC-Challenge": 0.835, "squad_v2": 0.198,
                 "hindu_knowledge": 1.0, "logic_grid_puzzle": 1.0, "strategyqa": 0.0}


@pytest.mark.parametrize("dataset", sorted(CHOICE_SHARES))
def test_answer_choices_are_recovered(dataset):
    rows = recross.examples(recross.task_name(dataset), "test")
    with_choices = [r for r in rows if r["answer_choices"]]
    assert len(with_choices) / len(rows) == pytest.approx(CHOICE_SHARES[dataset], abs=1e-3)
    gold_in = sum(r["targets"] in r["answer_choices"] for r in with_choices)
    assert gold_in >= 0.99 * len(with_choices)


@pytest.mark.parametrize("text, template, expected", [
    ("Sarah was better than Maria so _ won. In the previous sentence, does _ refer to Sarah or  Maria?",
     "does underscore refer to", ["Sarah", "Maria"]),
    ("In the sentence below, does the _ stand for Ann or Bo Li?\nAnn met Bo Li and _ smiled.",
     "stand for", ["Ann", "Bo Li"]),
    ("Fill in the _ :\nX or _.\n\nChoices:\n- cat\n- dog\n\nAnswer:", "fill in the blank", ["cat", "dog"]),
    ("No list here.", "Replace", []),
])
def test_prompt_choice_rules(text, template, expected):
    assert recross.answer_choices("winogrande-winogrande_xl", template, text) == expected


def test_bigbench_inline_choices_and_generative():
    text = "Q: Which?\n  choice: 2\n  choice: 1\nA:"
    assert recross.answer_choices("logic_grid_puzzle", "default", text) == ["2", "1"]
    assert recross.answer_choices("strategyqa", "default", "Q: Is it?\nA:") == []


def test_mixtures_follow_split_json():
    split = recross.read_file("split.json")
    for mixture, key in recross.UPSTREAM_SETS.items():
        expected = [recross.task_name(d) for d in split[key] if d not in recross.MISSING_DATASETS]
        assert sorted(t.name for t in seqio.MixtureRegistry.get(mixture).tasks) == sorted(expected)
    assert len(seqio.MixtureRegistry.get("t0_upstream").tasks) == 34
    targets = [t.name for t in seqio.MixtureRegistry.get("recross_targets").tasks]
    assert sorted(targets) == sorted(recross.task_name(d) for d in recross.TABLE1_TARGETS)
    assert not set(targets) & {t.name for t in seqio.MixtureRegistry.get("t0_upstream").tasks}
    bigbench = [t.name for t in seqio.MixtureRegistry.get("recross_bigbench_targets").tasks]
    assert sorted(bigbench) == sorted(recross.task_name(d) for d in recross.TABLE2_TARGETS)
    assert sorted(recross.STANDIN_DATASETS) == sorted(
        d for d in recross.datasets() if recross.has_file(d, "validation-1000.json")
        and not recross.has_file(d, "upstream-5000.json"))
    # The positive control: T0's set less one sentiment dataset, whose family stays in.
    control = {t.name for t in seqio.MixtureRegistry.get(recross.CONTROL_MIXTURE).tasks}
    t0 = {t.name for t in seqio.MixtureRegistry.get("t0_upstream").tasks}
    assert t0 - control == {recross.task_name(recross.CONTROL_DATASET)} and control < t0
    assert {recross.task_name(d) for d in recross.CONTROL_FAMILY} < control


def test_upstream_cap_caps_train_and_the_rate(monkeypatch):
    import gin  # pylint: disable=import-outside-toplevel
    gin.bind_parameter("tasks.recross.upstream_cap.cap", 7)
    rows = recross.examples("recross.rotten_tomatoes", "train")
    assert len(rows) == 7 == recross.num_examples("recross.rotten_tomatoes", "train")
    assert len(recross.examples("recross.rotten_tomatoes", "test")) == 1000
    assert len(recross.examples("recross.super_glue_cb", "train")) == 250  # not upstream


def test_bigbench_query_sets_are_the_authors_rounds():
    sets = recross.query_sets("recross.strategyqa", 5, 16, seed=123)
    fewshot = recross.read_file("strategyqa/fewshot.json")["16"]
    assert [[r["example_id"] for r in s] for s in sets] == [
        [row[2] for row in fewshot[f"round#{i}"]] for i in range(5)]
    assert [len(s) for s in recross.query_sets("recross.strategyqa", 2, 8, seed=0)] == [8, 8]
    with pytest.raises(UserError, match="rounds of 16"):
        recross.query_sets("recross.strategyqa", 5, 32, seed=0)


def test_p3_query_sets_are_seeded_disjoint_draws_of_validation():
    sets = recross.query_sets("recross.super_glue_cb", 5, 16, seed=0)
    ids = [r["example_id"] for s in sets for r in s]
    assert len(ids) == len(set(ids)) == 80
    pool = {row[2] for row in recross.read_file("super_glue-cb/validation-1000.json")}
    assert set(ids) <= pool
    assert sets == recross.query_sets("recross.super_glue_cb", 5, 16, seed=0)
    assert sets != recross.query_sets("recross.super_glue_cb", 5, 16, seed=1)
    assert corpus.query_source("recross.super_glue_cb") is not None


def test_test_set_drops_raw_examples_of_the_queries():
    query_rows = recross.query_sets("recross.strategyqa", 1, 16, seed=0)[0]
    query_set = generalize.QuerySet(0, 0, tuple(query_rows))
    test = [evaluate.EvalExample(r["example_id"], r["inputs"], r["targets"], (), (), (), ())
            for r in recross.examples("recross.strategyqa", "test")]
    kept = generalize.unseen_by(query_set, test)
    query_raw = {corpus.raw_example_id(r["example_id"]) for r in query_rows}
    dropped = [e for e in test if corpus.raw_example_id(e.example_id) in query_raw]
    assert dropped and len(kept) == len(test) - len(dropped)
    assert not {corpus.raw_example_id(e.example_id) for e in kept} & query_raw


def test_cli_lists_mixtures_and_shows_choices(capsys, monkeypatch):
    monkeypatch.setenv("RECROSS_VOCAB", SEQIO_TEST_VOCAB)
    assert cli.main(["data", "list", "--mixtures"]) == 0
    listed = set(capsys.readouterr().out.split())
    assert {"t0_upstream", "t0p_upstream", "t0pp_upstream", "recross_targets",
            "recross_bigbench_targets"} <= listed
    assert cli.main(["data", "show", "recross.piqa", "--split", "test", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("choices: ") == 2 and "piqa|validation|" in out
    assert cli.main(["data", "show", "recross.nope", "-n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "recross.nope" in err
