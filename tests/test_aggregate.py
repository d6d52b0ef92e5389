"""Query aggregation (SPEC §1.2): hand-made rankings for each mode, plus loop references."""
import numpy as np
import pytest

from recross_jax.errors import UserError
from recross_jax.retrieval.aggregate import aggregate, needed_k, retrieve
from recross_jax.retrieval.index import build_index

# Three queries' rankings, best first; integer scores so means are exact.
IDS = np.array([["a", "b", "c", "d"],
                ["b", "e", "a", "f"],
                ["g", "b", "h", "i"]])
SCORES = np.array([[9, 8, 7, 6],
                   [10, 5, 3, 2],
                   [12, 3, 1, 0]], np.float32)


def _pair(ids, scores):
    return list(ids), [float(s) for s in scores]


@pytest.mark.parametrize("num,expected_ids,expected_scores", [
    (5, ["a", "b", "b", "e", "g"], [9, 8, 10, 5, 12]),  # K = 2, cut to 5; "b" kept twice
    (6, ["a", "b", "b", "e", "g", "b"], [9, 8, 10, 5, 12, 3]),
    (2, ["a", "b"], [9, 10]),  # K = 1: each query's best, cut to 2
    (12, list(IDS.reshape(-1)), list(SCORES.reshape(-1))),
])
def test_concat(num, expected_ids, expected_scores):
    assert _pair(*aggregate(IDS, SCORES, num)) == (expected_ids, expected_scores)


@pytest.mark.parametrize("num,expected_ids,expected_scores", [
    # K = 2: concat order a b b e g b -> a b e g; then rank 2 round-robin: c, (a seen), h.
    (5, ["a", "b", "e", "g", "c"], [9, 8, 5, 12, 7]),
    # K = 3: a b c b e a g b h -> a b c e g h; then rank 3 round-robin: d, f, i.
    (7, ["a", "b", "c", "e", "g", "h", "d"], [9, 8, 7, 5, 12, 1, 6]),
    (9, ["a", "b", "c", "e", "g", "h", "d", "f", "i"], [9, 8, 7, 5, 12, 1, 6, 2, 0]),
    # K = 7 > 4 columns: the whole concat order without repeats, fewer than 20.
    (20, ["a", "b", "c", "d", "e", "f", "g", "h", "i"], [9, 8, 7, 6, 5, 2, 12, 1, 0]),
    (2, ["a", "b"], [9, 10]),  # K = 1: a b g -> cut to 2; b's score is query 1's
])
def test_dedup(num, expected_ids, expected_scores):
    assert _pair(*aggregate(IDS, SCORES, num, "dedup")) == (expected_ids, expected_scores)


@pytest.mark.parametrize("num,expected_ids,expected_scores", [
    # K = 1: top-1 lists a, b, g already hold 3 distinct ids.
    (3, ["g", "b", "a"], [12, 10, 9]),
    # K = 2 gives 4 distinct ids (a b e g) < 5, so depth 3: a=(9+3)/2, b=(8+10+3)/3, c=7, e=5,
    # g=12, h=1; b and c tie at 7 and b comes first in the concat order. "a" is averaged over
    # the two queries that retrieved it, not three.
    (5, ["g", "b", "c", "a", "e"], [12, 7, 7, 6, 5]),
    (6, ["g", "b", "c", "a", "e", "h"], [12, 7, 7, 6, 5, 1]),
    # Depth 4 (all columns): b's mean is still 7, d=6, f=2, i=0.
    (20, ["g", "b", "c", "a", "d", "e", "f", "h", "i"], [12, 7, 7, 6, 6, 5, 2, 1, 0]),
])
def test_mean(num, expected_ids, expected_scores):
    assert _pair(*aggregate(IDS, SCORES, num, "mean")) == (expected_ids, expected_scores)


def test_needed_k():
    assert needed_k(16, 1024) == 64
    assert needed_k(16, 1000) == 63
    assert needed_k(3, 5, "concat") == 2
    assert needed_k(3, 5, "dedup") == needed_k(3, 5, "mean") == 5


def _dedup_reference(ids, scores, num):
    depth = -(-num // ids.shape[0])
    order = [(q, r) for q in range(ids.shape[0]) for r in range(min(depth, ids.shape[1]))]
    order += [(q, r) for r in range(depth, ids.shape[1]) for q in range(ids.shape[0])]
    seen, out = set(), []
    for q, r in order:
        if ids[q, r] not in seen and len(out) < num:
            seen.add(ids[q, r])
            out.append((ids[q, r], float(scores[q, r])))
    return out


def _mean_reference(ids, scores, num):
    depth = min(-(-num // ids.shape[0]), ids.shape[1])
    while depth < ids.shape[1] and len(set(ids[:, :depth].reshape(-1))) < num:
        depth += 1
    values, first = {}, {}
    for position, (i, s) in enumerate(zip(ids[:, :depth].reshape(-1),
                                          scores[:, :depth].reshape(-1))):
        values.setdefault(i, []).append(float(s))
        first.setdefault(i, position)
    ranked = sorted(values, key=lambda i: (-np.mean(values[i]), first[i]))[:num]
    return [(i, float(np.float32(np.mean(values[i])))) for i in ranked]


@pytest.mark.parametrize("seed", range(5))
def test_modes_match_loop_references_on_random_rankings(seed):
    rng = np.random.default_rng(seed)
    num_queries, k, pool = 4, 12, 20
    # Rankings over a small pool so queries overlap; each row holds distinct ids.
    ids = np.array([rng.permutation(pool)[:k] for _ in range(num_queries)]).astype(str)
    scores = -np.sort(-rng.integers(0, 6, size=(num_queries, k)), axis=1).astype(np.float32)
    for num in (3, 7, 10, 16, 30):
        got = aggregate(ids, scores, num, "dedup")
        assert list(zip(got[0], map(float, got[1]))) == _dedup_reference(ids, scores, num)
        assert len(set(got[0])) == len(got[0])
        got = aggregate(ids, scores, num, "mean")
        assert list(zip(got[0], map(float, got[1]))) == _mean_reference(ids, scores, num)


def test_short_rankings_give_fewer_candidates():
    ids, scores = IDS[:, :2], SCORES[:, :2]
    assert len(aggregate(ids, scores, 10)[0]) == 6
    assert list(aggregate(ids, scores, 10, "dedup")[0]) == ["a", "b", "e", "g"]
    assert list(aggregate(ids, scores, 10, "mean")[0]) == ["g", "a", "b", "e"]


@pytest.mark.parametrize("args,message", [
    ((IDS, SCORES[:, :3], 4), r"one shape \[queries, k\], got \(3, 4\) and \(3, 3\)"),
    ((IDS[0], SCORES[0], 4), "one shape"),
    ((IDS, SCORES, 0), "number of candidates must be a positive integer, got 0"),
    ((IDS, SCORES, 4, "max"), "unknown aggregation mode 'max'; choose one of concat, dedup, mean"),
    ((IDS[:0], SCORES[:0], 4), "number of queries must be a positive integer, got 0"),
])
def test_bad_input(args, message):
    with pytest.raises(UserError, match=message):
        aggregate(*args)


class _RecordingIndex:
    def __init__(self):
        self.calls = []

    def search(self, queries, k):
        self.calls.append(k)
        return IDS[:len(queries), :k], SCORES[:len(queries), :k]


@pytest.mark.parametrize("mode,k", [("concat", 2), ("dedup", 4), ("mean", 4)])
def test_retrieve_searches_deep_enough(mode, k):
    index = _RecordingIndex()
    got = retrieve(index, np.zeros((3, 2)), 4, mode)
    assert index.calls == [k]
    assert _pair(*got) == _pair(*aggregate(IDS, SCORES, 4, mode))


def test_retrieve_on_exact_index():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    index = build_index(vectors, [f"r{i}" for i in range(50)], backend="exact")
    ids, scores = retrieve(index, vectors[:4], 10)
    # K = ceil(10 / 4) = 3 per query, concatenated and cut to 10.
    top_ids, top_scores = index.search(vectors[:4], 3)
    np.testing.assert_array_equal(ids, top_ids.reshape(-1)[:10])
    np.testing.assert_array_equal(scores, top_scores.reshape(-1)[:10])
