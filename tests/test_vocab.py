"""Vocabulary training (T5 conventions, determinism, atomic output) and vocabulary lookup."""
import json
import os
import random

import gin
import pytest
import sentencepiece as spm
import seqio

from recross_jax.errors import UserError
from tasks import common, jsonl, p3, vocab  # noqa: F401  (p3 registers the P3 tasks used)

SEQIO_T5_MODEL = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                              "sentencepiece.model")
WORDS = ("the a cat dog bird sat ran flew over under near house garden river tree quickly slowly "
         "happy small large green blue red question answer premise hypothesis true false neither "
         "because although when where which choose correct option sentence passage").split()


def _corpus(n=400, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(n)]


def test_trained_model_has_t5_special_ids_and_loads_in_seqio_with_extra_ids(tmp_path):
    out = vocab.train_vocabulary(_corpus(), 60, str(tmp_path / "v.model"))
    processor = spm.SentencePieceProcessor(model_file=out)
    assert processor.get_piece_size() == 60
    special = (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id())
    assert special == (0, 1, 2, -1)
    assert [processor.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert "▁hypothesis" in {processor.id_to_piece(i) for i in range(60)}
    with open(tmp_path / "v.vocab", encoding="utf-8") as f:
        assert [line.split("\t")[0] for line in f][:3] == ["<pad>", "</s>", "<unk>"]

    vocabulary = seqio.SentencePieceVocabulary(out, extra_ids=100)
    assert vocabulary.vocab_size == 160
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    text = "the cat sat near the river."
    ids = vocabulary.encode(text)
    assert max(ids) < 60 and vocabulary.decode(ids) == text
    assert vocabulary.encode("<extra_id_0>") == [159]


def test_training_is_deterministic_for_a_seed(tmp_path):
    def train(name, seed, **kwargs):
        out = vocab.train_vocabulary(_corpus(), 50, str(tmp_path / f"{name}.model"), seed, **kwargs)
        with open(out, "rb") as model, open(out[:-6] + ".vocab", "rb") as pieces:
            return model.read(), pieces.read()

    assert train("a", 0) == train("b", 0)
    # Sampling a subset of the sentences is the seeded step.
    assert train("c", 3, max_sentences=200) == train("d", 3, max_sentences=200)
    assert train("c", 3, max_sentences=200) != train("e", 4, max_sentences=200)


def test_failures_leave_nothing_on_disk(tmp_path):
    out = str(tmp_path / "out" / "v.model")
    with pytest.raises(UserError, match=r"cannot train a 5000-piece vocabulary on 400 sentences: "
                                         r"Vocabulary size too high \(5000\)"):
        vocab.train_vocabulary(_corpus(), 5000, out)
    with pytest.raises(UserError, match="no text to train the vocabulary on"):
        vocab.train_vocabulary(["", ""], 50, out)
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []
    with pytest.raises(UserError, match="must end in .model"):
        vocab.train_vocabulary(_corpus(), 50, str(tmp_path / "v.spm"))
    with pytest.raises(UserError, match="at least 4"):
        vocab.train_vocabulary(_corpus(), 3, out)


def test_official_t5_style_model_is_accepted(monkeypatch):
    reference = seqio.SentencePieceVocabulary(SEQIO_T5_MODEL, extra_ids=100)
    monkeypatch.setenv("RECROSS_VOCAB", SEQIO_T5_MODEL)
    assert vocab.vocabulary_path() == SEQIO_T5_MODEL
    lazy = vocab.LazyVocabulary()
    assert lazy.vocab_size == reference.vocab_size == 126  # 26 pieces + 100 extra ids
    assert lazy.encode("hello world") == reference.encode("hello world")
    assert (lazy.eos_id, lazy.unk_id) == (1, 2)
    monkeypatch.delenv("RECROSS_VOCAB")
    with gin.unlock_config():
        gin.bind_parameter("tasks.vocab.vocabulary_path.path", SEQIO_T5_MODEL)
    try:
        assert vocab.vocabulary_path() == SEQIO_T5_MODEL
    finally:
        with gin.unlock_config():
            gin.bind_parameter("tasks.vocab.vocabulary_path.path", None)


def test_missing_vocabulary_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="vocabulary file not found: .*missing.model"):
        vocab.vocabulary_path(str(tmp_path / "missing.model"))


PIQA_ROW = {"goal": "How do I keep a guinea pig cage clean?",
            "sol1": "Change the paper bedding every week.", "sol2": "Never change the bedding.",
            "label": 0}


@pytest.fixture(name="three_families")
def fixture_three_families(tmp_path, monkeypatch):
    """A JSONL task, a P3 task over local rows and a plain seqio task, in a mixture."""
    rows = [{"inputs": f"{sentence} Is it true?", "targets": "yes", "choices": ["yes", "no"]}
            for sentence in _corpus(30)]
    path = tmp_path / "j" / "train.jsonl"
    os.makedirs(path.parent)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    jsonl.register_jsonl_task("test_vocab.jsonl", str(path.parent))
    os.makedirs(tmp_path / "p3" / "piqa")
    (tmp_path / "p3" / "piqa" / "train.jsonl").write_text(json.dumps(PIQA_ROW) + "\n",
                                                          encoding="utf-8")
    monkeypatch.setenv("RECROSS_P3_DIR", str(tmp_path / "p3"))
    plain = [common.make_example(inputs=s, targets=s.split()[0], answer_choices=[], task="plain",
                                 template="t", example_id=f"plain|train|t|#{i}")
             for i, s in enumerate(_corpus(30, seed=1))]
    common.register_task("test_vocab.plain", lambda split: plain, splits=("train",))
    common.register_mixture("test_vocab.mix", [
        "test_vocab.jsonl", "p3.piqa.finish_sentence_with_correct_choice", "test_vocab.plain"])
    return rows, plain


def test_task_examples_reads_each_family(three_families):
    rows, plain = three_families
    from_jsonl = vocab.task_examples("test_vocab.jsonl", "train", limit=2)
    assert [e["inputs"] for e in from_jsonl] == [r["inputs"] for r in rows[:2]]
    from_p3 = vocab.task_examples("p3.piqa.finish_sentence_with_correct_choice", "train")
    assert from_p3[0]["answer_choices"] == [PIQA_ROW["sol1"], PIQA_ROW["sol2"]]
    # No pure-Python accessor: read through the seqio source, decoded to str.
    assert vocab.task_examples("test_vocab.plain", "train", limit=3) == plain[:3]
    with pytest.raises(UserError, match="unknown task: 'test_vocab.nope'"):
        vocab.task_examples("test_vocab.nope", "train")


def test_train_from_tasks_feeds_inputs_targets_and_choices(three_families, tmp_path, monkeypatch):
    rows, plain = three_families
    seen = {}

    def fake_train(texts, size, out, seed, max_sentences):
        seen.update(texts=list(texts), size=size, out=out, seed=seed, max_sentences=max_sentences)
        return out

    monkeypatch.setattr(vocab, "train_vocabulary", fake_train)
    vocab.train_vocabulary_from_tasks(["test_vocab.mix"], 50, "x.model",
                                      max_examples_per_task=2, seed=7)
    piqa = vocab.task_examples("p3.piqa.finish_sentence_with_correct_choice", "train")[0]
    # seqio lists a mixture's tasks by name.
    assert seen["texts"] == [
        piqa["inputs"], PIQA_ROW["sol1"], PIQA_ROW["sol1"], PIQA_ROW["sol2"],
        rows[0]["inputs"], "yes", "yes", "no", rows[1]["inputs"], "yes", "yes", "no",
        plain[0]["inputs"], plain[0]["targets"], plain[1]["inputs"], plain[1]["targets"]]
    assert (seen["size"], seen["seed"], seen["max_sentences"]) == (50, 7, 100_000)
    with pytest.raises(UserError, match="unknown task or mixture: 'nope'"):
        vocab.train_vocabulary_from_tasks(["nope"], 50, "x.model")


def test_train_from_tasks_writes_a_usable_model(three_families, tmp_path):
    del three_families
    out = vocab.train_vocabulary_from_tasks(
        ["test_vocab.jsonl", "test_vocab.plain"], 50, str(tmp_path / "t.model"), seed=0)
    vocabulary = seqio.SentencePieceVocabulary(out, extra_ids=100)
    assert vocabulary.vocab_size == 150
    assert vocabulary.decode(vocabulary.encode("the cat is true")) == "the cat is true"


def test_sentence_sample_is_seeded_uniform_and_keeps_order():
    texts = [f"t{i:03d}" for i in range(200)]
    sample = vocab._sample(iter(texts), 20, seed=0)  # pylint: disable=protected-access
    assert len(sample) == 20 and sample == sorted(sample)
    assert sample == vocab._sample(iter(texts), 20, seed=0)  # pylint: disable=protected-access
    assert sample != vocab._sample(iter(texts), 20, seed=1)  # pylint: disable=protected-access
    assert vocab._sample(iter(texts[:5]), 20, seed=0) == texts[:5]  # pylint: disable=protected-access
    # Every text is equally likely: over many seeds, early and late texts are drawn as often.
    counts = [0] * 200
    for seed in range(300):
        for text in vocab._sample(iter(texts), 20, seed):  # pylint: disable=protected-access
            counts[int(text[1:])] += 1
    assert abs(sum(counts[:100]) - sum(counts[100:])) < 0.1 * 300 * 20
