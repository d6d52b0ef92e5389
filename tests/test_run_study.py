"""The results study's target selection: `--targets all` skips targets too small for 5 query sets."""
import dataclasses
import importlib.util
import json
import os
import pathlib
import sys

import pytest
import seqio
import tensorflow as tf

from recross_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("run_study", os.path.join(REPO, "scripts",
                                                                        "run_study.py"))
run_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_study)


def _task(train_examples: int) -> seqio.Task:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed
        count = train_examples if split == "train" else 3
        return tf.data.Dataset.from_tensor_slices({"inputs": [f"x{i}" for i in range(count)]})

    source = seqio.FunctionDataSource(dataset_fn, splits=("train", "test"))
    return seqio.Task(f"study_target_{train_examples}", source, output_features={})


def test_targets_without_room_for_disjoint_query_sets_are_skipped_by_name(capsys):
    assert run_study.has_enough_examples(_task(80), num_query_sets=5, num_queries=16)
    assert capsys.readouterr().err == ""
    assert not run_study.has_enough_examples(_task(79), num_query_sets=5, num_queries=16)
    assert ("skipping target study_target_79: 79 train examples, 5 query sets of 16 need 80"
            in capsys.readouterr().err)


def test_release_study_runs_both_tables_and_reports_each():
    assert run_study.split_targets("release", None, 5, 16) == run_study.TABLE1 + run_study.TABLE2
    assert run_study.split_targets("release", ["all"], 5, 16) == run_study.TABLE1 + run_study.TABLE2
    assert len(run_study.TABLE1) == 10 and len(run_study.TABLE2) == 5
    assert "recross.super_glue_wsc_fixed" in run_study.TABLE1 and "recross.strategyqa" in run_study.TABLE2
    groups = dict(run_study.SPLITS["release"].report_groups)
    assert groups == {"table1": run_study.TABLE1, "table2": run_study.TABLE2}


def test_release_and_control_models_are_trained_with_the_release_models_recipe(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(list(argv)) or 0)
    monkeypatch.setattr(run_study.pipeline, "report", lambda *args: {})
    monkeypatch.setenv("RECROSS_VOCAB", "restored after the test")
    for split in ("control", "release"):
        seen.clear()
        cfg = dataclasses.replace(run_study.SPLITS[split], out_dir=str(tmp_path / split), train_steps=600,
                                  methods=("base",), relearn_rate_tasks=())
        run_study.pipeline.run(cfg, show_data=False)
        train, index = seen[0], seen[1]
        assert train[0] == "train" and "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 32}" in train
        assert train[-2:] == ["--gin.tasks.recross.upstream_cap.cap=1000", "--gin.WARMUP_STEPS=50"]
        assert "--gin.tasks.recross.upstream_cap.cap=300" in index and not any("cap=1000" in a for a in index)


def _write(root, target, method, query_set, score, retrieved=()):
    path = root / "runs" / target / method / f"query_set_{query_set}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"target": target, "method": method, "query_set": query_set,
                                "metrics": {"soft_em": score, "accuracy": score + 0.1},
                                "retrieved_tasks": list(retrieved)}))


def _ablation_study(tmp_path):
    """A release study's config and its main runs (base 0.2, ReCross† 0.3, ReCross 0.4 SoftEM)."""
    cfg = dataclasses.replace(run_study.SPLITS["release"], out_dir=str(tmp_path), num_retrieved=64,
                              num_queries=16, upstream_model_dir=str(tmp_path), relearn_rate_tasks=())
    retrieved = {"base": (), "recross_dense": ("qqp", "sciq"), "recross": ("qqp",) * 3 + ("sciq",)}
    for target in run_study.TABLE1:
        for q in range(3):  # the third query set is beyond the ablations' two
            for method, score in (("base", 0.2), ("recross_dense", 0.3), ("recross", 0.4)):
                _write(tmp_path / "generalize", target, method, q, score if q < 2 else 0.9,
                       retrieved[method])
    return cfg


def test_ablations_change_one_setting_each_and_tabulate(tmp_path, monkeypatch):
    cfg = _ablation_study(tmp_path)
    seen = []

    def fake_main(argv):
        seen.append(argv)
        flags = dict(a.split("=", 1) for a in argv if a.startswith("--gin.") and "=" in a)
        for target in run_study.TABLE1:
            for q in range(2):  # a second query set where the setting runs one must not count
                score = 0.01 * len(seen) + (0.0 if q < int(flags["--gin.NUM_QUERY_SETS"]) else 0.5)
                _write(pathlib.Path(flags["--gin.OUT_DIR"].strip("'")), target, "recross", q, score,
                       ("sciq",) * len(seen))
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    table = run_study.run_ablations(cfg)
    assert len(seen) == len(run_study.ABLATIONS)
    assert "--gin.NUM_QUERIES=1" in seen[0] and "--gin.METHODS=['recross']" in seen[0]
    assert "--gin.NUM_QUERY_SETS=2" in seen[0] and "--gin.NUM_QUERY_SETS=1" in seen[2]
    assert "--gin.NUM_RETRIEVED=32" in seen[3] and "--gin.NUM_RETRIEVED=128" in seen[4]
    assert "--gin.UPSAMPLE_RATIO=3.0" in seen[5]
    assert "--gin.generalize.run.exclude_tasks=['recross.cos_e_v1_11'," in " ".join(seen[6])
    # The last column: SoftEM minus ReCross's (0.4 on every target and query set), paired.
    assert "| base | 0, 1 | 20.00 | 30.00 | -20.00 [-20.00, -20.00] | – |" in table
    assert "| µ = 1 (ReCross†) | 0, 1 | 30.00 | 40.00 | -10.00 [-10.00, -10.00] | qqp 50.0% |" in table
    assert "| ReCross (|Q| = 16, |R| = 64, µ = 2) | 0, 1 | 40.00 | 50.00 |  | qqp 75.0% |" in table
    assert "| |Q| = 1 | 0, 1 | 1.00 | 11.00 | -39.00 [-39.00, -39.00] | sciq 100.0% |" in table
    assert ("| without multiple-choice QA | 0 | 7.00 | 17.00 | -33.00 [-33.00, -33.00] | sciq 100.0% |"
            in table)
    recorded = json.loads((tmp_path / "ablations" / "ablations.json").read_text())
    assert recorded["µ = 3"]["soft_em"] == pytest.approx(0.06)
    assert recorded["µ = 3"]["soft_em_minus_recross"]["mean"] == pytest.approx(-0.34)
    assert recorded["µ = 3"]["query_sets"] == [0]
    run_study.run_ablations(cfg)  # resumes: every stage is up to date
    assert len(seen) == len(run_study.ABLATIONS)


def test_status_counts_finished_stages_runs_and_ablation_runs(tmp_path, monkeypatch, capsys):
    study = tmp_path / "study" / "release"
    (study / "upstream").mkdir(parents=True)
    record = study / "upstream" / run_study.pipeline.STAGE_RECORD
    record.write_text(json.dumps({"argv": [], "seconds": 42.4}))
    _write(study / "generalize", run_study.TABLE1[0], "base", 0, 0.2)
    _write(study / "generalize", run_study.TABLE2[0], "recross", 4, 0.2)
    _write(study / "generalize", run_study.TABLE2[0], "recross", 5, 0.2)  # beyond 5 query sets
    _write(study / "ablations" / "Q____1", run_study.TABLE1[3], "recross", 1, 0.2)
    # A stopped generalize stage: its clock holds the time of the processes that ran it.
    clock = {"argv": [], "seconds": 3600.2, "processes": 3}
    (study / "generalize" / run_study.pipeline.STAGE_CLOCK).write_text(json.dumps(clock))
    monkeypatch.setattr(sys, "argv", ["run_study.py", "--out", str(tmp_path / "study"), "--splits", "release",
                                      "--ablations", "--status"])
    run_study.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == ["  upstream: done, 42 s",
                          "  generalize: 2 of 375 runs, 3600 s so far in 3 processes"]
    assert "  ablation |Q| = 1: 1 of 20 runs" in lines and "  ablation µ = 3: 0 of 10 runs" in lines
    assert not (tmp_path / "study" / "control").exists()  # it ran nothing


def test_named_ablations_run_alone_and_unknown_names_are_refused(tmp_path, monkeypatch, capsys):
    cfg = _ablation_study(tmp_path)
    seen = []

    def fake_main(argv):
        seen.append(argv)
        out = pathlib.Path(dict(a.split("=", 1) for a in argv if a.startswith("--gin.OUT_DIR"))
                           ["--gin.OUT_DIR"].strip("'"))
        for target in run_study.TABLE1:
            _write(out, target, "recross", 0, 0.1)
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    table = run_study.run_ablations(cfg, ["no_mcqa", "mu3"])
    assert len(seen) == 2 and "--gin.UPSAMPLE_RATIO=3.0" in seen[0]  # in table order
    assert "| µ = 3 | 0 |" in table and "| without multiple-choice QA | 0 |" in table
    assert "| |Q| = 1 |" not in table and "| base | 0, 1 |" in table
    assert sorted(p.name for p in (tmp_path / "ablations").iterdir() if p.is_dir()) == [
        "without_multiple_choice_QA", "µ___3"]
    # A later run of another ablation keeps the finished ones in the table.
    table = run_study.run_ablations(cfg, ["q32"])
    assert len(seen) == 3 and "--gin.NUM_QUERIES=32" in seen[2]
    assert all(f"| {name} | 0 |" in table for name in ("|Q| = 32", "µ = 3", "without multiple-choice QA"))
    monkeypatch.setattr(sys, "argv", ["run_study.py", "--out", str(tmp_path), "--ablations", "mu4"])
    with pytest.raises(SystemExit) as exit_info:
        run_study.main()
    assert exit_info.value.code == 2 and "invalid choice: 'mu4'" in capsys.readouterr().err


def test_positive_control_table_has_the_family_share_and_scores(tmp_path):
    family, other = run_study.CONTROL_FAMILY[0], "recross.ag_news"
    retrieved = {"base": [], "random": [family, other, other, other], "recross_dense": [family] * 3 + [other]}
    for method, tasks in retrieved.items():
        for q, accuracy in enumerate((0.5, 0.7)):
            run = {"target": run_study.CONTROL_TARGET, "method": method, "query_set": q,
                   "metrics": {"accuracy": accuracy + (0.1 if method == "recross_dense" else 0.0)},
                   "retrieved_tasks": tasks}
            path = tmp_path / method / f"q{q}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(run))
    rows, table = run_study.control_table(str(tmp_path), num_query_sets=2)
    assert rows["random"]["family_share"] == pytest.approx(0.25)
    assert rows["recross_dense"]["family_share"] == pytest.approx(0.75)
    assert rows["base"]["family_share"] is None
    assert rows["recross_dense"]["accuracy"]["mean"] == pytest.approx(0.7)
    assert "| recross_dense | 75.0% | 70.00 ± 10.00 |" in table
    assert "| base | – | 60.00 ± 10.00 |" in table


def test_ablations_without_the_release_split_are_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.argv", ["run_study.py", "--out", str(tmp_path / "study"), "--splits",
                                     "control", "--ablations"])
    with pytest.raises(SystemExit) as exit_info:
        run_study.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: --ablations change the release study: add release to --splits\n"
    assert not (tmp_path / "study").exists()


def test_control_is_scored_where_its_answers_are_not_all_one():
    # The release's rotten_tomatoes test file is the head of a label-sorted split: every review
    # positive. Its validation file (rows of the train split) has both labels in like measure.
    def positive_share(name):
        rows = run_study.recross.read_file(f"rotten_tomatoes/{name}.json")
        labels = [row[1][0] for row in rows if row[1][0] in ("positive", "negative")]
        return sum(label == "positive" for label in labels) / len(labels)

    assert positive_share("test-1000") == 1.0
    assert 0.4 < positive_share("validation-1000") < 0.6
    control = run_study.SPLITS["control"]
    assert control.eval_split == "validation"
    argv = run_study.pipeline.generalize_argv(control, "out", None)
    assert "--gin.generalize.run.eval_split='validation'" in argv
    release = run_study.pipeline.generalize_argv(run_study.SPLITS["release"], "out", None)
    assert not any("eval_split" in flag for flag in release)


def test_control_runs_again_at_each_sensitivity_rate_and_tabulates_it(tmp_path, monkeypatch):
    cfg = dataclasses.replace(run_study.SPLITS["control"], out_dir=str(tmp_path), num_query_sets=2,
                              relearn_rate_tasks=(), relearn_learning_rate=1e-6)
    scores = {1e-6: 0.5, 1e-5: 0.8}

    def write_runs(results, rate):
        for method in cfg.methods:
            for q in range(2):
                path = pathlib.Path(results) / method / f"q{q}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({
                    "target": run_study.CONTROL_TARGET, "method": method, "query_set": q,
                    "metrics": {"accuracy": 0.5 if method == "base" else scores[rate]},
                    "retrieved_tasks": [] if method == "base" else [run_study.CONTROL_FAMILY[0]]}))

    write_runs(tmp_path / "generalize", 1e-6)
    seen = []

    def fake_main(argv):
        seen.append(argv)
        flags = dict(a.split("=", 1) for a in argv if a.startswith("--gin.") and "=" in a)
        rate = float(flags["--gin.finetune.FinetuneConfig.learning_rate"])
        write_runs(flags["--gin.OUT_DIR"].strip("'"), rate)
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    run_study.run_control(cfg, [1e-6, 1e-5])  # the chosen rate is not run twice
    assert len(seen) == 1 and "--gin.generalize.run.eval_split='validation'" in seen[0]
    assert f"--gin.OUT_DIR='{tmp_path / 'generalize_lr_1e-05'}'" in seen[0]
    main_table = (tmp_path / "control.md").read_text()
    assert main_table.startswith("Re-learning rate 1e-06. ")
    assert "| recross | 100.0% | 50.00 ± 0.00 |" in main_table
    sensitivity = (tmp_path / "control_lr_1e-05.md").read_text()
    assert sensitivity.startswith("Re-learning rate 1e-05. ")
    assert "| recross | 100.0% | 80.00 ± 0.00 |" in sensitivity
    recorded = json.loads((tmp_path / "control_lr_1e-05.json").read_text())
    assert recorded["learning_rate"] == 1e-5 and recorded["methods"]["base"]["accuracy"]["mean"] == 0.5
    run_study.run_control(cfg, [1e-5])  # resumes: up to date
    assert len(seen) == 1


def test_control_rates_that_are_not_positive_are_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.argv", ["run_study.py", "--out", str(tmp_path / "study"), "--splits",
                                     "control", "--control_rates", "1e-5", "0"])
    with pytest.raises(SystemExit) as exit_info:
        run_study.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: --control_rates must be positive learning rates, "
                                       "got [1e-05, 0.0]\n")
    assert not (tmp_path / "study").exists()
