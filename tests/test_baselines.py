"""Random and SBERT baselines' retrieval side."""
import collections

import numpy as np
import pytest

from recross_jax.errors import UserError
from recross_jax.retrieval.aggregate import aggregate
from recross_jax.retrieval.baselines import SbertRetriever, random_retrieval

POOL = [f"up|train|t|#{i}" for i in range(10)]


def test_random_is_seeded_distinct_and_from_the_pool():
    first = random_retrieval(POOL, 4, seed=7)
    np.testing.assert_array_equal(first, random_retrieval(POOL, 4, seed=7))
    assert len(set(first)) == 4 and set(first) <= set(POOL)
    assert any(list(random_retrieval(POOL, 4, seed=s)) != list(first) for s in range(8, 12))
    assert sorted(random_retrieval(POOL, 10, seed=0)) == sorted(POOL)


def test_random_is_uniform():
    counts = collections.Counter()
    for seed in range(2000):
        counts.update(random_retrieval(POOL, 3, seed=seed))
    # Each id is drawn with probability 0.3: 600 expected, standard deviation ~20.5.
    assert set(counts) == set(POOL)
    assert all(520 < c < 680 for c in counts.values()), counts


@pytest.mark.parametrize("num,message", [
    (11, "cannot sample 11 random examples from a pool of 10"),
    (0, "must be a positive integer, got 0"),
])
def test_random_bad_size(num, message):
    with pytest.raises(UserError, match=message):
        random_retrieval(POOL, num, seed=0)


LETTERS = {"kind": "sentence", "name": "letters"}


class LetterEncoder:
    """A stand-in sentence embedder: L2-normalised letter counts."""

    def __init__(self):
        self.description = dict(LETTERS)

    def encode(self, texts):
        assert isinstance(texts, list)
        counts = np.zeros((len(texts), 26), np.float32)
        for row, text in enumerate(texts):
            for char in text.lower():
                if "a" <= char <= "z":
                    counts[row, ord(char) - ord("a")] += 1
        return counts / np.maximum(np.linalg.norm(counts, axis=1, keepdims=True), 1e-12)


TEXTS = ["aaaa", "aaab", "bbbb", "cccc", "abcd", "zzzz", "zzzy", "xyz"]


def test_sbert_retriever_indexes_the_encoders_vectors():
    encoder = LetterEncoder()
    retriever = SbertRetriever.build(encoder, TEXTS, POOL[:8], backend="exact")
    np.testing.assert_allclose(retriever.index.vectors(), encoder.encode(TEXTS))
    assert retriever.index.manifest["embedder"] == LETTERS
    ids, scores = retriever.search(["aaaa", "zzz"], 2)
    np.testing.assert_array_equal(ids, [[POOL[0], POOL[1]], [POOL[5], POOL[6]]])
    np.testing.assert_allclose(scores[:, 0], [1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("mode", ["concat", "dedup", "mean"])
def test_sbert_retrieve_is_search_then_aggregate(mode):
    retriever = SbertRetriever.build(LetterEncoder(), TEXTS, POOL[:8], backend="scann",
                                     embedder="letters")
    assert retriever.index.manifest["embedder"] == "letters"
    queries = ["aab", "zzy", "bcd"]
    ids, scores = retriever.retrieve(queries, 5, mode)
    expected = aggregate(*retriever.search(queries, 8), 5, mode)
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_allclose(scores, expected[1])
    assert len(ids) == 5


def test_sbert_refuses_a_single_string():
    retriever = SbertRetriever.build(LetterEncoder(), TEXTS, POOL[:8], backend="exact")
    with pytest.raises(UserError, match="expected a list of texts, got a single string"):
        retriever.search("aaaa", 2)


def test_sbert_with_minilm_finds_paraphrases():
    from recross_jax import assets
    if not assets.is_complete("minilm"):
        pytest.skip("the all-MiniLM-L6-v2 asset is not in the cache (recross assets fetch)")
    sentence = pytest.importorskip("recross_jax.retrieval.sentence")
    encoder = sentence.SentenceEmbedder.from_minilm(max_length=32, batch_size=8)
    pool = ["The cat sat on the mat all afternoon.",
            "Stock markets fell sharply after the announcement.",
            "She baked a chocolate cake for the party.",
            "The team won the championship in overtime.",
            "Heavy rain is expected across the region tomorrow.",
            "He repaired the bicycle's flat tyre."]
    retriever = SbertRetriever.build(encoder, pool, POOL[:6], backend="exact")
    assert retriever.index.manifest["embedder"] == encoder.description
    ids, scores = retriever.search(["A kitten was resting on a rug.",
                                    "Tomorrow there will be a lot of rain in the area.",
                                    "Shares dropped quickly following the news."], 1)
    np.testing.assert_array_equal(ids[:, 0], [POOL[0], POOL[4], POOL[1]])
    assert np.all((scores > 0.4) & (scores <= 1 + 1e-5))
