"""Sentence embedder: parity with sentence-transformers' all-MiniLM-L6-v2."""
from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
import pytest
import tiny_bert

from recross_jax import partitioning
from recross_jax.errors import UserError
from recross_jax.models.bert import BertConfig, BertModel, load_hf_bert
from recross_jax.retrieval.sentence import SentenceEmbedder

WORDS = ("the a of and to is was cat dog sat on mat river bank money fish water tree house "
         "red blue green big small quick brown fox jumps over lazy day night sun moon").split()

# Real sentences of different lengths, scripts and punctuation, one over 256 tokens.
SENTENCES = [
    "Hello world",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome!",
    "Which of the following best describes the author's attitude toward the proposal?",
    "Premise: All birds can fly. Penguins are birds. Hypothesis: Penguins can fly. "
    "Is the hypothesis entailed, neutral, or contradicted?",
    "Q: What is the capital of France? A:",
    "I loved it... but the ending? Not so much :(",
    "Die Katze sitzt auf der Matte.",
    "東京は日本の首都です。",
    "Café naïve résumé — coöperate, façade.",
    "e = mc^2; 3.14159 ≈ π, 1,000,000 > 999_999",
    "",
    "   leading and trailing spaces   ",
    "Translate to French: The weather is nice today.",
    "Summarize: The committee met on Tuesday to discuss the budget for next year, including "
    "proposed cuts to the parks department and new funding for road maintenance.",
    "def f(x):\n    return x ** 2  # square",
    "URL https://example.com/path?query=1&b=2 and email someone@example.org",
    "yes",
    " ".join(["The river bank was steep and the water was cold, so the fishermen waited for "
              "the morning sun before they crossed to the other side."] * 12),
]


# --- a tiny sentence-transformers directory -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    """A BERT sentence-transformers directory with random weights written by transformers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory = str(tmp_path_factory.mktemp("tiny_sbert"))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=48, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=320)
    transformers.BertModel(config).save_pretrained(directory)
    tiny_bert.write_tokenizer(os.path.join(directory, "tokenizer.json"), WORDS)
    os.makedirs(os.path.join(directory, "1_Pooling"))
    with open(os.path.join(directory, "1_Pooling", "config.json"), "w", encoding="utf-8") as f:
        json.dump({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True,
                   "pooling_mode_cls_token": False}, f)
    with open(os.path.join(directory, "sentence_bert_config.json"), "w", encoding="utf-8") as f:
        json.dump({"max_seq_length": 300}, f)
    return directory


def _reference(directory: str, token_lists: list[list[int]]) -> np.ndarray:
    """One text per row (no packing) through BertModel, mean over its tokens, L2-normalised."""
    config = BertConfig.from_json_file(os.path.join(directory, "config.json"))
    params = load_hf_bert(os.path.join(directory, "model.safetensors"), config)
    width = max(len(tokens) for tokens in token_lists)
    ids = np.zeros((len(token_lists), width), np.int32)
    for row, tokens in enumerate(token_lists):
        ids[row, :len(tokens)] = tokens
    mask = (np.arange(width) < np.array([[len(t)] for t in token_lists])).astype(np.int32)
    hidden = np.asarray(jax.jit(BertModel(config).apply)({"params": params}, ids, mask)
                        .last_hidden_state)
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def _texts(seed: int, count: int) -> list[str]:
    """Texts of 0 to ~400 words: short ones to pack, ones for the long rows, truncated ones."""
    rng = np.random.default_rng(seed)
    lengths = list(rng.integers(0, 40, count - 3)) + [270, 290, 400]
    return [" ".join(rng.choice(WORDS, n)) for n in lengths]


def test_tiny_embedder_equals_each_text_alone(tiny_dir):
    embedder = SentenceEmbedder.from_dir(tiny_dir, batch_size=4)
    assert embedder.max_length == 300  # from sentence_bert_config.json
    texts = _texts(0, 40)
    tokens = embedder.tokenize(texts)
    assert len(tokens[-1]) == 300 and tokens[0][0] == 2 and tokens[0][-1] == 3
    assert sorted(len(t) for t in tokens)[-3] > 256  # some rows of 300, not only packed ones
    got = embedder.encode(texts)
    assert got.shape == (40, 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, _reference(tiny_dir, tokens), atol=2e-5)
    # Neither the company of other texts nor the batch size changes a vector.
    alone = embedder.encode(texts[5:6])
    np.testing.assert_allclose(alone[0], got[5], atol=2e-5)
    shuffled = np.random.default_rng(1).permutation(40)
    np.testing.assert_allclose(embedder.encode([texts[i] for i in shuffled]), got[shuffled],
                               atol=2e-5)
    assert embedder.encode([]).shape == (0, 32)


def test_short_texts_compile_one_full_and_one_partial_shape(tiny_dir):
    embedder = SentenceEmbedder.from_dir(tiny_dir, batch_size=2)
    rng = np.random.default_rng(3)
    vectors = embedder.encode([" ".join(rng.choice(WORDS, n)) for n in rng.integers(5, 30, 60)])
    assert np.isfinite(vectors).all()
    # [2, 64] for the full batches and one smaller row count for the rows left at the end.
    assert embedder._embed._cache_size() <= 2  # pylint: disable=protected-access


def test_unnormalised_vectors_are_plain_means(tiny_dir):
    embedder = SentenceEmbedder.from_dir(tiny_dir, max_length=64, normalize=False)
    vectors = embedder.encode(["the cat sat on the mat", "dog"])
    norms = np.linalg.norm(vectors, axis=1)
    assert not np.allclose(norms, 1.0)
    np.testing.assert_allclose(vectors / norms[:, None],
                               _reference(tiny_dir, embedder.tokenize(["the cat sat on the mat",
                                                                       "dog"])), atol=2e-5)


def test_data_parallel_mesh_gives_the_same_vectors(tiny_dir):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    texts = _texts(2, 30)
    mesh = partitioning.create_mesh(num_partitions=1)
    sharded = SentenceEmbedder.from_dir(tiny_dir, batch_size=8, mesh=mesh).encode(texts)
    single = SentenceEmbedder.from_dir(tiny_dir, batch_size=8).encode(texts)
    np.testing.assert_allclose(sharded, single, atol=2e-5)


def test_description_names_the_weights(tiny_dir):
    embedder = SentenceEmbedder.from_dir(tiny_dir, max_length=128)
    with open(os.path.join(tiny_dir, "model.safetensors"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    assert embedder.description == {
        "kind": "sentence", "name": os.path.basename(tiny_dir), "weights_sha256": digest,
        "max_length": 128, "dtype": "float32", "pooling": "mean", "normalize": True, "dims": 32}


def test_bad_inputs_are_user_errors(tiny_dir, tmp_path):
    with pytest.raises(UserError, match=f"no sentence-transformers model directory at {tmp_path}"):
        SentenceEmbedder.from_dir(str(tmp_path / "x"))
    with pytest.raises(UserError, match=f"{tmp_path} lacks config.json"):
        SentenceEmbedder.from_dir(str(tmp_path))
    with pytest.raises(UserError, match=r"must be in \[1, 320\] for this model, got 400"):
        SentenceEmbedder.from_dir(tiny_dir, max_length=400)
    with pytest.raises(UserError, match="batch_size must be positive, got 0"):
        SentenceEmbedder.from_dir(tiny_dir, batch_size=0)
    embedder = SentenceEmbedder.from_dir(tiny_dir, max_length=32)
    with pytest.raises(UserError, match="got a single string"):
        embedder.encode("the cat")
    with pytest.raises(UserError, match="text #1 is a int, not a string"):
        embedder.encode(["the cat", 3])


def test_other_pooling_and_broken_files_are_refused(tiny_dir, tmp_path):
    import shutil
    copy = str(tmp_path / "model")
    shutil.copytree(tiny_dir, copy)
    pooling = os.path.join(copy, "1_Pooling", "config.json")
    with open(pooling, "w", encoding="utf-8") as f:
        json.dump({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, f)
    with pytest.raises(UserError, match="only mean pooling is supported, found "
                                        r"\['pooling_mode_cls_token'\]"):
        SentenceEmbedder.from_dir(copy)
    os.remove(pooling)
    with open(os.path.join(copy, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write("{broken")
    with pytest.raises(UserError, match=f"cannot read tokenizer {copy}/tokenizer.json"):
        SentenceEmbedder.from_dir(copy)


# --- the real all-MiniLM-L6-v2 (skipped when the asset cannot be fetched) -----------------------


@pytest.fixture(scope="module")
def minilm() -> SentenceEmbedder:
    from recross_jax import assets
    try:
        assets.minilm_dir()
    except UserError as e:
        pytest.skip(f"MiniLM asset unavailable: {e}")
    return SentenceEmbedder.from_minilm(batch_size=8)


def _sentence_transformers_reference(directory: str, texts: list[str]) -> np.ndarray:
    """sentence-transformers' all-MiniLM-L6-v2 pipeline, or the same steps in transformers."""
    torch = pytest.importorskip("torch")
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from transformers import AutoModel, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModel.from_pretrained(directory).eval()
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256,
                          return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    model = SentenceTransformer(modules=[Transformer(directory, max_seq_length=256),
                                         Pooling(384, "mean"), Normalize()], device="cpu")
    return model.encode(texts, batch_size=8, convert_to_numpy=True)


def test_minilm_matches_sentence_transformers(minilm):
    from recross_jax import assets
    ours = minilm.encode(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    reference = _sentence_transformers_reference(assets.minilm_dir(), SENTENCES)
    cosine = (ours * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)


def test_minilm_tokens_match_transformers(minilm):
    transformers = pytest.importorskip("transformers")
    from recross_jax import assets
    reference = transformers.AutoTokenizer.from_pretrained(assets.minilm_dir())
    want = reference(SENTENCES, truncation=True, max_length=256)["input_ids"]
    got = minilm.tokenize(SENTENCES)
    assert got == want
    assert len(got[-1]) == 256  # the long paragraph is truncated, [SEP] kept
