"""A tiny random BERT in HF layout (config.json, model.safetensors, tokenizer.json): the backbone
of the cross-encoder tests and of the end-to-end `recross` method test."""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from recross_jax.models.bert import BertConfig, BertModel, hf_weight_names

KEYWORDS = ["red", "green", "blue", "gold", "pink", "gray"]
FILLERS = ["the", "a", "of", "cat", "dog", "tree", "house", "car", "road", "lamp", "cup", "sky",
           "sea", "hill", "door", "book", "pen", "bird", "fish", "rock"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=160, type_vocab_size=2, hidden_act="gelu",
            layer_norm_eps=1e-12, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            pad_token_id=0, model_type="bert")


def write_tokenizer(path: str, words: list[str]) -> None:
    """A lower-casing WordPiece tokenizer over SPECIALS + `words`, with BERT's single and pair
    templates ([CLS] A [SEP] B [SEP], segment ids 0 and 1)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    vocab = {w: i for i, w in enumerate(SPECIALS + list(words))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.save(path)


def to_hf(params: dict, config: BertConfig, with_pooler: bool = False,
          prefix: str = "") -> dict[str, np.ndarray]:
    """Our parameters under HF names (the inverse of load_hf_bert)."""
    out = {}
    for hf_name, path in hf_weight_names(config, with_pooler).items():
        value = params
        for key in path:
            value = value[key]
        value = np.asarray(value)
        out[prefix + hf_name] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
    return out


def make_bert_dir(directory: str, with_pooler: bool = True, seed: int = 0) -> str:
    """A random tiny BERT over KEYWORDS + FILLERS, in HF layout."""
    os.makedirs(directory, exist_ok=True)
    words = KEYWORDS + FILLERS
    hf_config = {**TINY, "vocab_size": len(SPECIALS) + len(words)}
    config = BertConfig.from_hf_dict(hf_config)
    variables = jax.jit(BertModel(config, with_pooler).init)(jax.random.PRNGKey(seed),
                                                            jnp.ones((1, 4), jnp.int32))
    params = nn.unbox(variables["params"])
    save_file(to_hf(params, config, with_pooler), os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f)
    write_tokenizer(os.path.join(directory, "tokenizer.json"), words)
    return directory
