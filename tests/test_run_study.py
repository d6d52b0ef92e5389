"""The results study's target selection: `--targets all` skips targets too small for 5 query sets."""
import importlib.util
import os

import seqio
import tensorflow as tf

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
