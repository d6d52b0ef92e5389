"""`recross generalize` on a tiny model and a fake BIG-bench corpus: every method writes valid JSON."""
import json
import os

import bigbench_fixtures
import jax
import pytest
import tiny_bert
import tiny_models

from recross_jax import assets, cli, generalize
from recross_jax.errors import UserError
from recross_jax.rerank import cross_encoder
from tasks import bigbench

PREFIX = "bbgen"
# Two targets big enough for test splits: multiple choice and generative.
TARGETS = {
    "target_mc": {"name": "target_mc", "examples": [
        {"input": f"Is {i} bigger than 10?", "target_scores": {"yes": int(i > 10), "no": int(i <= 10)}}
        for i in range(60)]},
    "target_gen": {"name": "target_gen", "examples": [
        {"input": f"Repeat: {i}", "target": str(i)} for i in range(60)]},
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("generalize")
    tasks_dir = bigbench_fixtures.write_tasks_dir(str(root))
    for name, task in TARGETS.items():
        os.makedirs(os.path.join(tasks_dir, name))
        with open(os.path.join(tasks_dir, name, "task.json"), "w") as f:
            json.dump(task, f)
    bigbench.register_bigbench(tasks_dir, cap=20, prefix=PREFIX)
    model_dir = str(root / "model")
    tiny_models.save_tiny_model(model_dir, step=1)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert cli.main(["index", "build", "--gin_file=gin/runs/index.gin", "--tasks_module", "tasks.common",
                         f"--gin.MIXTURE='{PREFIX}_upstream'", f"--gin.MODEL_DIR='{model_dir}'",
                         f"--gin.INDEX_DIR='{root / 'index'}'", "--gin.indexing.build.backend='exact'",
                         "--gin.indexing.build.max_examples_per_task=20"]) == 0
    finally:
        os.chdir(cwd)
    return root, model_dir


def generalize_args(root, model_dir, out, methods, *extra):
    return ["generalize", "--gin_file=gin/generalize.gin", "--tasks_module", "tasks.common",
            f"--gin.TARGETS=['{PREFIX}.target_mc', '{PREFIX}.target_gen']", f"--gin.METHODS={methods}",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MODEL_INDEX_DIR='{root / 'index'}'",
            f"--gin.OUT_DIR='{root / out}'", "--gin.NUM_QUERY_SETS=2", "--gin.NUM_QUERIES=3",
            "--gin.NUM_RETRIEVED=6", "--gin.UPSAMPLE_RATIO=1.0", "--gin.generalize.run.max_target_length=16",
            "--gin.finetune.FinetuneConfig.learning_rate=1e-3", *extra]


def test_every_method_writes_valid_json_and_resumes(setup, capsys, monkeypatch):
    root, model_dir = setup
    monkeypatch.chdir(REPO)
    methods = ["base", "random", "recross_dense", "fs_recross_mix", "fs_recross_2stage"]
    assert cli.main(generalize_args(root, model_dir, "out", methods)) == 0
    table = capsys.readouterr().out
    assert "| target | base | random | recross_dense |" in table and "**overall mean**" in table
    test_ids = {}
    for target, has_choices in ((f"{PREFIX}.target_mc", True), (f"{PREFIX}.target_gen", False)):
        golds = {e["example_id"]: e["targets"] for e in generalize.target_rows(target, "test")}
        test_ids[target] = set(golds)
        query_ids = []
        for method in methods:
            for q in range(2):
                path = root / "out" / "runs" / target / method / f"query_set_{q}.json"
                record = json.loads(path.read_text())
                assert (record["target"], record["method"], record["query_set"]) == (target, method, q)
                assert ("accuracy" in record["metrics"]) == has_choices
                assert 0.0 <= record["metrics"]["soft_em"] <= 1.0
                expected = 0 if method == "base" else 6
                assert len(record["retrieved_ids"]) == len(record["retrieved_tasks"]) == expected
                assert all(t.startswith(PREFIX + ".") for t in record["retrieved_tasks"])
                assert target not in record["retrieved_tasks"]  # the pool holds it, but it is unseen
                if method != "base":
                    assert record["time"]["relearn"] > 0 and record["time"]["evaluate"] > 0
                assert record["environment"]["jax"] == jax.__version__
                assert record["environment"]["cpu_threads"] == len(os.sched_getaffinity(0))
                # Each test example's outputs, from which the metrics were counted.
                outputs = record["outputs"]
                assert len(outputs) == record["num_test_examples"] == record["metrics"]["num_examples"]
                assert {o["example_id"] for o in outputs} <= test_ids[target]
                assert all(isinstance(o["prediction"], str) for o in outputs)
                if has_choices:
                    hits = [o["choice"] == golds[o["example_id"]] for o in outputs]
                    assert record["metrics"]["accuracy"] == pytest.approx(sum(hits) / len(hits))
                else:
                    assert not any("choice" in o for o in outputs)
                query_ids.append(tuple(record["query_ids"]))
        sets = set(query_ids)
        assert len(sets) == 2  # the same two query sets for every method
        first, second = sets
        assert not set(first) & set(second)  # disjoint query sets
        assert not (set(first) | set(second)) & test_ids[target]  # never test examples
    assert (root / "out" / "config.gin").is_file()

    # Re-running skips every finished run (nothing is re-learned).
    monkeypatch.setattr(generalize.Pipeline, "relearn", lambda *a: pytest.fail("re-learned a finished run"))
    assert cli.main(generalize_args(root, model_dir, "out", methods)) == 0
    # A run of other settings in the directory is refused, not mixed into the results.
    capsys.readouterr()
    assert cli.main(generalize_args(root, model_dir, "out", methods, "--gin.NUM_RETRIEVED=5")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("recross: error: ")
    assert "holds a run made with other settings (num_retrieved)" in last


def test_sbert_and_recross_with_a_trained_reranker(setup, tmp_path, monkeypatch):
    """The two methods that need more than the model index: the MiniLM index and a reranker."""
    if not assets.is_complete("minilm"):
        pytest.skip("all-MiniLM-L6-v2 is not in the asset cache (`recross assets fetch minilm`)")
    root, model_dir = setup
    monkeypatch.chdir(REPO)
    assert cli.main(["index", "build", "--gin_file=gin/runs/index.gin", "--tasks_module", "tasks.common",
                     f"--gin.MIXTURE='{PREFIX}_upstream'", "--gin.EMBEDDER='sbert'",
                     f"--gin.INDEX_DIR='{tmp_path / 'sbert'}'", "--gin.indexing.build.backend='exact'",
                     "--gin.indexing.build.max_examples_per_task=20",
                     "--gin.indexing.build.max_length=32"]) == 0
    tuples = tmp_path / "tuples.jsonl"
    tuples.write_text("".join(json.dumps({"task": f"t{i}", "queries": [f"red cat {i}"],
                                          "positives": ["red dog"], "negatives": ["the sky"]}) + "\n"
                              for i in range(6)))
    cross_encoder.train_reranker(str(tuples), str(tmp_path / "reranker"),
                                 init_dir=tiny_bert.make_bert_dir(str(tmp_path / "bert")), max_length=32,
                                 epochs=1, batch_size=4, warmup_steps=1, progress=False)
    assert cli.main(generalize_args(root, model_dir, "more", ["sbert", "recross"], "--gin.NUM_QUERY_SETS=1",
                                    f"--gin.SBERT_INDEX_DIR='{tmp_path / 'sbert'}'",
                                    f"--gin.RERANKER_DIR='{tmp_path / 'reranker'}'",
                                    "--gin.UPSAMPLE_RATIO=2.0")) == 0
    for method in ("sbert", "recross"):
        record = json.loads((root / "more" / "runs" / f"{PREFIX}.target_mc" / method /
                             "query_set_0.json").read_text())
        assert len(record["retrieved_ids"]) == 6  # per-query top-k, duplicates kept (SPEC §1.2)
        tasks = set(record["retrieved_tasks"])
        assert all(t.startswith(PREFIX + ".") for t in tasks) and f"{PREFIX}.target_mc" not in tasks
        assert ("rerank" in record["time"]) == (method == "recross")
    # A reranker trained again is another reranker: its old runs are not resumed as its own.
    record_file = tmp_path / "reranker" / cross_encoder.RERANKER_FILE
    record_file.write_text(record_file.read_text() + "\n")
    assert cli.main(generalize_args(root, model_dir, "more", ["sbert", "recross"], "--gin.NUM_QUERY_SETS=1",
                                    f"--gin.SBERT_INDEX_DIR='{tmp_path / 'sbert'}'",
                                    f"--gin.RERANKER_DIR='{tmp_path / 'reranker'}'",
                                    "--gin.UPSAMPLE_RATIO=2.0")) == 2


def test_random_is_seeded_and_relearning_changes_the_model(setup, monkeypatch):
    root, model_dir = setup
    monkeypatch.chdir(REPO)
    for out in ("r1", "r2"):
        assert cli.main(generalize_args(root, model_dir, out, ["random"], "--gin.NUM_QUERY_SETS=1")) == 0
    read = lambda out: json.loads(  # noqa: E731
        (root / out / "runs" / f"{PREFIX}.target_mc" / "random" / "query_set_0.json").read_text())
    assert read("r1")["retrieved_ids"] == read("r2")["retrieved_ids"]
    assert read("r1")["metrics"] == read("r2")["metrics"]
    other_target = json.loads(
        (root / "r1" / "runs" / f"{PREFIX}.target_gen" / "random" / "query_set_0.json").read_text())
    assert other_target["run_seed"] != read("r1")["run_seed"]
    assert other_target["retrieved_ids"] != read("r1")["retrieved_ids"]  # not one sample for all targets


def test_run_seed_differs_per_target_and_query_set_and_is_stable():
    seeds = {generalize.run_seed(0, t, q) for t in ("a.x", "a.y") for q in range(3)}
    assert len(seeds) == 6
    assert generalize.run_seed(0, "a.x", 1) == generalize.run_seed(0, "a.x", 1)
    assert generalize.run_seed(0, "a.x", 1) != generalize.run_seed(1, "a.x", 1)


def test_query_sets_are_disjoint_seeded_and_avoid_test_inputs():
    rows = [{"example_id": str(i), "inputs": f"x{i}"} for i in range(20)]
    sets = generalize.draw_query_sets(rows, {"x0", "x1"}, num_sets=3, num_queries=5, seed=4)
    ids = [r["example_id"] for s in sets for r in s.rows]
    assert len(ids) == len(set(ids)) == 15 and not {"0", "1"} & set(ids)
    again = generalize.draw_query_sets(rows, {"x0", "x1"}, 3, 5, 4)
    assert [s.inputs for s in sets] == [s.inputs for s in again]
    with pytest.raises(UserError, match="need 30 examples outside the test split, but only 18"):
        generalize.draw_query_sets(rows, {"x0", "x1"}, num_sets=6, num_queries=5, seed=0)


def test_bad_method_and_missing_index(setup, capsys, monkeypatch):
    root, model_dir = setup
    monkeypatch.chdir(REPO)
    assert cli.main(generalize_args(root, model_dir, "bad", ["magic"])) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert cli.main(generalize_args(root, model_dir, "bad2", ["sbert"])) == 2
    assert "needs the 'sbert' index directory" in capsys.readouterr().err


def test_a_new_reranker_invalidates_only_recross_runs(tmp_path):
    """Retraining the reranker leaves the runs of methods that never use it resumable."""
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"config": {"num_retrieved": 8, "reranker_sha256": "old"}}))
    config = {"num_retrieved": 8, "reranker_sha256": "new"}
    for method in ("base", "random", "sbert", "recross_dense"):
        assert generalize._resumed(str(path), config, method)["config"]["reranker_sha256"] == "old"
    with pytest.raises(UserError, match=r"other settings \(reranker_sha256\)"):
        generalize._resumed(str(path), config, "recross")
    with pytest.raises(UserError, match=r"other settings \(num_retrieved\)"):
        generalize._resumed(str(path), {**config, "num_retrieved": 9}, "base")
