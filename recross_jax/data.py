"""SeqIO tasks and mixtures as iterators of numpy batches with T5X feature names.

The only module of the training path that imports seqio and TensorFlow; the trainer consumes
the numpy dicts it yields:

    encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights
    (+ encoder/decoder_segment_ids and encoder/decoder_positions when packed)

Tasks are registered by importing their modules (gin files do `import tasks.bigbench`); this
module never imports `tasks`.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from recross_jax import corpus
from recross_jax.errors import UserError

FEATURE_LENGTH_KEYS = ("inputs", "targets")


def _check_lengths(sequence_length: Mapping[str, int]) -> dict[str, int]:
    lengths = dict(sequence_length or {})
    missing = [k for k in FEATURE_LENGTH_KEYS if k not in lengths]
    if missing:
        raise UserError(f"sequence_length lacks {missing[0]!r}: give both 'inputs' and "
                        f"'targets' lengths, got {lengths}")
    for key, value in lengths.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"sequence_length[{key!r}] must be a positive integer, got {value!r}")
    return lengths


def get_dataset(mixture_or_task: str, split: str, batch_size: int,
                sequence_length: Mapping[str, int], pack: bool = False,
                shuffle: bool = True, seed: int = 0, repeat: bool = True,
                shard_index: int = 0, num_shards: int = 1,
                use_cached: bool = False) -> tf.data.Dataset:
    """The batched tf.data pipeline behind `get_dataset_iterator` (this shard's rows).

    Args:
      mixture_or_task: registered SeqIO task or mixture name.
      split: dataset split.
      batch_size: global batch size; each of `num_shards` hosts gets `batch_size / num_shards`
        rows per batch.
      sequence_length: {'inputs': n, 'targets': m}; longer examples are truncated.
      pack: pack several examples per row (adds segment ids and positions).
      shuffle: shuffle (deterministically for `seed`).
      seed: seed of shuffling and of mixture sampling.
      repeat: repeat forever (training) and drop incomplete batches; else one pass whose
        last batch may be short.
      shard_index, num_shards: this host's shard of the data.
      use_cached: read the task's offline cache.
    """
    if batch_size < 1 or batch_size % num_shards:
        raise UserError(f"batch_size {batch_size} must be a positive multiple of the "
                        f"{num_shards} data shards")
    lengths = _check_lengths(sequence_length)
    provider = corpus.get_provider(mixture_or_task)
    if split not in provider.splits:
        raise UserError(f"{mixture_or_task!r} has no split {split!r} (has "
                        f"{', '.join(provider.splits)})")
    corpus.prepare_datasets(provider)
    dataset = seqio.get_dataset(
        provider, task_feature_lengths=lengths,
        feature_converter=seqio.EncDecFeatureConverter(pack=pack), dataset_split=split,
        use_cached=use_cached, shuffle=shuffle, num_epochs=None if repeat else 1,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
        verbose=False, seed=seed)
    return dataset.batch(batch_size // num_shards, drop_remainder=repeat)


def get_dataset_iterator(mixture_or_task: str, split: str, batch_size: int,
                         sequence_length: Mapping[str, int], pack: bool = False,
                         shuffle: bool = True, seed: int = 0, start_step: int = 0,
                         repeat: bool = True, shard_index: int | None = None,
                         num_shards: int | None = None, use_cached: bool = False
                         ) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of a SeqIO task or mixture, deterministic for a seed and resumable.

    `start_step=k` yields exactly the batches an iterator started at 0 yields from its k-th
    on (the pipeline is replayed and the first k batches skipped, which is deterministic
    because every shuffle and the mixture sampling are seeded). A non-repeating iterator pads
    its last batch to `batch_size` rows of zeros (loss weight 0), so every batch has the same
    shape. Arguments as `get_dataset`; the shard defaults to this JAX process's.
    """
    if start_step < 0:
        raise UserError(f"start_step must be >= 0, got {start_step}")
    if shard_index is None or num_shards is None:
        import jax  # pylint: disable=import-outside-toplevel
        shard_index, num_shards = jax.process_index(), jax.process_count()
    dataset = get_dataset(mixture_or_task, split, batch_size, sequence_length, pack=pack,
                          shuffle=shuffle, seed=seed, repeat=repeat, shard_index=shard_index,
                          num_shards=num_shards, use_cached=use_cached)
    # Built eagerly (not in the generator) so bad arguments fail at the call.
    return _numpy_batches(dataset.skip(start_step), batch_size // num_shards)


def _numpy_batches(dataset: tf.data.Dataset, rows: int) -> Iterator[dict[str, np.ndarray]]:
    for batch in dataset.as_numpy_iterator():
        yield {key: _pad_rows(value, rows) for key, value in batch.items()}


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    if array.shape[0] == rows:
        return array
    padding = np.zeros((rows - array.shape[0],) + array.shape[1:], array.dtype)
    return np.concatenate([array, padding])
