"""The evaluation benchmark's proxy lengths and padding count."""
import importlib.util
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(REPO, "tasks", "recross_release")
spec = importlib.util.spec_from_file_location("bench_eval", os.path.join(REPO, "scripts",
                                                                         "bench_eval.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _example(inputs: str, targets: str, choices: list[str]) -> dict:
    return {"inputs": inputs, "targets": targets, "answer_choices": choices, "task": "t",
            "template": "default", "example_id": "t|test|default|#0"}


def test_example_lengths_count_inputs_and_answer_choices_or_the_target():
    examples = [_example("Which is largest?", "whale", ["cat", "dog", "whale"]),
                _example("What is 2 + 1?", "3", ["3", "2", "4", "5"]),
                _example("Say hi.", "hi there", [])]
    inputs, answers = bench.example_lengths(examples, max_length=6)
    # 1.4 per word + EOS: 3 words -> 5; "What is 2 + 1?" (5 words, 8) capped at 6.
    assert inputs == [5, 6, 3]
    assert answers == [[2, 2, 2], [2, 2, 2, 2], [3]]  # a generative example counts its target


@pytest.mark.skipif(not os.path.isdir(RELEASE), reason="the embedded ReCross release is absent")
def test_task_lengths_read_the_first_test_examples_of_a_release_dataset():
    from tasks import recross  # pylint: disable=import-outside-toplevel
    inputs, answers = bench.task_lengths("super_glue-cb", 5, max_length=16)
    expected = recross.examples("recross.super_glue_cb", "test")[:5]
    assert (inputs, answers) == bench.example_lengths(expected, max_length=16)
    assert len(inputs) == 5 and max(inputs) <= 16
    assert all(len(choices) == 3 for choices in answers)  # CB: entailment, contradiction, neutral


def test_padded_tokens_pad_each_batch_to_its_longest_rows_bucket():
    lengths = np.array([3, 20, 2, 9])
    assert bench.padded_tokens(lengths, 2) == 32 * 2 + 16 * 2
    assert bench.padded_tokens(np.sort(lengths), 2) == 8 * 2 + 32 * 2
