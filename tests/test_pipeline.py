"""The pipeline's stage runner: a stage runs once, is skipped while its output exists and its
arguments are unchanged, runs again when either changes; failures are one-line errors."""
import json
import os

import pytest

from recross_jax import cli, pipeline
from recross_jax.errors import UserError


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
    assert pipeline.run_stage(str(tmp_path), "stage", ["make", out], out) is None
    assert "stage: up to date" in capsys.readouterr().out
    assert len(calls) == 1
    # Changed arguments run it again; so does a missing output.
    assert pipeline.run_stage(str(tmp_path), "stage", ["make", "--more", out], out) is not None
    os.remove(out)
    assert pipeline.run_stage(str(tmp_path), "stage", ["make", "--more", out], out) is not None
    assert len(calls) == 3


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
