"""Short fine-tunes: batches, per-example losses against a reference, and learning."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from recross_jax import finetune, partitioning
from recross_jax.errors import UserError
from recross_jax.models import t5

CONFIG = t5.T5Config(vocab_size=32, dtype="float32", emb_dim=16, num_heads=2, num_encoder_layers=1,
                     num_decoder_layers=1, head_dim=8, mlp_dim=32, dropout_rate=0.0)


def init_params(seed=0):
    dummy = np.ones((1, 4), np.int32)
    return nn.unbox(t5.Transformer(CONFIG).init(jax.random.PRNGKey(seed), dummy, dummy, dummy))["params"]


PAIRS = [([5, 6, 7, 1], [8, 1]), ([9, 1], [10, 11, 1]), ([12, 13, 1], [14, 1]), ([15, 1], [16, 1]),
         ([17, 18, 1], [19, 20, 1])]


def test_make_batch_shifts_targets_and_pads_rows():
    batch = finetune.make_batch(PAIRS[:2], (4, 8, 8))
    assert batch["encoder_input_tokens"].shape == (4, 8)
    np.testing.assert_array_equal(batch["decoder_target_tokens"][1, :4], [10, 11, 1, 0])
    np.testing.assert_array_equal(batch["decoder_input_tokens"][1, :4], [0, 10, 11, 1])
    assert batch["decoder_loss_weights"][2:].sum() == 0


def test_padded_shape_rounds_rows_to_data_parallel_width():
    mesh = partitioning.create_mesh() if jax.device_count() >= 8 else None
    rows, input_length, target_length = finetune.padded_shape(PAIRS, 3, mesh)
    assert rows % (mesh.shape["data"] if mesh else 1) == 0 and rows >= 3
    assert (input_length, target_length) == (8, 8)


def test_epoch_batches_cover_every_example_once_per_epoch():
    shape = finetune.padded_shape(PAIRS, 2, None)
    batches = list(finetune.epoch_batches(PAIRS, 2, 2, seed=3, shape=shape))
    assert len(batches) == finetune.num_steps(len(PAIRS), 2, 2) == 6
    first_epoch = sorted(int(b["encoder_input_tokens"][r, 0]) for b in batches[:3] for r in range(2)
                         if b["encoder_input_tokens"][r, 0])
    assert first_epoch == sorted(p[0][0] for p in PAIRS)
    again = list(finetune.epoch_batches(PAIRS, 2, 2, seed=3, shape=shape))
    assert all((a["encoder_input_tokens"] == b["encoder_input_tokens"]).all() for a, b in zip(batches, again))


def test_length_sorted_batches_cover_each_example_once_each_padded_to_its_own_lengths():
    rng = np.random.default_rng(0)
    pairs = [([int(x) for x in rng.integers(3, 30, n)] + [1], [4] * int(m) + [1])
             for n, m in zip(rng.integers(1, 40, 11), rng.integers(0, 20, 11))]
    batches = finetune.length_sorted_batches(pairs, 4)
    assert sorted(i for rows, _ in batches for i in rows) == list(range(len(pairs)))
    for rows, batch in batches:
        chunk = [pairs[i] for i in rows]
        shape = batch["encoder_input_tokens"].shape + batch["decoder_target_tokens"].shape[1:]
        assert shape == finetune.padded_shape(chunk, 4, None)
        for r, (inputs, targets) in enumerate(chunk):
            np.testing.assert_array_equal(batch["encoder_input_tokens"][r, :len(inputs)], inputs)
    longest = [max(len(pairs[i][0]) for i in rows) for rows, _ in batches]
    assert longest == sorted(longest)
    # Short inputs get short batches: fewer padded tokens than one shape for all.
    assert sum(b["encoder_input_tokens"].size for _, b in batches) < \
        len(batches) * 4 * finetune.padded_shape(pairs, 4, None)[1]


def test_example_losses_match_full_forward():
    params = init_params()
    losses = finetune.example_losses(CONFIG, params, PAIRS, batch_size=2)
    model = t5.Transformer(CONFIG)
    for (inputs, targets), loss in zip(PAIRS, losses):
        dec_in = [0] + targets[:-1]
        logits = model.apply({"params": params}, np.array([inputs]), np.array([dec_in]), np.array([targets]))
        log_probs = jax.nn.log_softmax(logits[0])
        expected = -np.mean([log_probs[i, t] for i, t in enumerate(targets)])
        assert loss == pytest.approx(float(expected), rel=1e-5)


def test_finetune_lowers_loss_and_leaves_input_params_alone():
    params = init_params()
    before = jax.tree.map(np.array, params)
    cfg = finetune.FinetuneConfig(learning_rate=3e-2, batch_size=2, epochs=8, clip_grad_norm=1.0)
    tuned, history = finetune.finetune(CONFIG, params, PAIRS, cfg)
    assert len(history) == finetune.num_steps(len(PAIRS), 2, 8)
    assert finetune.example_losses(CONFIG, tuned, PAIRS).mean() < 0.5 * finetune.example_losses(
        CONFIG, params, PAIRS).mean()
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))
    tuned_again, _ = finetune.finetune(CONFIG, params, PAIRS, cfg)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, tuned),
                 jax.tree.map(np.array, tuned_again))


def test_errors():
    with pytest.raises(UserError, match="no examples"):
        finetune.finetune(CONFIG, init_params(), [], finetune.FinetuneConfig())
    with pytest.raises(UserError, match="batch_size and epochs must be positive"):
        finetune.FinetuneConfig(batch_size=0)
