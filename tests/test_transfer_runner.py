"""The pairwise transfer runner on a tiny T5 and three in-memory tasks: PC/PM/T arithmetic,
resuming after an interruption, determinism, TaskWeb's record format and the CLI."""
import json
import math
import os

import pytest
import tiny_models

from recross_jax import cli
from recross_jax.errors import UserError
from recross_jax.selection import taskshop_cli, taskweb, transfer, transfer_runner
from tasks import common

# Yes/no questions about numbers; the first 8 test examples (200..207) mix both answers.
TASKS = {"ttr.even": ("is it even", lambda i: i % 2 == 0),
         "ttr.three": ("is it a multiple of three", lambda i: i % 3 == 0),
         "ttr.low": ("is its last digit below five", lambda i: i % 10 < 5)}
SOURCES = ["ttr.even", "ttr.low"]
TARGETS = ["ttr.even", "ttr.three"]
CELLS = 3  # per seed: even -> three, low -> even, low -> three
CONFIG = transfer_runner.TransferConfig(n_source=8, n_target=6, seeds=(0, 1), learning_rate=3e-2,
                                        batch_size=4, max_eval_examples=8, max_input_length=16,
                                        max_target_length=4, eval_batch_size=8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _register(name: str, question: str, rule) -> None:
    def examples(split):
        offset = {"train": 0, "validation": 100, "test": 200}[split]
        for i in range(offset, offset + 20):
            yield common.make_example(inputs=f"{question} {i}?", targets="yes" if rule(i) else "no",
                                      answer_choices=["yes", "no"], task=name, template="plain",
                                      example_id=common.example_id(name, split, "plain", i))
    common.register_task(name, examples)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("transfer") / "model")
    tiny_models.save_tiny_model(path, step=1)
    for name, (question, rule) in TASKS.items():
        _register(name, question, rule)
    return path


@pytest.fixture(scope="module")
def finished(model_dir, tmp_path_factory):
    """A complete run: (out dir, its records)."""
    out = str(tmp_path_factory.mktemp("transfer_full"))
    return out, transfer_runner.run(SOURCES, TARGETS, model_dir, out, CONFIG, progress=False)


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cell_values(out):
    """Every cell's record less its time."""
    values = {}
    for directory, _, files in os.walk(os.path.join(out, "cells")):
        for name in files:
            record = read(os.path.join(directory, name))
            record.pop("seconds")
            values[os.path.relpath(os.path.join(directory, name), out)] = record
    return values


def test_pc_pm_and_t_by_hand():
    assert transfer_runner.relative_change(0.75, 0.5) == pytest.approx(0.5)
    assert transfer_runner.relative_change(0.2, 0.0) == pytest.approx(0.2 / transfer_runner.MIN_BASELINE)
    pc, pm = transfer_runner.pc_pm([(0.75, 0.5), (0.5, 0.5), (0.3, 0.6)])
    assert pc == pytest.approx((0.5 + 0.0 - 0.5) / 3) and pm == pytest.approx(1 / 3)
    cells = [{"target": "t", "source": "s", "seed": k, "p_transfer": a, "p_target": b}
             for k, (a, b) in enumerate([(0.75, 0.5), (0.6, 0.4)])]
    cells.append({"target": "t", "source": "u", "seed": 0, "p_transfer": 0.1, "p_target": 0.5})
    records = transfer_runner.aggregate(cells, seeds=(0, 1), setup="finetune/x")
    # (t, u) lacks seed 1: left out until it is measured.
    assert records == [{"target": "t", "source": "s", "pc_mean": pytest.approx(0.5),
                        "pm_mean": 1.0, "settings": {"finetune/x": [pytest.approx(0.5), 1.0]}}]
    # T = 0.5 * 0.5 + 0.5 * (0.2 * 1 - 0.1) = 0.3
    assert transfer_runner.transfer_table(records) == {"t": {"s": pytest.approx(0.3)}}


def test_spearman_with_taskweb_over_the_measured_pairs():
    published = taskweb.transfer()
    pairs = [("rte", "cb"), ("rte", "anli_r3"), ("cb", "rte"), ("copa", "piqa")]
    # Records whose PC is TaskWeb's T and PM 0.5 keep TaskWeb's order: rho 1.
    records = [{"target": t, "source": s, "pc_mean": 2 * published[t][s], "pm_mean": 0.5}
               for t, s in pairs]
    records.append({"target": "not_taskweb", "source": "cb", "pc_mean": 0.0, "pm_mean": 0.0})
    assert transfer_runner.compare_with_taskweb(records) == (pytest.approx(1.0), 4)
    rho, n = transfer_runner.compare_with_taskweb(records[:2])
    assert n == 2 and math.isnan(rho)
    constant = [{**r, "pc_mean": 0.0} for r in records]
    rho, n = transfer_runner.compare_with_taskweb(constant)
    assert n == 4 and math.isnan(rho)


def test_taskweb_names_resolve_to_release_tasks():
    import tasks.recross  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    assert set(taskweb.RECROSS_TASKS) <= set(taskweb.EXAMPLE_TASKS)
    assert len(taskweb.RECROSS_TASKS) == 19
    assert transfer_runner.resolve_task("cb") == "recross.super_glue_cb"
    assert transfer_runner.resolve_task("recross.piqa") == "recross.piqa"
    with pytest.raises(UserError, match="unknown task 'snli'"):  # TaskWeb's, not in the release
        transfer_runner.resolve_task("snli")


def test_a_run_writes_taskweb_records(finished):
    out, records = finished
    assert {(r["target"], r["source"]) for r in records} == {
        ("ttr.three", "ttr.even"), ("ttr.even", "ttr.low"), ("ttr.three", "ttr.low")}
    assert read(os.path.join(out, transfer_runner.SCORES_FILE)) == records
    cells = cell_values(out)
    assert len(cells) == CELLS * len(CONFIG.seeds)
    for record in records:
        results = [(c["p_transfer"], c["p_target"]) for c in cells.values()
                   if (c["target"], c["source"]) == (record["target"], record["source"])]
        assert (record["pc_mean"], record["pm_mean"]) == transfer_runner.pc_pm(results)
        assert set(record) == {"target", "source", "pc_mean", "pm_mean", "settings"}
    baseline = read(os.path.join(out, "baselines", "ttr.three", "seed_1.json"))
    assert baseline["n_target"] == 6 and 0 <= baseline["p_target"] <= 1
    assert all(c["p_target"] == baseline["p_target"] for c in cells.values()
               if (c["target"], c["seed"]) == ("ttr.three", 1))
    path = os.path.join(out, transfer_runner.SCORES_FILE)
    combined = transfer.load_transfer_scores(path, "combined")
    setup = transfer.load_transfer_scores(path, f"combined:{CONFIG.setup}")
    assert combined == setup == transfer_runner.transfer_table(records)
    table = taskshop_cli.read_scores(os.path.join(out, transfer_runner.TABLE_FILE))
    assert table == transfer_runner.transfer_table(records)


def test_resume_after_an_interruption_is_identical_and_reruns_nothing_finished(
        finished, model_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    calls = []
    target_stage = transfer_runner.Runner.target_stage

    def interrupted(self, params, target, seed):
        if len(calls) == 4:  # two baselines and two cells are done
            raise KeyboardInterrupt
        calls.append((target, seed))
        return target_stage(self, params, target, seed)

    monkeypatch.setattr(transfer_runner.Runner, "target_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        transfer_runner.run(SOURCES, TARGETS, model_dir, out, CONFIG, progress=False)
    assert len(cell_values(out)) == 2 and not os.path.exists(os.path.join(out, transfer_runner.SCORES_FILE))

    fits = []
    fit = transfer_runner.Runner.fit
    monkeypatch.setattr(transfer_runner.Runner, "target_stage", target_stage)
    monkeypatch.setattr(transfer_runner.Runner, "fit",
                        lambda self, params, name, *a: fits.append(name) or fit(self, params, name, *a))
    records = transfer_runner.run(SOURCES, TARGETS, model_dir, out, CONFIG, progress=False)
    # Left: seed 1's three cells (its two sources, two baselines, three target stages) and
    # seed 0's low -> three (low's source stage again; three's baseline is on disk).
    assert sorted(fits) == sorted(["ttr.low", "ttr.three"] + ["ttr.even", "ttr.three", "ttr.three",
                                                              "ttr.low", "ttr.even", "ttr.even", "ttr.three"])
    # The same seeds give the same numbers as the uninterrupted run.
    full_out, full_records = finished
    assert records == full_records and cell_values(out) == cell_values(full_out)

    monkeypatch.setattr(transfer_runner.Runner, "fit",
                        lambda *a: pytest.fail("fine-tuned for a finished cell"))
    assert transfer_runner.run(SOURCES, TARGETS, model_dir, out, CONFIG, progress=False) == records


def test_a_run_refuses_other_settings_and_bad_input(finished, model_dir, tmp_path):
    out, _ = finished
    other = transfer_runner.TransferConfig(**{**CONFIG.__dict__, "learning_rate": 1e-3})
    with pytest.raises(UserError, match="records learning_rate = 0.03, not 0.001"):
        transfer_runner.run(SOURCES, TARGETS, model_dir, out, other, progress=False)
    cases = [
        ((["ttr.even"], ["nope"], model_dir), "unknown task 'nope'"),
        ((["ttr.even"], ["ttr.even"], model_dir), "no pair to measure"),
        ((SOURCES, TARGETS, str(tmp_path / "none")), "model directory not found"),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            transfer_runner.run(*args, str(tmp_path / "out"), CONFIG, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="seeds repeat"):
        transfer_runner.TransferConfig(seeds=(1, 1))
    with pytest.raises(UserError, match="n_target must be a positive integer"):
        transfer_runner.TransferConfig(n_target=0)


def test_cli(finished, model_dir, capsys, monkeypatch):
    out, records = finished
    monkeypatch.chdir(REPO)
    bindings = [f"--gin.transfer_runner.TransferConfig.{k}={v!r}" for k, v in CONFIG.__dict__.items()
                if v != getattr(transfer_runner.TransferConfig(), k)]
    code = cli.main(["taskshop", "transfer", "--gin_file=gin/runs/transfer.gin", "--tasks_module",
                     "tasks.common", "--model_dir", model_dir, "--sources", ",".join(SOURCES),
                     "--targets", ",".join(TARGETS), "--out", out, "--no_progress", *bindings])
    printed = capsys.readouterr().out
    assert code == 0 and "| ttr.three | ttr.even |" in printed and "over 0 pairs" in printed
    assert os.path.isfile(os.path.join(out, "config.gin"))
    assert read(os.path.join(out, transfer_runner.SCORES_FILE)) == records
