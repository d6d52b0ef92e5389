"""The pipeline's stage runner: a stage runs once, is skipped while its output exists and its
arguments are unchanged, runs again when either changes; failures are one-line errors."""
import dataclasses
import json
import os
import time

import bigbench_fixtures
import pytest

from recross_jax import cli, corpus, pipeline
from recross_jax.errors import UserError
from tasks import bigbench


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Replaces `recross` with a command that writes `out` (its last argument) and records argv."""
    seen = []

    def fake_main(argv):
        seen.append(list(argv))
        if argv[0] == "fail":
            return 2
        with open(argv[-1], "w") as f:
            f.write("done")
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    return seen


def test_a_stage_is_skipped_while_its_output_exists_and_its_arguments_match(tmp_path, calls, capsys):
    out = str(tmp_path / "artifact")
    assert pipeline.run_stage(str(tmp_path), "stage", ["make", out], out) is not None
    record = json.loads((tmp_path / "stage" / pipeline.STAGE_RECORD).read_text())
    assert record["argv"] == ["make", out] and record["seconds"] >= 0
    assert record["environment"]["cpu_threads"] == len(os.sched_getaffinity(0))
    assert pipeline.run_stage(str(tmp_path), "stage", ["make", out], out) is None
    assert "stage: up to date" in capsys.readouterr().out
    assert len(calls) == 1
    # Changed arguments run it again; so does a missing output.
    assert pipeline.run_stage(str(tmp_path), "stage", ["make", "--more", out], out) is not None
    os.remove(out)
    assert pipeline.run_stage(str(tmp_path), "stage", ["make", "--more", out], out) is not None
    assert len(calls) == 3


def test_a_resumed_stage_records_the_time_of_every_process_that_ran_it(tmp_path, monkeypatch):
    out = str(tmp_path / "artifact")
    killed = []

    def killed_after_a_while(argv):  # the first process: runs, heartbeats, then is killed
        time.sleep(0.35)
        killed.append(pipeline.read_clock(str(tmp_path / "stage")))
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "CLOCK_PERIOD_S", 0.1)
    monkeypatch.setattr(cli, "main", killed_after_a_while)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stage(str(tmp_path), "stage", ["make", out], out)
    # While it ran, its clock held the time so far (rewritten every period).
    assert killed[0]["processes"] == 1 and 0.2 <= killed[0]["seconds"] <= 0.35
    assert not (tmp_path / "stage" / pipeline.STAGE_RECORD).exists()

    def finishes(argv):
        time.sleep(0.2)
        with open(argv[-1], "w") as f:
            f.write("done")
        return 0

    monkeypatch.setattr(cli, "main", finishes)
    seconds = pipeline.run_stage(str(tmp_path), "stage", ["make", out], out)
    record = json.loads((tmp_path / "stage" / pipeline.STAGE_RECORD).read_text())
    assert record["processes"] == 2 and 0.2 <= record["last_process_seconds"] < 0.5
    assert record["seconds"] == pytest.approx(seconds, abs=0.1) and 0.55 <= record["seconds"] < 1.0
    assert pipeline.read_clock(str(tmp_path / "stage")) is None  # the record holds it now
    # A run with other arguments starts its clock afresh.
    os.remove(out)
    pipeline.run_stage(str(tmp_path), "stage", ["make", "--more", out], out)
    assert json.loads((tmp_path / "stage" / pipeline.STAGE_RECORD).read_text())["processes"] == 1


def test_a_failing_stage_raises_and_records_nothing(tmp_path, calls):
    out = str(tmp_path / "artifact")
    with pytest.raises(UserError, match="stage broken failed \\(exit code 2\\)"):
        pipeline.run_stage(str(tmp_path), "broken", ["fail", out], out)
    assert not (tmp_path / "broken" / pipeline.STAGE_RECORD).exists()


def test_main_turns_a_user_error_into_one_line_and_exit_code_2(monkeypatch, tmp_path, capsys):
    def broken_run(cfg, show_data):
        raise UserError(f"no data for {cfg.upstream}")

    monkeypatch.setattr(pipeline, "run", broken_run)
    cfg = pipeline.PipelineConfig(out_dir=str(tmp_path), upstream="nothing", targets=("t",))
    assert pipeline.main([cfg]) == 2
    assert capsys.readouterr().err == "error: no data for nothing\n"


def test_report_aligns_retrieval_with_measured_transfer_over_upstream_tasks(tmp_path, capsys):
    bigbench.register_bigbench(bigbench_fixtures.write_tasks_dir(str(tmp_path)), cap=20, prefix="bbrep")
    first, second = [task.name for task in corpus.tasks_of("bbrep_upstream")][:2]
    results = tmp_path / "generalize"
    results.mkdir()
    for q, method in enumerate(("base", "recross")):
        run = {"target": "bbrep.tgt", "method": method, "query_set": 0, "metrics": {"accuracy": 0.5 + q / 10},
               "retrieved_tasks": [first] * 3 + [second] if method == "recross" else []}
        (results / f"{method}.json").write_text(json.dumps(run))
    # "elsewhere" is not an upstream task: it must not count as the best source.
    scores = [{"target": "tgt", "source": s, "pc_mean": v}
              for s, v in ((first.split(".", 1)[1], 0.4), (second.split(".", 1)[1], 0.0), ("elsewhere", 9.0))]
    transfer = tmp_path / "transfer.json"
    transfer.write_text(json.dumps(scores))
    cfg = pipeline.PipelineConfig(out_dir=str(tmp_path), upstream="bbrep_upstream", targets=("bbrep.tgt",),
                                  tasks_module="tasks.common", transfer_scores=str(transfer),
                                  task_prefix="bbrep.", methods=("base", "recross"))
    summary = pipeline.report(cfg, str(results), str(tmp_path / "report"))
    assert summary["recross"]["overall"]["mean"] == pytest.approx(0.6)
    assert "| bbrep.tgt | 50.00 ± 0.00 | 60.00 ± 0.00 |" in capsys.readouterr().out
    alignment = (tmp_path / "report" / "transfer_alignment.md").read_text()
    assert "| bbrep.tgt | +0.300 (100%) | +0.200 | +0.400 |" in alignment  # (3 * 0.4 + 0) / 4


def test_a_given_upstream_model_replaces_the_upstream_stage(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(list(argv)) or 0)
    monkeypatch.setattr(pipeline, "report", lambda cfg, results, out: {})
    monkeypatch.setenv("RECROSS_VOCAB", "restored after the test")
    upstream = tmp_path / "pretrained"
    upstream.mkdir()
    cfg = pipeline.PipelineConfig(out_dir=str(tmp_path / "run"), upstream="mix", targets=("t",),
                                  upstream_model_dir=str(upstream))
    pipeline.run(cfg, show_data=False)
    assert [argv[0] for argv in seen] == ["index", "index", "mine", "reranker", "generalize"]
    assert f"--gin.MODEL_DIR='{upstream}'" in seen[0] and os.environ["RECROSS_VOCAB"] == "minilm"
    # Mining fine-tunes each candidate alone, without dropout, at a constant rate; the reranker
    # trains on that mining's tuples.
    tuples, reranker = pipeline.mining_paths(cfg)
    assert {"--gin.mining.mine.num_groups=20", "--gin.mining.mine.group_dropout=False",
            "--gin.group/finetune.FinetuneConfig.schedule='constant'",
            f"--gin.OUT='{tuples}'"} <= set(seen[2])
    flags = dict(zip(seen[3], seen[3][1:]))
    assert flags["--tuples"] == tuples and flags["--out"] == reranker
    missing = dataclasses.replace(cfg, upstream_model_dir=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="upstream model directory not found: .*nowhere"):
        pipeline.run(missing, show_data=False)


def test_a_t5_upstream_trains_its_vocabulary_first(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(list(argv)) or 0)
    monkeypatch.setattr(pipeline, "report", lambda cfg, results, out: {})
    monkeypatch.setenv("RECROSS_VOCAB", "restored after the test")
    cfg = pipeline.PipelineConfig(out_dir=str(tmp_path), upstream="mix", targets=("t",),
                                  model="t5_1_1_mini", methods=("base",), gin_bindings=("up.cap=3",),
                                  upstream_bindings=("up.cap=9", "WARMUP_STEPS=5"))
    pipeline.run(cfg, show_data=False)
    assert [argv[0] for argv in seen] == ["vocab", "train", "index", "generalize"]
    assert "--gin_file=gin/models/t5_1_1_mini.gin" in seen[1]
    train = seen[1]
    # It saves as it goes (150 steps: every 50, the newest 2 kept), so a stopped study resumes it.
    assert {"--gin.CHECKPOINT_PERIOD=50", "--gin.KEEP_CHECKPOINTS=2"} <= set(train)
    # The upstream stage's own bindings come after the pipeline's (gin: the last binding wins) and
    # reach no other stage.
    assert train[-2:] == ["--gin.up.cap=9", "--gin.WARMUP_STEPS=5"]
    assert train.index("--gin.up.cap=3") < train.index("--gin.up.cap=9")
    assert train.index("--gin.WARMUP_STEPS=50") < train.index("--gin.WARMUP_STEPS=5")
    assert all("--gin.up.cap=9" not in argv for argv in seen[2:]) and "--gin.up.cap=3" in seen[2]
    assert os.environ["RECROSS_VOCAB"] == str(tmp_path / "vocab" / "spm_8000.model")


def test_relearn_rate_is_chosen_on_upstream_stand_ins_then_used(monkeypatch, tmp_path):
    seen = []
    gain = {1e-05: 0.0, 3e-05: 0.2, 0.0001: 0.1}  # ReCross† over base, by rate

    def fake_main(argv):
        seen.append(list(argv))
        flags = dict(a.split("=", 1) for a in argv if a.startswith("--gin.") and "=" in a)
        if argv[0] == "generalize" and os.path.join("run", "relearn_rate") in flags["--gin.OUT_DIR"]:
            rate = float(flags["--gin.finetune.FinetuneConfig.learning_rate"])
            assert flags["--gin.generalize.run.eval_split"] == "'validation'"
            for target in ("up.a", "up.b"):
                for method, value in (("base", 0.3), ("recross_dense", 0.3 + gain[rate])):
                    for q in range(2):
                        path = os.path.join(flags["--gin.OUT_DIR"].strip("'"), "runs", target, method,
                                            f"query_set_{q}.json")
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        with open(path, "w") as f:
                            json.dump({"target": target, "method": method, "query_set": q,
                                       "metrics": {"soft_em": value}}, f)
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(pipeline, "report", lambda cfg, results, out: {})
    monkeypatch.setenv("RECROSS_VOCAB", "restored after the test")
    upstream = tmp_path / "pretrained"
    upstream.mkdir()
    cfg = pipeline.PipelineConfig(out_dir=str(tmp_path / "run"), upstream="mix", targets=("t",),
                                  upstream_model_dir=str(upstream), methods=("base", "recross_dense"),
                                  relearn_rate_tasks=("up.a", "up.b"), relearn_rate_grid=tuple(gain))
    pipeline.run(cfg, show_data=False)
    generalize = [argv for argv in seen if argv[0] == "generalize"]
    assert len(generalize) == 4 and "--gin.TARGETS=['up.a', 'up.b']" in generalize[0]
    assert "--gin.finetune.FinetuneConfig.learning_rate=3e-05" in generalize[-1]
    assert "--gin.TARGETS=['t']" in generalize[-1]
    choice = json.loads((tmp_path / "run" / "relearn_rate" / "lr_choice.json").read_text())
    assert choice["chosen"] == 3e-05 and choice["gains"]["3e-05"]["mean"] == pytest.approx(0.2)
    times = json.loads((tmp_path / "run" / "stage_times.json").read_text())
    assert list(times) == ["generalize", "index_model", "relearn_rate/lr_0.0001", "relearn_rate/lr_1e-05",
                           "relearn_rate/lr_3e-05"]
    assert "| **total** |" in (tmp_path / "run" / "stage_times.md").read_text()


def test_mining_settings_and_tuple_counts_get_their_own_tuples_and_reranker(tmp_path):
    cfg = pipeline.PipelineConfig(out_dir=str(tmp_path), upstream="mix", targets=("t",))
    tuples, reranker = pipeline.mining_paths(cfg)
    more = pipeline.mining_paths(dataclasses.replace(cfg, num_tuples=cfg.num_tuples + 8))
    other = pipeline.mining_paths(dataclasses.replace(cfg, mining=cfg.mining + ("num_rounds=3",)))
    other_finetune = pipeline.mining_paths(dataclasses.replace(cfg, mining_finetune=()))
    other_reranker = pipeline.mining_paths(dataclasses.replace(cfg, reranker=("epochs=9",)))
    assert more[0] == tuples and more[1] != reranker  # more tuples extend the file, retrain
    assert other_reranker[0] == tuples and other_reranker[1] != reranker
    assert len({tuples, other[0], other_finetune[0]}) == 3
    assert len({reranker, other[1], other_finetune[1], more[1], other_reranker[1]}) == 5
    assert tuples.startswith(str(tmp_path / "mining")) and reranker.startswith(str(tmp_path / "reranker"))
