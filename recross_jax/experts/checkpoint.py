"""Expert checkpoints: only the expert's own parameters, and a manifest naming its backbone.

An expert directory holds `params.npz` (keyed by '/'-joined parameter paths) and `expert.json`,
written last (each file atomically), so a directory with a manifest is complete. An adapter
expert (kind "adapter", the default of manifests without a kind) holds its adapters and what
else it owns (layer norms, cross-attention); a full fine-tune expert (kind "full") holds every
parameter of the network:

    {"format", "name", "kind", "family", "adapter_reduction" (null for full),
     "layer_norms", "cross_attention" (adapter only),
     "backbone": {"config": <the backbone's config dict>, "fingerprint": <sha256 of its params>},
     "params": {path: shape}, "metadata": {...}}

Loading checks the backbone's config and fingerprint, and every parameter's path and shape.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from recross_jax.errors import UserError
from recross_jax.experts.expert import Backbone
from recross_jax.io_utils import atomic_path, read_json_object, write_json_atomic
from recross_jax.models import ModelConfig, adapters

FORMAT = "recross-expert/1"
MANIFEST = "expert.json"
PARAMS = "params.npz"
ADAPTER, FULL = "adapter", "full"
_REQUIRED = ("format", "name", "family", "backbone", "params")
_REQUIRED_OF_ADAPTERS = ("adapter_reduction", "layer_norms")


def save_expert(directory: str, name: str, backbone: Backbone, reduction: int,
                expert_params: Any, owned: adapters.ExpertParams,
                metadata: Mapping[str, Any] | None = None) -> None:
    """Writes the adapter expert `name` (its own parameters, as `train_expert` returns them).

    Raises:
      UserError: `expert_params` are not exactly what an expert of `reduction` and `owned`
        owns on `backbone` (a path missing, extra or of another shape).
    """
    flat = _flat(expert_params)
    _check_params(flat, _shapes(backbone.expert_shapes(reduction, owned)), f"expert {name!r}")
    _write(directory, flat, {"name": name, "kind": ADAPTER, "adapter_reduction": reduction,
                             **owned.to_dict()}, backbone, metadata)


def save_full_expert(directory: str, name: str, backbone: Backbone, params: Any,
                     metadata: Mapping[str, Any] | None = None) -> None:
    """Writes the full fine-tune expert `name`: every parameter of `backbone`'s network.

    Raises:
      UserError: `params` are not those of `backbone`'s network (a path missing, extra or of
        another shape).
    """
    flat = _flat(params)
    _check_params(flat, _shapes(backbone.params), f"expert {name!r}")
    _write(directory, flat, {"name": name, "kind": FULL, "adapter_reduction": None}, backbone,
           metadata)


def _write(directory: str, flat: Mapping[str, np.ndarray], fields: Mapping[str, Any],
           backbone: Backbone, metadata: Mapping[str, Any] | None) -> None:
    with atomic_path(os.path.join(directory, PARAMS)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **flat)
    write_json_atomic(os.path.join(directory, MANIFEST), {
        "format": FORMAT, **fields, "family": backbone.config.family,
        "backbone": {"config": backbone.config.to_dict(), "fingerprint": backbone.fingerprint},
        "params": {path: list(value.shape) for path, value in flat.items()},
        "metadata": dict(metadata or {})})


def kind_of(manifest: Mapping[str, Any]) -> str:
    """"adapter" or "full" (manifests written before full experts existed: "adapter")."""
    return manifest.get("kind", ADAPTER)


def read_manifest(directory: str) -> dict:
    """The manifest of an expert directory (checked for the entries `load_expert` needs)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"no expert at {directory} (missing {MANIFEST})")
    manifest = read_json_object(path, "expert manifest", _REQUIRED)
    if not isinstance(manifest["backbone"], dict):
        raise UserError(f"expert manifest {path} is corrupt: 'backbone' must be a JSON object")
    if manifest["format"] != FORMAT:
        raise UserError(f"expert manifest {path} has format {manifest['format']!r}, expected "
                        f"{FORMAT!r}")
    if kind_of(manifest) not in (ADAPTER, FULL):
        raise UserError(f"expert manifest {path} has kind {kind_of(manifest)!r}, expected "
                        f"{ADAPTER!r} or {FULL!r}")
    missing = [k for k in _REQUIRED_OF_ADAPTERS if kind_of(manifest) == ADAPTER
               and k not in manifest]
    if missing:
        raise UserError(f"expert manifest {path} is corrupt: an adapter expert's manifest needs "
                        f"{', '.join(missing)}")
    return manifest


def owned_params(manifest: Mapping[str, Any]) -> adapters.ExpertParams:
    """What the expert of `manifest` owns (no `cross_attention` entry, as in manifests written
    before it existed: not the cross-attention)."""
    return adapters.ExpertParams.from_dict(dict(manifest))


def load_expert(directory: str, backbone: Backbone) -> tuple[ModelConfig, Any]:
    """(config, parameters) of `backbone` with the expert saved in `directory` (a full
    fine-tune expert: the backbone's config and the expert's parameters).

    Raises:
      UserError: no expert there, or one trained on another backbone (another family, config
        or parameters), or parameters that do not fit its manifest.
    """
    manifest = read_manifest(directory)
    trained_on = manifest["backbone"]
    if manifest["family"] != backbone.config.family:
        raise UserError(f"expert {directory} belongs to a {manifest['family']} backbone, not "
                        f"this {backbone.config.family} one")
    ours, theirs = backbone.config.to_dict(), trained_on.get("config") or {}
    if theirs != ours:
        key = next(k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k))
        raise UserError(f"expert {directory} was trained on another backbone: its config has "
                        f"{key}={theirs.get(key)!r}, this one {ours.get(key)!r}")
    if trained_on.get("fingerprint") != backbone.fingerprint:
        raise UserError(f"expert {directory} was trained on another backbone: parameters "
                        f"{str(trained_on.get('fingerprint'))[:12]}..., these are "
                        f"{backbone.fingerprint[:12]}...")
    path = os.path.join(directory, PARAMS)
    try:
        with np.load(path) as data:
            flat = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"expert {directory} is corrupt: cannot read {path} ({e})") from None
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    if kind_of(manifest) == FULL:
        _check_params(flat, _shapes(backbone.params), f"expert {directory}")
        return backbone.config, params
    reduction = manifest["adapter_reduction"]
    _check_params(flat, _shapes(backbone.expert_shapes(reduction, owned_params(manifest))),
                  f"expert {directory}")
    return backbone.expert_config(reduction), backbone.with_expert(params)


def _flat(params: Any) -> dict[str, np.ndarray]:
    return {"/".join(path): np.asarray(leaf)
            for path, leaf in traverse_util.flatten_dict(params).items()}


def _shapes(params: Any) -> dict[str, tuple[int, ...]]:
    return {"/".join(path): tuple(leaf.shape)
            for path, leaf in traverse_util.flatten_dict(params).items()}


def _check_params(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                  what: str) -> None:
    for path in sorted(set(expected) | set(flat)):
        if path not in flat:
            raise UserError(f"{what} lacks parameter {path!r}")
        if path not in expected:
            raise UserError(f"{what} has parameter {path!r}, which its backbone does not")
        if tuple(flat[path].shape) != expected[path]:
            raise UserError(f"{what}: parameter {path!r} has shape {tuple(flat[path].shape)}, "
                            f"the backbone needs {expected[path]}")
