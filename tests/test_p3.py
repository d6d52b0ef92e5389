"""PromptSource tasks: hand-written rows through the real templates, mixtures, data sources."""
import json
import os
import sys

import gin
import pytest
import seqio
import shared_data

from recross_jax.errors import UserError
from tasks import p3

TASKWEB_CB = os.path.join(shared_data.TASKWEB_TASKS, "cb.jsonl")

CB_ROW = {
    "premise": "A: Have you followed that very much or, B: Uh, not really. I don't think "
               "anything will ever take over the NFL.",
    "hypothesis": "something will take over the NFL",
    "label": 1,
    "idx": 0,
}
PIQA_ROW = {
    "goal": "How do I ready a guinea pig cage for it's new occupants?",
    "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped "
            "paper strips, you will also need to supply it with a water bottle and a food dish.",
    "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped "
            "jeans material, you will also need to supply it with a water bottle and a food dish.",
    "label": 0,
}
ANLI_ROW = {
    "uid": "88fd5b58-b7c2-4a07-a4b2-7bd2b2ad8e4b",
    "premise": "The Parma trolleybus system forms part of the public transport network of the "
               "city and comune of Parma, in Italy.",
    "hypothesis": "The trolleybus system has over 2 urban routes",
    "label": 2,
    "reason": "",
}
HELLASWAG_ROW = {
    "ind": 24,
    "activity_label": "Roof shingle removal",
    "ctx_a": "A man is sitting on a roof.",
    "ctx_b": "he",
    "ctx": "A man is sitting on a roof. he",
    "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
    "source_id": "activitynet~v_-JhWjGDPHMY",
    "split": "val",
    "split_type": "indomain",
    "label": "3",
}
SQUAD_ROW = {
    "id": "56ddde6b9a695914005b9628",
    "title": "Normans",
    "context": "The Normans were the people who in the 10th and 11th centuries gave their name "
               "to Normandy, a region in France.",
    "question": "In what country is Normandy located?",
    "answers": {"text": ["France", "France"], "answer_start": [116, 116]},
}
SQUAD_UNANSWERABLE_ROW = {**SQUAD_ROW, "id": "5ad39d53604f3c001a3fe8d1",
                          "question": "Who gave their name to Normandy in the 1000's and 1100's",
                          "answers": {"text": [], "answer_start": []}}


def _only(name, row, split="validation"):
    examples = p3.format_rows(name, [row], split)
    assert len(examples) == 1
    return examples[0]


def test_cb_gpt3_style_formats_premise_hypothesis_and_label():
    example = _only("p3.super_glue_cb.GPT_3_style", CB_ROW)
    assert example == {
        "inputs": f"{CB_ROW['premise']}\nQuestion: {CB_ROW['hypothesis']} "
                  "True, False, or Neither?",
        "targets": "False",
        "answer_choices": ["True", "False", "Neither"],
        "gold_answers": ["False"],
        "task": "super_glue_cb",
        "template": "GPT-3 style",
        "example_id": "super_glue_cb|validation|GPT-3 style|#0",
    }


@pytest.mark.skipif(not os.path.isfile(TASKWEB_CB), reason="TaskWeb data not present")
def test_every_cb_template_reproduces_taskweb_prompted_rows():
    # TaskWeb's cb.jsonl was prompted with promptsource independently of this code.
    with open(TASKWEB_CB, encoding="utf-8") as f:
        released = {(r["inputs"], r["targets"], tuple(r["choices"] or ()))
                    for r in map(json.loads, f)}
    names = [task.name for task in seqio.MixtureRegistry.get("p3.super_glue_cb").tasks]
    assert len(names) == 15
    for name in names:
        example = _only(name, CB_ROW)
        prompted = (example["inputs"], example["targets"], tuple(example["answer_choices"]))
        assert prompted in released, name


def test_piqa_choices_are_the_two_solutions():
    example = _only("p3.piqa.finish_sentence_with_correct_choice", PIQA_ROW)
    assert example["inputs"] == (
        f"Finish the following sentence with the best choice: {PIQA_ROW['goal']}\n\n"
        f"Choices:\n- {PIQA_ROW['sol1']}\n- {PIQA_ROW['sol2']}\n\nAnswer:")
    assert example["targets"] == PIQA_ROW["sol1"]
    assert example["answer_choices"] == [PIQA_ROW["sol1"], PIQA_ROW["sol2"]]
    index = _only("p3.piqa.pick_correct_choice_index", {**PIQA_ROW, "label": 1})
    assert index["inputs"] == (
        f"Sentence: {PIQA_ROW['goal']}\n\nChoice 1: {PIQA_ROW['sol1']}\n\nChoice 2: "
        f"{PIQA_ROW['sol2']}\n\nWhat is the index of the correct choice for ending for the "
        "sentence?\n\nAnswer:")
    assert (index["targets"], index["answer_choices"]) == ("2", ["1", "2"])


def test_unlabeled_rows_are_skipped_and_ids_keep_row_positions():
    rows = [PIQA_ROW, {**PIQA_ROW, "label": -1}, {**PIQA_ROW, "label": 1}]
    examples = p3.format_rows("p3.piqa.pick_correct_choice_index", rows, "test")
    assert [e["example_id"] for e in examples] == [
        "piqa|test|pick_correct_choice_index|#0", "piqa|test|pick_correct_choice_index|#2"]
    assert [e["targets"] for e in examples] == ["1", "2"]
    hellaswag = p3.format_rows("p3.hellaswag.complete_first_then",
                               [{**HELLASWAG_ROW, "label": ""}], "test")
    assert hellaswag == []


def test_anli_r3_uses_anli_templates():
    example = _only("p3.anli_r3.GPT_3_style", ANLI_ROW)
    assert example["inputs"] == (f"{ANLI_ROW['premise']}\nQuestion: {ANLI_ROW['hypothesis']} "
                                 "True, False, or Neither?")
    assert example["targets"] == "False"
    assert example["answer_choices"] == ["True", "Neither", "False"]
    assert example["task"] == "anli_r3"


def test_hellaswag_lowercases_context_and_picks_labelled_ending():
    example = _only("p3.hellaswag.complete_first_then", HELLASWAG_ROW)
    endings = HELLASWAG_ROW["endings"]
    assert example["inputs"] == (
        "Complete the description with an appropriate ending:\n"
        "First, a man is sitting on a roof. Then, he ...\n\n"
        + "\n\n".join(f"({letter}) {ending}"
                      for letter, ending in zip("abcd", endings, strict=True)))
    assert example["targets"] == endings[3]
    assert example["answer_choices"] == endings


def test_squad_v2_extractive_and_unanswerable():
    example = _only("p3.squad_v2.Questions_with_Context_unanswerable", SQUAD_ROW)
    assert example["inputs"].endswith(
        f"Context: {SQUAD_ROW['context']};\nQuestion: {SQUAD_ROW['question']};\n"
        "If you can't find the answer, please respond \"unanswerable\".\nAnswer:")
    assert example["targets"] == "France"
    assert example["answer_choices"] == []
    unanswerable = _only("p3.squad_v2.Questions_with_Context_unanswerable", SQUAD_UNANSWERABLE_ROW)
    assert unanswerable["targets"] == "unanswerable"


def test_random_prompt_choices_are_seeded():
    name = "p3.squad_v2.Questions_with_Context_Without_Prompt_Keywords"
    rows = [{**SQUAD_ROW, "id": str(i)} for i in range(12)]
    first = p3.format_rows(name, rows, "train")
    assert p3.format_rows(name, rows, "train") == first
    prompts = {e["inputs"][len(SQUAD_ROW["context"]) + 1:-len(SQUAD_ROW["question"])]
               for e in first}
    assert len(prompts) > 1  # rows draw different prompts...
    with gin.unlock_config():
        gin.bind_parameter("tasks.p3.template_seed.seed", 1)
    try:
        reseeded = p3.format_rows(name, rows, "train")
    finally:
        with gin.unlock_config():
            gin.bind_parameter("tasks.p3.template_seed.seed", 0)
    assert reseeded != first  # ...and the draws follow the seed


def test_mixtures_hold_t0_training_and_evaluable_target_templates():
    t0_train = [task.name for task in seqio.MixtureRegistry.get("t0_train").tasks]
    targets = [task.name for task in seqio.MixtureRegistry.get("p3_recross_targets").tasks]
    assert len(t0_train) == 290
    assert len({p3.get_task(name).dataset for name in t0_train}) == 36
    assert len(targets) == 80
    assert not set(t0_train) & set(targets)
    assert {"p3.glue_mrpc.equivalent", "p3.trec.what_category_best_describe"}.isdisjoint(targets)
    assert "p3.glue_mrpc.equivalent" in t0_train
    assert not any(name.startswith(("p3.trec.", "p3.quarel.")) for name in t0_train)
    per_dataset = {}
    for name in targets:
        task = p3.get_task(name)
        assert p3.evaluable_by_exact_match(p3.dataset_templates(task.dataset)[task.template_name])
        per_dataset[task.dataset.name] = per_dataset.get(task.dataset.name, 0) + 1
    assert per_dataset == {
        "anli_r3": 15, "hellaswag": 4, "super_glue_cb": 15, "super_glue_wic": 10,
        "super_glue_wsc_fixed": 10, "winogrande_winogrande_xl": 5, "ai2_arc_ARC_Challenge": 5,
        "openbookqa_main": 7, "piqa": 5, "squad_v2": 4}
    assert "p3.squad_v2.Questions_with_Context" in targets  # extractive, no answer choices
    for excluded in ("p3.squad_v2.Jeopardy_with_Context", "p3.piqa.Correct_the_solution",
                     "p3.hellaswag.how_ends", "p3.ai2_arc_ARC_Challenge.pick_false_options"):
        assert excluded not in seqio.TaskRegistry.names()


def _write_rows(root, relative, rows):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def test_local_directory_feeds_the_seqio_task(tmp_path, monkeypatch):
    _write_rows(tmp_path, "anli/train_r3.jsonl", [ANLI_ROW, {**ANLI_ROW, "label": 0}])
    monkeypatch.setenv("RECROSS_P3_DIR", str(tmp_path))
    task = seqio.TaskRegistry.get("p3.anli_r3.GPT_3_style")
    assert task.splits == ("train", "validation", "test")
    rows = list(task.source.get_dataset(split="train", shuffle=False).as_numpy_iterator())
    assert [r["targets"].decode() for r in rows] == ["False", "True"]
    assert [r["example_id"].decode() for r in rows] == [
        "anli_r3|train|GPT-3 style|#0", "anli_r3|train|GPT-3 style|#1"]
    assert rows[0]["answer_choices"].tolist() == [b"True", b"Neither", b"False"]
    assert p3.examples("p3.anli_r3.GPT_3_style", "train", limit=1)[0]["targets"] == "False"


def test_missing_data_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RECROSS_P3_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="P3 data directory not found: .*nowhere"):
        p3.examples("p3.piqa.pick_correct_choice_index", "train")
    monkeypatch.setenv("RECROSS_P3_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"P3 rows not found: .*piqa/validation\.jsonl"):
        p3.examples("p3.piqa.pick_correct_choice_index", "validation")
    _write_rows(tmp_path, "piqa/train.jsonl", [PIQA_ROW])
    with open(tmp_path / "piqa" / "train.jsonl", "a", encoding="utf-8") as f:
        f.write("{not json\n")
    with pytest.raises(UserError, match=r"piqa/train\.jsonl:2: not valid JSON"):
        p3.examples("p3.piqa.pick_correct_choice_index", "train")
    with pytest.raises(UserError, match="has no split 'test'"):
        p3.examples("p3.squad_v2.Questions_with_Context", "test")
    with pytest.raises(UserError, match="unknown P3 task"):
        p3.examples("p3.piqa.no_such_template", "train")


def test_without_local_dir_or_datasets_library_the_error_says_what_to_do(monkeypatch):
    monkeypatch.delenv("RECROSS_P3_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    p3._hf_rows.cache_clear()  # pylint: disable=protected-access
    with pytest.raises(UserError, match=r"set \$RECROSS_P3_DIR .* or install `datasets`"):
        p3.examples("p3.piqa.pick_correct_choice_index", "train")
