"""Packing token sequences into rows of a few fixed lengths for the BERT and T5 encoders.

Texts go into rows of `row_lengths(max_length, 64)` (64, 80, ..., 256, ...), each into the
shortest that holds it. Texts of up to 64 tokens are packed several to a row, each with its own
segment id, positions restarting at 0 and attention confined to itself, so every vector is the
one of the text run alone: padding costs little and short texts keep short attention rows.
Each encoder call takes about `batch_size * 64` tokens, so a jitted encoder compiles for one full
batch shape per row length, plus at most eight smaller row counts (multiples of an eighth of a
full batch) for the last, partial batches, whose padding stays under an eighth of a batch.

`run_packed` runs a jitted function over the batches with asynchronous dispatch (the host packs
the next batch while the device runs the previous ones) and puts its per-text outputs back in
input order. The sentence embedder (MiniLM), the upstream T5's encoder embedder and the
cross-encoder's scoring of (query, candidate) pairs (which carry token types) use it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recross_jax.partitioning import round_up

# The shortest row, into which short texts are packed; `batch_size` counts rows of this length.
PACKED_ROW = 64


def row_lengths(max_length: int, shortest: int) -> tuple[int, ...]:
    """The padded lengths of jitted batches, from `shortest` (>= 8) to `max_length`: 64, 80, 96,
    112, 128, 160, ... in steps of a quarter of the last power of two, so a sequence pads by less
    than a quarter of its length while a few shapes (four per doubling) are compiled.
    """
    lengths, size = [], shortest
    while size < max_length:
        lengths.append(size)
        size += 1 << (size.bit_length() - 3)
    return tuple(lengths) + (max_length,)


def max_segments(length: int) -> int:
    """Texts per row of `length` tokens at most: several in the packed rows, one in longer rows
    (their texts are longer than half the row); a static bound for the pooling one-hot."""
    return max(1, length // 8) if length <= PACKED_ROW else 1


def pack(lengths: Sequence[int], row_length: int, max_segments: int) -> list[list[int]]:
    """Packs texts into rows by first-fit decreasing.

    Args:
      lengths: token counts, each at most `row_length`.
      row_length: tokens per row.
      max_segments: texts per row at most.
    Returns:
      Rows, each a list of positions into `lengths`, together covering every position once.
    """
    lengths = np.asarray(lengths, np.int64)
    space = np.zeros(0, np.int64)  # free tokens per row
    count = np.zeros(0, np.int64)  # texts per row
    rows: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable"):
        fits = np.flatnonzero((space >= lengths[i]) & (count < max_segments))
        if fits.size:
            row = fits[0]
        else:
            row = len(rows)
            rows.append([])
            space, count = np.append(space, row_length), np.append(count, 0)
        rows[row].append(int(i))
        space[row] -= lengths[i]
        count[row] += 1
    return rows


def segment_mean(hidden: jax.Array, segment_ids: jax.Array, max_segments: int) -> jax.Array:
    """Mean of `hidden` [b, l, d] over the tokens of each segment 1..max_segments: [b, s, d].

    Computed in float32 as sentence-transformers' Pooling(mean), counts clamped at 1e-9.
    """
    slots = jnp.arange(1, max_segments + 1)
    onehot = (segment_ids[:, None, :] == slots[None, :, None]).astype(jnp.float32)
    total = jnp.einsum("bsl,bld->bsd", onehot, hidden.astype(jnp.float32))
    return total / jnp.maximum(onehot.sum(axis=-1, keepdims=True), 1e-9)


def segment_starts(segments: jax.Array, positions: jax.Array, max_segments: int) -> jax.Array:
    """Index of the first token of each segment 1..max_segments in its row: [b, s] (0 for an
    empty slot), e.g. where each packed pair's [CLS] is."""
    slots = jnp.arange(1, max_segments + 1)
    first = (segments[:, None, :] == slots[None, :, None]) & (positions[:, None, :] == 0)
    return jnp.argmax(first, axis=-1)


class Batch(NamedTuple):
    """One encoder call: where each text's vector is, and the inputs [rows, length]."""

    text_ids: np.ndarray  # position of each text in the input
    rows: np.ndarray  # its row in the batch
    slots: np.ndarray  # its segment there, from 0 (segment id slot + 1)
    ids: np.ndarray
    segments: np.ndarray
    positions: np.ndarray
    types: np.ndarray  # token type ids (0 for texts given without them)


# Texts to pack: (position of the first text in the input, token ids per text, and token type
# ids per text or None).
Chunk = tuple[int, Sequence[Sequence[int]], Sequence[Sequence[int]] | None]
# A row waiting for its batch: (position of each text in the input, its token ids, its types).
_Row = list[tuple[int, Sequence[int], Sequence[int] | None]]


class Packer:
    """Lays token sequences out in packed, length-bucketed batches.

    Args:
      max_length: the longest sequence (the longest row).
      batch_size: tokens per call, in rows of `PACKED_ROW` tokens.
      data_size: the mesh's data-axis size; every batch's row count divides by it.
    """

    def __init__(self, max_length: int, batch_size: int, data_size: int = 1):
        self.batch_size = batch_size
        self.data_size = data_size
        self.row_lengths = row_lengths(max_length, PACKED_ROW)
        self.max_segments = {length: max_segments(length) for length in self.row_lengths}

    def batches(self, chunks: Iterable[Chunk]) -> Iterator[Batch]:
        """Batches of `chunks` (in input order): full ones as rows fill up, then the partial
        ones at the end."""
        waiting: dict[int, list[_Row]] = {length: [] for length in self.row_lengths}
        for start, tokens, types in chunks:
            lengths = np.array([len(t) for t in tokens], np.int64)
            shorter = 0
            for length in self.row_lengths:
                group = np.flatnonzero((lengths > shorter) & (lengths <= length))
                shorter = length
                rows = waiting[length]
                for row in pack(lengths[group], length, self.max_segments[length]):
                    rows.append([(start + int(group[i]), tokens[group[i]],
                                  None if types is None else types[group[i]]) for i in row])
                full = self.rows_per_call(length)
                while len(rows) >= full:
                    yield self._batch(rows[:full], length, full)
                    del rows[:full]
        for length, rows in waiting.items():
            if rows:
                yield self._batch(rows, length, self.partial_rows(len(rows), length))

    def rows_per_call(self, length: int) -> int:
        """Rows of a full batch of `length`-token rows."""
        rows = max(1, self.batch_size * PACKED_ROW // length)
        return round_up(rows, self.data_size)

    def partial_rows(self, count: int, length: int) -> int:
        """Rows of the last batch of `length`-token rows holding `count` rows: `count` rounded up
        to a multiple of an eighth of a full batch (itself a multiple of the data-axis size)."""
        full = self.rows_per_call(length)
        step = round_up(-(-full // 8), self.data_size)
        return min(round_up(count, step), full)

    @staticmethod
    def _batch(rows: list[_Row], length: int, num_rows: int) -> Batch:
        """Lays `rows` out as inputs of shape [num_rows, length], padding with id 0."""
        ids, segments, positions, types = (np.zeros((num_rows, length), np.int32)
                                           for _ in range(4))
        text_ids, row_of, slot_of = [], [], []
        for r, row in enumerate(rows):
            begin = 0
            for slot, (text_id, tokens, token_types) in enumerate(row):
                end = begin + len(tokens)
                ids[r, begin:end] = tokens
                segments[r, begin:end] = slot + 1
                positions[r, begin:end] = np.arange(len(tokens))
                if token_types is not None:
                    types[r, begin:end] = token_types
                text_ids.append(text_id)
                row_of.append(r)
                slot_of.append(slot)
                begin = end
        return Batch(np.array(text_ids, np.int64), np.array(row_of, np.int64),
                     np.array(slot_of, np.int64), ids, segments, positions, types)


def run_packed(batches: Iterable[Batch], count: int, width: int,
               fn: Callable[[Batch], Any],
               on_done: Callable[[int], object] = lambda n: None) -> np.ndarray:
    """Runs `fn(batch) -> [rows, segments, width]` (one vector per segment slot) over
    `batches` and returns each text's float32 vector, [count, width] in input order;
    `on_done(n)` after each batch.

    Dispatch is asynchronous: up to two batches are in flight while the host packs the next.
    """
    out = np.zeros((count, width), np.float32)
    pending: list[tuple[Batch, Any]] = []

    def collect(batch: Batch, vectors: Any) -> None:
        out[batch.text_ids] = np.asarray(vectors)[batch.rows, batch.slots]
        on_done(len(batch.text_ids))

    for batch in batches:
        pending.append((batch, fn(batch)))
        if len(pending) > 2:
            collect(*pending.pop(0))
    for item in pending:
        collect(*item)
    return out
