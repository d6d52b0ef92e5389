"""Multi-task selection (TaskWeb's Table 3): which sources each condition picks from TaskWeb's
published numbers, and a resumable run on a tiny T5 with in-memory stand-ins of the 22 tasks."""
import json
import os

import pytest
import tiny_models

from recross_jax import cli
from recross_jax.errors import UserError
from recross_jax.selection import multitask, ranking, taskshop, taskweb, transfer_runner
from tasks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = multitask.MultitaskConfig()
TINY = multitask.MultitaskConfig(k=2, n_per_source=4, conditions=("none", "taskshop", "all", "bottom"),
                                 seeds=(0,), epochs=1, learning_rate=3e-2, batch_size=4,
                                 max_eval_examples=8, max_input_length=16, max_target_length=4,
                                 eval_batch_size=8)
TARGETS = ["cb", "rte"]


def test_taskshop_picks_by_the_authors_roe_with_the_target_held_out(monkeypatch):
    roe, gold = taskweb.roe(), taskweb.transfer()
    expected = taskshop.taskshop_table(roe, gold, targets=["cb"], lam=0.7)["cb"]
    order = ranking.rank(expected, multitask.candidates("cb"))
    assert multitask.taskshop_ranking("cb", CFG) == order
    assert list(multitask.select("cb", "taskshop", CFG, 0)) == order[:5]
    assert order[:5] == ["anli_r3", "cosmosqa", "socialiqa", "wsc", "snli"]
    assert list(multitask.select("cb", "bottom", CFG, 0)) == order[-5:]
    assert set(multitask.select("cb", "taskshop", CFG, 0).values()) == {64}
    # TaskWeb's own top 5 is the gold ranking; TaskShop never reads the target's own row.
    assert list(multitask.select("cb", "taskweb", CFG, 0)) == ranking.rank(gold["cb"], order)[:5]
    changed = {t: ({s: -v for s, v in row.items()} if t == "cb" else row) for t, row in gold.items()}
    monkeypatch.setattr(taskweb, "transfer", lambda setup="finetune/t5l": changed)
    assert multitask.taskshop_ranking("cb", CFG) == order
    assert list(multitask.select("cb", "taskweb", CFG, 0)) != ranking.rank(gold["cb"], order)[:5]


def test_random_all_and_none():
    first = multitask.select("rte", "random", CFG, 0)
    assert first == multitask.select("rte", "random", CFG, 0) and len(first) == 5 and "rte" not in first
    draws = {tuple(multitask.select("rte", "random", CFG, seed)) for seed in range(5)}
    assert len(draws) > 1  # the seed draws the sources
    mixture = multitask.select("rte", "all", CFG, 0)
    assert list(mixture) == multitask.candidates("rte") and len(mixture) == 21
    assert sum(mixture.values()) == 5 * 64 and set(mixture.values()) == {15, 16}
    small = multitask.select("rte", "all", TINY, 0)  # 8 examples over 21 sources: one each
    assert len(small) == 8 and set(small.values()) == {1}
    assert multitask.select("rte", "none", CFG, 0) == {}
    assert multitask.source_task("cb") == "recross.super_glue_cb"
    assert multitask.source_task("snli") == "p3mini.snli"  # not in the ReCross release


@pytest.mark.parametrize("kwargs, message", [
    ({"conditions": ("taskshop", "best")}, "conditions must be distinct names"),
    ({"conditions": ("all", "all")}, "conditions must be distinct names"),
    ({"k": 21}, "k must be between 1 and 20"),
    ({"seeds": ()}, "seeds must be distinct integers"),
    ({"lam": 1.5}, "lambda must be a number in"),
    ({"setup": "finetune/t5xxl"}, "unknown TaskWeb setup"),
    ({"n_per_source": 0}, "n_per_source must be a positive integer"),
    ({"learning_rate": 0.0}, "learning_rate must be positive"),
])
def test_config_refuses_bad_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        multitask.MultitaskConfig(**kwargs)


def _register_stand_ins():
    """A yes/no task per TaskWeb task (`mt.<task>`), each with its own rule."""
    for number, name in enumerate(taskweb.EXAMPLE_TASKS):
        def examples(split, name=name, modulus=2 + number % 3):
            offset = {"train": 0, "validation": 100, "test": 200}[split]
            for i in range(offset, offset + 12):
                yield common.make_example(
                    inputs=f"{name}: is {i} a multiple of {modulus}?",
                    targets="yes" if i % modulus == 0 else "no", answer_choices=["yes", "no"],
                    task=f"mt.{name}", template="plain",
                    example_id=common.example_id(f"mt.{name}", split, "plain", i))
        common.register_task(f"mt.{name}", examples)


def stand_in(name):
    return f"mt.{name}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("multitask") / "model")
    tiny_models.save_tiny_model(path, step=1)
    _register_stand_ins()
    return path


@pytest.fixture(scope="module")
def finished(model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("multitask_run"))
    return out, multitask.run(TARGETS, model_dir, out, TINY, task_of=stand_in, progress=False)


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_a_run_trains_each_condition_on_its_sources(finished):
    out, results = finished
    assert read(os.path.join(out, multitask.RESULTS_FILE)) == results
    for target in TARGETS:
        row = results["targets"][target]
        assert set(row["conditions"]) == set(TINY.conditions)
        assert row["num_eval_examples"] == row["num_accuracy_examples"] == 8 and 0 <= row["majority"] <= 1
        for condition in TINY.conditions:
            cell = read(multitask.cell_path(out, target, condition, 0))
            assert cell["sources"] == list(multitask.select(target, condition, TINY, 0))
            assert cell["eval_task"] == f"mt.{target}" and 0 <= cell["accuracy"] <= 1
            assert cell["num_examples"] == (0 if condition == "none" else 8)
            assert cell["steps"] == (0 if condition == "none" else 2)  # same for every mixture
    none = [read(multitask.cell_path(out, t, "none", 0))["accuracy"] for t in TARGETS]
    assert [results["targets"][t]["conditions"]["none"]["accuracy"] for t in TARGETS] == none
    table = open(os.path.join(out, multitask.TABLE_FILE), encoding="utf-8").read()
    assert "| cb (8) |" in table and "TaskShop top-2" in table and "all 21 sources" in table
    assert multitask.PAPER_NOTE in table


def test_resume_reruns_only_missing_cells_with_the_same_numbers(finished, model_dir, tmp_path,
                                                                monkeypatch):
    full_out, full = finished
    out = str(tmp_path / "run")
    fits = []
    fit_pairs = transfer_runner.Runner.fit_pairs

    def counting(self, params, pairs, epochs, seed):
        fits.append(len(pairs))
        if len(fits) == 3:
            raise KeyboardInterrupt
        return fit_pairs(self, params, pairs, epochs, seed)

    monkeypatch.setattr(transfer_runner.Runner, "fit_pairs", counting)
    with pytest.raises(KeyboardInterrupt):
        multitask.run(TARGETS, model_dir, out, TINY, task_of=stand_in, progress=False)
    # cb: none, taskshop, all and then bottom was interrupted.
    assert sorted(os.listdir(os.path.join(out, "cells", "cb"))) == ["all", "none", "taskshop"]
    fits.clear()
    monkeypatch.setattr(transfer_runner.Runner, "fit_pairs",
                        lambda self, *a: fits.append(a) or fit_pairs(self, *a))
    assert multitask.run(TARGETS, model_dir, out, TINY, task_of=stand_in, progress=False) == full
    assert len(fits) == 4  # cb's bottom and rte's three mixtures
    monkeypatch.setattr(transfer_runner.Runner, "fit_pairs", lambda *a: pytest.fail("re-trained a cell"))
    assert multitask.run(TARGETS, model_dir, out, TINY, task_of=stand_in, progress=False) == full
    # Another seed adds cells; other settings are refused.
    other = multitask.MultitaskConfig(**{**TINY.__dict__, "learning_rate": 1e-3})
    with pytest.raises(UserError, match="records learning_rate = 0.03, not 0.001"):
        multitask.run(TARGETS, model_dir, full_out, other, task_of=stand_in, progress=False)


@pytest.mark.parametrize("targets, message", [
    (["squad_v2"], "measured no transfer into 'squad_v2'"),
    (["nope"], "unknown TaskWeb task 'nope'"),
    (["cb", "cb"], "named twice"),
    ([], "needs a list of target tasks"),
])
def test_bad_targets(model_dir, tmp_path, targets, message):
    with pytest.raises(UserError, match=message):
        multitask.run(targets, model_dir, str(tmp_path / "out"), TINY, task_of=stand_in, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_target_without_answer_choices_fails_before_training(model_dir, tmp_path, monkeypatch):
    def examples(split):
        for i in range(12):
            yield common.make_example(inputs=f"say {i}", targets=str(i), answer_choices=[],
                                      task="mt.gen", template="plain",
                                      example_id=common.example_id("mt.gen", split, "plain", i))
    common.register_task("mt.gen", examples)
    monkeypatch.setattr(transfer_runner.Runner, "fit_pairs", lambda *a: pytest.fail("trained"))
    with pytest.raises(UserError, match="target 'cb' \\(mt.gen\\): none of its 8 evaluation examples"):
        multitask.run(["rte", "cb"], model_dir, str(tmp_path / "out"), TINY,
                      task_of=lambda n: "mt.gen" if n == "cb" else f"mt.{n}", progress=False)
    assert not (tmp_path / "out").exists()


def test_unregistered_source_task(model_dir, tmp_path):
    with pytest.raises(UserError, match="its examples' task 'none.cb' is not registered"):
        multitask.run(["cb"], model_dir, str(tmp_path / "out"), TINY, task_of=lambda n: f"none.{n}",
                      progress=False)


def test_cli(finished, model_dir, capsys, monkeypatch):
    out, results = finished
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(multitask, "source_task", stand_in)
    bindings = [f"--gin.multitask.MultitaskConfig.{k}={v!r}" for k, v in TINY.__dict__.items()
                if v != getattr(CFG, k)]
    args = ["taskshop", "multitask", "--gin_file=gin/runs/multitask.gin", "--tasks_module", "tasks.common",
            "--model_dir", model_dir, "--out", out, "--no_progress", *bindings]
    assert cli.main(args + ["--targets", ",".join(TARGETS)]) == 0
    printed = capsys.readouterr().out
    assert "| rte (8) |" in printed and read(os.path.join(out, multitask.RESULTS_FILE)) == results
    assert os.path.isfile(os.path.join(out, "config.gin"))
    assert cli.main(args + ["--targets", "cb,squad_v2"]) == 2
    assert "measured no transfer into 'squad_v2'" in capsys.readouterr().err
