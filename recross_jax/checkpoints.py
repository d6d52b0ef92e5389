"""Orbax checkpoints of a model directory, and `restore_model` for everything downstream.

A model directory holds:

    model_config.json        the model config, with its `family` (enough, with a checkpoint, to
                             rebuild the network)
    config.gin               the resolved gin config of the run that wrote it
    checkpoint_<step>/       params/ (the parameter pytree), train_state/ (optimizer state,
                             step, RNG; absent for exported models) and data/ (JSON: the data
                             iterator position)
    metrics.jsonl            training metrics

`restore_model(model_dir)` needs nothing else. The importers of HF and T5X checkpoints live in
`recross_jax.importers` and are re-exported here.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from recross_jax import models
from recross_jax.errors import UserError
from recross_jax.io_utils import read_json_object, write_json_atomic
from recross_jax.models import ModelConfig

CONFIG_FILE = "model_config.json"
GIN_FILE = "config.gin"
STEP_PREFIX = "checkpoint"
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
_IMPORTERS = ("import_hf_t5", "import_t5x_checkpoint")


def __getattr__(name: str) -> Any:
    # The importers pull in safetensors/tensorstore readers: load them only when asked for.
    if name in _IMPORTERS:
        from recross_jax import importers  # pylint: disable=import-outside-toplevel
        return getattr(importers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_model_config(model_dir: str, config: ModelConfig) -> None:
    """Writes `model_config.json` (atomically)."""
    write_json_atomic(os.path.join(model_dir, CONFIG_FILE), config.to_dict())


def read_model_config(model_dir: str) -> ModelConfig:
    """Reads the config of a model directory (or of the one holding a checkpoint dir)."""
    path = os.path.join(_model_dir_of(model_dir), CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"no {CONFIG_FILE} in model directory {model_dir}")
    values = read_json_object(path, "model config")
    try:
        return models.config_from_dict(values)
    except (TypeError, ValueError) as e:
        raise UserError(f"malformed {path}: {_first_line(e)}") from None


def _model_dir_of(path: str) -> str:
    """`path` itself, or its parent when `path` is a `checkpoint_<step>` directory."""
    path = os.path.abspath(path)
    return os.path.dirname(path) if _STEP_DIR.match(os.path.basename(path)) else path


class CheckpointManager:
    """Saves and restores `checkpoint_<step>` directories of a model directory, keeping the
    newest `keep`. Saves are asynchronous; `close()` waits for the last one.

    Items are named pytrees of arrays (e.g. `params`, `train_state`) plus one JSON dict
    (`data`). Orbax writes each checkpoint to a temporary directory and renames it when
    complete, so a run killed mid-save leaves the previous checkpoint as the latest.
    """

    def __init__(self, model_dir: str, keep: int | None = None, read_only: bool = False):
        if keep is not None and keep < 1:
            raise UserError(f"keep_checkpoints must be >= 1 or None, got {keep}")
        self.directory = _model_dir_of(model_dir)
        if read_only and not os.path.isdir(self.directory):
            raise UserError(f"model directory not found: {model_dir}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, step_prefix=STEP_PREFIX, create=not read_only,
            read_only=read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, items: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        """Starts saving `items` (pytrees) and `data` (JSON) as `checkpoint_<step>`."""
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        args["data"] = ocp.args.JsonSave(dict(data))
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(self, step: int | None, abstract_items: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores the named items onto the shardings of their abstract trees.

        Args:
          step: the checkpoint; None for the latest.
          abstract_items: name -> pytree of `jax.ShapeDtypeStruct` (with `sharding`).

        Returns:
          (name -> restored pytree, the `data` dict).

        Raises:
          UserError: no such checkpoint, a missing item, or a parameter whose path, shape or
            dtype differs from the abstract tree (the first one is named).
        """
        step = self._resolve_step(step)
        step_dir = os.path.join(self.directory, f"{STEP_PREFIX}_{step}")
        for name, tree in abstract_items.items():
            _check_tree(os.path.join(step_dir, name), tree)
        args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
        has_data = os.path.isdir(os.path.join(step_dir, "data"))
        if has_data:
            args["data"] = ocp.args.JsonRestore()
        _silence_abandoned_reads()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except UserError:
            raise
        except Exception as e:  # pylint: disable=broad-except  (TensorStore, OCDBT, JSON errors)
            raise UserError(f"cannot read checkpoint {step_dir}: its data is truncated or "
                            f"corrupt ({type(e).__name__}: {_first_line(e)}); delete that "
                            "checkpoint directory to fall back to an earlier one") from None
        data = dict(restored["data"]) if has_data else {}
        return {name: restored[name] for name in abstract_items}, data

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise UserError(f"no checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise UserError(f"no checkpoint for step {step} in {self.directory} "
                            f"(have {', '.join(map(str, steps))})")
        return step

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _check_tree(item_dir: str, abstract: Any) -> None:
    """Raises a UserError naming the first path whose presence, shape or dtype differs."""
    if not os.path.isdir(item_dir):
        raise UserError(f"checkpoint item missing: {item_dir}")
    _silence_abandoned_reads()
    try:
        saved = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir))
    except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore metadata errors)
        raise UserError(f"cannot read checkpoint item {item_dir}: its data is truncated or "
                        f"corrupt ({type(e).__name__}: {_first_line(e)})") from None
    found = _flatten(saved.tree if hasattr(saved, "tree") else saved)
    wanted = _flatten(abstract)
    for path in sorted(set(found) | set(wanted)):
        if path not in found:
            raise UserError(f"checkpoint {item_dir} lacks parameter {path}")
        if path not in wanted:
            raise UserError(f"checkpoint {item_dir} has unexpected parameter {path}")
        have, want = found[path], wanted[path]
        if tuple(have.shape) != tuple(want.shape):
            raise UserError(f"checkpoint {item_dir}: parameter {path} has shape "
                            f"{tuple(have.shape)}, expected {tuple(want.shape)}")
        if np.dtype(have.dtype) != np.dtype(want.dtype):
            raise UserError(f"checkpoint {item_dir}: parameter {path} has dtype {have.dtype}, "
                            f"expected {want.dtype}")


# What TensorStore's callbacks raise when the reads Orbax abandoned on a failed restore finish
# after its event loop has closed (or while Python shuts down).
_ABANDONED_READ_ERRORS = ("Event loop is closed", "sys.meta_path is None")


def _silence_abandoned_reads() -> None:
    """Installed before Orbax reads a checkpoint: when one read fails (truncated data), the
    others it had started still complete, into an event loop that is gone by then (or at
    interpreter exit), and each would print a traceback through `sys.unraisablehook`; or, if
    one of them fails too while the loop still runs, asyncio logs its never-retrieved
    exception. The failure itself is reported as one UserError, so those tracebacks, and only
    those, are dropped."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_reads", False):
        return

    def hook(unraisable) -> None:
        if not str(unraisable.exc_value).startswith(_ABANDONED_READ_ERRORS):
            previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_keeps_asyncio_record)


def _keeps_asyncio_record(record: logging.LogRecord) -> bool:
    """False for asyncio's "exception was never retrieved" of an abandoned TensorStore read."""
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and "never retrieved" in record.getMessage()
                and "[tensorstore_spec=" in str(error))


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error, without TensorStore's spec dump, at most `limit` chars."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()),
                type(error).__name__)
    line = line.split(" [tensorstore_spec=")[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _flatten(tree: Any) -> dict[str, Any]:
    """'/'-joined key paths -> leaves (orbax metadata and abstract arrays alike)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def save_model(model_dir: str, config: ModelConfig, params: Any, step: int = 0) -> str:
    """Writes a parameters-only model directory (e.g. an imported or merged model).

    Returns the checkpoint directory. `restore_model(model_dir)` reads it back.
    """
    os.makedirs(model_dir, exist_ok=True)
    write_model_config(model_dir, config)
    manager = CheckpointManager(model_dir)
    try:
        manager.save(step, {"params": params}, {})
    finally:
        manager.close()
    return os.path.join(_model_dir_of(model_dir), f"{STEP_PREFIX}_{step}")


def restore_model(model_dir: str, step: int | None = None, shardings: Any = None
                  ) -> tuple[ModelConfig, Any]:
    """The config and (unboxed) parameters of a model directory's checkpoint.

    Args:
      model_dir: a directory written by training or `save_model` (or one of its
        `checkpoint_<step>` directories, which then selects the step).
      step: the checkpoint step; None for the latest.
      shardings: a pytree of `jax.sharding.Sharding`s matching the parameters (e.g.
        `partitioning.param_shardings` of the boxed abstract params); None puts every array
        on the first local device.

    Raises:
      UserError: a missing directory, config or checkpoint, or parameters that do not
        match the config (the first mismatching one is named).
    """
    if not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir}")
    config = read_model_config(model_dir)
    abstract = nn.unbox(jax.eval_shape(lambda rng: models.init_params(config, rng), jax.random.PRNGKey(0)))
    if shardings is None:
        device = jax.local_devices()[0]
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(device), abstract)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, shardings)
    return config, restore_params(model_dir, abstract, step)


def restore_params(model_dir: str, abstract_params: Any, step: int | None = None) -> Any:
    """The parameters of a model directory's checkpoint, onto the shardings of
    `abstract_params` (a pytree of `jax.ShapeDtypeStruct`), checked leaf by leaf against it.

    Lower level than `restore_model`: the caller's parameter tree may come from a config that
    differs from the saved one where no parameter depends on it (dropout, dtype).
    """
    match = _STEP_DIR.match(os.path.basename(os.path.abspath(model_dir)))
    if match and step is None:
        step = int(match.group(1))  # a checkpoint_<step> directory names its step
    manager = CheckpointManager(model_dir, read_only=True)
    try:
        items, _ = manager.restore(step, {"params": abstract_params})
    finally:
        manager.close()
    return items["params"]
