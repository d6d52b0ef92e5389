"""Scoring, rank classification, greedy and beam decoding against full-forward references."""
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recross_jax import inference, partitioning
from recross_jax.models import t5

VOCAB = 32
MAX_DECODE = 6
# Tests run on one device (cheap to execute); the 8-device test reruns the same calls, so their
# one-device programs are already compiled.
ONE_DEVICE = partitioning.create_mesh(devices=jax.devices()[:1])


def _tiny(vocab_size: int = VOCAB) -> t5.Transformer:
    return t5.Transformer(t5.T5Config(vocab_size=vocab_size, emb_dim=16, num_heads=2,
                                      num_encoder_layers=2, num_decoder_layers=2, head_dim=8,
                                      mlp_dim=32, dropout_rate=0.0))


def _init(model: t5.Transformer, seed: int = 0):
    """Unboxed random parameters as host arrays (callers must not depend on placement)."""
    dummy = jnp.ones((1, 4), jnp.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), dummy, dummy, dummy)
    return jax.tree_util.tree_map(np.asarray, nn.unbox(variables["params"]))


@pytest.fixture(scope="module")
def model_and_params():
    model = _tiny()
    return model, _init(model)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    lengths = [5, 3, 7, 1, 6]
    return inference.pad_tokens([rng.integers(2, VOCAB, size=n) for n in lengths])


@functools.partial(jax.jit, static_argnums=0)
def _reference_log_probs(model, params, inputs, decoder_inputs):
    logits = model.apply({"params": params}, inputs, decoder_inputs,
                         jnp.ones_like(decoder_inputs))
    return jax.nn.log_softmax(logits.astype(jnp.float32))


def _forward_log_probs(model, params, inputs, decoder_inputs):
    """Full-forward log-softmax [b, t, vocab], every decoder position treated as real."""
    return np.asarray(_reference_log_probs(model, params, inputs, decoder_inputs), np.float64)


def _sequence_log_prob(model, params, inputs, sequences):
    """log p(token t | input, tokens < t) by one full forward pass; 0 tokens count as tokens."""
    decoder_inputs = np.pad(sequences, [(0, 0), (1, 0)])[:, :-1]
    log_probs = _forward_log_probs(model, params, inputs, decoder_inputs)
    return np.take_along_axis(log_probs, sequences[..., None], axis=-1)[..., 0]


def _sequence_end(row, eos_id):
    """Number of generated tokens up to and including the first EOS (all when none)."""
    row = list(row)
    return row.index(eos_id) + 1 if eos_id in row else len(row)


def test_bucket_and_padding_helpers():
    assert [inference.bucket(n) for n in (0, 1, 8, 9, 16, 17, 100)] == [8, 8, 8, 16, 16, 32, 128]
    assert inference.bucket(3, 1) == 4
    np.testing.assert_array_equal(inference.pad_tokens([[3, 4], [5], []]),
                                  [[3, 4], [5, 0], [0, 0]])
    choices = inference.pad_choices([[[3, 1], [4, 5, 1]], [[6, 1]]])
    assert choices.shape == (2, 2, 3)
    np.testing.assert_array_equal(choices[1], [[6, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="sequence 0 has 3 tokens"):
        inference.pad_tokens([[1, 2, 3]], length=2)


def test_score_equals_full_forward_log_softmax(model_and_params, inputs):
    model, params = model_and_params
    rng = np.random.default_rng(1)
    targets = inference.pad_tokens([list(rng.integers(2, VOCAB, size=n)) + [1]
                                    for n in (2, 4, 0, 3, 1)])
    # Padding only follows the real tokens, so under the causal mask a forward pass without a
    # padding mask gives the real positions' log-probs exactly.
    token = _sequence_log_prob(model, params, inputs, targets) * (targets > 0)
    expected_sum = token.sum(-1)
    expected_mean = expected_sum / (targets > 0).sum(-1)

    got_sum = inference.score(model, params, inputs, targets, batch_size=2, mesh=ONE_DEVICE)
    got_mean = inference.score(model, params, inputs, targets, length_normalize=True,
                               batch_size=2, mesh=ONE_DEVICE)
    np.testing.assert_allclose(got_sum, expected_sum, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_mean, expected_mean, rtol=1e-5, atol=1e-5)
    assert np.all(got_sum < 0) and got_sum.shape == (5,)


def test_batches_take_examples_by_length_and_results_come_back_in_input_order(model_and_params,
                                                                              monkeypatch):
    model, params = model_and_params
    rng = np.random.default_rng(3)
    inputs = inference.pad_tokens([rng.integers(2, VOCAB, size=n) for n in (20, 2, 18, 3)])
    targets = inference.pad_tokens([[5, 1], [6, 7, 1], [1], [8, 1]])
    np.testing.assert_array_equal(inference._length_order([inputs, targets]), [1, 3, 2, 0])
    widths = []
    compiled = inference._compiled

    def recording(*args, **kwargs):
        step = compiled(*args, **kwargs)

        def run(params, *arrays):
            widths.append(arrays[0].shape)
            return step(params, *arrays)
        return run
    monkeypatch.setattr(inference, "_compiled", recording)
    got = inference.score(model, params, inputs, targets, batch_size=2, mesh=ONE_DEVICE)
    # The two short inputs share a batch of 8 tokens; in input order both batches needed 32.
    assert sorted(widths) == [(2, 8), (2, 32)]
    alone = [inference.score(model, params, inputs[i:i + 1], targets[i:i + 1], mesh=ONE_DEVICE)[0]
             for i in range(4)]
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def choices():
    """3, 2, 4, 1 and 3 answer choices of 2 to 5 tokens for the five inputs."""
    rng = np.random.default_rng(2)
    return inference.pad_choices([[list(rng.integers(2, VOCAB, size=rng.integers(1, 5))) + [1]
                                   for _ in range(num)] for num in (3, 2, 4, 1, 3)])


def test_rank_classify_matches_per_choice_forward(model_and_params, inputs, choices):
    model, params = model_and_params

    expected = np.full(choices.shape[:2], -np.inf)
    expected_normalized = np.full(choices.shape[:2], -np.inf)
    for j in range(choices.shape[1]):
        present = (choices[:, j] > 0).any(-1)
        token = _sequence_log_prob(model, params, inputs, choices[:, j]) * (choices[:, j] > 0)
        expected[present, j] = token.sum(-1)[present]
        expected_normalized[present, j] = (token.sum(-1) / np.maximum(
            (choices[:, j] > 0).sum(-1), 1))[present]

    predictions, scores = inference.rank_classify(model, params, inputs, choices, batch_size=4,
                                                  mesh=ONE_DEVICE)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(predictions, np.argmax(expected, -1))
    assert np.isneginf(scores[3, 1:]).all()  # example 3 has a single choice

    predictions, scores = inference.rank_classify(model, params, inputs, choices,
                                                  length_normalize=True, batch_size=4,
                                                  mesh=ONE_DEVICE)
    np.testing.assert_allclose(scores, expected_normalized, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(predictions, np.argmax(expected_normalized, -1))


def test_rank_classify_length_normalization_changes_the_winner(model_and_params, inputs):
    model, params = model_and_params
    # A long and a short choice: the sum favours the short one, the mean need not.
    rng = np.random.default_rng(3)
    long_choice = list(rng.integers(2, VOCAB, size=8)) + [1]
    choices = inference.pad_choices([[[5, 1], long_choice]] * len(inputs))
    _, summed = inference.rank_classify(model, params, inputs, choices, mesh=ONE_DEVICE)
    _, mean = inference.rank_classify(model, params, inputs, choices, length_normalize=True,
                                      mesh=ONE_DEVICE)
    np.testing.assert_allclose(mean, summed / np.array([2, 9]), rtol=1e-6)


def _greedy_without_cache(model, params, inputs, max_len, eos_id):
    """Argmax of a full forward pass at every step; stops a row at EOS (0 afterwards).

    The decoder is causal, so each step runs the whole max_len buffer (one compiled shape) and
    reads the position of that step.
    """
    tokens = np.zeros((len(inputs), max_len), np.int32)
    total = np.zeros(len(inputs))
    done = np.zeros(len(inputs), bool)
    for step in range(max_len):
        decoder_inputs = np.pad(tokens, [(0, 0), (1, 0)])[:, :-1]
        log_probs = _forward_log_probs(model, params, inputs, decoder_inputs)[:, step]
        chosen = log_probs.argmax(-1)
        total += np.where(done, 0.0, log_probs[np.arange(len(inputs)), chosen])
        tokens[:, step] = np.where(done, 0, chosen)
        done |= chosen == eos_id
    return tokens, total


@pytest.fixture(scope="module")
def reachable_eos(model_and_params, inputs):
    """An EOS id that greedy decoding emits mid-sequence for some rows, to exercise stopping.

    Returns (eos_id, row, position) of its first emission.
    """
    model, params = model_and_params
    tokens, _ = _greedy_without_cache(model, params, inputs, MAX_DECODE, eos_id=-1)
    for position in range(1, MAX_DECODE - 1):
        for row in range(len(inputs)):
            token = int(tokens[row, position])
            if token not in tokens[row, :position] and not (tokens == token).any(axis=1).all():
                return token, row, position
    raise AssertionError("no usable EOS id: every greedy token repeats or appears in every row")


def test_greedy_with_cache_equals_no_cache_loop(model_and_params, inputs, reachable_eos):
    model, params = model_and_params
    reachable_eos, eos_row, eos_position = reachable_eos
    expected_tokens, expected_total = _greedy_without_cache(model, params, inputs, MAX_DECODE,
                                                            reachable_eos)
    tokens, total = inference.greedy_decode(model, params, inputs, max_decode_length=MAX_DECODE,
                                            eos_id=reachable_eos, mesh=ONE_DEVICE)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(total, expected_total, rtol=1e-5, atol=1e-5)
    assert tokens[eos_row, eos_position] == reachable_eos
    assert (tokens[eos_row, eos_position + 1:] == 0).all()
    assert not (tokens == reachable_eos).any(axis=1).all()  # some rows run to the maximum
    # The reported log-prob is the model's probability of the emitted sequence.
    ends = [_sequence_end(row, reachable_eos) for row in tokens]
    by_forward = _sequence_log_prob(model, params, inputs, tokens)
    np.testing.assert_allclose(total, [by_forward[i, :e].sum() for i, e in enumerate(ends)],
                               rtol=1e-5, atol=1e-5)


def test_beam_of_one_is_greedy(model_and_params, inputs, reachable_eos):
    model, params = model_and_params
    reachable_eos = reachable_eos[0]
    tokens, total = inference.greedy_decode(model, params, inputs, max_decode_length=MAX_DECODE,
                                            eos_id=reachable_eos, mesh=ONE_DEVICE)
    beams, scores = inference.beam_search(model, params, inputs, max_decode_length=MAX_DECODE,
                                          beam_size=1, alpha=0.0, eos_id=reachable_eos,
                                          mesh=ONE_DEVICE)
    np.testing.assert_array_equal(beams[:, 0], tokens)
    np.testing.assert_allclose(scores[:, 0], total, rtol=1e-5, atol=1e-5)


def test_wider_beam_scores_at_least_greedy(model_and_params, inputs, reachable_eos):
    model, params = model_and_params
    reachable_eos = reachable_eos[0]
    _, greedy_total = inference.greedy_decode(model, params, inputs,
                                              max_decode_length=MAX_DECODE, eos_id=reachable_eos,
                                              mesh=ONE_DEVICE)
    beams, scores = inference.beam_search(model, params, inputs, max_decode_length=MAX_DECODE,
                                          beam_size=4, alpha=0.0, eos_id=reachable_eos,
                                          mesh=ONE_DEVICE)
    assert beams.shape == (len(inputs), 4, MAX_DECODE)
    assert np.all(scores[:, 0] >= greedy_total - 1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert len({tuple(b) for b in beams[0]}) == 4  # distinct hypotheses
    # Each score is the forward log-prob of its sequence up to and including EOS.
    for k in range(4):
        by_forward = _sequence_log_prob(model, params, inputs, beams[:, k])
        for i, row in enumerate(beams[:, k]):
            end = _sequence_end(row, reachable_eos)
            assert scores[i, k] == pytest.approx(by_forward[i, :end].sum(), abs=1e-4)


def test_beam_search_is_exact_when_the_beam_covers_every_prefix():
    # Vocabulary 5, 3 steps: at most 4**2 live prefixes and 80 candidates per step, so 40 beams
    # never prune the best sequence; compare with brute force over all sequences.
    vocab, max_len, eos, alpha = 5, 3, 1, 0.6
    model = _tiny(vocab)
    params = _init(model, seed=3)
    inputs = np.array([[2, 3, 4, 1], [4, 4, 1, 0]], np.int32)
    sequences, lengths = [], []
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if eos in seq[:-1] or (seq[-1] != eos and length < max_len):
                continue
            sequences.append(list(seq) + [2] * (max_len - length))
            lengths.append(length)
    sequences, lengths = np.array(sequences, np.int32), np.array(lengths)
    penalty = ((5.0 + lengths) / 6.0) ** alpha
    best = []
    for row in inputs:
        token = _sequence_log_prob(model, params, np.tile(row, (len(sequences), 1)), sequences)
        totals = np.array([token[i, :n].sum() for i, n in enumerate(lengths)]) / penalty
        best.append((totals.max(), sequences[totals.argmax()] * (np.arange(max_len)
                                                                 < lengths[totals.argmax()])))
    beams, scores = inference.beam_search(model, params, inputs, max_decode_length=max_len,
                                          beam_size=40, alpha=alpha, eos_id=eos,
                                          mesh=ONE_DEVICE)
    for i, (best_score, best_seq) in enumerate(best):
        assert scores[i, 0] == pytest.approx(best_score, abs=1e-4)
        np.testing.assert_array_equal(beams[i, 0], best_seq)


def test_identical_results_on_one_and_eight_devices(model_and_params, inputs, choices,
                                                    reachable_eos):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    model, params = model_and_params
    reachable_eos = reachable_eos[0]
    eight = partitioning.create_mesh(num_partitions=2)  # 4-way data x 2-way model parallel
    assert dict(eight.shape) == {"data": 4, "model": 2}

    def run(mesh):
        return {
            "rank": inference.rank_classify(model, params, inputs, choices, batch_size=4,
                                            mesh=mesh),
            "greedy": inference.greedy_decode(model, params, inputs, max_decode_length=MAX_DECODE,
                                              eos_id=reachable_eos, mesh=mesh),
            "beam": inference.beam_search(model, params, inputs, max_decode_length=MAX_DECODE,
                                          beam_size=4, alpha=0.0, eos_id=reachable_eos,
                                          mesh=mesh),
        }

    one, many = run(ONE_DEVICE), run(eight)
    for name in one:
        np.testing.assert_array_equal(one[name][0], many[name][0], name)
        np.testing.assert_allclose(one[name][1], many[name][1], rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_argument_errors(model_and_params, inputs):
    model, params = model_and_params
    with pytest.raises(ValueError, match="disagree on the number of examples"):
        inference.score(model, params, inputs, inputs[:2])
    with pytest.raises(ValueError, match="num_choices >= 1"):
        inference.rank_classify(model, params, inputs, np.zeros((len(inputs), 0, 3), np.int32))
    with pytest.raises(ValueError, match="beam_size must be positive"):
        inference.beam_search(model, params, inputs, max_decode_length=2, beam_size=0)
