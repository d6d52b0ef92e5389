"""BERT2BERT: config, parity with transformers' EncoderDecoderModel (tiny random and the real
all-MiniLM-L6-v2), cached decoding, packing, the start id, the mesh, warm start, the WordPiece
vocabulary and the gin file."""
from __future__ import annotations

import functools
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_bert
from jax.sharding import PartitionSpec as P

from recross_jax import assets, inference, partitioning
from recross_jax.errors import UserError
from recross_jax.models import bert2bert
from recross_jax.models.bert import BertConfig, load_hf_bert
from recross_jax.models.bert2bert import Bert2BertConfig, Transformer
from recross_jax.wordpiece import WordPieceVocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=60, hidden_size=32, num_encoder_layers=2, num_decoder_layers=2,
            num_attention_heads=4, intermediate_size=48, max_position_embeddings=40,
            decoder_start_token_id=3)
ATOL = 1e-4  # the acceptance bound (max abs logit difference)


def _tiny(**overrides) -> Bert2BertConfig:
    return Bert2BertConfig(**{**TINY, **overrides})


@functools.cache
def _jitted(config: Bert2BertConfig, method: str = "__call__", **static):
    model = Transformer(config)
    return jax.jit(functools.partial(model.apply, method=method, **static),
                   static_argnames=("enable_dropout",))


def _logits(config: Bert2BertConfig, params, *args, **kwargs) -> np.ndarray:
    return np.asarray(_jitted(config)({"params": params}, *args, **kwargs))


@functools.cache
def _jitted_init(config: Bert2BertConfig):
    return jax.jit(Transformer(config).init)


def _random_params(config: Bert2BertConfig, seed: int = 0):
    dummy = jnp.ones((1, 4), jnp.int32)
    variables = _jitted_init(config)(jax.random.PRNGKey(seed), dummy, dummy, dummy)
    return jax.tree_util.tree_map(np.asarray, nn.unbox(variables["params"]))


def _batch(rng: np.random.Generator, pairs: list[tuple[int, int]], widths: tuple[int, int] = (10, 7)
           ) -> tuple[np.ndarray, np.ndarray]:
    """0-padded inputs and targets of the given lengths (ids from 4 up: no special tokens).
    The tests share the default widths (and rows) so they share compiled programs."""
    inputs, targets = np.zeros((len(pairs), widths[0]), np.int32), np.zeros(
        (len(pairs), widths[1]), np.int32)
    for r, (a, b) in enumerate(pairs):
        inputs[r, :a] = rng.integers(4, TINY["vocab_size"], a)
        targets[r, :b] = rng.integers(4, TINY["vocab_size"], b)
    return inputs, targets


def _shift(targets: np.ndarray) -> np.ndarray:
    return np.asarray(inference.shift_right(jnp.asarray(targets)))


# --- the reference: transformers' EncoderDecoderModel ------------------------------------------


def _hf_model(config: Bert2BertConfig, seed: int = 0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    sizes = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                 num_hidden_layers=config.num_encoder_layers,
                 num_attention_heads=config.num_attention_heads,
                 intermediate_size=config.intermediate_size,
                 max_position_embeddings=config.max_position_embeddings)
    encoder = transformers.BertConfig(**sizes)
    decoder = transformers.BertConfig(**sizes, is_decoder=True, add_cross_attention=True)
    hf_config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        encoder, decoder, decoder_start_token_id=config.decoder_start_token_id, pad_token_id=0)
    torch.manual_seed(seed)
    return transformers.EncoderDecoderModel(config=hf_config).eval()


def _state_dict(model) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in model.state_dict().items()}


def _hf_logits(model, inputs: np.ndarray, decoder_inputs: np.ndarray, start: int) -> np.ndarray:
    """EncoderDecoderModel's logits for our (T5X) decoder inputs: the leading 0 is the start id,
    as `shift_tokens_right` makes it."""
    import torch
    hf_inputs = decoder_inputs.copy()
    hf_inputs[:, 0] = start
    with torch.no_grad():
        out = model(input_ids=torch.tensor(inputs, dtype=torch.long),
                    attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(hf_inputs, dtype=torch.long), use_cache=False)
    return out.logits.numpy()


def _cached_greedy(config: Bert2BertConfig, params, inputs: np.ndarray, steps: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding one token per call through the KV cache: (tokens [b, steps], the logits
    of every step [b, steps, vocab])."""
    model = Transformer(config)
    encoded = _jitted(config, "encode")({"params": params}, inputs)
    tokens = np.zeros((inputs.shape[0], 1), np.int32)
    _, variables = model.apply({"params": params}, encoded, inputs,
                               np.zeros((inputs.shape[0], steps), np.int32),
                               np.zeros((inputs.shape[0], steps), np.int32), decode=True,
                               max_decode_length=steps, mutable=["cache"], method="decode")
    cache = variables["cache"]
    step = _jitted(config, "decode", decode=True, max_decode_length=steps, mutable="cache")
    chosen, logits = [], []
    for _ in range(steps):
        out, variables = step({"params": params, "cache": cache}, encoded, inputs, tokens, tokens)
        cache = variables["cache"]
        logits.append(np.asarray(out[:, 0]))
        tokens = np.argmax(logits[-1], axis=-1).astype(np.int32)[:, None]
        chosen.append(tokens[:, 0])
    return np.stack(chosen, axis=1), np.stack(logits, axis=1)


def _check_greedy_against_hf(config, params, hf_model, inputs: np.ndarray, steps: int) -> float:
    """Our cached greedy steps against HF's full forward on each prefix; the max abs diff."""
    tokens, logits = _cached_greedy(config, params, inputs, steps)
    worst = 0.0
    for t in range(steps):
        prefix = np.concatenate([np.zeros((inputs.shape[0], 1), np.int32), tokens[:, :t]], 1)
        want = _hf_logits(hf_model, inputs, prefix, config.decoder_start_token_id)[:, -1]
        worst = max(worst, float(np.abs(logits[:, t] - want).max()))
        np.testing.assert_array_equal(tokens[:, t], want.argmax(-1))
    assert worst < ATOL
    return worst


# --- config -------------------------------------------------------------------------------------


def test_config_round_trips_through_a_dict_with_its_family():
    config = _tiny(dtype="bfloat16")
    data = config.to_dict()
    assert data["family"] == "bert2bert" and data["decoder_start_token_id"] == 3
    assert Bert2BertConfig.from_dict(data) == config
    assert Bert2BertConfig() == Bert2BertConfig.from_bert_config(BertConfig(),
                                                                 decoder_start_token_id=101)
    assert config.encoder_config.num_hidden_layers == 2 and config.decoder_config.dtype == "bfloat16"


@pytest.mark.parametrize("overrides, message", [
    ({"family": "t5"}, "family must be 'bert2bert'"),
    ({"num_attention_heads": 5}, "hidden_size (32) is not divisible by num_attention_heads (5)"),
    ({"num_decoder_layers": 0}, "Bert2BertConfig.num_hidden_layers must be a positive integer"),
    ({"hidden_act": "swish"}, "unsupported activation 'swish'"),
    ({"dtype": "float16"}, "Bert2BertConfig.dtype must be one of"),
    ({"decoder_start_token_id": 0}, "decoder_start_token_id must be an id in [1, vocab_size)"),
    ({"decoder_start_token_id": 60}, "decoder_start_token_id must be an id in [1, vocab_size)"),
])
def test_config_refuses_what_it_cannot_compute(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        _tiny(**overrides)
    with pytest.raises(UserError, match="unknown field 'hidden'"):
        Bert2BertConfig.from_dict({**_tiny().to_dict(), "hidden": 3})


def test_parameters_carry_logical_axes_and_the_output_layer_is_tied():
    dummy = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    abstract = jax.eval_shape(
        lambda t: Transformer(_tiny()).init(jax.random.PRNGKey(0), t, t, t), dummy)
    specs = nn.get_partition_spec(abstract)["params"]
    layer = specs["decoder"]["layers_1"]
    assert specs["encoder"]["layers_0"]["attention"]["query"]["kernel"] == P("embed", "joined_kv")
    assert layer["cross_attention"]["out"]["kernel"] == P("joined_kv", "embed")
    assert layer["cross_attention_layer_norm"]["scale"] == P("embed")
    assert layer["mlp"]["wi"]["kernel"] == P("embed", "mlp")
    assert specs["decoder"]["embeddings"]["word_embeddings"]["embedding"] == P("vocab", "embed")
    assert specs["decoder"]["lm_head"]["bias"] == P("vocab")
    assert set(specs["decoder"]["lm_head"]) == {"transform", "transform_layer_norm", "bias"}
    assert "pooler" not in specs["encoder"]


# --- parity with EncoderDecoderModel (tiny, random) ---------------------------------------------


def test_teacher_forced_logits_match_encoder_decoder_model():
    config = _tiny()
    hf_model = _hf_model(config)
    params = bert2bert.from_hf_encoder_decoder(_state_dict(hf_model), config)
    inputs, targets = _batch(np.random.default_rng(0), [(10, 7), (4, 3), (7, 1)])
    got = _logits(config, params, inputs, _shift(targets), targets)
    want = _hf_logits(hf_model, inputs, _shift(targets), config.decoder_start_token_id)
    real = targets > 0
    assert got.dtype == np.float32 and got.shape == (3, 7, 60)
    assert np.abs(got[real] - want[real]).max() < ATOL


def test_cached_greedy_decoding_matches_encoder_decoder_model():
    config = _tiny()
    hf_model = _hf_model(config, seed=1)
    params = bert2bert.from_hf_encoder_decoder(_state_dict(hf_model), config)
    inputs, _ = _batch(np.random.default_rng(1), [(9, 1), (3, 1), (10, 1)])
    _check_greedy_against_hf(config, params, hf_model, inputs, steps=7)


def test_hf_import_refuses_what_it_cannot_represent():
    config = _tiny()
    weights = _state_dict(_hf_model(config))
    untied = {**weights, "decoder.cls.predictions.decoder.weight":
              weights["decoder.cls.predictions.decoder.weight"] + 1}
    with pytest.raises(UserError, match="'decoder.cls.predictions.decoder.weight' is not tied"):
        bert2bert.from_hf_encoder_decoder(untied, config)
    missing = {k: v for k, v in weights.items() if "layer.1.crossattention.output.dense.bias" not in k}
    with pytest.raises(UserError, match="missing weight 'decoder.bert.encoder.layer.1.crossattention"):
        bert2bert.from_hf_encoder_decoder(missing, config)
    with pytest.raises(UserError, match="unexpected weight 'decoder.bert.encoder.layer.1"):
        bert2bert.from_hf_encoder_decoder(weights, _tiny(num_decoder_layers=1))


# --- the module's own conventions ---------------------------------------------------------------


def test_cached_decoding_equals_teacher_forced_logits():
    config = _tiny()
    params = _random_params(config)
    inputs, targets = _batch(np.random.default_rng(2), [(8, 7), (5, 7), (10, 3)])
    want = _logits(config, params, inputs, _shift(targets), targets)
    model = Transformer(config)
    encoded = _jitted(config, "encode")({"params": params}, inputs)
    zeros = np.zeros_like(targets)
    _, variables = model.apply({"params": params}, encoded, inputs, zeros, zeros, decode=True,
                               max_decode_length=7, mutable=["cache"], method="decode")
    cache, got = variables["cache"], []
    step = _jitted(config, "decode", decode=True, max_decode_length=7, mutable="cache")
    decoder_inputs = _shift(targets)
    for t in range(7):
        column = decoder_inputs[:, t:t + 1]
        out, variables = step({"params": params, "cache": cache}, encoded, inputs, column, column)
        cache = variables["cache"]
        got.append(np.asarray(out[:, 0]))
    real = targets > 0  # the cache masks no padding: positions past a row's end differ
    np.testing.assert_allclose(np.stack(got, axis=1)[real], want[real], rtol=0, atol=1e-5)
    assert int(cache["decoder"]["position"]) == 7


def test_inference_decodes_and_scores_with_the_family():
    """The stages' batched greedy decoding and scoring (jit, mesh, cache) run this module
    unchanged."""
    config = _tiny()
    params = _random_params(config, seed=3)
    inputs, targets = _batch(np.random.default_rng(3), [(9, 4), (3, 7), (6, 1)])
    tokens, _ = _cached_greedy(config, params, inputs, steps=7)
    model = Transformer(config)
    got, _ = inference.greedy_decode(model, params, inputs, max_decode_length=7, eos_id=59)
    np.testing.assert_array_equal(got, np.where(np.cumsum(tokens == 59, 1) - (tokens == 59) > 0,
                                                0, tokens))
    logits = _logits(config, params, inputs, _shift(targets), targets)
    log_probs = np.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(inference.score(model, params, inputs, targets),
                               np.where(targets > 0, log_probs, 0).sum(-1), rtol=1e-5)


def test_packed_rows_equal_separate_rows():
    config = _tiny()
    params = _random_params(config, seed=4)
    inputs, targets = _batch(np.random.default_rng(4), [(5, 3), (6, 4), (10, 7)])
    alone = _logits(config, params, inputs, _shift(targets), targets)
    packed_inputs = np.concatenate([inputs[0, :5], inputs[1, :6], [0]])[None]
    packed_targets = np.concatenate([targets[0, :3], targets[1, :4], [0]])[None]
    packed_decoder_inputs = np.concatenate([_shift(targets[:1, :3])[0],
                                            _shift(targets[1:2, :4])[0], [0]])[None]
    segments = dict(encoder_segment_ids=np.array([[1] * 5 + [2] * 6 + [0]]),
                    decoder_segment_ids=np.array([[1] * 3 + [2] * 4 + [0]]))
    positions = dict(encoder_positions=np.array([list(range(5)) + list(range(6)) + [0]]),
                     decoder_positions=np.array([list(range(3)) + list(range(4)) + [0]]))
    for extra in ({}, positions):  # positions restart per segment by default
        packed = _logits(config, params, packed_inputs, packed_decoder_inputs, packed_targets,
                         **segments, **extra)[0]
        np.testing.assert_allclose(packed[:3], alone[0, :3], rtol=0, atol=1e-5)
        np.testing.assert_allclose(packed[3:7], alone[1, :4], rtol=0, atol=1e-5)
    # T5's calling convention, encode(tokens, segments), packs correctly too.
    encoded = _jitted(config, "encode")({"params": params}, packed_inputs,
                                        segments["encoder_segment_ids"])
    single = _jitted(config, "encode")({"params": params}, inputs)
    np.testing.assert_allclose(np.asarray(encoded)[0, 5:11], np.asarray(single)[1, :6],
                               atol=1e-5)


def test_decoder_input_zero_is_the_start_token():
    config = _tiny()
    params = _random_params(config, seed=5)
    inputs, targets = _batch(np.random.default_rng(5), [(6, 4), (10, 7), (3, 2)])
    decoder_inputs = _shift(targets)
    zero = _logits(config, params, inputs, decoder_inputs, targets)
    explicit = decoder_inputs.copy()
    explicit[:, 0] = config.decoder_start_token_id
    np.testing.assert_array_equal(_logits(config, params, inputs, explicit, targets), zero)
    other = _logits(_tiny(decoder_start_token_id=4), params, inputs, decoder_inputs, targets)
    assert not np.allclose(other, zero)


def test_lengths_dropout_and_bfloat16():
    config = _tiny()
    params = _random_params(config, seed=6)
    inputs, targets = _batch(np.random.default_rng(6), [(6, 4), (10, 7), (3, 2)])
    plain = _logits(config, params, inputs, _shift(targets), targets)
    noisy = _logits(config, params, inputs, _shift(targets), targets, enable_dropout=True,
                    rngs={"dropout": jax.random.PRNGKey(0)})
    assert not np.allclose(plain, noisy)
    half = _logits(_tiny(dtype="bfloat16"), params, inputs, _shift(targets), targets)
    assert half.dtype == np.float32 and np.abs(half - plain).max() < 0.1
    long = np.ones((1, 41), np.int32)
    apply = functools.partial(jax.eval_shape, Transformer(config).apply, {"params": params})
    with pytest.raises(ValueError, match="target length 41 exceeds max_position_embeddings=40"):
        apply(inputs[:1], long, long)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=40"):
        apply(long, targets[:1], targets[:1])


def test_the_output_layer_trains_the_decoder_word_embeddings():
    """The LM head reads the decoder's embedding table (tied), not a copy and not the encoder's."""
    config = _tiny()
    params = _random_params(config, seed=8)
    inputs, targets = np.full((1, 3), 5, np.int32), np.full((1, 2), 6, np.int32)
    decoder_inputs = _shift(targets)

    def loss(p):
        return Transformer(config).apply({"params": p}, inputs, decoder_inputs, targets)[..., 9].sum()

    grads = jax.jit(jax.grad(loss))(params)
    row = 9  # no input or target uses it: only the output layer reaches it
    assert np.abs(grads["decoder"]["embeddings"]["word_embeddings"]["embedding"][row]).max() > 0
    assert not np.asarray(grads["encoder"]["embeddings"]["word_embeddings"]["embedding"][row]).any()


def test_sharded_over_a_mesh_matches_one_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    config = _tiny()
    model = Transformer(config)
    inputs, targets = _batch(np.random.default_rng(7), [(9, 5), (3, 2), (10, 6), (7, 1)])
    dummy = np.ones((1, 4), np.int32)
    boxed = jax.jit(model.init)(jax.random.PRNGKey(0), dummy, dummy, dummy)["params"]
    params = nn.unbox(boxed)
    want = _logits(config, params, inputs, _shift(targets), targets)
    mesh = partitioning.create_mesh(num_partitions=4)
    shardings = partitioning.param_shardings(boxed, mesh)
    sharded = jax.device_put(params, shardings)
    cross = sharded["decoder"]["layers_0"]["cross_attention"]
    assert cross["query"]["kernel"].sharding.spec == P(None, "model")
    assert sharded["decoder"]["lm_head"]["bias"].sharding.spec == P("model")
    rows = partitioning.batch_sharding(mesh)
    with partitioning.activate(mesh):
        got = jax.jit(model.apply, in_shardings=({"params": shardings}, rows, rows, rows))(
            {"params": sharded}, inputs, _shift(targets), targets)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-5)


# --- warm start ---------------------------------------------------------------------------------


def _copied(tree: dict) -> dict:
    """The decoder parameters a BERT checkpoint provides (everything but the new ones)."""
    out = {k: v for k, v in tree.items() if k != "lm_head"}
    for name in [k for k in out if k.startswith("layers_")]:
        out[name] = {k: v for k, v in out[name].items() if not k.startswith("cross_attention")}
    return out


def _assert_trees_equal(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_warm_start_copies_bert_into_both_stacks_and_initialises_the_rest(tmp_path):
    directory = tiny_bert.make_bert_dir(str(tmp_path / "bert"), with_pooler=True)
    bert_config = BertConfig.from_json_file(os.path.join(directory, "config.json"))
    config = Bert2BertConfig.from_bert_config(bert_config, decoder_start_token_id=2)
    params = bert2bert.warm_start_from_bert(directory, config, jax.random.PRNGKey(0))
    weights = load_hf_bert(os.path.join(directory, "model.safetensors"), bert_config)
    _assert_trees_equal(params["encoder"], weights)
    _assert_trees_equal(_copied(params["decoder"]), weights)
    shapes = bert2bert.param_shapes(config)
    assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(
        tuple, shapes, is_leaf=lambda x: isinstance(x, tuple))
    cross = params["decoder"]["layers_1"]["cross_attention"]
    assert not cross["query"]["bias"].any() and not params["decoder"]["lm_head"]["bias"].any()
    assert (params["decoder"]["layers_0"]["cross_attention_layer_norm"]["scale"] == 1).all()
    kernels = np.concatenate([params["decoder"][f"layers_{i}"]["cross_attention"][p]["kernel"]
                              .ravel() for i in range(2) for p in ("query", "key", "value", "out")])
    assert abs(kernels.std() - 0.02) < 0.002 and abs(kernels.mean()) < 0.002
    again = bert2bert.warm_start_from_bert(directory, config, jax.random.PRNGKey(0))
    _assert_trees_equal(again, params)
    other = bert2bert.warm_start_from_bert(directory, config, jax.random.PRNGKey(1))
    assert not np.array_equal(other["decoder"]["lm_head"]["transform"]["kernel"],
                              params["decoder"]["lm_head"]["transform"]["kernel"])
    # Nothing is shared with the encoder: training one stack leaves the other alone.
    assert params["encoder"]["embeddings"]["word_embeddings"]["embedding"] is not params[
        "decoder"]["embeddings"]["word_embeddings"]["embedding"]
    with pytest.raises(UserError, match="unexpected weight"):
        bert2bert.warm_start_from_bert(directory, Bert2BertConfig.from_bert_config(
            bert_config, num_decoder_layers=1, decoder_start_token_id=2), jax.random.PRNGKey(0))
    with pytest.raises(UserError, match="config.json: hidden_act='gelu', the config has 'relu'"):
        bert2bert.warm_start_from_bert(directory, Bert2BertConfig.from_bert_config(
            bert_config, hidden_act="relu", decoder_start_token_id=2), jax.random.PRNGKey(0))


def test_warm_start_copies_what_encoder_decoder_model_copies(tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = tiny_bert.make_bert_dir(str(tmp_path / "bert"), with_pooler=True)
    config = Bert2BertConfig.from_bert_config(
        BertConfig.from_json_file(os.path.join(directory, "config.json")),
        decoder_start_token_id=2)
    hf_model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(
        directory, directory).eval()
    hf_params = bert2bert.from_hf_encoder_decoder(_state_dict(hf_model), config)
    ours = bert2bert.warm_start_from_bert(directory, config, jax.random.PRNGKey(0))
    _assert_trees_equal(ours["encoder"], hf_params["encoder"])
    _assert_trees_equal(_copied(ours["decoder"]), _copied(hf_params["decoder"]))


# --- the real all-MiniLM-L6-v2 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """(directory, config, HF EncoderDecoderModel warm-started from it); skipped without it."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch").manual_seed(0)
    try:
        directory = assets.minilm_dir()
    except UserError as e:
        pytest.skip(f"MiniLM asset unavailable (run `recross assets fetch`): {e}")
    config = Bert2BertConfig.from_bert_config(
        BertConfig.from_json_file(os.path.join(directory, "config.json")))
    hf_model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(
        directory, directory).eval()
    # Set afterwards: a `decoder_start_token_id=` keyword here would go to the decoder's
    # config as `start_token_id` (every decoder_* keyword does).
    hf_model.config.decoder_start_token_id, hf_model.config.pad_token_id = 101, 0
    return directory, config, hf_model


def test_minilm_warm_start_and_parity_with_encoder_decoder_model(minilm):
    directory, config, hf_model = minilm
    assert config == Bert2BertConfig()  # the gin file's and the defaults' sizes
    hf_params = bert2bert.from_hf_encoder_decoder(_state_dict(hf_model), config)
    ours = bert2bert.warm_start_from_bert(directory, config, jax.random.PRNGKey(0))
    _assert_trees_equal(ours["encoder"], hf_params["encoder"])
    _assert_trees_equal(_copied(ours["decoder"]), _copied(hf_params["decoder"]))

    vocab = WordPieceVocabulary(directory)
    texts = ["What is the capital of France?", "A cat sat on the mat.",
             "Answer the question: how many legs does a spider have?"]
    rows = [vocab.encode(t) + [vocab.eos_id] for t in texts]
    inputs = inference.pad_tokens(rows, 16)
    targets = inference.pad_tokens([vocab.encode(t)[:5] + [vocab.eos_id]
                                    for t in ["Paris", "the cat", "eight legs"]], 8)
    got = _logits(config, hf_params, inputs, _shift(targets), targets)
    want = _hf_logits(hf_model, inputs, _shift(targets), 101)
    real = targets > 0
    assert np.abs(got[real] - want[real]).max() < ATOL
    _check_greedy_against_hf(config, hf_params, hf_model, inputs, steps=4)


# --- the WordPiece vocabulary -------------------------------------------------------------------

SENTENCES = ["Hello, world! BERT2BERT warm-starts from MiniLM.", "naïve café — ünïcode",
             "What is 2+2? Answer: four.", ""]


@pytest.fixture(scope="module")
def minilm_vocab():
    try:
        directory = assets.minilm_dir()
    except UserError as e:
        pytest.skip(f"MiniLM asset unavailable (run `recross assets fetch`): {e}")
    return directory, WordPieceVocabulary(directory)


def test_wordpiece_matches_the_tokenizers_library_and_bert_tokenizer(minilm_vocab):
    from tokenizers import Tokenizer
    directory, vocab = minilm_vocab
    reference = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    reference.no_padding()  # the file pads every text to 128 tokens
    assert (vocab.vocab_size, vocab.eos_id, vocab.unk_id, vocab.pad_id, vocab.extra_ids) == (
        30522, 102, 100, 0, 0)
    for text in SENTENCES:
        ids = vocab.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False).ids
        assert vocab.decode(ids + [vocab.eos_id, 0, 0]) == reference.decode(ids)
    transformers = pytest.importorskip("transformers")
    fast = transformers.BertTokenizerFast.from_pretrained(directory)
    for text in SENTENCES:
        assert vocab.encode(text) == fast(text, add_special_tokens=False)["input_ids"]
    assert vocab.decode(vocab.encode("Hello, World!")) == "hello, world!"


def test_wordpiece_in_seqio_tokenize_and_tf_decode(minilm_vocab):
    import seqio
    import tensorflow as tf
    _, vocab = minilm_vocab
    dataset = tf.data.Dataset.from_tensor_slices({"inputs": SENTENCES[:3],
                                                  "targets": ["four", "yes", "no"]})
    features = {name: seqio.Feature(vocab, add_eos=True) for name in ("inputs", "targets")}
    tokenized = seqio.preprocessors.tokenize(dataset, features)
    tokenized = seqio.preprocessors.append_eos(tokenized, features)
    rows = list(tokenized.as_numpy_iterator())
    for row, text in zip(rows, SENTENCES[:3]):
        assert list(row["inputs"]) == vocab.encode(text) + [102]
        assert row["inputs_pretokenized"] == text.encode("utf-8")
    batch = tf.constant(inference.pad_tokens([vocab.encode("two cats") + [102, 7592],
                                              vocab.encode("a dog")]))
    np.testing.assert_array_equal(vocab.decode_tf(batch).numpy(), [b"two cats", b"a dog"])
    assert vocab.decode_tf(tf.constant(vocab.encode("one"))).numpy() == b"one"


def test_wordpiece_names_an_unreadable_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(UserError, match="cannot read WordPiece tokenizer"):
        WordPieceVocabulary(str(tmp_path)).encode("hi")


# --- gin ----------------------------------------------------------------------------------------


@gin.configurable("test_bert2bert_probe")
def _probe(config=None):
    return config


def test_gin_model_file_parses_and_builds_the_minilm_config():
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            [os.path.join(REPO, "gin", "models", "minilm2minilm.gin")],
            ["test_bert2bert_probe.config = %MODEL_CONFIG", "ACTIVATION_DTYPE = 'bfloat16'"],
            finalize_config=False)
        config = _probe()
    finally:
        gin.clear_config()
    assert config == Bert2BertConfig(dtype="bfloat16")
    assert Bert2BertConfig.from_dict(config.to_dict()) == config
