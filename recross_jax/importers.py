"""Import pretrained T5 weights: HF transformers directories and T5X legacy checkpoints.

Both importers return the *unboxed* `params` collection of `recross_jax.models.t5.Transformer`
as a nested dict of float32 numpy arrays, so `Transformer(config).apply({'params': params}, ...)`
runs it directly and `checkpoints.save_model` stores it. Every parameter is checked against the
shapes the config implies; the first missing, mismatching or unexpected one is named in a
`UserError`.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import serialization

from recross_jax.errors import UserError
from recross_jax.models.t5 import T5Config, Transformer

# HF `feed_forward_proj` values whose activations our network computes exactly.
_HF_ACTIVATIONS = {
    "relu": ("relu",),
    "gated-gelu": ("gelu", "linear"),  # HF maps it to gelu_new, the tanh approximation
    "gated-relu": ("relu", "linear"),
    "gated-silu": ("silu", "linear"),
    "silu": ("silu",),
}
# Tensors HF checkpoints may carry that the network does not use: embedding copies of
# `shared.weight`, and a cross-attention bias HF never reads.
_HF_IGNORED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$"
                         r"|^decoder\.block\.0\.layer\.1\.EncDecAttention\."
                         r"relative_attention_bias\.weight$")
_LAYER_NORM_EPSILON = 1e-6


# ---------------------------------------------------------------------------------------------
# Shared helpers.


def expected_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """'/'-joined parameter path -> shape, for the network `config` describes."""
    dummy = jax.ShapeDtypeStruct((1, 1), np.int32)
    abstract = jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), dummy, dummy,
                              dummy)["params"]
    return {path: tuple(leaf.shape) for path, leaf in _flatten(nn.unbox(abstract))}


def _flatten(tree: Mapping[str, Any], prefix: str = "",
             is_leaf=lambda x: not isinstance(x, Mapping)) -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if is_leaf(value):
            yield path, value
        else:
            yield from _flatten(value, path, is_leaf)


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, name = path.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return tree


def _shape_error(source: str, name: str, expected: tuple[int, ...], actual: tuple[int, ...]
                 ) -> UserError:
    return UserError(f"{source}: parameter {name} has shape {list(actual)}, the config expects "
                     f"{list(expected)}")


# ---------------------------------------------------------------------------------------------
# HF transformers.


def hf_t5_config(hf: Mapping[str, Any], source: str = "config.json") -> tuple[T5Config, bool]:
    """Our `T5Config` for an HF T5 `config.json`, and whether HF scales the decoder output by
    d_model**-0.5 before the LM head (T5 1.0: tied embeddings; T5 1.1: not)."""
    if hf.get("model_type", "t5") not in ("t5", "mt5"):
        raise UserError(f"{source}: model_type {hf.get('model_type')!r} is not a T5 model")
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _HF_ACTIVATIONS:
        raise UserError(f"{source}: feed_forward_proj {proj!r} is not supported; known: "
                        f"{sorted(_HF_ACTIVATIONS)}")
    epsilon = hf.get("layer_norm_epsilon", _LAYER_NORM_EPSILON)
    if not np.isclose(epsilon, _LAYER_NORM_EPSILON, rtol=0, atol=1e-12):
        raise UserError(f"{source}: layer_norm_epsilon {epsilon} differs from T5's 1e-6")
    # transformers >= 5 writes `scale_decoder_outputs`; older configs say `tie_word_embeddings`
    # (absent means tied, i.e. T5 1.0).
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    try:
        config = T5Config(
            vocab_size=hf["vocab_size"], emb_dim=hf["d_model"], num_heads=hf["num_heads"],
            num_encoder_layers=hf["num_layers"],
            num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
            head_dim=hf["d_kv"], mlp_dim=hf["d_ff"], mlp_activations=_HF_ACTIVATIONS[proj],
            dropout_rate=hf.get("dropout_rate", 0.1), logits_via_embedding=bool(scale),
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128))
    except KeyError as e:
        raise UserError(f"{source}: missing key {e.args[0]!r}") from e
    return config, bool(scale)


def _hf_weight_files(path: str) -> tuple[list[str], str]:
    """The weight files of an HF directory (sharded or not) and their format."""
    for index_name, fmt in (("model.safetensors.index.json", "safetensors"),
                            ("pytorch_model.bin.index.json", "torch")):
        index_path = os.path.join(path, index_name)
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise UserError(f"malformed {index_path}: {e}") from e
            return [os.path.join(path, s) for s in shards], fmt
    for name, fmt in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "torch")):
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)], fmt
    raise UserError(f"no model.safetensors or pytorch_model.bin in {path}")


def _read_hf_weights(path: str) -> dict[str, np.ndarray]:
    files, fmt = _hf_weight_files(path)
    weights: dict[str, np.ndarray] = {}
    for file in files:
        if not os.path.isfile(file):
            raise UserError(f"weight shard not found: {file}")
        try:
            if fmt == "safetensors":
                from safetensors import safe_open  # pylint: disable=import-outside-toplevel

                # The flax reader understands bfloat16, which numpy alone does not.
                with safe_open(file, framework="flax") as f:
                    for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                        weights[key] = np.asarray(f.get_tensor(key), np.float32)
            else:
                import torch  # pylint: disable=import-outside-toplevel

                state = torch.load(file, map_location="cpu", weights_only=True)
                for key, tensor in state.items():
                    weights[key] = tensor.detach().to(torch.float32).numpy()
        except UserError:
            raise
        except Exception as e:  # corrupt or truncated files surface as many exception types
            raise UserError(f"cannot read {file}: {type(e).__name__}: {e}") from e
    return weights


def _hf_names(config: T5Config) -> dict[str, str]:
    """Our parameter path -> HF tensor name."""
    names = {"token_embedder/embedding": "shared.weight",
             "encoder/relpos_bias/rel_embedding":
                 "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             "decoder/relpos_bias/rel_embedding":
                 "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             "encoder/encoder_norm/scale": "encoder.final_layer_norm.weight",
             "decoder/decoder_norm/scale": "decoder.final_layer_norm.weight"}
    if len(config.mlp_activations) == 1:
        mlp_in = {"wi": "wi"}
    else:
        mlp_in = {f"wi_{i}": f"wi_{i}" for i in range(len(config.mlp_activations))}

    def attention(ours: str, theirs: str) -> None:
        for mine, hf in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            names[f"{ours}/{mine}/kernel"] = f"{theirs}.{hf}.weight"

    def mlp(ours: str, theirs: str) -> None:
        for mine, hf in {**mlp_in, "wo": "wo"}.items():
            names[f"{ours}/{mine}/kernel"] = f"{theirs}.DenseReluDense.{hf}.weight"

    for i in range(config.num_encoder_layers):
        ours, theirs = f"encoder/layers_{i}", f"encoder.block.{i}.layer"
        attention(f"{ours}/attention", f"{theirs}.0.SelfAttention")
        names[f"{ours}/pre_attention_layer_norm/scale"] = f"{theirs}.0.layer_norm.weight"
        mlp(f"{ours}/mlp", f"{theirs}.1")
        names[f"{ours}/pre_mlp_layer_norm/scale"] = f"{theirs}.1.layer_norm.weight"
    for i in range(config.num_decoder_layers):
        ours, theirs = f"decoder/layers_{i}", f"decoder.block.{i}.layer"
        attention(f"{ours}/self_attention", f"{theirs}.0.SelfAttention")
        names[f"{ours}/pre_self_attention_layer_norm/scale"] = f"{theirs}.0.layer_norm.weight"
        attention(f"{ours}/encoder_decoder_attention", f"{theirs}.1.EncDecAttention")
        names[f"{ours}/pre_cross_attention_layer_norm/scale"] = f"{theirs}.1.layer_norm.weight"
        mlp(f"{ours}/mlp", f"{theirs}.2")
        names[f"{ours}/pre_mlp_layer_norm/scale"] = f"{theirs}.2.layer_norm.weight"
    return names


def import_hf_t5(path: str) -> tuple[T5Config, dict[str, Any]]:
    """Reads an HF T5 directory (`config.json` + `model.safetensors` or `pytorch_model.bin`,
    possibly sharded with an index) into our config and parameters.

    T5 1.1 (gated GELU, separate `lm_head`) and T5 1.0 (ReLU, LM head tied to the embedding
    with the d**-0.5 output scaling) are both reproduced exactly: the logits match HF's
    `T5ForConditionalGeneration`. A separate LM head together with output scaling (never
    produced by the reference models) is imported by folding the scale into the kernel.

    Returns:
      (config, unboxed params collection of float32 numpy arrays).
    """
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise UserError(f"HF model directory not found: {path}")
    if not os.path.isfile(config_path):
        raise UserError(f"no config.json in HF model directory {path}")
    try:
        with open(config_path, encoding="utf-8") as f:
            hf = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"malformed {config_path}: {e}") from e
    config, scale = hf_t5_config(hf, config_path)
    source = os.path.basename(_hf_weight_files(path)[0][0])
    weights = _read_hf_weights(path)

    shared = weights.get("shared.weight")
    if shared is None:
        raise UserError(f"{source}: missing tensor shared.weight (for token_embedder/embedding)")
    # transformers >= 5 always ties the head and then stores no `lm_head.weight`.
    lm_head = weights.pop("lm_head.weight", shared)
    tied = scale and lm_head.shape == shared.shape and np.array_equal(lm_head, shared)
    if scale and not tied:
        lm_head = lm_head * np.float32(config.emb_dim ** -0.5)
    config = T5Config(**{**config.to_dict(), "logits_via_embedding": bool(tied)})

    names = _hf_names(config)
    if not config.logits_via_embedding:
        names["decoder/logits_dense/kernel"] = "lm_head.weight"
        weights["lm_head.weight"] = lm_head
    flat = {}
    for ours, expected in sorted(expected_shapes(config).items()):
        hf_name = names[ours]
        if hf_name not in weights:
            raise UserError(f"{source}: missing tensor {hf_name} (for {ours}, shape "
                            f"{list(expected)})")
        value = weights.pop(hf_name)
        # HF stores matrices as [out, in] (and the bias table as [buckets, heads]); only the
        # embedding has our layout already.
        value = value if value.ndim == 1 or ours == "token_embedder/embedding" else value.T
        if value.shape != expected:
            raise _shape_error(source, f"{hf_name} (for {ours})", expected, value.shape)
        flat[ours] = np.ascontiguousarray(value, np.float32)
    unexpected = sorted(k for k in weights if not _HF_IGNORED.match(k))
    if unexpected:
        raise UserError(f"{source}: unexpected tensor {unexpected[0]} (not a T5 parameter of "
                        "this config)")
    return config, _unflatten(flat)


# ---------------------------------------------------------------------------------------------
# T5X legacy checkpoints (msgpack + TensorStore zarr arrays, as t5x/checkpoints.py writes).


def _is_ts_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and {"driver", "kvstore", "metadata"} <= set(value)


def _ts_spec_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in spec["metadata"]["shape"])


def _read_ts_array(spec: Mapping[str, Any], checkpoint_dir: str, name: str) -> np.ndarray:
    """Reads one TensorStore array, resolving its checkpoint-relative path."""
    import tensorstore as ts  # pylint: disable=import-outside-toplevel

    spec = json.loads(json.dumps(spec, default=_json_default))  # a deep, mutable copy
    # Chunking and compression are fixed by the stored array; keeping the writer's values
    # would only make opening fail on harmless differences.
    spec["metadata"].pop("chunks", None)
    spec["metadata"].pop("compressor", None)
    if spec.get("dtype") == "uint16" or spec["metadata"].get("dtype") == "<u2":
        raise UserError(f"T5X parameter {name} is stored as uint16 (checkpoint version < 3); "
                        "convert it to bfloat16 first")
    kvstore = spec["kvstore"]
    if kvstore.get("driver") == "gcs":
        raise UserError(f"T5X parameter {name} lives on GCS; copy the checkpoint to local disk")
    if kvstore.get("driver") == "gfile":
        kvstore["driver"] = "file"
    # tensorstore >= 0.1.14 keeps the path in the kvstore, older versions beside it.
    holder = kvstore if "path" in kvstore else spec
    if "path" not in holder:
        raise UserError(f"T5X parameter {name}: TensorStore spec without a path")
    holder["path"] = os.path.join(checkpoint_dir, holder["path"])
    array_dir = holder["path"]
    if not os.path.exists(array_dir):
        raise UserError(f"T5X parameter {name}: array not found at {array_dir}")
    try:
        store = ts.open(spec, open=True, read=True).result()
        return np.asarray(store.read().result())
    except Exception as e:  # tensorstore raises ValueError/RuntimeError with status text
        raise UserError(f"T5X parameter {name}: cannot read {array_dir}: {e}") from e


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_t5x_target(path: str) -> tuple[dict[str, Any], str]:
    """The `target` (parameter) tree of a T5X checkpoint file, its leaves still unread
    (numpy arrays or TensorStore spec dicts), and the checkpoint directory."""
    file = os.path.join(path, "checkpoint") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise UserError(f"T5X checkpoint not found: {file}")
    try:
        with open(file, "rb") as f:
            contents = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack reports corruption with several exception types
        raise UserError(f"cannot parse T5X checkpoint {file}: {type(e).__name__}: {e}") from e
    if not isinstance(contents, Mapping):
        raise UserError(f"T5X checkpoint {file} does not hold a state dict")
    # Version 0 files are plain Flax optimizer state dicts; later ones wrap it in `optimizer`.
    state = contents.get("optimizer", contents) if contents.get("version", 0) else contents
    target = state.get("target") if isinstance(state, Mapping) else None
    if not isinstance(target, Mapping):
        raise UserError(f"T5X checkpoint {file} has no optimizer target (parameters)")
    return dict(target), os.path.dirname(os.path.abspath(file))


def import_t5x_checkpoint(path: str, config: T5Config) -> dict[str, Any]:
    """Reads the parameters of a T5X legacy checkpoint (directory or its `checkpoint` file).

    Parameters may be stored inline in the msgpack file (unpartitioned ones) or as zarr
    arrays referenced by relative TensorStore specs (`target.encoder.layers_0....`).

    Returns:
      The unboxed params collection (float32 numpy arrays).

    Raises:
      UserError: a missing file, or the first parameter that is missing, has another shape
        than `config` implies, or is not part of the network.
    """
    target, checkpoint_dir = read_t5x_target(path)
    leaves = dict(_flatten(target, is_leaf=lambda x: _is_ts_spec(x)
                           or not isinstance(x, Mapping)))
    source = f"T5X checkpoint {path}"
    shapes = expected_shapes(config)
    for name, expected in sorted(shapes.items()):
        if name not in leaves:
            raise UserError(f"{source}: missing parameter {name} (shape {list(expected)})")
        leaf = leaves[name]
        actual = _ts_spec_shape(leaf) if _is_ts_spec(leaf) else tuple(np.shape(leaf))
        if actual != expected:
            raise _shape_error(source, name, expected, actual)
    unexpected = sorted(set(leaves) - set(shapes))
    if unexpected:
        raise UserError(f"{source}: unexpected parameter {unexpected[0]} (not in this config)")
    flat = {}
    for name, leaf in leaves.items():
        value = _read_ts_array(leaf, checkpoint_dir, name) if _is_ts_spec(leaf) else leaf
        flat[name] = np.asarray(value, np.float32)
    return _unflatten(flat)
