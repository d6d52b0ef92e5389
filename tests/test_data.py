"""Tests of recross_jax.data on tiny in-memory SeqIO tasks (seqio's test vocabulary)."""
from __future__ import annotations

import functools
import itertools
import os
import sys

import numpy as np
import pytest
import seqio

from recross_jax import data
from recross_jax.errors import UserError
from tasks import common, vocab

TEST_VOCAB = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                          "sentencepiece.model")

LENGTHS = {"inputs": 16, "targets": 8}
UNPACKED = {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights"}


def toy_examples(task: str, count: int):
    def examples(split: str):
        for i in range(count):
            yield common.make_example(
                inputs=f"{task} question {i}: is {i} even?", targets="yes" if i % 2 == 0 else "no",
                answer_choices=["yes", "no"], task=task, template="plain",
                example_id=common.example_id(task, split, "plain", i))
    return examples


@pytest.fixture(scope="module", autouse=True)
def toy_registry():
    """Tiny tasks on seqio's test vocabulary; the shared vocabulary is reset around them."""
    saved = os.environ.get("RECROSS_VOCAB")
    os.environ["RECROSS_VOCAB"] = TEST_VOCAB
    vocab.VOCABULARY.__dict__.pop("resolved", None)  # drop a model file resolved earlier
    common.register_task("toy_data.a", toy_examples("a", 21))
    common.register_task("toy_data.b", toy_examples("b", 13))
    common.register_mixture("toy_data.mix", ["toy_data.a", "toy_data.b"])
    yield
    vocab.VOCABULARY.__dict__.pop("resolved", None)
    if saved is None:
        del os.environ["RECROSS_VOCAB"]
    else:
        os.environ["RECROSS_VOCAB"] = saved


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_batches_have_t5x_features_and_shapes():
    batch = next(data.get_dataset_iterator("toy_data.mix", "train", 4, LENGTHS, seed=1))
    assert set(batch) == UNPACKED
    assert batch["encoder_input_tokens"].shape == (4, 16)
    for key in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
        assert batch[key].shape == (4, 8)
    targets = batch["decoder_target_tokens"]
    # Decoder inputs are the targets shifted right behind the start id 0; weights mark tokens.
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], targets[:, :-1])
    assert (batch["decoder_input_tokens"][:, 0] == 0).all()
    np.testing.assert_array_equal(batch["decoder_loss_weights"], targets > 0)
    # Every target ends with EOS (id 1) right before its padding.
    ends = (targets > 0).sum(axis=1) - 1
    assert (targets[np.arange(4), ends] == 1).all()


def test_deterministic_for_a_seed_and_resumable():
    first = take(data.get_dataset_iterator("toy_data.mix", "train", 4, LENGTHS, seed=7), 12)
    again = take(data.get_dataset_iterator("toy_data.mix", "train", 4, LENGTHS, seed=7), 12)
    assert_batches_equal(first, again)
    other = take(data.get_dataset_iterator("toy_data.mix", "train", 4, LENGTHS, seed=8), 12)
    assert any((x["encoder_input_tokens"] != y["encoder_input_tokens"]).any()
               for x, y in zip(first, other))
    # Resuming at step 9 yields batches 9, 10, 11 of the uninterrupted stream; 12 batches of 4
    # from 34 examples also show that the stream repeats.
    resumed = take(data.get_dataset_iterator("toy_data.mix", "train", 4, LENGTHS, seed=7,
                                             start_step=9), 3)
    assert_batches_equal(resumed, first[9:12])


def test_packing_adds_segments_and_positions():
    batch = next(data.get_dataset_iterator("toy_data.a", "train", 2, {"inputs": 64,
                                                                       "targets": 16},
                                           pack=True, shuffle=False))
    assert set(batch) == UNPACKED | {"encoder_segment_ids", "decoder_segment_ids",
                                     "encoder_positions", "decoder_positions"}
    segments = batch["encoder_segment_ids"][0]
    assert segments.max() >= 2  # several examples share the row
    positions = batch["encoder_positions"][0]
    starts = np.flatnonzero(np.diff(segments) != 0) + 1
    assert (positions[starts[segments[starts] > 0]] == 0).all()


def test_one_pass_pads_last_batch_with_zero_weights():
    batches = list(data.get_dataset_iterator("toy_data.b", "validation", 4, LENGTHS,
                                             shuffle=False, repeat=False))
    assert len(batches) == 4  # 13 examples: 3 full batches and one of 1 padded to 4
    assert all(b["encoder_input_tokens"].shape == (4, 16) for b in batches)
    rows_with_tokens = (batches[-1]["decoder_loss_weights"].sum(axis=1) > 0).tolist()
    assert rows_with_tokens == [True, False, False, False]


def test_shards_split_the_batch():
    full = next(data.get_dataset_iterator("toy_data.a", "train", 4, LENGTHS, shuffle=False,
                                          shard_index=0, num_shards=1))
    halves = [next(data.get_dataset_iterator("toy_data.a", "train", 4, LENGTHS, shuffle=False,
                                             shard_index=i, num_shards=2)) for i in (0, 1)]
    assert all(h["encoder_input_tokens"].shape == (2, 16) for h in halves)
    # Hosts read disjoint examples (every other one) that together make the global batch.
    rows = {tuple(r) for h in halves for r in h["encoder_input_tokens"]}
    assert rows == {tuple(r) for r in full["encoder_input_tokens"]}


@pytest.mark.parametrize("kwargs,message", [
    (dict(mixture_or_task="toy_data.nope"), "unknown task or mixture: 'toy_data.nope'"),
    (dict(sequence_length={"inputs": 8}), "sequence_length lacks 'targets'"),
    (dict(sequence_length={"inputs": 8, "targets": 0}), r"sequence_length\['targets'\] must be"),
    (dict(split="dev"), "has no split 'dev'"),
    (dict(batch_size=3, num_shards=2, shard_index=0), "batch_size 3 must be a positive multiple"),
    (dict(start_step=-1), "start_step must be >= 0"),
])
def test_bad_arguments_fail_at_the_call(kwargs, message):
    args = dict(mixture_or_task="toy_data.a", split="train", batch_size=4,
                sequence_length=LENGTHS)
    with pytest.raises(UserError, match=message):
        data.get_dataset_iterator(**{**args, **kwargs})


def test_tensorflow_is_kept_off_gpus_before_a_dataset_is_built(monkeypatch, capfd):
    import tensorflow as tf
    calls = []

    def set_visible_devices(devices, device_type):
        os.write(2, b"failed call to cuInit\n")  # TensorFlow's probe writes to the descriptor
        calls.append((list(devices), device_type))

    monkeypatch.setattr(tf.config, "set_visible_devices", set_visible_devices)
    monkeypatch.setattr(data.corpus, "keep_tensorflow_on_host",
                        functools.cache(data.corpus.keep_tensorflow_on_host.__wrapped__))
    print("before", file=sys.stderr)
    next(data.get_dataset_iterator("toy_data.a", "train", 4, LENGTHS))
    data.get_dataset_iterator("toy_data.b", "train", 4, LENGTHS)
    print("after", file=sys.stderr)
    assert calls == [([], "GPU")]  # once per process
    assert capfd.readouterr().err == "before\nafter\n"
