"""Packing token sequences into length-bucketed rows, segment pooling, packed runs."""
from __future__ import annotations

import numpy as np
import pytest

from recross_jax.retrieval.packing import (
    PACKED_ROW,
    Packer,
    pack,
    row_lengths,
    run_packed,
    segment_mean,
    segment_starts,
)


def test_pack_is_first_fit_decreasing():
    assert pack([5, 4, 3, 3, 1], row_length=8, max_segments=3) == [[0, 2], [1, 3, 4]]
    assert pack([1] * 5, row_length=8, max_segments=2) == [[0, 1], [2, 3], [4]]
    assert pack([], row_length=8, max_segments=2) == []


def test_pack_covers_every_text_within_the_limits():
    lengths = np.random.default_rng(0).integers(1, 65, 500)
    rows = pack(lengths, row_length=64, max_segments=5)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 64 and len(row) <= 5 for row in rows)
    # First-fit decreasing stays close to the lower bound on the number of rows.
    assert len(rows) <= 1.1 * lengths.sum() / 64 + 1


def test_row_lengths_bound_the_padding():
    assert row_lengths(256, 64) == (64, 80, 96, 112, 128, 160, 192, 224, 256)
    assert row_lengths(300, 64)[-3:] == (224, 256, 300)
    assert row_lengths(32, 64) == (32,)
    assert row_lengths(40, 16) == (16, 20, 24, 28, 32, 40)
    lengths = row_lengths(512, 16)
    for n in range(17, 513):
        assert next(r for r in lengths if r >= n) - n < n / 4


def test_segment_mean_matches_numpy():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2, 6, 3)).astype(np.float32)
    segments = np.array([[1, 1, 2, 2, 2, 0], [1, 0, 0, 0, 0, 0]])
    got = np.asarray(segment_mean(hidden, segments, max_segments=3))
    np.testing.assert_allclose(got[0, 0], hidden[0, :2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[0, 1], hidden[0, 2:5].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[1, 0], hidden[1, 0], rtol=1e-6)
    assert not got[0, 2].any() and not got[1, 1:].any()  # empty slots are zero, not NaN


def random_tokens(n: int, max_length: int, seed: int = 0) -> list[list[int]]:
    lengths = np.random.default_rng(seed).integers(1, max_length + 1, n)
    return [[2 + (7 * i + j) % 50 for j in range(length)] for i, length in enumerate(lengths)]


def test_batches_hold_every_text_once_laid_out_by_segment():
    tokens = random_tokens(300, 256)
    packer = Packer(max_length=256, batch_size=8, data_size=2)
    seen = []
    for batch in packer.batches([(0, tokens[:150], None), (150, tokens[150:], None)]):
        rows, length = batch.ids.shape
        assert length in packer.row_lengths and rows % 2 == 0
        assert rows <= packer.rows_per_call(length)
        for text_id, row, slot in zip(batch.text_ids, batch.rows, batch.slots):
            mask = batch.segments[row] == slot + 1
            assert batch.ids[row, mask].tolist() == tokens[text_id]
            assert not batch.types.any()
            assert batch.positions[row, mask].tolist() == list(range(len(tokens[text_id])))
            seen.append(int(text_id))
        # A text sits in the shortest row length that holds it.
        for text_id in batch.text_ids:
            shorter = [r for r in packer.row_lengths if r < length]
            assert len(tokens[text_id]) > (shorter[-1] if shorter else 0)
    assert sorted(seen) == list(range(300))


@pytest.mark.parametrize("batch_size,data_size", [(64, 1), (64, 2), (8, 2), (3, 1)])
def test_partial_batches_pad_by_under_an_eighth_and_take_few_shapes(batch_size, data_size):
    packer = Packer(max_length=512, batch_size=batch_size, data_size=data_size)
    for length in packer.row_lengths:
        full = packer.rows_per_call(length)
        counts = [packer.partial_rows(n, length) for n in range(1, full + 1)]
        assert all(n <= c <= full and c % data_size == 0 for n, c in enumerate(counts, 1))
        assert counts[-1] == full and len(set(counts)) <= 8
        step = -(-full // (8 * data_size)) * data_size
        assert max(c - n for n, c in enumerate(counts, 1)) < step


def test_short_texts_share_rows_and_padding_stays_small():
    tokens = random_tokens(400, 30, seed=1)
    batches = list(Packer(max_length=128, batch_size=16).batches([(0, tokens, None)]))
    assert {b.ids.shape[1] for b in batches} == {PACKED_ROW}
    real = sum(len(t) for t in tokens)
    full = [b for b in batches if b.ids.shape[0] == 16]
    assert sum((b.ids != 0).sum() for b in full) / sum(b.ids.size for b in full) > 0.9
    assert sum((b.ids != 0).sum() for b in batches) == real


def test_run_packed_returns_outputs_in_input_order():
    tokens = random_tokens(50, 100, seed=2)
    packer = Packer(max_length=100, batch_size=4)

    def lengths_and_first_ids(batch):  # each segment's vector: (its length, its largest id)
        slots = np.arange(1, batch.ids.shape[1] + 1)
        member = batch.segments[:, None, :] == slots[None, :, None]
        first = np.where(member, batch.ids[:, None, :], 0).max(-1)
        return np.stack([member.sum(-1), first], -1).astype(np.float32)

    done = []
    out = run_packed(packer.batches([(0, tokens, None)]), len(tokens), 2,
                     lengths_and_first_ids, done.append)
    assert out[:, 0].tolist() == [len(t) for t in tokens]
    assert out[:, 1].tolist() == [max(t) for t in tokens]
    assert sum(done) == len(tokens)


def test_token_types_travel_with_their_texts_and_segment_starts_find_each_first_token():
    tokens = random_tokens(40, 90, seed=3)
    types = [[int(j >= len(t) // 2) for j in range(len(t))] for t in tokens]
    seen = 0
    for batch in Packer(max_length=90, batch_size=4).batches([(0, tokens, types)]):
        starts = np.asarray(segment_starts(batch.segments, batch.positions,
                                           max(batch.slots) + 1))
        for text_id, row, slot in zip(batch.text_ids, batch.rows, batch.slots):
            mask = batch.segments[row] == slot + 1
            assert batch.types[row, mask].tolist() == types[text_id]
            assert starts[row, slot] == np.flatnonzero(mask)[0]
            seen += 1
        assert (batch.types[batch.segments == 0] == 0).all()
    assert seen == len(tokens)
    # Several texts share a row, so some starts are past the row's first token.
    assert any(len(set(b.rows.tolist())) < len(b.rows)
               for b in Packer(max_length=90, batch_size=4).batches([(0, tokens, types)]))
