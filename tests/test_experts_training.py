"""ELM's expert kinds and how they train (SPEC §3, issue 24): several adapter experts in one
stacked (vmapped) step, prompt experts (one per template), full fine-tune experts and their
task-vector merges, through `recross experts` on toy tasks with tiny models."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from test_experts import (  # noqa: F401  (cli_world: the fixture)
    FAMILIES,
    FAST,
    PAIRS,
    REDUCTION,
    TINY_B2B,
    TINY_T5,
    backbone_of,
    cli_world,
    flat,
)

from recross_jax import cli, evaluate, partitioning
from recross_jax.errors import UserError
from recross_jax.experts import checkpoint, expert, library
from recross_jax.experts import cli as experts_cli

# ---------------------------------------------------------------------------------------------
# Stacked training.


def test_stacked_experts_equal_experts_trained_one_after_another():
    """Three experts of unequal length (4, 4 and 2 steps) in one vmapped step, dropout on
    (BERT2BERT's 0.1; each expert's dropout keys are those it draws alone), split over 3 of the
    test suite's 8 CPU devices."""
    backbone = backbone_of(TINY_B2B)
    pair_sets = [PAIRS, PAIRS[2:] + PAIRS[:2], PAIRS[1:2] + PAIRS[3:]]
    stacked = expert.train_experts(backbone, pair_sets, REDUCTION, FAST, stacked=True)
    for pairs, (params, history) in zip(pair_sets, stacked):
        alone, alone_history = expert.train_expert(backbone, pairs, REDUCTION, FAST)
        assert len(history) == len(alone_history) == 2 * len(pairs) // FAST.batch_size
        np.testing.assert_allclose([h["loss"] for h in history],
                                   [h["loss"] for h in alone_history], rtol=1e-5)
        mine, theirs = flat(params), flat(alone)
        assert mine.keys() == theirs.keys()
        for path, value in mine.items():
            # AdamW's first steps are ±lr per coordinate: float noise in a tiny gradient can
            # move a coordinate by a fraction of lr = 1e-2, never more.
            np.testing.assert_allclose(value, theirs[path], atol=1e-4, err_msg=path)
    # The two experts that trained on the same examples in another order differ.
    assert not np.allclose(flat(stacked[0][0])["encoder/layers_0/mlp_adapter/up/kernel"],
                           flat(stacked[1][0])["encoder/layers_0/mlp_adapter/up/kernel"])


def test_stacked_training_refusals():
    backbone = backbone_of(TINY_T5)
    with pytest.raises(UserError, match="every expert needs training examples"):
        expert.train_experts(backbone, [PAIRS, []], REDUCTION, FAST)
    linear = dataclasses.replace(FAST, schedule="linear")
    with pytest.raises(UserError, match=r"linear schedule needs experts of equal length.*\[2, 4\]"):
        expert.train_experts(backbone, [PAIRS, PAIRS[:2]], REDUCTION, linear)


# ---------------------------------------------------------------------------------------------
# The command: prompt experts, full fine-tunes, task vectors.


def _runner(cli_world, capsys, *extra: str):  # noqa: F811
    tmp_path, bert_dir = cli_world
    flags = ["--tasks_module", "toy_expert_tasks", "--gin.experts.settings.reduction=4",
             "--gin.experts.settings.epochs=1", "--gin.experts.settings.batch_size=4",
             "--gin.experts.settings.learning_rate=0.01",
             f"--gin.experts.settings.embedder_dir='{bert_dir}'", *extra]

    def run(*argv: str):
        capsys.readouterr()
        assert cli.main(["experts", *argv, *flags]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    def fails(*argv: str) -> str:
        capsys.readouterr()
        assert cli.main(["experts", *argv, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    return tmp_path, run, fails


def test_prompt_experts_one_per_template_indexed_with_their_own_examples(
        cli_world, capsys, monkeypatch):  # noqa: F811
    tmp_path, run, fails = _runner(cli_world, capsys)
    backbone, out = str(tmp_path / "backbone"), str(tmp_path / "prompt")
    made = run("train", "--backbone", backbone, "--task", "toy_mixed", "--per_template",
               "--out", out)
    # toy_mixed's 12 train examples alternate two templates: 6 each, 2 steps of 4 (epochs=1).
    assert [m["expert"] for m in made] == ["toy_mixed:train:plain",
                                           "toy_mixed:train:Does it follow?"]
    assert [m["out"] for m in made] == [f"{out}/plain", f"{out}/does_it_follow"]
    assert [(m["examples"], m["steps"], m["trained_together"]) for m in made] == [
        (6, 2, 2)] * 2
    manifest = checkpoint.read_manifest(f"{out}/does_it_follow")
    assert manifest["kind"] == "adapter"
    assert manifest["metadata"]["template"] == "Does it follow?"
    assert manifest["metadata"]["task"] == "toy_mixed"
    # Resumed: both kept; one deleted is trained again, alone.
    assert all(m["resumed"] for m in run("train", "--backbone", backbone, "--task", "toy_mixed",
                                         "--per_template", "--out", out))
    os.remove(f"{out}/plain/{checkpoint.MANIFEST}")
    again = run("train", "--backbone", backbone, "--task", "toy_mixed", "--per_template",
                "--out", out)
    assert [m.get("resumed", False) for m in again] == [False, True]
    assert again[0]["trained_together"] == 1
    # At most stack_size experts train together, and each batch is saved as it ends: a command
    # interrupted in the second batch keeps the first.
    batched = str(tmp_path / "batched")
    calls = []
    original = expert.train_experts

    def dies_in_second_batch(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(expert, "train_experts", dies_in_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run("train", "--backbone", backbone, "--task", "toy_mixed", "--per_template", "--out", batched,
            "--gin.experts.settings.stack_size=1")
    assert calls == [1, 1]
    assert os.path.isfile(f"{batched}/plain/{checkpoint.MANIFEST}")
    assert not os.path.exists(f"{batched}/does_it_follow/{checkpoint.MANIFEST}")
    assert "stack_size must be a positive integer, got 0" in fails(
        "train", "--backbone", backbone, "--task", "toy_mixed", "--per_template", "--out", batched,
        "--gin.experts.settings.stack_size=0")
    monkeypatch.undo()
    # One template on its own, with the default id TASK:SPLIT:TEMPLATE.
    single = run("train", "--backbone", backbone, "--task", "toy_mixed", "--template", "plain",
                 "--out", str(tmp_path / "single"))
    assert (single["expert"], single["template"], single["examples"]) == (
        "toy_mixed:train:plain", "plain", 6)
    # The library indexes each prompt expert with its own template's examples: its 6 keys (S =
    # 100 > 6: all of them, in order) embed exactly those.
    built = run("library", "--experts", f"{out}/plain", f"{out}/does_it_follow",
                "--out", str(tmp_path / "library"))
    assert built["keys"] == 12
    cfg = experts_cli.settings()
    examples = experts_cli.examples_of("toy_mixed", "train", cfg, None)
    assert [e.example_id for e in experts_cli.examples_of("toy_mixed", "train", cfg, None,
                                                          "plain")] == [
        f"toy_mixed|train|plain|#{i}" for i in range(0, 12, 2)]
    loaded = library.ExpertLibrary.load(str(tmp_path / "library"))
    assert loaded.counts == [6, 6]
    texts = [library.instance_text(r) for r in experts_cli.rows_of(examples[0::2] + examples[1::2])]
    np.testing.assert_allclose(loaded.vectors, experts_cli.make_embedder(cfg).encode(texts),
                               rtol=1e-5, atol=1e-6)

    assert "no examples of template 'nope' (templates: 'plain', 'Does it follow?')" in fails(
        "train", "--backbone", backbone, "--task", "toy_mixed", "--template", "nope",
        "--out", str(tmp_path / "nope"))
    assert "--per_template names each expert" in fails(
        "train", "--backbone", backbone, "--task", "toy_mixed", "--template", "plain",
        "--per_template", "--out", out)


def test_template_slugs_and_ids():
    assert experts_cli.template_slugs(["Does it follow?", "GPT-3 style", "a b", "A-B"]) == {
        "Does it follow?": "does_it_follow", "GPT-3 style": "gpt_3_style",
        "a b": "a_b_c8687a08", "A-B": "a_b_77101aaa"}
    example = evaluate.EvalExample("anli|train_r3|does it follow that|#93363", "", "", (), (),
                                   (), ())
    assert experts_cli.template_of(example) == "does it follow that"
    with pytest.raises(UserError, match="names no template"):
        experts_cli.template_of(dataclasses.replace(example, example_id="anli-93363"))


def test_full_experts_and_task_vector_merges(cli_world, capsys):  # noqa: F811
    # One by one: full fine-tunes always are; the adapter expert below takes that path too.
    tmp_path, run, fails = _runner(cli_world, capsys, "--gin.experts.settings.stacked=False")
    backbone_dir = str(tmp_path / "backbone")
    for color in ("red", "blue"):
        made = run("train", "--backbone", backbone_dir, "--task", f"toy_{color}", "--full",
                   "--out", str(tmp_path / color))
        assert made["kind"] == "full" and made["steps"] == 2
    backbone = experts_cli.load_backbone(backbone_dir)
    manifest = checkpoint.read_manifest(str(tmp_path / "red"))
    assert manifest["kind"] == "full" and manifest["adapter_reduction"] is None
    assert manifest["backbone"]["fingerprint"] == backbone.fingerprint
    # A full expert holds every parameter of the network, all trained.
    config, red = checkpoint.load_expert(str(tmp_path / "red"), backbone)
    assert config == backbone.config
    pre, red, blue = (flat(backbone.params), flat(red),
                      flat(checkpoint.load_expert(str(tmp_path / "blue"), backbone)[1]))
    assert red.keys() == pre.keys() == set(manifest["params"])
    assert all(not np.array_equal(red[k], pre[k]) for k in pre if k.endswith("kernel"))
    assert "trained on another backbone" in fails(
        "eval", "--backbone", str(tmp_path / "other"), "--expert", str(tmp_path / "red"),
        "--task", "toy_red")

    # λ_i = 1/N: θ_pre + (τ_red + τ_blue) / 2.
    merged = run("merge", "--backbone", backbone_dir, "--task_vectors", "--experts",
                 str(tmp_path / "red"), str(tmp_path / "blue"), "--out", str(tmp_path / "tv"))
    assert merged["lambdas"] == [0.5, 0.5] and merged["merged"] == ["toy_red:train",
                                                                    "toy_blue:train"]
    got = flat(checkpoint.load_expert(str(tmp_path / "tv"), backbone)[1])
    for path, value in pre.items():
        np.testing.assert_allclose(got[path], value + 0.5 * ((red[path] - value)
                                                             + (blue[path] - value)),
                                   rtol=1e-6, atol=1e-7, err_msg=path)

    # A grid: one shared λ scored on the validation split of toy_red and toy_blue.
    grid = run("merge", "--backbone", backbone_dir, "--task_vectors", "--experts",
               str(tmp_path / "red"), str(tmp_path / "blue"), "--out", str(tmp_path / "grid"),
               "--lambda_grid", "0.1,0.5,1.0", "--heldout_examples", "6")
    assert grid["heldout_split"] == "validation"
    assert grid["heldout_examples"] == {"toy_red": 6, "toy_blue": 6}
    assert list(grid["lambda_scores"]) == ["0.1", "0.5", "1.0"]
    best = max(grid["lambda_scores"], key=lambda k: (grid["lambda_scores"][k],
                                                     -list(grid["lambda_scores"]).index(k)))
    assert grid["lambdas"] == [float(best)] * 2
    saved = checkpoint.read_manifest(str(tmp_path / "grid"))["metadata"]
    assert saved["lambda_scores"] == grid["lambda_scores"]
    # The recorded score of the chosen λ is the merged expert's mean held-out accuracy.
    mesh = partitioning.create_mesh()
    params = checkpoint.load_expert(str(tmp_path / "grid"), backbone)[1]
    accuracies = []
    for task in ("toy_red", "toy_blue"):
        examples, vocabulary = evaluate.load_examples(task, "validation", max_examples=6)
        accuracies.append(evaluate.evaluate_params(backbone.config, params, examples, vocabulary,
                                                   decode=False, progress=False,
                                                   mesh=mesh)[0]["accuracy"])
    assert grid["lambda_scores"][best] == pytest.approx(np.mean(accuracies))

    # Adapter and full experts do not mix; adapters are not task vectors.
    run("train", "--backbone", backbone_dir, "--task", "toy_red", "--out",
        str(tmp_path / "adapter"))
    assert "cannot merge adapter and full fine-tune experts (full: toy_red:train)" in fails(
        "merge", "--backbone", backbone_dir, "--experts", str(tmp_path / "adapter"),
        str(tmp_path / "red"), "--out", str(tmp_path / "mixed"))
    assert "--task_vectors merges full fine-tune experts" in fails(
        "merge", "--backbone", backbone_dir, "--task_vectors", "--experts",
        str(tmp_path / "adapter"), "--out", str(tmp_path / "mixed"))
    assert "--lambda_grid takes numbers" in fails(
        "merge", "--backbone", backbone_dir, "--experts", str(tmp_path / "red"),
        "--out", str(tmp_path / "bad"), "--lambda_grid", "0.1,x")


def test_task_vector_lambda_is_the_argmax_of_the_score(tmp_path):
    backbone = backbone_of(TINY_T5)
    pre = flat(backbone.params)
    tuned = []
    for i, shift in enumerate((0.5, -0.25)):
        params = {k: v + np.float32(shift) * (1 + (np.arange(v.size) % 3).reshape(v.shape))
                  for k, v in pre.items()}
        tuned.append(params)
        checkpoint.save_full_expert(str(tmp_path / f"e{i}"), f"e{i}", backbone,
                                    _nested(params), {"task": f"t{i}"})
    key = sorted(pre)[0]
    table = {0.1: 0.3, 0.2: 0.9, 0.3: 0.9, 0.4: 0.1}

    def score(params) -> float:
        # λ from the merged parameters: θ = θ_pre + λ Σ τ at the leaf's first coordinate.
        total = (tuned[0][key] + tuned[1][key] - 2 * pre[key]).ravel()[0]
        return table[round(float((flat(params)[key].ravel()[0] - pre[key].ravel()[0]) / total),
                           3)]

    made = experts_cli.merge(backbone, [str(tmp_path / "e0"), str(tmp_path / "e1")],
                             str(tmp_path / "m"), "m", lambda_grid=list(table), score=score)
    assert made["lambdas"] == [0.2, 0.2]  # the first of the two best
    assert made["lambda_scores"] == {str(k): v for k, v in table.items()}
    got = flat(checkpoint.load_expert(str(tmp_path / "m"), backbone)[1])
    for path, value in pre.items():
        expected = value + 0.2 * ((tuned[0][path] - value) + (tuned[1][path] - value))
        np.testing.assert_allclose(got[path], expected, rtol=1e-6, atol=1e-6, err_msg=path)
    with pytest.raises(UserError, match="needs a held-out score"):
        experts_cli.merge(backbone, [str(tmp_path / "e0")], str(tmp_path / "n"), "n",
                          lambda_grid=[0.5])


def test_full_expert_checkpoints_refuse_another_backbone_and_partial_params(tmp_path):
    config = TINY_T5
    backbone = backbone_of(config)
    checkpoint.save_full_expert(str(tmp_path / "f"), "f", backbone, backbone.params)
    with pytest.raises(UserError, match="another backbone: parameters"):
        checkpoint.load_expert(str(tmp_path / "f"), backbone_of(config, seed=1))
    partial = {k: v for k, v in backbone.params.items() if k != "decoder"}
    with pytest.raises(UserError, match="lacks parameter 'decoder/"):
        checkpoint.save_full_expert(str(tmp_path / "g"), "g", backbone, partial)


def _nested(flat_params: dict) -> dict:
    from flax import traverse_util  # pylint: disable=import-outside-toplevel
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat_params.items()})
