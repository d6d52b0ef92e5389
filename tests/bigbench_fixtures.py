"""A tiny BIG-bench `benchmark_tasks` directory with every case tasks/bigbench.py handles, alone
or inside a checkout-shaped folder."""
from __future__ import annotations

import json
import os

# mc_task: choices with the correct one listed first in the JSON (as many real tasks do), a
# best score that is not first in example 0, a tie in example 1, and one duplicate example.
MC_EXAMPLES = [
    {"input": "Which is largest?", "target_scores": {"cat": 0, "whale": 1, "dog": 0.5}},
    {"input": "Pick a vowel.", "target_scores": {"x": 0, "a": 1, "e": 1}},
] + [
    {"input": f"What is {i} + 1?",
     "target_scores": {str(i + 1): 1, str(i): 0, str(i + 2): 0, str(i + 3): 0}}
    for i in range(2, 40)
] + [{"input": "Which is largest?", "target_scores": {"cat": 0, "whale": 1, "dog": 0.5}}]

GEN_EXAMPLES = [
    {"input": "Say hi.", "target": ["hi", "hello"]},
    {"input": "Say bye.", "target": "bye"},
] + [{"input": f"Spell {i}.", "target": str(i)} for i in range(2, 30)]

TASKS = {
    "mc_task": {
        "name": "mc_task", "preferred_score": "multiple_choice_grade",
        "task_prefix": "Answer the question.\n", "example_input_prefix": "\nQuestion: ",
        "example_output_prefix": "\nAnswer: ", "examples": MC_EXAMPLES,
    },
    "gen_task": {"name": "gen_task", "preferred_score": "exact_str_match",
                 "examples": GEN_EXAMPLES},
    # Scores that are only distractors of an exact-match task: generative.
    "both_task": {
        "name": "both_task", "preferred_score": "exact_str_match",
        "examples": [{"input": f"{i} plus 0?", "target": str(i),
                      "target_scores": {str(i): 1, "banana": 0}} for i in range(12)],
    },
    # The JSON asks not to list the choices and has a blank choice prefix; a custom one below.
    "quiet_choices": {
        "name": "quiet_choices", "preferred_score": "multiple_choice_grade",
        "append_choices_to_input": False, "choice_prefix": "",
        "examples": [{"input": f"Is {i} even?", "target_scores": {"yes": int(i % 2 == 0),
                                                                  "no": int(i % 2 == 1)}}
                     for i in range(12)],
    },
    "custom_choices": {
        "name": "custom_choices", "preferred_score": "multiple_choice_grade",
        "choice_prefix": "\n option: ",
        "examples": [{"input": f"Color {i}?", "target_scores": {"red": 1, "blue": 0}}
                     for i in range(12)],
    },
    "container": {"name": "container", "description": "subtasks only"},
    "container/sub_a": {"name": "sub_a", "preferred_score": "exact_str_match",
                        "examples": [{"input": f"a{i}", "target": f"A{i}"} for i in range(12)]},
    "container/sub_b": {"name": "sub_b", "preferred_score": "exact_str_match",
                        "examples": [{"input": f"b{i}", "target": f"B{i}"} for i in range(12)]},
    # Two of T0's held-out targets (one with subtasks), and a task whose name contains one.
    "strategyqa": {
        "name": "strategyqa", "preferred_score": "multiple_choice_grade",
        "append_choices_to_input": False,
        "examples": [{"input": f"Is {i} prime?", "target_scores": {"Yes": 0, "No": 1},
                      "target": "No, because ..."} for i in range(12)],
    },
    "logical_deduction": {"name": "logical_deduction"},
    "logical_deduction/three_objects": {
        "name": "three_objects", "preferred_score": "multiple_choice_grade",
        "examples": [{"input": f"Order {i}.", "target_scores": {"A first": 1, "B first": 0}}
                     for i in range(12)],
    },
    "misconceptions_russian": {
        "name": "misconceptions_russian", "preferred_score": "multiple_choice_grade",
        "examples": [{"input": "", "target_scores": {f"true {i}": 1, f"false {i}": 0}}
                     for i in range(12)],
    },
}

UPSTREAM = {"both_task", "container.sub_a", "container.sub_b", "custom_choices", "gen_task",
            "mc_task", "quiet_choices"}
TARGETS = {"logical_deduction.three_objects", "strategyqa"}


def write_tasks_dir(root: str) -> str:
    """Writes the fake `benchmark_tasks` under `root`; returns its path."""
    tasks_dir = os.path.join(root, "benchmark_tasks")
    for relative, task in TASKS.items():
        os.makedirs(os.path.join(tasks_dir, relative), exist_ok=True)
        with open(os.path.join(tasks_dir, relative, "task.json"), "w", encoding="utf-8") as f:
            json.dump(task, f, indent=1)
    # A programmatic task: code and no task.json.
    os.makedirs(os.path.join(tasks_dir, "programmatic"), exist_ok=True)
    with open(os.path.join(tasks_dir, "programmatic", "task.py"), "w", encoding="utf-8") as f:
        f.write("# generates its examples in Python\n")
    return tasks_dir


def write_checkout(root: str) -> str:
    """Writes the fake tasks where a BIG-bench checkout has them (`bigbench/benchmark_tasks`
    under `root`, beside other files); returns `root`."""
    write_tasks_dir(os.path.join(root, "bigbench"))
    with open(os.path.join(root, "README.md"), "w", encoding="utf-8") as f:
        f.write("# BIG-bench\n")
    return root
