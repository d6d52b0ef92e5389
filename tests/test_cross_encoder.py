"""Cross-encoder reranker: ranking by utility, bucketed scoring, pair tokenization, parity with
transformers' BertForSequenceClassification, training on a learnable tuple set, resume,
save/load and bad input."""
from __future__ import annotations

import inspect
import json
import os

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import tiny_bert

from recross_jax import assets, partitioning
from recross_jax.errors import UserError
from recross_jax.models.bert import BertConfig
from recross_jax.rerank import cross_encoder as ce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- fixtures: a tiny HF-format BERT directory and learnable tuples -----------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    return tiny_bert.make_bert_dir(str(tmp_path_factory.mktemp("tiny_bert")))


def _sentence(rng: np.random.Generator, keyword: str, length: int = 5) -> str:
    words = list(rng.choice(tiny_bert.FILLERS, length - 1))
    words.insert(int(rng.integers(length)), keyword)
    return " ".join(words)


def make_tuples(path: str, count: int, seed: int = 0, per_side: int = 3) -> str:
    """Learnable tuples: positives share the queries' keyword, negatives hold no keyword.

    (A 2-layer random-init BERT does not learn in a few hundred steps to match *which*
    keyword two segments share, so negatives are told apart by having none.)
    """
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for t in range(count):
            keyword = tiny_bert.KEYWORDS[t % len(tiny_bert.KEYWORDS)]
            record = {"task": f"task{t % 4}",
                      "queries": [_sentence(rng, keyword) for _ in range(per_side)],
                      "positives": [_sentence(rng, keyword) for _ in range(per_side)],
                      "negatives": [_sentence(rng, str(rng.choice(tiny_bert.FILLERS)))
                                    for _ in range(per_side)]}
            f.write(json.dumps(record) + "\n")
    return path


TRAIN_ARGS = dict(max_length=32, batch_size=32, learning_rate=2e-3, warmup_steps=5,
                  weight_decay=0.0, eval_batch_size=64, progress=False)


# --- ranking by utility ------------------------------------------------------------------------


def test_rank_by_utility_orders_by_mean_over_queries_with_stable_ties():
    scores = np.array([[1.0, 4.0, 2.0, 0.0, 2.0],
                       [3.0, 0.0, 2.0, 5.0, 2.0]])
    # means: 2.0, 2.0, 2.0, 2.5, 2.0 -> index 3, then the four ties in candidate order
    order, utilities = ce.rank_by_utility(scores, 3)
    np.testing.assert_array_equal(order, [3, 0, 1])
    np.testing.assert_allclose(utilities, [2.5, 2.0, 2.0])
    order, utilities = ce.rank_by_utility(np.array([[0.5, -1.0, 3.0]]), 10)
    np.testing.assert_array_equal(order, [2, 0, 1])  # fewer candidates than top_n: all
    np.testing.assert_allclose(utilities, [3.0, 0.5, -1.0])
    assert ce.rank_by_utility(scores, 0)[0].shape == (0,)
    with pytest.raises(UserError, match="top_n"):
        ce.rank_by_utility(scores, -1)
    with pytest.raises(UserError, match="queries >= 1"):
        ce.rank_by_utility(np.zeros((0, 3)), 1)


def _set_head(reranker: ce.Reranker, kernel: np.ndarray, bias: np.ndarray) -> None:
    params = jax.device_get(reranker.params)
    params["classifier"] = {"kernel": np.asarray(kernel, np.float32),
                            "bias": np.asarray(bias, np.float32)}
    reranker.params = jax.device_put(params)


def test_known_head_gives_known_scores_order_and_utility(bert_dir):
    reranker = ce.Reranker.from_init_dir(bert_dir, max_length=32)
    queries = ["red cat", "blue dog sky", "gold"]
    candidates = ["the tree", "a house of cups", "pink", "road sea hill door"]
    # The positive logit is the bias: every pair scores exactly 1.25, all candidates tie.
    _set_head(reranker, np.zeros((32, 2)), [0.0, 1.25])
    scores = reranker.score_pairs(queries, candidates)
    np.testing.assert_array_equal(scores, np.full((3, 4), 1.25, np.float32))
    order, utilities = reranker.rerank(queries, candidates, 3)
    np.testing.assert_array_equal(order, [0, 1, 2])
    np.testing.assert_allclose(utilities, 1.25)
    # A random head: rerank is the utility order of score_pairs, utility its column mean.
    _set_head(reranker, np.random.default_rng(0).normal(size=(32, 2)), [0.1, -0.2])
    scores = reranker.score_pairs(queries, candidates)
    assert np.ptp(scores.mean(0)) > 1e-4  # the candidates differ: the order means something
    np.testing.assert_allclose(reranker.utility(queries, candidates), scores.mean(0), rtol=1e-6)
    order, utilities = reranker.rerank(queries, candidates, 2)
    np.testing.assert_array_equal(order, np.argsort(-scores.mean(0))[:2])
    np.testing.assert_allclose(utilities, scores.mean(0)[order], rtol=1e-6)


def test_score_pairs_input_errors(bert_dir):
    reranker = ce.Reranker.from_init_dir(bert_dir, max_length=32)
    with pytest.raises(UserError, match="single string"):
        reranker.score_pairs("red cat", ["a"])
    with pytest.raises(UserError, match=r"candidates\[1\] is a int"):
        reranker.score_pairs(["red"], ["a", 3])
    with pytest.raises(UserError, match="at least one query"):
        reranker.rerank([], ["a"], 1)
    assert reranker.score_pairs(["red"], []).shape == (1, 0)
    with pytest.raises(UserError, match="exceeds"):
        ce.Reranker.from_init_dir(bert_dir, max_length=161)


# --- batched scoring vs one pair at a time -----------------------------------------------------


def _one_at_a_time(reranker: ce.Reranker, firsts: list[str], seconds: list[str]
                   ) -> np.ndarray:
    """Each pair alone in its own row (padded to max_length): no batching, sorting, buckets."""
    apply = jax.jit(ce.CrossEncoder(reranker.config).apply)
    width = reranker.tokenizer.max_length
    out = []
    for ids, types in reranker.tokenizer.encode(firsts, seconds):
        row = np.zeros((3, 1, width), np.int32)
        row[0, 0, :len(ids)], row[1, 0, :len(ids)], row[2, 0, :len(ids)] = ids, types, 1
        out.append(np.asarray(apply({"params": reranker.params}, *row))[0])
    return np.stack(out)


def test_packed_scoring_equals_one_pair_at_a_time(bert_dir):
    rng = np.random.default_rng(1)
    words = tiny_bert.KEYWORDS + tiny_bert.FILLERS
    queries = [" ".join(rng.choice(words, n)) for n in (2, 70)]
    candidates = [" ".join(rng.choice(words, n)) for n in (140, 1, 30)]
    reranker = ce.Reranker.from_init_dir(bert_dir, max_length=150, batch_size=4)
    firsts = [q for q in queries for _ in candidates]
    seconds = candidates * len(queries)
    lengths = [len(ids) for ids, _ in reranker.tokenizer.encode(firsts, seconds)]
    # Truncated pairs, pairs out of length order, short pairs sharing rows, several row lengths.
    assert max(lengths) == 150 and min(lengths) < 64 and lengths != sorted(lengths)
    scores = reranker.score_pairs(queries, candidates)
    reference = _one_at_a_time(reranker, firsts, seconds)[:, ce.POSITIVE].reshape(2, 3)
    np.testing.assert_allclose(scores, reference, atol=2e-5)
    # The same on an 8-device mesh (rows split over `data`, batches rounded up to 8 rows).
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    sharded = ce.Reranker(reranker.config, jax.device_get(reranker.params), reranker.tokenizer,
                          batch_size=4, mesh=partitioning.create_mesh())
    np.testing.assert_allclose(sharded.score_pairs(queries, candidates), scores, atol=2e-5)


# --- tokenization and parity with transformers -------------------------------------------------


def _minilm_dir() -> str:
    if not assets.is_complete("minilm"):
        pytest.skip("all-MiniLM-L6-v2 is not in the asset cache (`recross assets fetch minilm`)")
    return assets.asset_dir("minilm")


@pytest.mark.parametrize("which", ["tiny", "minilm"])
@pytest.mark.parametrize("max_length", [12, 512])
def test_pair_tokenization_equals_transformers(bert_dir, which, max_length):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    directory = bert_dir if which == "tiny" else _minilm_dir()
    path = os.path.join(directory, "tokenizer.json")
    ours = ce.PairTokenizer.from_file(path, max_length)
    theirs = (PreTrainedTokenizerFast(tokenizer_file=path) if which == "tiny"
              else AutoTokenizer.from_pretrained(directory))
    firsts = ["Red cat of the sea", "a " * 30 + "dog", "gold", "the tree " * 8]
    seconds = ["blue sky", "pink", "gray rock " * 20, "fish " * 9]
    if which == "minilm":
        firsts[0] = "Which city is the capital of France? Answer choices: Paris, Lyon."
    expected = theirs(firsts, seconds, truncation="longest_first", max_length=max_length,
                      return_token_type_ids=True)
    for (ids, types), want_ids, want_types in zip(ours.encode(firsts, seconds),
                                                  expected["input_ids"],
                                                  expected["token_type_ids"]):
        assert ids.tolist() == want_ids
        assert types.tolist() == want_types
        assert len(ids) <= max_length


def test_minilm_logits_equal_pytorch_bert_for_sequence_classification():
    import torch
    from transformers import BertForSequenceClassification
    directory = _minilm_dir()
    reranker = ce.Reranker.from_init_dir(directory, max_length=512, seed=3)
    torch_model = BertForSequenceClassification.from_pretrained(directory, num_labels=2)
    torch_model.eval()
    params = jax.device_get(reranker.params)
    # The pooler comes from the checkpoint, the head from our seed; copy the head over.
    np.testing.assert_array_equal(params["bert"]["pooler"]["kernel"],
                                  torch_model.bert.pooler.dense.weight.detach().numpy().T)
    with torch.no_grad():
        torch_model.classifier.weight.copy_(torch.tensor(params["classifier"]["kernel"].T))
        torch_model.classifier.bias.copy_(torch.tensor(params["classifier"]["bias"]))
    firsts = ["Is the sky blue? Answer yes or no.", "Translate to French: good morning",
              "Q: " + "what is two plus two? " * 40]
    seconds = ["The sky is blue on a clear day.", "Bonjour.", "It is four. " * 100]
    ours = reranker.logits(firsts, seconds)
    encoded = reranker.tokenizer.encode(firsts, seconds)
    assert max(len(ids) for ids, _ in encoded) == 512
    reference = []
    with torch.no_grad():
        for ids, types in encoded:
            out = torch_model(input_ids=torch.from_numpy(ids[None].astype(np.int64)),
                              token_type_ids=torch.from_numpy(types[None].astype(np.int64)))
            reference.append(out.logits.numpy()[0])
    assert np.max(np.abs(ours - np.stack(reference))) <= 1e-4


# --- initialisation ----------------------------------------------------------------------------


def test_init_takes_backbone_and_pooler_from_checkpoint_and_a_seeded_head(tmp_path, bert_dir):
    config = BertConfig.from_json_file(os.path.join(bert_dir, "config.json"))
    params = ce.init_params(bert_dir, config, seed=0)
    from safetensors.numpy import load_file
    tensors = load_file(os.path.join(bert_dir, "model.safetensors"))
    np.testing.assert_array_equal(params["bert"]["pooler"]["kernel"],
                                  tensors["pooler.dense.weight"].T)
    np.testing.assert_array_equal(params["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  tensors["embeddings.word_embeddings.weight"])
    # The head is random, drawn from the seed, with the shapes of the model's.
    shapes = jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(ce.abstract_params(config)))
    assert jax.tree_util.tree_map(np.shape, params) == shapes
    assert 0.015 < params["classifier"]["kernel"].std() < 0.025
    np.testing.assert_array_equal(params["classifier"]["bias"], 0.0)
    again = ce.init_params(bert_dir, config, seed=0)
    other = ce.init_params(bert_dir, config, seed=1)
    np.testing.assert_array_equal(again["classifier"]["kernel"], params["classifier"]["kernel"])
    assert not np.allclose(other["classifier"]["kernel"], params["classifier"]["kernel"])
    # Without a pooler in the checkpoint, the pooler is the seeded random one.
    no_pooler = tiny_bert.make_bert_dir(str(tmp_path / "no_pooler"), with_pooler=False)
    params = ce.init_params(no_pooler, config, seed=0)
    np.testing.assert_array_equal(params["bert"]["pooler"]["kernel"],
                                  ce.head_params(config, seed=0)["pooler"]["kernel"])
    assert not np.allclose(params["bert"]["pooler"]["kernel"],
                           tensors["pooler.dense.weight"].T)


# --- training data -----------------------------------------------------------------------------


def test_tuple_pairs_split_and_epoch_batches():
    firsts, seconds, labels = ce.tuple_pairs(
        {"queries": ["q1", "q2"], "positives": ["p1"], "negatives": ["n1", "n2"]})
    assert list(zip(firsts, seconds, labels)) == [
        ("q1", "p1", 1), ("q1", "n1", 0), ("q1", "n2", 0),
        ("q2", "p1", 1), ("q2", "n1", 0), ("q2", "n2", 0)]
    train, dev = ce.split_tuples(40, 0.15, seed=0)
    assert len(dev) == 6 and len(train) == 34
    assert sorted(np.concatenate([train, dev]).tolist()) == list(range(40))
    np.testing.assert_array_equal(ce.split_tuples(40, 0.15, seed=0)[1], dev)
    assert not np.array_equal(ce.split_tuples(40, 0.15, seed=1)[1], dev)
    assert len(ce.split_tuples(2, 0.15, seed=0)[1]) == 1
    lengths = np.random.default_rng(0).integers(5, 300, 1000)
    batches = ce.epoch_batches(lengths, 8, seed=0, epoch=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert sum(len(b) < 8 for b in batches) == 0 and len(batches) == 125
    assert [b.tolist() for b in ce.epoch_batches(lengths, 8, seed=0, epoch=1)] == \
        [b.tolist() for b in batches]
    assert ce.epoch_batches(lengths, 8, seed=0, epoch=2)[0].tolist() != batches[0].tolist()
    # Sorting within windows: a batch spans far fewer lengths than a random one would.
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 20
    odd = ce.epoch_batches(lengths[:999], 8, seed=0, epoch=1)
    assert sorted(len(b) for b in odd)[0] == 7 and sum(len(b) < 8 for b in odd) == 1


@pytest.mark.parametrize("content, message", [
    (None, "tuples file not found"),
    ("", "holds no tuples"),
    ("\n\n", "holds no tuples"),
    ('{"queries": ["q"], "positives": ["p"], "negatives": []}\n{"queries": [\n',
     r":2: not valid JSON"),
    ('["q", "p"]\n', r":1: expected a JSON object, got list"),
    ('{"queries": ["q"], "positives": "p", "negatives": []}\n', r":1: 'positives' must be"),
    ('{"queries": ["q"], "negatives": ["n"]}\n', r":1: 'positives' must be"),
    ('{"queries": ["q", 3], "positives": ["p"], "negatives": []}\n', r":1: 'queries' must be"),
    ('{"queries": [], "positives": ["p"], "negatives": ["n"]}\n', r":1: a tuple needs queries"),
    ('{"queries": ["q"], "positives": ["p"], "negatives": ["n"]}\n', "at least 2 tuples"),
])
def test_bad_tuples_files_are_user_errors_and_write_nothing(tmp_path, bert_dir, content,
                                                            message):
    path = tmp_path / "tuples.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        ce.train_reranker(str(path), str(out), init_dir=bert_dir, **TRAIN_ARGS)
    assert not out.exists()


def test_bad_arguments_are_user_errors(tmp_path, bert_dir):
    tuples = make_tuples(str(tmp_path / "t.jsonl"), 4)
    with pytest.raises(UserError, match="dev_fraction"):
        ce.train_reranker(tuples, str(tmp_path / "o"), init_dir=bert_dir, dev_fraction=0.0)
    with pytest.raises(UserError, match="empty lacks config.json"):
        os.makedirs(tmp_path / "empty")
        ce.train_reranker(tuples, str(tmp_path / "o"), init_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="max_length 600 exceeds"):
        ce.train_reranker(tuples, str(tmp_path / "o"), init_dir=bert_dir, max_length=600)
    with pytest.raises(UserError, match="not a trained reranker"):
        ce.load_reranker(str(tmp_path))
    assert not (tmp_path / "o").exists()


# --- training ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bert_dir) -> tuple[str, str, dict]:
    """(tuples path, reranker dir, metrics) of one training run on the keyword task."""
    root = str(tmp_path_factory.mktemp("trained"))
    tuples = make_tuples(os.path.join(root, "tuples.jsonl"), 40)
    out = os.path.join(root, "reranker")
    metrics = ce.train_reranker(tuples, out, init_dir=bert_dir, epochs=8, seed=0, **TRAIN_ARGS)
    return tuples, out, metrics


def test_training_learns_the_keyword_task_and_keeps_the_best_epoch(trained):
    tuples, out, metrics = trained
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert metrics["num_train_tuples"] == 34 and metrics["num_dev_tuples"] == 6
    assert metrics["num_train_pairs"] == 34 * 18 and metrics["num_dev_pairs"] == 6 * 18
    accuracies = [h["dev_accuracy"] for h in history]
    assert history[0]["train_loss"] > history[-1]["train_loss"]
    assert metrics["dev_accuracy"] == max(accuracies) >= 0.85  # chance is 0.5
    best = history[metrics["best_epoch"] - 1]
    assert best["dev_accuracy"] == metrics["dev_accuracy"]
    assert best["dev_loss"] == min(h["dev_loss"] for h in history
                                   if h["dev_accuracy"] == metrics["dev_accuracy"])
    # The saved parameters are the best epoch's: they reproduce its dev metrics.
    reranker = ce.load_reranker(out)
    records = ce.read_tuples(tuples)
    _, dev_ids = ce.split_tuples(len(records), 0.15, seed=0)
    firsts, seconds, labels = [], [], []
    for i in dev_ids:
        f, s, lab = ce.tuple_pairs(records[i])
        firsts, seconds, labels = firsts + f, seconds + s, labels + lab
    dev = ce.dev_metrics(reranker.logits(firsts, seconds), np.array(labels))
    assert dev["accuracy"] == pytest.approx(metrics["dev_accuracy"])
    assert dev["loss"] == pytest.approx(metrics["dev_loss"], abs=1e-5)
    # Positives of a held-out query rank above its negatives.
    record = records[dev_ids[0]]
    order, _ = reranker.rerank(record["queries"], record["positives"] + record["negatives"], 3)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert sorted(os.listdir(out)) == ["checkpoint_%d" % metrics["best_epoch"], "reranker.json",
                                       "tokenizer.json"]


def test_finished_directory_is_reused_and_guarded(trained, bert_dir):
    tuples, out, metrics = trained
    again = ce.train_reranker(tuples, out, init_dir=bert_dir, epochs=8, seed=0, **TRAIN_ARGS)
    assert again == metrics  # returned from reranker.json, no training
    with pytest.raises(UserError, match="trained with other settings"):
        ce.train_reranker(tuples, out, init_dir=bert_dir, epochs=8, seed=1, **TRAIN_ARGS)


def test_a_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(
        trained, bert_dir, tmp_path, monkeypatch):
    tuples, whole_dir, whole = trained
    args = dict(init_dir=bert_dir, epochs=8, seed=0, **TRAIN_ARGS)
    out = str(tmp_path / "resumed")
    save = ce._Run.save

    def save_then_die(self, epoch, *rest):
        save(self, epoch, *rest)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ce._Run, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ce.train_reranker(tuples, out, **args)
    assert not (tmp_path / "resumed" / "reranker.json").exists()
    with pytest.raises(UserError, match="not a trained reranker"):
        ce.load_reranker(out)
    monkeypatch.setattr(ce._Run, "save", save)
    with pytest.raises(UserError, match="unfinished run with other settings"):
        ce.train_reranker(tuples, out, **{**args, "learning_rate": 1e-3})
    resumed = ce.train_reranker(tuples, out, **args)
    assert resumed == whole  # every epoch's losses and dev metrics, bit for bit
    a = jax.device_get(ce.load_reranker(whole_dir).params)
    b = jax.device_get(ce.load_reranker(out).params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert not (tmp_path / "resumed" / ce.TRAIN_DIR).exists()


# --- command line ------------------------------------------------------------------------------


def test_repo_gin_file_states_the_spec_defaults():
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([os.path.join(REPO, "gin", "runs", "rerank.gin")], [])
        spec = {"max_length": 512, "epochs": 5, "batch_size": 64, "learning_rate": 1e-5,
                "warmup_steps": 100, "dev_fraction": 0.15}
        for name, value in spec.items():
            assert gin.query_parameter(f"cross_encoder.train_reranker.{name}") == value
            assert inspect.signature(ce.train_reranker).parameters[name].default == value
    finally:
        gin.clear_config()


def test_cli_trains_with_gin_bindings_and_reports_errors(tmp_path, bert_dir, capsys):
    tuples = make_tuples(str(tmp_path / "t.jsonl"), 6)
    gin_file = tmp_path / "reranker.gin"
    gin_file.write_text("from __gin__ import dynamic_registration\n"
                        "from recross_jax.rerank import cross_encoder\n"
                        "cross_encoder.train_reranker.batch_size = 16\n"
                        "cross_encoder.train_reranker.max_length = 32\n"
                        "cross_encoder.train_reranker.warmup_steps = 2\n")
    out = tmp_path / "out"
    code = ce.main(["--tuples", tuples, "--out", str(out), "--gin_file", str(gin_file),
                    f"--gin.cross_encoder.train_reranker.init_dir='{bert_dir}'",
                    "--gin.cross_encoder.train_reranker.epochs=1",
                    "--gin.cross_encoder.train_reranker.progress=False"])
    assert code == 0
    assert "best epoch 1: dev accuracy" in capsys.readouterr().out
    assert "cross_encoder.train_reranker.batch_size = 16" in (out / "config.gin").read_text()
    info = json.loads((out / "reranker.json").read_text())
    assert info["settings"]["epochs"] == 1 and info["settings"]["batch_size"] == 16

    (tmp_path / "bad.jsonl").write_text('{"queries": ["q"]}\n')
    code = ce.main(["--tuples", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o2"),
                    f"--gin.cross_encoder.train_reranker.init_dir='{bert_dir}'"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "bad.jsonl:1: 'positives' must be a list of strings" in err
    code = ce.main(["--tuples", tuples, "--out", str(tmp_path / "o3"),
                    "--gin.cross_encoder.train_reranker.no_such_arg=1"])
    assert code == 2 and "no_such_arg" in capsys.readouterr().err
