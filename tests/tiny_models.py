"""A tiny T5 on seqio's test SentencePiece model, saved as an upstream checkpoint: the model of the
end-to-end tests (indexing, mining, generalization)."""
from __future__ import annotations

import os

import jax
import numpy as np
import seqio
from flax import linen as nn

from recross_jax import checkpoints
from recross_jax.models import t5

SEQIO_TEST_VOCAB = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                                "sentencepiece.model")


def tiny_config() -> t5.T5Config:
    """One encoder and one decoder layer of width 16 over the seqio test vocabulary."""
    vocab_size = seqio.SentencePieceVocabulary(SEQIO_TEST_VOCAB, extra_ids=100).vocab_size
    return t5.T5Config(vocab_size=vocab_size, dtype="float32", emb_dim=16, num_heads=2,
                       num_encoder_layers=1, num_decoder_layers=1, head_dim=8, mlp_dim=32)


def init_params(config: t5.T5Config, seed: int = 0):
    """Freshly initialised parameters of `config`."""
    dummy = np.ones((1, 4), np.int32)
    return nn.unbox(t5.Transformer(config).init(jax.random.PRNGKey(seed), dummy, dummy, dummy))["params"]


def save_tiny_model(model_dir: str, step: int, seed: int = 0):
    """Saves a freshly initialised tiny model at `step` (and points RECROSS_VOCAB at its vocabulary);
    returns (config, params)."""
    os.environ["RECROSS_VOCAB"] = SEQIO_TEST_VOCAB
    config = tiny_config()
    params = init_params(config, seed)
    checkpoints.save_model(model_dir, config, params, step=step)
    return config, params
