"""ELM (SPEC §3): adapters on both families, frozen-backbone expert training, expert checkpoints,
the expert library with Retrieval-of-Experts, and merging."""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import tiny_bert
import tiny_models
from flax import traverse_util

from recross_jax import cli, finetune, gin_utils, models, partitioning, training
from recross_jax.errors import UserError
from recross_jax.experts import checkpoint, expert, library, merging
from recross_jax.experts import cli as experts_cli
from recross_jax.models import Bert2BertConfig, T5Config, adapters
from tasks import vocab

TINY_T5 = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=1,
                   num_decoder_layers=1, head_dim=8, mlp_dim=32)
TINY_B2B = Bert2BertConfig(vocab_size=64, hidden_size=16, num_encoder_layers=1,
                           num_decoder_layers=1, num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=32, decoder_start_token_id=1)
FAMILIES = pytest.mark.parametrize("config", [TINY_T5, TINY_B2B], ids=["t5", "bert2bert"])
REDUCTION = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = [([5, 6, 7, 8, 1], [9, 10, 1]), ([11, 12, 1], [13, 1]), ([14, 15, 16, 1], [17, 18, 1]),
         ([19, 20, 21, 1], [22, 1])]
# A high rate so that a few steps visibly move the trained parameters.
FAST = dataclasses.replace(expert.ELM_FINETUNE, learning_rate=1e-2, batch_size=2, epochs=2)


def backbone_of(config, seed: int = 0) -> expert.Backbone:
    return expert.Backbone.of(config, nn.unbox(models.init_params(config,
                                                                  jax.random.PRNGKey(seed))))


def logits(config, params) -> np.ndarray:
    tokens = np.asarray([[5, 6, 7, 1], [8, 9, 1, 0]], np.int32)
    targets = np.asarray([[10, 11, 1], [12, 1, 0]], np.int32)
    inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    return np.asarray(models.build(config).apply({"params": params}, tokens, inputs, targets))


def flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


# ---------------------------------------------------------------------------------------------
# Adapters.


@FAMILIES
def test_adapters_off_leave_config_params_and_outputs_as_before(config):
    assert adapters.FIELD not in config.to_dict()  # config hashes and model_config.json as before
    assert models.config_from_dict(config.to_dict()) == config
    backbone = backbone_of(config)
    assert not any(adapters.is_adapter(tuple(p.split("/"))) for p in flat(backbone.params))
    adapted, params = expert.start_expert(backbone, REDUCTION)
    assert models.config_from_dict(adapted.to_dict()) == adapted
    # With every adapter's output projection zeroed, the adapted network computes exactly the
    # backbone's outputs; with fresh N(0, 0.01) adapters it computes others.
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, x: np.zeros_like(x) if adapters.is_adapter(
            tuple(k.key for k in path)) and path[-2].key == "up" else x, params)
    np.testing.assert_array_equal(logits(adapted, zeroed), logits(config, backbone.params))
    assert not np.array_equal(logits(adapted, params), logits(config, backbone.params))


@FAMILIES
def test_adapters_sit_on_every_self_attention_and_mlp_sublayer(config):
    adapted, params = expert.start_expert(backbone_of(config), REDUCTION)
    names = {p.rsplit("/", 2)[0] for p in flat(params) if adapters.is_adapter(tuple(p.split("/")))}
    self_attention = "self_attention" if config.family == "t5" else "attention"
    assert names == {"encoder/layers_0/attention_adapter", "encoder/layers_0/mlp_adapter",
                     f"decoder/layers_0/{self_attention}_adapter", "decoder/layers_0/mlp_adapter"}
    width = config.width
    adapter = flat(params)["encoder/layers_0/mlp_adapter/down/kernel"]
    assert adapter.shape == (width, width // REDUCTION)
    assert abs(float(adapter.std()) - adapters.INIT_STDDEV) < 0.01
    assert not flat(params)["encoder/layers_0/mlp_adapter/up/bias"].any()
    abstract = models.init_params(adapted, jax.random.PRNGKey(0))  # boxed: logical axes
    box = abstract["encoder"]["layers_0"]["mlp_adapter"]["down"]["kernel"]
    assert box.names == ("embed", None)


def test_bad_adapter_reduction_is_a_user_error():
    with pytest.raises(UserError, match="adapter_reduction"):
        dataclasses.replace(TINY_T5, adapter_reduction=32)  # wider than emb_dim=16
    with pytest.raises(UserError, match="adapter_reduction"):
        dataclasses.replace(TINY_B2B, adapter_reduction=0)


# ---------------------------------------------------------------------------------------------
# Frozen-backbone training.


OWNED = pytest.mark.parametrize("owned", [
    adapters.ExpertParams(layer_norms=False), adapters.ExpertParams(layer_norms=True),
    adapters.ExpertParams(layer_norms=True, cross_attention=True)],
    ids=["adapters", "adapters+norms", "adapters+norms+cross"])


@FAMILIES
@OWNED
def test_training_moves_only_the_experts_own_parameters(config, owned):
    backbone = backbone_of(config)
    adapted, start = expert.start_expert(backbone, REDUCTION)
    trained, history = finetune.finetune(adapted, start, PAIRS,
                                         dataclasses.replace(FAST, trainable=owned))
    assert len(history) == 4 and np.isfinite(history[-1]["loss"])
    before, after = flat(start), flat(trained)
    for path, value in after.items():
        if owned(tuple(path.split("/"))):
            assert not np.array_equal(value, before[path]), path
        else:  # the frozen backbone, bit for bit
            assert value.tobytes() == before[path].tobytes(), path
    mine = [tuple(p.split("/")) for p in after if owned(tuple(p.split("/")))]
    assert any(adapters.is_layer_norm(p) for p in mine) == owned.layer_norms
    assert any(adapters.is_cross_attention(p) for p in mine) == owned.cross_attention


@FAMILIES
def test_cross_attention_is_the_decoders_attention_over_the_encoder_only(config):
    paths = [tuple(p.split("/")) for p in flat(backbone_of(config).params)]
    cross = {"/".join(p[:3]) for p in paths if adapters.is_cross_attention(p)}
    name = "cross_attention" if config.family == "bert2bert" else "encoder_decoder_attention"
    assert cross == {f"decoder/layers_0/{name}"}
    # Its layer norm stays a layer norm (owned with `layer_norms`), not cross-attention.
    norms = [p for p in paths if "cross_attention" in "/".join(p) and adapters.is_layer_norm(p)]
    assert norms and not any(adapters.is_cross_attention(p) for p in norms)
    owned = adapters.ExpertParams(layer_norms=False, cross_attention=True)
    assert adapters.ExpertParams.from_dict(owned.to_dict()) == owned
    assert adapters.ExpertParams.from_dict({"layer_norms": True}) == adapters.ExpertParams(
        cross_attention=False)


def test_a_frozen_optimizers_state_shardings_match_its_state():
    """So `recross train` can resume it: frozen parameters have empty (masked) states."""
    config = adapters.with_adapters(TINY_T5, REDUCTION)
    optimizer = training.make_optimizer("adafactor", 1e-3, trainable=adapters.ExpertParams())
    state = training.TrainState.create(nn.unbox(models.init_params(config, jax.random.PRNGKey(0))),
                                       optimizer)
    shardings = training.state_shardings(training.abstract_params(config), optimizer,
                                         partitioning.create_mesh(devices=jax.devices()[:1]))
    assert (jax.tree.structure(jax.tree.map(lambda _: 0, shardings))
            == jax.tree.structure(jax.tree.map(lambda _: 0, state)))


def test_train_expert_returns_only_what_the_expert_owns():
    backbone = backbone_of(TINY_T5)
    params, _ = expert.train_expert(backbone, PAIRS, REDUCTION, FAST)
    owned = expert.ELM_FINETUNE.trainable
    assert set(flat(params)) == {p for p in flat(expert.start_expert(backbone, REDUCTION)[1])
                                 if owned(tuple(p.split("/")))}
    with pytest.raises(UserError, match="ExpertParams"):
        expert.train_expert(backbone, PAIRS, REDUCTION, dataclasses.replace(FAST, trainable=None))


# ---------------------------------------------------------------------------------------------
# Expert checkpoints.


def trained_expert(backbone: expert.Backbone, seed: int = 1,
                   owned: adapters.ExpertParams = adapters.ExpertParams()):
    """The expert parameters of fresh adapters (seeded) plus the backbone's other parameters
    that `owned` names (the cross-attention shifted, so that it differs from the backbone's)."""
    _, params = expert.start_expert(backbone, REDUCTION, seed)
    mine = adapters.split(params, owned)[0]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.5 if adapters.is_cross_attention(tuple(k.key for k in path))
        else x, mine)


@FAMILIES
@OWNED
def test_expert_checkpoint_round_trip(tmp_path, config, owned):
    backbone = backbone_of(config)
    params = trained_expert(backbone, owned=owned)
    checkpoint.save_expert(str(tmp_path / "e"), "cosmos_qa/no_prompt", backbone, REDUCTION,
                           params, owned, metadata={"steps": 3})
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["expert.json", "params.npz"]
    manifest = checkpoint.read_manifest(str(tmp_path / "e"))
    assert manifest["backbone"] == {"config": config.to_dict(),
                                    "fingerprint": backbone.fingerprint}
    assert manifest["name"] == "cosmos_qa/no_prompt" and manifest["metadata"] == {"steps": 3}
    assert (manifest["layer_norms"], manifest["cross_attention"]) == (owned.layer_norms,
                                                                      owned.cross_attention)
    assert checkpoint.owned_params(manifest) == owned
    # Small: the expert's own parameters only.
    assert set(manifest["params"]) == set(flat(params))
    adapted, loaded = checkpoint.load_expert(str(tmp_path / "e"), backbone)
    assert adapted == backbone.expert_config(REDUCTION)
    expected = flat(backbone.with_expert(params))
    assert flat(loaded).keys() == expected.keys()
    for path, value in flat(loaded).items():
        np.testing.assert_array_equal(value, expected[path], err_msg=path)
    # An expert owning the cross-attention brings its own; others keep the backbone's.
    base = flat(backbone.params)
    changed = [path for path, value in flat(loaded).items()
               if adapters.is_cross_attention(tuple(path.split("/")))
               and not np.array_equal(value, base[path])]
    assert bool(changed) == owned.cross_attention


def test_manifests_without_cross_attention_load_as_before(tmp_path):
    backbone = backbone_of(TINY_B2B)
    directory = str(tmp_path / "e")
    owned = adapters.ExpertParams(cross_attention=False)
    checkpoint.save_expert(directory, "e", backbone, REDUCTION,
                           trained_expert(backbone, owned=owned), owned)
    path = tmp_path / "e" / checkpoint.MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["cross_attention"]  # as written before the option existed
    path.write_text(json.dumps(manifest))
    assert checkpoint.owned_params(checkpoint.read_manifest(directory)) == owned
    checkpoint.load_expert(directory, backbone)
    # Parameters that do not match what the manifest says the expert owns are refused.
    manifest["cross_attention"] = True
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="lacks parameter 'decoder/layers_0/cross_attention"):
        checkpoint.load_expert(directory, backbone)


def test_loading_onto_another_backbone_is_refused(tmp_path):
    backbone = backbone_of(TINY_T5)
    directory = str(tmp_path / "e")
    checkpoint.save_expert(directory, "e", backbone, REDUCTION, trained_expert(backbone),
                           adapters.ExpertParams())
    cases = [(backbone_of(TINY_T5, seed=1), "another backbone: parameters"),
             (backbone_of(dataclasses.replace(TINY_T5, mlp_dim=64)),
              "another backbone: its config has mlp_dim=32"),
             (backbone_of(TINY_B2B), "belongs to a t5 backbone")]
    for other, message in cases:
        with pytest.raises(UserError, match=message) as error:
            checkpoint.load_expert(directory, other)
        assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="no expert at"):
        checkpoint.load_expert(str(tmp_path / "missing"), backbone)


def test_saving_parameters_that_do_not_fit_is_refused(tmp_path):
    backbone = backbone_of(TINY_T5)
    params = trained_expert(backbone)
    del params["encoder"]["encoder_norm"]
    with pytest.raises(UserError, match="lacks parameter 'encoder/encoder_norm/scale'"):
        checkpoint.save_expert(str(tmp_path / "e"), "e", backbone, REDUCTION, params,
                               adapters.ExpertParams())
    assert not (tmp_path / "e").exists()


def test_fingerprint_sees_every_byte():
    params = {"a": {"kernel": np.ones((2, 2), np.float32)}}
    changed = {"a": {"kernel": np.ones((2, 2), np.float32)}}
    changed["a"]["kernel"][1, 1] = np.nextafter(np.float32(1), np.float32(2))
    assert expert.fingerprint(params) == expert.fingerprint(jax.tree.map(np.copy, params))
    assert expert.fingerprint(params) != expert.fingerprint(changed)


# ---------------------------------------------------------------------------------------------
# The library and Retrieval-of-Experts.


class KeywordEmbedder:
    """Unit vectors: a keyword's axis plus a small text-seeded component, so equal texts embed
    equally and an instance's own key is its unique best match."""

    KEYWORDS = ("alpha", "beta", "gamma", "delta")
    description = {"kind": "test", "keywords": list(KEYWORDS)}

    def encode(self, texts):
        out = []
        for text in texts:
            vector = np.array([float(k in text) for k in self.KEYWORDS] + [0.0] * 8)
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            vector[len(self.KEYWORDS):] = 0.3 * np.random.default_rng(seed).normal(size=8)
            out.append(vector / np.linalg.norm(vector))
        return np.asarray(out, np.float32)


EMBED = KeywordEmbedder()


def rows(keyword: str, count: int, start: int = 0) -> list[dict]:
    return [{"inputs": f"{keyword} question {i}", "answer_choices": ["yes", "no"]}
            for i in range(start, start + count)]


def make_library(size: int = 100) -> library.ExpertLibrary:
    lib = library.ExpertLibrary.empty(EMBED, instances_per_expert=size)
    for name, keyword in (("A", "alpha"), ("B", "beta"), ("C", "gamma")):
        lib.add(name, rows(keyword, 6), EMBED)
    return lib


def test_instance_text_is_the_spec_format():
    assert library.instance_text({"inputs": "Is it?", "answer_choices": ["yes", "no"]}) == (
        "Answer Choices: yes ||| no, Instance: Is it?")
    assert library.instance_text({"inputs": "Sum up."}) == "Answer Choices: , Instance: Sum up."


def test_retrieval_majority_vote_and_ties_go_to_the_earliest_expert():
    lib = make_library()
    result = lib.retrieve(rows("beta", 3, 50) + rows("alpha", 2, 50), EMBED)
    assert result.expert == "B" and result.votes == {"A": 2, "B": 3, "C": 0}
    assert result.per_query == ["B"] * 3 + ["A"] * 2
    assert lib.retrieve(rows("gamma", 2, 50) + rows("beta", 2, 50), EMBED).expert == "B"
    assert lib.retrieve(rows("beta", 1, 50) + rows("alpha", 1, 50), EMBED).expert == "A"


def test_library_keeps_s_instances_per_expert():
    lib = library.ExpertLibrary.empty(EMBED, instances_per_expert=4)
    lib.add("A", rows("alpha", 10), EMBED, seed=3)
    lib.add("B", rows("beta", 2), EMBED)
    assert lib.counts == [4, 2] and lib.vectors.shape == (6, 12)
    assert list(lib.index.ids[:4]) == [f"A#{i}" for i in range(4)]


def test_adding_experts_never_changes_what_the_others_retrieve(tmp_path):
    lib = make_library()
    own = {name: rows(keyword, 6) for name, keyword in (("A", "alpha"), ("B", "beta"),
                                                         ("C", "gamma"))}
    before = {name: lib.retrieve(r, EMBED).per_query for name, r in own.items()}
    assert before == {name: [name] * 6 for name in own}
    # D shares A's keyword and even one of A's instances word for word.
    lib.add("D", rows("alpha", 6, 3) + rows("delta", 4), EMBED)
    assert {name: lib.retrieve(r, EMBED).per_query for name, r in own.items()} == before
    lib.save(str(tmp_path / "lib"))
    loaded = library.ExpertLibrary.load(str(tmp_path / "lib"))
    assert loaded.experts == ["A", "B", "C", "D"] and loaded.counts == [6, 6, 6, 10]
    assert {name: loaded.retrieve(r, EMBED).per_query for name, r in own.items()} == before
    assert loaded.retrieve(rows("delta", 3, 9), EMBED).expert == "D"


def test_library_bad_inputs_are_one_line_user_errors(tmp_path):
    empty = library.ExpertLibrary.empty(EMBED)
    with pytest.raises(UserError, match="library is empty"):
        empty.retrieve(rows("alpha", 1), EMBED)
    with pytest.raises(UserError, match="empty expert library"):
        empty.save(str(tmp_path / "lib"))
    lib = make_library()
    with pytest.raises(UserError, match="already in the library"):
        lib.add("A", rows("alpha", 1), EMBED)
    with pytest.raises(UserError, match="no training instances"):
        lib.add("E", [], EMBED)
    other = KeywordEmbedder()
    other.description = {"kind": "other"}
    with pytest.raises(UserError, match="embedder differs"):
        lib.retrieve(rows("alpha", 1), other)
    with pytest.raises(UserError, match="no expert library"):
        library.ExpertLibrary.load(str(tmp_path / "none"))


# ---------------------------------------------------------------------------------------------
# Merging.


def test_uniform_average_of_adapters():
    trees = [{"up": {"kernel": np.array([1.0, 2.0], np.float32)}, "b": np.float32(0.0)},
             {"up": {"kernel": np.array([3.0, 6.0], np.float32)}, "b": np.float32(1.0)},
             {"up": {"kernel": np.array([5.0, 1.0], np.float32)}, "b": np.float32(2.0)}]
    merged = merging.average(trees)
    np.testing.assert_array_equal(merged["up"]["kernel"], [3.0, 3.0])
    assert merged["b"] == 1.0 and merged["up"]["kernel"].dtype == np.float32
    with pytest.raises(UserError, match="expert 1 has other parameters"):
        merging.average([trees[0], {"up": {"kernel": np.zeros(3, np.float32)}, "b": 0.0}])
    with pytest.raises(UserError, match="nothing to merge"):
        merging.average([])


def test_task_vectors_with_default_and_given_lambdas():
    pre = {"w": np.array([1.0, 0.0], np.float32)}
    tuned = [{"w": np.array([3.0, 2.0], np.float32)}, {"w": np.array([5.0, -4.0], np.float32)}]
    # τ = (2, 2) and (4, -4); λ = 1/2 each: (1 + 1 + 2, 0 + 1 - 2).
    np.testing.assert_array_equal(merging.task_vector_merge(pre, tuned)["w"], [4.0, -1.0])
    # λ = (0.25, 1): (1 + 0.5 + 4, 0 + 0.5 - 4).
    np.testing.assert_array_equal(merging.task_vector_merge(pre, tuned, [0.25, 1.0])["w"],
                                  [5.5, -3.5])
    with pytest.raises(UserError, match="2 task vector weights for 1 models"):
        merging.task_vector_merge(pre, tuned[:1], [0.5, 0.5])


def test_tune_lambda_picks_the_best_held_out_score():
    pre = {"w": np.array([0.0], np.float32)}
    tuned = [{"w": np.array([1.0], np.float32)}, {"w": np.array([3.0], np.float32)}]
    # θ = λ (1 + 3) = 4λ; the held-out score peaks at θ = 1.6, i.e. λ = 0.4.
    best, params, scores = merging.tune_lambda(pre, tuned, lambda p: -abs(p["w"][0] - 1.6))
    assert best == 0.4 and params["w"][0] == pytest.approx(1.6)
    assert list(scores) == list(merging.LAMBDA_GRID)
    # Equal scores: the first λ of the grid.
    assert merging.tune_lambda(pre, tuned, lambda p: 0.0, grid=(0.5, 0.2))[0] == 0.5


def test_merge_averages_what_the_experts_own_and_refuses_mixed_kinds(tmp_path):
    backbone = backbone_of(TINY_B2B)
    crossed = adapters.ExpertParams(cross_attention=True)
    made = {}
    for name, seed, owned in (("a", 1, crossed), ("b", 2, crossed),
                              ("c", 3, adapters.ExpertParams(cross_attention=False))):
        made[name] = trained_expert(backbone, seed, owned)
        checkpoint.save_expert(str(tmp_path / name), name, backbone, REDUCTION, made[name], owned)
    result = experts_cli.merge(backbone, [str(tmp_path / "a"), str(tmp_path / "b")],
                               str(tmp_path / "ab"), "ab")
    assert result["merged"] == ["a", "b"]
    assert checkpoint.owned_params(checkpoint.read_manifest(str(tmp_path / "ab"))) == crossed
    _, merged = checkpoint.load_expert(str(tmp_path / "ab"), backbone)
    a, b, m = flat(made["a"]), flat(made["b"]), flat(merged)
    assert set(a) == set(b) and any(adapters.is_cross_attention(tuple(p.split("/"))) for p in a)
    for path in a:
        np.testing.assert_allclose(m[path], (a[path] + b[path]) / 2, rtol=1e-6, err_msg=path)
    with pytest.raises(UserError, match="cannot merge experts of different"):
        experts_cli.merge(backbone, [str(tmp_path / "a"), str(tmp_path / "c")],
                          str(tmp_path / "ac"), "ac")


def test_experts_gin_binds_every_setting_it_names():
    path = os.path.join(REPO, "gin", "runs", "experts.gin")
    bound = {}
    for line in open(path, encoding="utf-8"):
        code = line.split("#", 1)[0].strip()
        if code:
            key, value = (part.strip() for part in code.split("=", 1))
            bound[key.removeprefix("experts.settings.")] = ast.literal_eval(value)
    gin_utils.parse([path], [])
    try:
        cfg = experts_cli.settings()
    finally:
        gin.clear_config()
    assert bound and {key: cfg[key] for key in bound} == bound
    assert set(cfg) - set(bound) == {"embedder_dir"}


# ---------------------------------------------------------------------------------------------
# The `recross experts` command.

TASKS_MODULE = '''
from tasks import common


def register(name, word, templates=("plain",), size=8):
    def examples(split):
        for i in range(size):
            template = templates[i % len(templates)]
            yield common.make_example(
                inputs=f"the {word} cat of the {common.example_id(name, split, 'p', i)} house",
                targets="yes" if i % 2 else "no", answer_choices=["yes", "no"], task=name,
                template=template, example_id=common.example_id(name, split, template, i))
    common.register_task(name, examples)


register("toy_red", "red")
register("toy_blue", "blue")
# Prompt experts: 12 examples, 6 of each template (their ids "toy_mixed|train|<template>|#i").
register("toy_mixed", "green", templates=("plain", "Does it follow?"), size=12)
'''


@pytest.fixture()
def cli_world(tmp_path, monkeypatch):
    (tmp_path / "toy_expert_tasks.py").write_text(TASKS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RECROSS_VOCAB", tiny_models.SEQIO_TEST_VOCAB)
    monkeypatch.delitem(vocab.VOCABULARY.__dict__, "resolved", raising=False)
    tiny_models.save_tiny_model(str(tmp_path / "backbone"), step=0)
    tiny_models.save_tiny_model(str(tmp_path / "other"), step=0, seed=1)
    bert_dir = tiny_bert.make_bert_dir(str(tmp_path / "minilm"), with_pooler=False)
    yield tmp_path, bert_dir
    vocab.VOCABULARY.__dict__.pop("resolved", None)


def test_experts_command_trains_indexes_retrieves_merges_and_evaluates(cli_world, capsys):
    tmp_path, bert_dir = cli_world
    flags = ["--tasks_module", "toy_expert_tasks", "--gin.experts.settings.reduction=4",
             "--gin.experts.settings.epochs=1", "--gin.experts.settings.batch_size=4",
             f"--gin.experts.settings.embedder_dir='{bert_dir}'"]
    backbone = str(tmp_path / "backbone")

    def run(*argv: str) -> dict:
        capsys.readouterr()
        assert cli.main(["experts", *argv, *flags]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    for color in ("red", "blue"):
        made = run("train", "--backbone", backbone, "--task", f"toy_{color}",
                   "--out", str(tmp_path / color))
        assert made["expert"] == f"toy_{color}:train" and made["steps"] == 2
    assert run("train", "--backbone", backbone, "--task", "toy_red",
               "--out", str(tmp_path / "red"))["resumed"]
    built = run("library", "--experts", str(tmp_path / "red"), str(tmp_path / "blue"),
                "--out", str(tmp_path / "library"))
    assert built["experts"] == ["toy_red:train", "toy_blue:train"] and built["keys"] == 16
    found = run("retrieve", "--library", str(tmp_path / "library"), "--task", "toy_blue",
                "--split", "train")
    assert found["expert"] == "toy_blue:train"
    assert found["votes"] == {"toy_red:train": 0, "toy_blue:train": 8}
    merged = run("merge", "--backbone", backbone, "--experts", str(tmp_path / "red"),
                 str(tmp_path / "blue"), "--out", str(tmp_path / "merged"))
    assert merged["merged"] == ["toy_red:train", "toy_blue:train"]
    scored = run("eval", "--backbone", backbone, "--expert", str(tmp_path / "merged"),
                 "--task", "toy_red")
    assert scored["num_examples"] == 8 and 0.0 <= scored["accuracy"] <= 1.0

    # Bad input: one line, exit 2.
    for argv, message in (
            (["eval", "--backbone", backbone, "--expert", str(tmp_path / "nope"), "--task",
              "toy_red"], "no expert at"),
            (["eval", "--backbone", str(tmp_path / "other"), "--expert", str(tmp_path / "red"),
              "--task", "toy_red"], "trained on another backbone"),
            (["library", "--out", str(tmp_path / "empty")], "the library would be empty"),
            (["retrieve", "--library", str(tmp_path / "empty"), "--task", "toy_red"],
             "no expert library")):
        capsys.readouterr()
        assert cli.main(["experts", *argv, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
