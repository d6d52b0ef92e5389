"""The evaluation benchmark's proxy lengths and padding count."""
import importlib.util
import os

import bigbench_fixtures as fx
import numpy as np

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "bench_eval.py")
spec = importlib.util.spec_from_file_location("bench_eval", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_task_lengths_read_inputs_and_answer_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("RECROSS_BIGBENCH_DIR", fx.write_tasks_dir(str(tmp_path)))
    inputs, choices = bench.task_lengths("mc_task", 3, max_length=6)
    assert inputs == [5, 5, 6]  # 3 words: 1.4 x 3 + EOS; "What is 2 + 1?" (8) capped at 6
    assert [len(c) for c in choices] == [3, 3, 4] and choices[0] == [2, 2, 2]
    _, targets = bench.task_lengths("gen_task", 2, max_length=64)
    assert targets == [[2], [2]]  # a list target counts its first answer


def test_padded_tokens_pad_each_batch_to_its_longest_rows_bucket():
    lengths = np.array([3, 20, 2, 9])
    assert bench.padded_tokens(lengths, 2) == 32 * 2 + 16 * 2
    assert bench.padded_tokens(np.sort(lengths), 2) == 8 * 2 + 32 * 2
