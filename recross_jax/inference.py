"""Batched scoring, rank classification, and greedy / beam decoding with a KV cache.

Works with any Flax encoder-decoder exposing T5X's methods `encode(encoder_input_tokens)` and
`decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, ...,
decode=False, max_decode_length=None)` whose KV cache lives in the `cache` collection
(`recross_jax.models.t5.Transformer`). Token id 0 is padding and the decoder's start token.

Every public function takes 0-padded host (numpy) token arrays of any size, sorts the examples
by length, cuts them into batches of fixed, bucketed shapes (so a whole evaluation compiles a
handful of programs, not one per batch, and pads little), runs jitted steps with
`NamedSharding`s on a `('data', 'model')` mesh, and returns numpy arrays in input order.
Log-probabilities are float32 natural logs.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from recross_jax import partitioning

PAD_ID = 0
DEFAULT_EOS_ID = 1
DEFAULT_BATCH_SIZE = 32
MIN_LENGTH_BUCKET = 8
# Large but finite, as in T5X: sums and ratios of it stay ordered and NaN-free.
NEG_INF = -1.0e7

Array = jax.Array
Params = Any


# ---------------------------------------------------------------------------------------------
# Host-side padding helpers.


def bucket(n: int, minimum: int = MIN_LENGTH_BUCKET) -> int:
    """The smallest power of two that is >= n and >= minimum."""
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


def pad_tokens(sequences: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
    """Ragged token lists -> int32 [N, length] padded with 0 (length: the longest by default)."""
    length = max((len(s) for s in sequences), default=0) if length is None else length
    out = np.zeros((len(sequences), length), np.int32)
    for i, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(f"sequence {i} has {len(seq)} tokens, more than length {length}")
        out[i, :len(seq)] = seq
    return out


def pad_choices(choices: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """Per-example lists of tokenized answer choices -> int32 [N, max choices, max length].

    Missing choices are all-zero rows; `rank_classify` scores them -inf.
    """
    num_choices = max((len(c) for c in choices), default=0)
    length = max((len(t) for c in choices for t in c), default=0)
    out = np.zeros((len(choices), num_choices, length), np.int32)
    for i, example_choices in enumerate(choices):
        for j, tokens in enumerate(example_choices):
            out[i, j, :len(tokens)] = tokens
    return out


# ---------------------------------------------------------------------------------------------
# Traced computations: `model` is static, everything else is an array pytree.


def shift_right(targets: Array) -> Array:
    """Teacher-forcing decoder inputs: targets shifted one step right behind the start token."""
    return jnp.pad(targets, [(0, 0)] * (targets.ndim - 1) + [(1, 0)],
                   constant_values=PAD_ID)[..., :-1]


def _encode(model: nn.Module, params: Params, inputs: Array) -> Array:
    return model.apply({"params": params}, inputs, enable_dropout=False, method="encode")


def _token_log_probs(model: nn.Module, params: Params, encoded: Array, inputs: Array,
                     targets: Array) -> Array:
    """log p(targets[b, t] | inputs[b], targets[b, :t]), 0 at padding: [batch, target_length]."""
    logits = model.apply({"params": params}, encoded, inputs, shift_right(targets), targets,
                         enable_dropout=False, method="decode").astype(jnp.float32)
    # log_softmax gathered at the target only: avoids writing the [b, t, vocab] log-probs.
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    token_log_probs = target_logits - jax.nn.logsumexp(logits, axis=-1)
    return jnp.where(targets > 0, token_log_probs, 0.0)


def _reduce(token_log_probs: Array, targets: Array, length_normalize: bool) -> Array:
    total = token_log_probs.sum(axis=-1)
    if not length_normalize:
        return total
    return total / jnp.maximum((targets > 0).sum(axis=-1), 1)


def _score_fn(model: nn.Module, params: Params, inputs: Array, targets: Array, *,
              length_normalize: bool) -> Array:
    encoded = _encode(model, params, inputs)
    return _reduce(_token_log_probs(model, params, encoded, inputs, targets), targets,
                   length_normalize)


def _choice_scores_fn(model: nn.Module, params: Params, inputs: Array, choices: Array, *,
                      length_normalize: bool) -> Array:
    """Scores [batch, choices]; each input is encoded once and its encoding reused per choice."""
    batch, num_choices, length = choices.shape
    encoded = jnp.repeat(_encode(model, params, inputs), num_choices, axis=0)
    flat_inputs = jnp.repeat(inputs, num_choices, axis=0)
    flat_choices = choices.reshape(batch * num_choices, length)
    token_log_probs = _token_log_probs(model, params, encoded, flat_inputs, flat_choices)
    scores = _reduce(token_log_probs, flat_choices, length_normalize).reshape(batch, num_choices)
    return jnp.where((choices > 0).any(axis=-1), scores, -jnp.inf)


def _init_cache(model: nn.Module, params: Params, encoded: Array, inputs: Array,
                max_decode_length: int) -> Any:
    """An empty KV cache for `encoded.shape[0]` rows of up to `max_decode_length` tokens."""
    dummy = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)
    create = functools.partial(model.apply, enable_dropout=False, decode=True,
                               max_decode_length=max_decode_length, mutable=["cache"],
                               method="decode")
    # Only the shapes are needed; the creation pass itself is never run.
    _, variables = jax.eval_shape(create, {"params": params}, encoded, inputs, dummy, dummy)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), variables["cache"])


def _decode_step(model: nn.Module, params: Params, cache: Any, encoded: Array, inputs: Array,
                 tokens: Array, max_decode_length: int) -> tuple[Array, Any]:
    """Feeds one token per row [rows, 1]; returns next-token log-probs [rows, vocab] and cache."""
    logits, variables = model.apply(
        {"params": params, "cache": cache}, encoded, inputs, tokens, tokens,
        enable_dropout=False, decode=True, max_decode_length=max_decode_length,
        mutable=["cache"], method="decode")
    return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)), variables["cache"]


def _greedy_fn(model: nn.Module, params: Params, inputs: Array, *, max_decode_length: int,
               eos_id: int) -> tuple[Array, Array]:
    """Greedy decoding: tokens [batch, max_decode_length] (0 after EOS) and their log-prob."""
    batch = inputs.shape[0]
    encoded = _encode(model, params, inputs)
    cache = _init_cache(model, params, encoded, inputs, max_decode_length)
    # Column 0 holds the start token; column i + 1 the token chosen at step i.
    tokens = jnp.zeros((batch, max_decode_length + 1), jnp.int32)
    state = (jnp.array(0), tokens, cache, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32))

    def cond(state):
        step, _, _, done, _ = state
        return (step < max_decode_length) & ~done.all()

    def body(state):
        step, tokens, cache, done, total = state
        current = jax.lax.dynamic_slice_in_dim(tokens, step, 1, axis=1)
        log_probs, cache = _decode_step(model, params, cache, encoded, inputs, current,
                                        max_decode_length)
        chosen = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        chosen_log_prob = jnp.take_along_axis(log_probs, chosen[:, None], axis=-1)[:, 0]
        total = total + jnp.where(done, 0.0, chosen_log_prob)
        chosen = jnp.where(done, PAD_ID, chosen)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, chosen[:, None], step + 1, axis=1)
        return step + 1, tokens, cache, done | (chosen == eos_id), total

    _, tokens, _, _, total = jax.lax.while_loop(cond, body, state)
    return tokens[:, 1:], total


def brevity_penalty(alpha: float, length: Array | int) -> Array:
    """GNMT's length penalty ((5 + length) / 6) ** alpha, which beam scores are divided by."""
    return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def _gather_beams(tree: Any, indices: Array) -> Any:
    """Picks beams [batch, k'] out of every [batch, k, ...] leaf."""
    return jax.tree_util.tree_map(
        lambda x: jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)),
                                      axis=1), tree)


def _gather_cache(cache: Any, indices: Array) -> Any:
    """Reorders the flat [batch * beams, ...] cache leaves after beams [batch, beams] moved."""
    batch, beams = indices.shape
    flat = (jnp.arange(batch)[:, None] * beams + indices).reshape(-1)
    # The scalar `cache_index` is shared by all rows and stays as it is.
    return jax.tree_util.tree_map(lambda x: x if x.ndim == 0 else x[flat], cache)


def _beam_search_fn(model: nn.Module, params: Params, inputs: Array, *, beam_size: int,
                    alpha: float, max_decode_length: int, eos_id: int) -> tuple[Array, Array]:
    """Beam search over the KV cache, T5X-style.

    Each step extends the live beams, keeps the best 2k candidates, moves those that end in EOS
    (or reach `max_decode_length`) and rank among the best k into the finished set scored
    log p / brevity_penalty(alpha, length), and refills the k live beams with the best
    candidates that did not end. The loop stops early once no live beam can beat the worst
    finished one. With beam_size 1 and alpha 0 this is exactly greedy decoding.

    Returns:
      sequences [batch, beam_size, max_decode_length] best first (0 after EOS) and their
      scores [batch, beam_size] (-inf where fewer than beam_size sequences exist).
    """
    batch, k, length = inputs.shape[0], beam_size, max_decode_length
    encoded = jnp.repeat(_encode(model, params, inputs), k, axis=0)
    flat_inputs = jnp.repeat(inputs, k, axis=0)
    cache = _init_cache(model, params, encoded, flat_inputs, length)
    seqs = jnp.zeros((batch, k, length + 1), jnp.int32)
    # One live beam to start with; the others are dead copies until real candidates replace them.
    live_log_probs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    finished_scores = jnp.full((batch, k), NEG_INF, jnp.float32)
    state = (jnp.array(0), seqs, live_log_probs, seqs, finished_scores, cache)
    best_possible_penalty = brevity_penalty(alpha, length)

    def cond(state):
        step, _, live_log_probs, _, finished_scores, _ = state
        # Log-probs only fall as sequences grow and the penalty is largest at full length, so
        # no live beam can score above this bound.
        bound = live_log_probs[:, 0] / best_possible_penalty
        settled = (finished_scores[:, -1] > bound).all()
        return (step < length) & ~settled

    def body(state):
        step, live_seqs, live_log_probs, finished_seqs, finished_scores, cache = state
        current = jax.lax.dynamic_slice_in_dim(live_seqs.reshape(batch * k, -1), step, 1, axis=1)
        log_probs, cache = _decode_step(model, params, cache, encoded, flat_inputs, current,
                                        length)
        vocab = log_probs.shape[-1]
        candidates = (live_log_probs[:, :, None] + log_probs.reshape(batch, k, vocab))
        top_log_probs, top_ids = jax.lax.top_k(candidates.reshape(batch, k * vocab), 2 * k)
        top_beams, top_tokens = top_ids // vocab, (top_ids % vocab).astype(jnp.int32)
        top_seqs = _gather_beams(live_seqs, top_beams)
        top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, top_tokens[:, :, None],
                                                       step + 1, axis=2)
        ended = top_tokens == eos_id
        real = top_log_probs > NEG_INF / 2
        # Only the best k of the 2k may finish (so beam 1 is greedy); the rest refill live beams.
        may_finish = real & (jnp.arange(2 * k) < k) & (ended | (step + 1 == length))
        new_scores = jnp.where(may_finish, top_log_probs / brevity_penalty(alpha, step + 1),
                               NEG_INF)
        all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        finished_scores, keep = jax.lax.top_k(all_scores, k)
        finished_seqs = _gather_beams(jnp.concatenate([finished_seqs, top_seqs], axis=1), keep)
        live_scores = jnp.where(ended, NEG_INF, top_log_probs)
        live_log_probs, keep = jax.lax.top_k(live_scores, k)
        live_seqs = _gather_beams(top_seqs, keep)
        cache = _gather_cache(cache, _gather_beams(top_beams, keep))
        return step + 1, live_seqs, live_log_probs, finished_seqs, finished_scores, cache

    _, _, _, finished_seqs, finished_scores, _ = jax.lax.while_loop(cond, body, state)
    finished_scores = jnp.where(finished_scores > NEG_INF / 2, finished_scores, -jnp.inf)
    return finished_seqs[:, :, 1:], finished_scores


# ---------------------------------------------------------------------------------------------
# Host side: placement, compilation cache, fixed-shape batches.


def param_shardings(model: nn.Module, mesh: Mesh,
                    rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES) -> Any:
    """`NamedSharding`s of the model's (unboxed) parameters, from its logical axis names.

    Restoring a checkpoint onto these (`checkpoints.restore_model(..., shardings=...)`) puts
    the parameters where the functions below want them, without a copy.
    """
    return _param_shardings(model, mesh, tuple(tuple(rule) for rule in rules))


@functools.cache
def _param_shardings(model: nn.Module, mesh: Mesh, rules: tuple) -> Any:
    dummy = jnp.ones((1, 1), jnp.int32)
    boxed = jax.eval_shape(functools.partial(model.init, enable_dropout=False),
                           jax.random.PRNGKey(0), dummy, dummy, dummy)
    return partitioning.param_shardings(boxed["params"], mesh, rules)


@functools.cache
def _compiled(fn: Callable, model: nn.Module, mesh: Mesh, rules: tuple, num_arrays: int,
              **static: Any) -> Callable:
    """`fn(model, params, *arrays, **static)` jitted with params and batch shardings."""
    batch = partitioning.batch_sharding(mesh, rules)
    return jax.jit(functools.partial(fn, model, **static),
                   in_shardings=(_param_shardings(model, mesh, rules),) + (batch,) * num_arrays,
                   out_shardings=batch)


def _fit_length(tokens: np.ndarray) -> np.ndarray:
    """Cuts or 0-pads the last axis to the bucket of the longest non-padding extent."""
    used = np.nonzero((tokens != PAD_ID).reshape(-1, tokens.shape[-1]).any(axis=0))[0]
    length = bucket(used[-1] + 1 if used.size else 1)
    if length <= tokens.shape[-1]:
        return tokens[..., :length]
    return np.pad(tokens, [(0, 0)] * (tokens.ndim - 1) + [(0, length - tokens.shape[-1])])


def _length_order(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Example indices sorted by the non-padding extent of each array's last axis, the first
    array's first (stable), so that each batch is padded only to the lengths of its own rows."""
    def extent(a: np.ndarray) -> np.ndarray:
        used = (a != PAD_ID).reshape(a.shape[0], -1, a.shape[-1]).any(axis=1)
        return np.where(used.any(axis=1), a.shape[-1] - used[:, ::-1].argmax(axis=1), 0)
    return np.lexsort([extent(a) for a in reversed(arrays)])


def _batch_rows(n: int, batch_size: int, mesh: Mesh, rules: tuple) -> int:
    """Fixed rows per batch: batch_size, or a power of two for fewer examples, rounded up to a
    multiple of the data shards."""
    sharding = partitioning.batch_sharding(mesh, rules)
    shards = mesh.size // sharding.shard_shape((mesh.size,))[0]
    rows = min(bucket(n, 1), batch_size)
    return partitioning.round_up(rows, shards)


def _run(fn: Callable, model: nn.Module, params: Params, arrays: Sequence[np.ndarray], *,
         mesh: Mesh | None, rules: partitioning.LogicalRules, batch_size: int,
         **static: Any) -> Any:
    """Runs `fn` over fixed-shape batches of `arrays` (same leading size), the examples taken in
    order of length; returns the outputs in input order."""
    mesh = partitioning.create_mesh() if mesh is None else mesh
    rules = tuple(tuple(rule) for rule in rules)
    arrays = [np.asarray(a, np.int32) for a in arrays]
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"arrays disagree on the number of examples: {[a.shape for a in arrays]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n == 0:
        raise ValueError("no examples to run")
    rows = _batch_rows(n, batch_size, mesh, rules)
    params = jax.device_put(nn.unbox(params), _param_shardings(model, mesh, rules))
    step = _compiled(fn, model, mesh, rules, len(arrays), **static)
    order = _length_order(arrays)
    outputs = []
    with partitioning.activate(mesh, rules):
        for start in range(0, n, rows):
            chunk = [_fit_length(a[order[start:start + rows]]) for a in arrays]
            padding = rows - chunk[0].shape[0]
            chunk = [np.pad(c, [(0, padding)] + [(0, 0)] * (c.ndim - 1)) for c in chunk]
            # Dispatch is asynchronous: the host pads the next batch while this one runs.
            outputs.append(step(params, *chunk))
    outputs = jax.device_get(outputs)
    inverse = np.argsort(order)
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[:n][inverse], *outputs)


# ---------------------------------------------------------------------------------------------
# Public API.


def score(model: nn.Module, params: Params, inputs_tokens: np.ndarray,
          targets_tokens: np.ndarray, *, length_normalize: bool = False,
          mesh: Mesh | None = None, rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
          batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Per-example target log-likelihood [N]: summed over target tokens, or their mean."""
    return _run(_score_fn, model, params, [inputs_tokens, targets_tokens], mesh=mesh,
                rules=rules, batch_size=batch_size, length_normalize=length_normalize)


def rank_classify(model: nn.Module, params: Params, inputs_tokens: np.ndarray,
                  choices_tokens: np.ndarray, length_normalize: bool = False, *,
                  mesh: Mesh | None = None,
                  rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Rank classification: each answer choice scored as the target, the best one wins.

    Args:
      model: the encoder-decoder module.
      params: its parameters (boxed or not).
      inputs_tokens: int [N, input_length], 0-padded.
      choices_tokens: int [N, num_choices, target_length], 0-padded; all-zero rows mark missing
        choices (see `pad_choices`).
      length_normalize: mean instead of sum of the choice's token log-probs.
      mesh: device mesh; all devices data-parallel by default.
      rules: logical axis rules.
      batch_size: examples per step (each step decodes batch_size * num_choices targets).

    Returns:
      (predicted choice index [N], scores [N, num_choices] with -inf for missing choices).
    """
    choices_tokens = np.asarray(choices_tokens)
    if choices_tokens.ndim != 3 or choices_tokens.shape[1] == 0:
        raise ValueError(f"choices_tokens must be [N, num_choices >= 1, length], "
                         f"got shape {choices_tokens.shape}")
    scores = _run(_choice_scores_fn, model, params, [inputs_tokens, choices_tokens], mesh=mesh,
                  rules=rules, batch_size=batch_size, length_normalize=length_normalize)
    return np.argmax(scores, axis=-1), scores


def greedy_decode(model: nn.Module, params: Params, inputs_tokens: np.ndarray, *,
                  max_decode_length: int, eos_id: int = DEFAULT_EOS_ID,
                  mesh: Mesh | None = None,
                  rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding with the KV cache.

    Returns:
      (tokens [N, max_decode_length] ending with EOS unless cut at the maximum, 0 after EOS;
      the summed log-probability of the generated tokens [N]).
    """
    return _run(_greedy_fn, model, params, [inputs_tokens], mesh=mesh, rules=rules,
                batch_size=batch_size, max_decode_length=max_decode_length, eos_id=eos_id)


def beam_search(model: nn.Module, params: Params, inputs_tokens: np.ndarray, *,
                max_decode_length: int, beam_size: int = 4, alpha: float = 0.6,
                eos_id: int = DEFAULT_EOS_ID, mesh: Mesh | None = None,
                rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
                batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Beam search with the KV cache and length penalty `alpha` (T5X default 0.6).

    Returns:
      (tokens [N, beam_size, max_decode_length] best first, 0 after EOS; scores
      [N, beam_size]: log-probability / brevity_penalty(alpha, generated length)).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be positive, got {beam_size}")
    return _run(_beam_search_fn, model, params, [inputs_tokens], mesh=mesh, rules=rules,
                batch_size=batch_size, beam_size=beam_size, alpha=float(alpha),
                max_decode_length=max_decode_length, eos_id=eos_id)
