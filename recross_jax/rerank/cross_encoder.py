"""The ReCross reranker: a BERT cross-encoder over (query input, candidate input) pairs.

SPEC §1.3-1.4. The network is HF's `BertForSequenceClassification` with two labels: the
backbone reads `[CLS] query [SEP] candidate [SEP]` (token types 0 then 1), a tanh pooler
projects the [CLS] state, and after dropout a linear classifier gives the logits of
(not helpful, helpful). The backbone (and its pooler, when the checkpoint has one) comes from an
HF BERT directory, all-MiniLM-L6-v2 by default; the head is initialised from the seed.

    metrics = train_reranker("runs/mining/tuples.jsonl", "runs/reranker")
    reranker = load_reranker("runs/reranker")
    order, utilities = reranker.rerank(queries, candidates, top_n=512)

Training pairs come from mined tuples (one JSON object a line with `queries`, `positives`
and `negatives` lists of input texts): every (q, p) is labeled 1, every (q, n) 0. A seeded 15%
of the tuples (not of the pairs, so no query is seen in both) is the dev set; the epoch with
the best dev accuracy (then lowest dev loss) is the one kept.

Scoring packs the pairs into rows of a few lengths (`retrieval.packing`): pairs of up to 64
tokens several to a row, each attending only to itself with positions from 0 and its logits
read at its own [CLS], longer ones alone in the shortest row that holds them; every call holds
about the same number of tokens. Training batches a fixed number of pairs, of similar lengths,
each batch padded to one of a few bucket lengths (`row_lengths`, from 64 tokens: steps of a
quarter of a power of two), so few train-step shapes (each an expensive compile) are built.

A reranker directory holds `reranker.json` (written last: the config, the training settings
and dev metrics), `tokenizer.json`, `checkpoint_<best epoch>/params`, and `config.gin` when
the CLI trained it; while training, the resumable state of the last finished epoch lives in
`train/` (removed at the end).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recross_jax import checkpoints, gin_utils, io_utils, partitioning, training
from recross_jax.errors import UserError
from recross_jax.io_utils import atomic_path, write_json_atomic
from recross_jax.models.bert import BertConfig, BertModel, Dense, load_hf_bert
from recross_jax.retrieval import packing

RERANKER_FILE = "reranker.json"
TOKENIZER_FILE = "tokenizer.json"
TRAIN_DIR = "train"
POSITIVE = 1  # label index of "helpful"
_FORMAT = 1
# Shortest bucket length of training batches.
_TRAIN_BUCKET = 64
# Training pairs are sorted by length within windows of this many batches: batches of similar
# lengths (little padding) while the order stays random at the scale of an epoch.
_SORT_WINDOW_BATCHES = 64
# Lets `--gin.cross_encoder.train_reranker.KEY=VALUE` work without a gin file.
_GIN_PREAMBLE = ("from __gin__ import dynamic_registration",
                 "from recross_jax.rerank import cross_encoder")

# A tokenized pair: (token ids, token type ids), int32 arrays of the same length.
Encoded = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------------------------
# The network.


class CrossEncoder(nn.Module):
    """BERT + pooler + dropout + linear classifier, as HF's `BertForSequenceClassification`.

    Parameters: `bert/...` (the `BertModel` tree, pooler included) and
    `classifier/{kernel [embed, num_labels], bias}`. Logits are float32.
    """

    config: BertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array,
                 attention_mask: jax.Array, *, segment_ids: jax.Array | None = None,
                 position_ids: jax.Array | None = None, cls_index: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """Logits [batch, num_labels], or [batch, pairs, num_labels] for packed rows (several
        pairs a row, told apart by `segment_ids`, their [CLS] at `cls_index`; see
        `BertModel`)."""
        cfg = self.config
        pooled = BertModel(cfg, with_pooler=True, name="bert")(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, segment_ids=segment_ids, cls_index=cls_index,
            deterministic=deterministic).pooled_output
        pooled = nn.Dropout(cfg.hidden_dropout_prob)(pooled, deterministic=deterministic)
        logits = Dense(self.num_labels, ("embed", None), cfg.activation_dtype,
                       name="classifier")(pooled)
        return logits.astype(jnp.float32)


def _dummy_inputs() -> tuple[jax.Array, jax.Array, jax.Array]:
    ids = jnp.ones((1, 2), jnp.int32)
    return ids, jnp.zeros_like(ids), ids


def abstract_params(config: BertConfig, num_labels: int = 2) -> Any:
    """The parameter shapes, boxed with their logical axis names (no compute)."""
    model = CrossEncoder(config, num_labels)
    return jax.eval_shape(lambda rng: model.init(rng, *_dummy_inputs()),
                          jax.random.PRNGKey(0))["params"]


def init_params(init_dir: str, config: BertConfig, seed: int, num_labels: int = 2) -> Any:
    """Cross-encoder parameters: the backbone of the HF BERT in `init_dir`, a random head.

    The pooler is the checkpoint's when it has one (as `BertForSequenceClassification` loads
    it), else random; the classifier is always random. Both draw from `seed`.
    Returns unboxed host (numpy) parameters.
    """
    from safetensors import SafetensorError, safe_open  # pylint: disable=import-outside-toplevel
    weights = os.path.join(init_dir, "model.safetensors")
    try:
        with safe_open(weights, "np") as f:
            has_pooler = any(k.endswith("pooler.dense.weight") for k in f.keys())
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot read BERT weights {weights}: {e}") from e
    backbone = load_hf_bert(weights, config, with_pooler=has_pooler)
    head = head_params(config, seed, num_labels)
    if not has_pooler:
        backbone["pooler"] = head["pooler"]
    return {"bert": backbone, "classifier": head["classifier"]}


def head_params(config: BertConfig, seed: int, num_labels: int = 2) -> dict[str, Any]:
    """A seeded random `pooler` and `classifier`, drawn as HF initialises BERT's linear layers
    (kernels from N(0, 0.02), zero biases); host numpy, so nothing compiles."""
    rng = np.random.default_rng([seed, 1])
    d = config.hidden_size

    def dense(features: int) -> dict[str, np.ndarray]:
        return {"kernel": rng.normal(0.0, 0.02, (d, features)).astype(np.float32),
                "bias": np.zeros(features, np.float32)}

    return {"pooler": dense(d), "classifier": dense(num_labels)}


# ---------------------------------------------------------------------------------------------
# Pair tokenization and batching.


class PairTokenizer:
    """`[CLS] a [SEP] b [SEP]` token ids and types 0/1, truncated longest-first to `max_length`.

    Wraps a `tokenizers.Tokenizer` whose post-processor adds BERT's pair template (as the
    `tokenizer.json` of every HF BERT model does).
    """

    def __init__(self, tokenizer: Any, max_length: int, source: str = "tokenizer"):
        self.tokenizer = tokenizer
        self.max_length = max_length
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length, strategy="longest_first")
        probe = tokenizer.encode("a", "b")
        if 1 not in probe.type_ids or probe.type_ids[0] != 0:
            raise UserError(f"{source} does not encode text pairs with token types 0 and 1 "
                            "(its post-processor lacks BERT's pair template)")

    @classmethod
    def from_file(cls, path: str, max_length: int) -> PairTokenizer:
        """Reads a `tokenizer.json`; an unreadable one is a UserError naming it."""
        from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
        if not os.path.isfile(path):
            raise UserError(f"tokenizer not found: {path}")
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise UserError(f"cannot read tokenizer {path}: {e}") from e
        return cls(tokenizer, max_length, source=path)

    def encode(self, firsts: Sequence[str], seconds: Sequence[str]) -> list[Encoded]:
        """Tokenizes the pairs (firsts[i], seconds[i])."""
        encodings = self.tokenizer.encode_batch(list(zip(firsts, seconds)))
        return [(np.asarray(e.ids, np.int32), np.asarray(e.type_ids, np.int32))
                for e in encodings]


def _bucket_length(length: int, lengths: Sequence[int]) -> int:
    """The shortest of `lengths` (ascending) that holds `length`."""
    return lengths[int(np.searchsorted(lengths, length))]


def _layout(encoded: Sequence[Encoded], positions: np.ndarray, rows: int, length: int
            ) -> dict[str, np.ndarray]:
    """Model inputs [rows, length] for `encoded[positions]`; extra rows are all padding."""
    ids, types, mask = (np.zeros((rows, length), np.int32) for _ in range(3))
    for r, p in enumerate(positions):
        token_ids, type_ids = encoded[p]
        ids[r, :len(token_ids)] = token_ids
        types[r, :len(type_ids)] = type_ids
        mask[r, :len(token_ids)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


class _Scorer:
    """Jitted logits of many tokenized pairs, packed into length-bucketed rows
    (`retrieval.packing`): short pairs several to a row, each attending only to itself with
    positions from 0, its logits read at its own [CLS]."""

    def __init__(self, model: CrossEncoder, max_length: int, mesh: Mesh | None = None,
                 param_shardings: Any = None):
        self.mesh = mesh
        self.max_length = max_length
        self.data_size = 1 if mesh is None else mesh.shape["data"]
        self.num_labels = model.num_labels

        def logits(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
            segments, positions = batch["segment_ids"], batch["position_ids"]
            cls_index = packing.segment_starts(segments, positions,
                                               packing.max_segments(segments.shape[1]))
            return model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                               segments != 0, segment_ids=segments, position_ids=positions,
                               cls_index=cls_index)

        if mesh is None:
            self._fn = jax.jit(logits)
        else:
            rows = partitioning.batch_sharding(mesh)
            self._fn = jax.jit(logits, in_shardings=(param_shardings, rows), out_shardings=rows)

    def __call__(self, params: Any, encoded: Sequence[Encoded], batch_size: int) -> np.ndarray:
        """Logits [len(encoded), num_labels] in input order; a model call takes about
        `batch_size` rows of 64 tokens."""
        packer = packing.Packer(self.max_length, batch_size, self.data_size)
        chunk = (0, [ids for ids, _ in encoded], [types for _, types in encoded])
        return packing.run_packed(packer.batches([chunk]), len(encoded), self.num_labels,
                                  functools.partial(self._run, params))

    def _run(self, params: Any, batch: packing.Batch) -> jax.Array:
        inputs = {"input_ids": batch.ids, "token_type_ids": batch.types,
                  "segment_ids": batch.segments, "position_ids": batch.positions}
        if self.mesh is None:
            return self._fn(params, inputs)
        with partitioning.activate(self.mesh):
            return self._fn(params, partitioning.shard_batch(inputs, self.mesh))


# ---------------------------------------------------------------------------------------------
# Scoring and reranking.


def rank_by_utility(scores: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """SPEC §1.3's selection from a [|Q|, |R'|] matrix of positive-class logits.

    A candidate's utility is its mean logit over the queries; the `top_n` highest are kept,
    best first, equal utilities in candidate order. Returns (candidate indices, utilities).
    """
    if top_n < 0:
        raise UserError(f"top_n must be >= 0, got {top_n}")
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise UserError(f"scores must be [queries >= 1, candidates], got shape {scores.shape}")
    utilities = scores.mean(axis=0)
    order = np.argsort(-utilities, kind="stable")[:top_n]
    return order, utilities[order]


class Reranker:
    """A cross-encoder ready to score (query, candidate) pairs.

    Build it with `load_reranker(dir)` (a trained one) or `from_init_dir` (a fresh head).
    """

    def __init__(self, config: BertConfig, params: Any, tokenizer: PairTokenizer, *,
                 batch_size: int = 64, mesh: Mesh | None = None):
        """Places `params` (replicated over `mesh` when given) and compiles lazily.

        Args:
          config: the backbone's config (its dtype is the activation dtype).
          params: `CrossEncoder` parameters (unboxed).
          tokenizer: the pair tokenizer; its `max_length` bounds every pair.
          batch_size: size of a model call in rows of 64 tokens (`batch_size * 64` tokens);
            as pairs per call, about the batch size of a plain loop over short pairs.
          mesh: split each batch over the mesh's `data` axis; None: the default device.
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        if tokenizer.max_length > config.max_position_embeddings:
            raise UserError(f"max_length {tokenizer.max_length} exceeds the model's "
                            f"max_position_embeddings={config.max_position_embeddings}")
        self.config = config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        model = CrossEncoder(config)
        shardings = None
        if mesh is not None:
            shardings = jax.tree_util.tree_map(
                lambda _: NamedSharding(mesh, PartitionSpec()), params)
        self.params = jax.device_put(params, shardings)
        self._scorer = _Scorer(model, tokenizer.max_length, mesh, shardings)

    @classmethod
    def from_init_dir(cls, init_dir: str | None = None, *, max_length: int = 512, seed: int = 0,
                      dtype: str = "float32", **kwargs: Any) -> Reranker:
        """An untrained reranker: the backbone of `init_dir` (default all-MiniLM-L6-v2) and a
        head drawn from `seed`; `kwargs` go to the constructor."""
        init_dir = _resolve_init_dir(init_dir)
        config = BertConfig.from_json_file(os.path.join(init_dir, "config.json"), dtype=dtype)
        tokenizer = PairTokenizer.from_file(os.path.join(init_dir, TOKENIZER_FILE), max_length)
        return cls(config, init_params(init_dir, config, seed), tokenizer, **kwargs)

    def logits(self, firsts: Sequence[str], seconds: Sequence[str]) -> np.ndarray:
        """Both logits [n, 2] of the pairs (firsts[i], seconds[i])."""
        return self._scorer(self.params, self.tokenizer.encode(firsts, seconds), self.batch_size)

    def score_pairs(self, queries: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """Positive-class logits [|Q|, |R'|] of every (query, candidate) pair."""
        _check_texts("queries", queries)
        _check_texts("candidates", candidates)
        if not queries or not candidates:
            return np.zeros((len(queries), len(candidates)), np.float32)
        firsts = [q for q in queries for _ in candidates]
        seconds = list(candidates) * len(queries)
        return self.logits(firsts, seconds)[:, POSITIVE].reshape(len(queries), len(candidates))

    def utility(self, queries: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """Each candidate's mean positive logit over the queries [|R'|]."""
        if not queries:
            raise UserError("utility needs at least one query")
        return self.score_pairs(queries, candidates).astype(np.float64).mean(axis=0)

    def rerank(self, queries: Sequence[str], candidates: Sequence[str], top_n: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """The `top_n` candidates of highest utility, best first (ties in candidate order).

        Returns (indices into `candidates`, their utilities); all candidates when fewer.
        """
        if not queries:
            raise UserError("rerank needs at least one query")
        return rank_by_utility(self.score_pairs(queries, candidates), top_n)


def _check_texts(name: str, texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise UserError(f"{name} must be a list of strings, got a single string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(f"{name}[{i}] is a {type(text).__name__}, not a string")


def _resolve_init_dir(init_dir: str | None) -> str:
    if init_dir is None:
        from recross_jax import assets  # pylint: disable=import-outside-toplevel
        return assets.minilm_dir()
    for filename in ("config.json", "model.safetensors", TOKENIZER_FILE):
        if not os.path.isfile(os.path.join(init_dir, filename)):
            raise UserError(f"BERT directory {init_dir} lacks {filename}")
    return init_dir


def load_reranker(directory: str, *, batch_size: int = 64, dtype: str | None = None,
                  mesh: Mesh | None = None) -> Reranker:
    """The trained reranker of `directory` (written by `train_reranker`).

    Args:
      directory: the reranker directory.
      batch_size: size of a model call in rows of 64 tokens (see `Reranker`).
      dtype: activation dtype override ('float32' or 'bfloat16'); default: as trained.
      mesh: see `Reranker`.
    Raises:
      UserError: not a finished reranker directory, or its checkpoint does not match.
    """
    info = _read_info(directory)
    if info is None:
        raise UserError(f"{directory} is not a trained reranker (no {RERANKER_FILE}; is its "
                        "training finished?)")
    try:
        values = dict(info["bert_config"])
        if dtype is not None:
            values["dtype"] = dtype
        config = BertConfig(**values)
        max_length = int(info["max_length"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"malformed {os.path.join(directory, RERANKER_FILE)}: {e}") from e
    tokenizer = PairTokenizer.from_file(os.path.join(directory, TOKENIZER_FILE), max_length)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                      nn.unbox(abstract_params(config)))
    manager = checkpoints.CheckpointManager(directory, read_only=True)
    try:
        items, _ = manager.restore(None, {"params": abstract})
    finally:
        manager.close()
    return Reranker(config, items["params"], tokenizer, batch_size=batch_size, mesh=mesh)


def check_reranker(directory: str) -> dict:
    """The description of the finished reranker in `directory`, read without loading it, so a
    stage can refuse a missing or unfinished reranker before it writes anything.

    Raises:
      UserError: no such directory, no finished reranker in it, or a malformed description.
    """
    if not os.path.isdir(directory):
        raise UserError(f"reranker directory not found: {directory} (see `recross reranker "
                        "train`)")
    info = _read_info(directory)
    if info is None:
        raise UserError(f"{directory} is not a trained reranker (no {RERANKER_FILE}; is its "
                        "training finished?)")
    return info


def _read_info(directory: str) -> dict | None:
    path = os.path.join(directory, RERANKER_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise UserError(f"{path} is not a reranker description of format {_FORMAT}")
    return info


# ---------------------------------------------------------------------------------------------
# Training data.


def read_tuples(path: str) -> list[dict]:
    """The mined tuples of a JSONL file: objects with non-empty `queries` and string lists
    `positives` and `negatives`; blank lines are skipped.

    Raises:
      UserError: missing or unreadable file, a malformed line (named by number), no tuples.
    """
    tuples = []
    for number, record in io_utils.read_jsonl(path, what="tuples file"):
        for key in ("queries", "positives", "negatives"):
            texts = record.get(key)
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise UserError(f"{path}:{number}: {key!r} must be a list of strings")
        if not record["queries"] or not (record["positives"] or record["negatives"]):
            raise UserError(f"{path}:{number}: a tuple needs queries and at least one positive "
                            "or negative")
        tuples.append(record)
    if not tuples:
        raise UserError(f"tuples file {path} holds no tuples")
    return tuples


def tuple_pairs(record: dict) -> tuple[list[str], list[str], list[int]]:
    """(queries, candidates, labels) of a tuple: (q, p) -> 1 and (q, n) -> 0 for every q."""
    firsts, seconds, labels = [], [], []
    for query in record["queries"]:
        for texts, label in ((record["positives"], 1), (record["negatives"], 0)):
            firsts.extend([query] * len(texts))
            seconds.extend(texts)
            labels.extend([label] * len(texts))
    return firsts, seconds, labels


def split_tuples(count: int, dev_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, dev) tuple indices, ascending: a seeded `dev_fraction` of them (at least one
    each way) is held out."""
    if count < 2:
        raise UserError(f"reranker training needs at least 2 tuples (one for dev), got {count}")
    num_dev = min(max(1, int(round(dev_fraction * count))), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[num_dev:]), np.sort(order[:num_dev])


def _pairs(tuples: Sequence[dict], indices: np.ndarray, tokenizer: PairTokenizer
           ) -> tuple[list[Encoded], np.ndarray]:
    firsts, seconds, labels = [], [], []
    for i in indices:
        f, s, lab = tuple_pairs(tuples[i])
        firsts += f
        seconds += s
        labels += lab
    return tokenizer.encode(firsts, seconds), np.asarray(labels, np.int32)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int
                  ) -> list[np.ndarray]:
    """The pair positions of each batch of one epoch, seeded by (seed, epoch).

    A random permutation is cut into windows of `_SORT_WINDOW_BATCHES` batches; each window is
    sorted by length and cut into batches; the batch order is shuffled. At most one batch
    (the last of the last window) is partial.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * _SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ---------------------------------------------------------------------------------------------
# Training.


def classification_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted sums of (cross entropy, correct argmax, weight) over a batch of rows."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    correct = (logits.argmax(-1) == labels).astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(correct * weights), jnp.sum(weights)


def make_train_step(model: CrossEncoder, optimizer: optax.GradientTransformation, mesh: Mesh,
                    state_shardings: training.TrainState
                    ) -> Callable[[training.TrainState, dict], tuple[training.TrainState, dict]]:
    """A jitted `(state, batch) -> (state, metrics)`: mean cross entropy over the real rows
    (`weights` 1; padding rows 0), AdamW update, state donated, batch split over `data`."""

    def step_fn(state: training.TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params: Any):
            logits = model.apply({"params": params}, batch["input_ids"],
                                 batch["token_type_ids"], batch["attention_mask"],
                                 deterministic=False, rngs={"dropout": rng})
            loss_sum, correct, count = classification_sums(logits, batch["labels"],
                                                           batch["weights"])
            count = jnp.maximum(count, 1.0)
            return loss_sum / count, correct / count

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": opt_state.hyperparams["learning_rate"]}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(step_fn, in_shardings=(state_shardings, partitioning.batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def dev_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean cross entropy and accuracy of pair logits [n, 2] against 0/1 labels."""
    logits = np.asarray(logits, np.float64)
    log_z = np.logaddexp.reduce(logits, axis=-1)
    nll = log_z - logits[np.arange(len(labels)), labels]
    return {"loss": float(nll.mean()),
            "accuracy": float(np.mean(logits.argmax(-1) == labels))}


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything that determines the trained reranker; its hash guards resume and reuse."""

    tuples_sha256: str
    init_weights_sha256: str
    bert_config: dict
    max_length: int
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    schedule: str
    weight_decay: float
    clip_grad_norm: float | None
    dev_fraction: float
    seed: int

    def hash(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def train_reranker(tuples_path: str, out_dir: str, *,
                   init_dir: str | None = None,
                   max_length: int = 512,
                   epochs: int = 5,
                   batch_size: int = 64,
                   learning_rate: float = 1e-5,
                   warmup_steps: int = 100,
                   schedule: str = "linear",
                   weight_decay: float = 0.01,
                   clip_grad_norm: float | None = 1.0,
                   dev_fraction: float = 0.15,
                   eval_batch_size: int = 128,
                   dtype: str = "float32",
                   num_partitions: int = 1,
                   seed: int = 0,
                   progress: bool = True,
                   on_start: Callable[[str], None] | None = None) -> dict:
    """Trains the cross-encoder on mined tuples and saves the best epoch's parameters.

    Re-running with the same arguments resumes after the last finished epoch, or returns
    the saved metrics when `out_dir` already holds the finished reranker.

    Args:
      tuples_path: mined tuples JSONL (`queries`, `positives`, `negatives` per line).
      out_dir: the reranker directory to write.
      init_dir: HF BERT directory (config.json, model.safetensors, tokenizer.json) for the
        backbone; None: all-MiniLM-L6-v2 from the asset cache.
      max_length: tokens per pair, special tokens included (longest-first truncation).
      epochs: passes over the training pairs.
      batch_size: pairs per update.
      learning_rate: AdamW peak rate.
      warmup_steps: linear warmup from 0.
      schedule: 'linear' (warmup, then linear decay to 0 at the end, as sentence-transformers'
        WarmupLinear) or 'constant' (after the warmup); see `training.make_schedule`.
      weight_decay: AdamW's decoupled weight decay (on every parameter).
      clip_grad_norm: global gradient-norm clip; None disables it.
      dev_fraction: share of the tuples held out as dev.
      eval_batch_size: size of a scoring call on the dev set, in rows of 64 tokens.
      dtype: activation dtype, 'float32' or 'bfloat16'.
      num_partitions: model-parallel width of the `('data', 'model')` mesh.
      seed: dev split, head initialisation, batch order and dropout.
      progress: show a tqdm progress bar.
      on_start: called with `out_dir` once it exists (the CLI writes config.gin).

    Returns:
      `best_epoch`, `dev_accuracy`, `dev_loss` (of the best epoch), `history` (per epoch:
      `epoch`, `step`, `train_loss`, `dev_loss`, `dev_accuracy`) and the tuple/pair counts.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("eval_batch_size", eval_batch_size), ("max_length", max_length)):
        if value < 1:
            raise UserError(f"{name} must be positive, got {value}")
    if not 0.0 < dev_fraction < 1.0:
        raise UserError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    tuples = read_tuples(tuples_path)
    init_dir = _resolve_init_dir(init_dir)
    config = BertConfig.from_json_file(os.path.join(init_dir, "config.json"), dtype=dtype)
    if max_length > config.max_position_embeddings:
        raise UserError(f"max_length {max_length} exceeds the model's "
                        f"max_position_embeddings={config.max_position_embeddings}")
    tokenizer_path = os.path.join(init_dir, TOKENIZER_FILE)
    tokenizer = PairTokenizer.from_file(tokenizer_path, max_length)
    settings = _Settings(
        tuples_sha256=io_utils.sha256_file(tuples_path),
        init_weights_sha256=io_utils.sha256_file(os.path.join(init_dir, "model.safetensors")),
        bert_config=dataclasses.asdict(config), max_length=max_length, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, warmup_steps=warmup_steps,
        schedule=schedule, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
        dev_fraction=dev_fraction, seed=seed)
    finished = _read_info(out_dir)
    if finished is not None:
        if finished.get("settings_hash") != settings.hash():
            raise UserError(f"{out_dir} holds a reranker trained with other settings or tuples; "
                            "choose another output directory")
        return finished["metrics"]

    train_ids, dev_ids = split_tuples(len(tuples), dev_fraction, seed)
    train_pairs, train_labels = _pairs(tuples, train_ids, tokenizer)
    dev_pairs, dev_labels = _pairs(tuples, dev_ids, tokenizer)
    steps_per_epoch = math.ceil(len(train_pairs) / batch_size)
    total_steps = epochs * steps_per_epoch
    program = _program(config, max_length, num_partitions, schedule, learning_rate,
                       warmup_steps, total_steps, weight_decay, clip_grad_norm)
    mesh, shardings = program.mesh, program.shardings

    os.makedirs(out_dir, exist_ok=True)
    if on_start is not None:
        on_start(out_dir)
    abstract_state = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(lambda p: training.TrainState.create(p, program.optimizer, seed),
                       nn.unbox(program.boxed_params)), shardings)
    run = _Run(os.path.join(out_dir, TRAIN_DIR), settings.hash(), abstract_state)
    state, best_params, history = run.restore()
    if state is None:
        params = jax.device_put(init_params(init_dir, config, seed), shardings.params)
        state = jax.device_put(training.TrainState.create(params, program.optimizer, seed),
                               shardings)

    scorer = program.scorer
    lengths = np.array([len(ids) for ids, _ in train_pairs], np.int64)
    rows = partitioning.round_up(batch_size, mesh.shape["data"])
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=total_steps, initial=len(history) * steps_per_epoch, desc="reranker",
               unit="step", disable=not progress)
    try:
        for epoch in range(len(history) + 1, epochs + 1):
            state, train_loss = _train_epoch(
                program.train_step, state, train_pairs, train_labels,
                epoch_batches(lengths, batch_size, seed, epoch), rows,
                packing.row_lengths(max_length, min(_TRAIN_BUCKET, max_length)), mesh,
                (epoch - 1) * steps_per_epoch, bar)
            dev = dev_metrics(scorer(state.params, dev_pairs, eval_batch_size), dev_labels)
            record = {"epoch": epoch, "step": epoch * steps_per_epoch, "train_loss": train_loss,
                      "dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"]}
            if not history or _better(record, history[best_index(history)]):
                # A copy: the next train step donates (and so invalidates) state.params.
                best_params = jax.tree_util.tree_map(jnp.copy, state.params)
            history.append(record)
            bar.set_postfix(dev_acc=f"{dev['accuracy']:.3f}", dev_loss=f"{dev['loss']:.4f}")
            run.save(epoch, state, best_params, history)
    finally:
        bar.close()
        run.close()

    best = history[best_index(history)]
    metrics = {"best_epoch": best["epoch"], "dev_accuracy": best["dev_accuracy"],
               "dev_loss": best["dev_loss"], "history": history,
               "num_train_tuples": len(train_ids), "num_dev_tuples": len(dev_ids),
               "num_train_pairs": len(train_pairs), "num_dev_pairs": len(dev_pairs)}
    _export(out_dir, best_params, best["epoch"], tokenizer_path, {
        "format": _FORMAT, "bert_config": dataclasses.asdict(config), "num_labels": 2,
        "max_length": max_length, "init_dir": os.path.abspath(init_dir),
        "tuples_path": os.path.abspath(tuples_path), "settings": dataclasses.asdict(settings),
        "settings_hash": settings.hash(), "metrics": metrics})
    return metrics


class _Program(NamedTuple):
    mesh: Mesh
    optimizer: optax.GradientTransformation
    boxed_params: Any
    shardings: training.TrainState
    train_step: Callable
    scorer: _Scorer


@functools.lru_cache(maxsize=4)
def _program(config: BertConfig, max_length: int, num_partitions: int, schedule: str,
             learning_rate: float, warmup_steps: int, total_steps: int, weight_decay: float,
             clip_grad_norm: float | None) -> _Program:
    """The mesh, optimizer, shardings and jitted steps of a training configuration; built once
    per process, so a resumed or repeated run reuses the compiled programs."""
    optimizer = training.make_optimizer(
        "adamw", training.make_schedule(schedule, learning_rate, warmup_steps, total_steps),
        clip_grad_norm=clip_grad_norm, weight_decay=weight_decay)
    mesh = partitioning.create_mesh(num_partitions)
    boxed = abstract_params(config)
    shardings = training.state_shardings(boxed, optimizer, mesh)
    model = CrossEncoder(config)
    return _Program(mesh, optimizer, boxed, shardings,
                    make_train_step(model, optimizer, mesh, shardings),
                    _Scorer(model, max_length, mesh, shardings.params))


def _better(record: dict, best: dict) -> bool:
    """Higher dev accuracy wins; equal accuracy, lower dev loss."""
    return (record["dev_accuracy"], -record["dev_loss"]) > (best["dev_accuracy"],
                                                           -best["dev_loss"])


def best_index(history: Sequence[dict]) -> int:
    """Position of the best epoch of `history` (the earliest among equals)."""
    best = 0
    for i in range(1, len(history)):
        if _better(history[i], history[best]):
            best = i
    return best


def _train_epoch(train_step: Callable, state: training.TrainState, pairs: Sequence[Encoded],
                 labels: np.ndarray, batches: list[np.ndarray], rows: int,
                 lengths: Sequence[int], mesh: Mesh, first_step: int, bar: Any
                 ) -> tuple[training.TrainState, float]:
    """Runs one epoch's batches; returns the state and the mean training loss.

    Each step's loss is checked (NaN/inf stops training) one step late, so the host never
    stalls the device queue.
    """
    losses: list[float] = []
    pending: tuple[int, dict] | None = None

    def settle(step: int, device_metrics: dict) -> None:
        metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        training.check_finite(step, metrics)
        losses.append(metrics["loss"])
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")

    with partitioning.activate(mesh):
        for i, positions in enumerate(batches):
            length = _bucket_length(max(len(pairs[p][0]) for p in positions), lengths)
            batch = _layout(pairs, positions, rows, length)
            batch["labels"] = np.zeros(rows, np.int32)
            batch["labels"][:len(positions)] = labels[positions]
            batch["weights"] = np.zeros(rows, np.float32)
            batch["weights"][:len(positions)] = 1.0
            state, metrics = train_step(state, partitioning.shard_batch(batch, mesh))
            if pending is not None:
                settle(*pending)
            pending = (first_step + i + 1, metrics)
            bar.update(1)
        if pending is not None:
            settle(*pending)
    return state, float(np.mean(losses))


class _Run:
    """The resumable state of a training run: `train/checkpoint_<epoch>` holds the params,
    the optimizer state, step and RNG, the best epoch's params and the history so far."""

    def __init__(self, directory: str, settings_hash: str, abstract_state: training.TrainState):
        self.manager = checkpoints.CheckpointManager(directory, keep=1)
        self.directory = directory
        self.settings_hash = settings_hash
        self.abstract = abstract_state

    def restore(self) -> tuple[training.TrainState | None, Any, list[dict]]:
        """(state, best params, history) after the last finished epoch, or (None, None, [])."""
        epoch = self.manager.latest_step()
        if epoch is None:
            return None, None, []
        a = self.abstract
        items, data = self.manager.restore(epoch, {
            "params": a.params, "best_params": a.params,
            "train_state": {"opt_state": a.opt_state, "step": a.step, "rng": a.rng}})
        if data.get("settings_hash") != self.settings_hash:
            raise UserError(f"{self.directory} holds an unfinished run with other settings or "
                            "tuples; remove it or choose another output directory")
        extras = items["train_state"]
        state = training.TrainState(step=extras["step"], params=items["params"],
                                    opt_state=extras["opt_state"], rng=extras["rng"])
        return state, items["best_params"], list(data["history"])

    def save(self, epoch: int, state: training.TrainState, best_params: Any,
             history: list[dict]) -> None:
        self.manager.save(epoch, {
            "params": state.params, "best_params": best_params,
            "train_state": {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}},
            {"settings_hash": self.settings_hash, "history": history})

    def close(self) -> None:
        self.manager.close()


def _export(out_dir: str, params: Any, epoch: int, tokenizer_path: str, info: dict) -> None:
    """Writes the finished reranker: params, tokenizer, then `reranker.json` (the marker of a
    complete directory); the resumable state is removed last."""
    manager = checkpoints.CheckpointManager(out_dir)
    try:
        if epoch not in manager.all_steps():  # else a killed earlier export already saved it
            manager.save(epoch, {"params": params}, {"best_epoch": epoch})
    finally:
        manager.close()
    with atomic_path(os.path.join(out_dir, TOKENIZER_FILE)) as tmp:
        shutil.copyfile(tokenizer_path, tmp)
    write_json_atomic(os.path.join(out_dir, RERANKER_FILE), info)
    shutil.rmtree(os.path.join(out_dir, TRAIN_DIR), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> int:
    """`recross reranker train --tuples FILE --out DIR [gin flags]`; returns the exit code
    (2 on a user error). Gin binds `cross_encoder.train_reranker`'s other arguments."""
    parser = argparse.ArgumentParser(
        prog="recross reranker train",
        description="Train the ReCross cross-encoder reranker on mined tuples (SPEC 1.4); "
                    "re-running the command resumes it.",
        epilog="example: recross reranker train --tuples runs/mining/tuples.jsonl "
               "--out runs/reranker --gin.cross_encoder.train_reranker.epochs=3")
    parser.add_argument("--tuples", required=True, help="mined tuples JSONL (`recross mine`)")
    parser.add_argument("--out", required=True, help="reranker directory to write")
    gin_utils.add_gin_flags(parser)
    try:
        args = parser.parse_args(argv)
        args.gin_bindings = list(_GIN_PREAMBLE) + list(args.gin_bindings)
        gin_utils.parse_gin_flags(args)
        metrics = gin_utils.call_configurable(train_reranker, tuples_path=args.tuples,
                                              out_dir=args.out, on_start=gin_utils.write_config)
    except UserError as e:
        print(f"recross reranker train: error: {gin_utils.first_line(e)}", file=sys.stderr)
        return 2
    print(f"best epoch {metrics['best_epoch']}: dev accuracy {metrics['dev_accuracy']:.4f}, "
          f"dev loss {metrics['dev_loss']:.4f} ({metrics['num_train_pairs']} train pairs, "
          f"{metrics['num_dev_pairs']} dev pairs); saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
