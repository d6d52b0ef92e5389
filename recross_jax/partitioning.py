"""Meshes, logical axis rules and shardings: the one module that knows about devices.

Models annotate parameters and activations with logical axis names (`batch, length, embed, mlp,
heads, kv, joined_kv, vocab, relpos_buckets`); the rules here map them onto the mesh axes
`('data', 'model')`. Typical use::

    mesh = create_mesh(num_partitions=2)
    variables, shardings = sharded_init(lambda rng: model.init(rng, *dummy), rng, mesh)
    with activate(mesh):
        step = jax.jit(fn, in_shardings=(shardings, batch_sharding(mesh)), ...)

The same code runs on one CPU device (a 1x1 mesh), simulated host devices and accelerators.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recross_jax.errors import UserError

MESH_AXES = ("data", "model")

LogicalRules = Sequence[tuple[str, str | Sequence[str] | None]]

# T5X's standard rules (1-D parameter and activation partitioning): the batch is split over
# `data`, the wide parameter axes over `model`, everything else replicated.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("length", None),
    ("layers", None),
    ("stack", None),
    ("mlp_activations", None),
)


def logical_axis_rules(extra_rules: LogicalRules | None = None,
                       base: LogicalRules = DEFAULT_RULES) -> tuple[tuple[Any, Any], ...]:
    """`base` rules with `extra_rules` put first.

    Flax takes the first rule that names a logical axis, so extra rules both add new logical
    names (e.g. an adapter's bottleneck) and override default ones.
    """
    return tuple(tuple(rule) for rule in (extra_rules or ())) + tuple(base)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value` (e.g. rows for the data axis)."""
    return -(-value // multiple) * multiple


def use_cpu_devices(count: int) -> None:
    """Splits the host CPU into `count` JAX devices (call before JAX first touches a device).

    With one device per core, a mesh over them shards each batch along `data` and the shards
    run concurrently, where a single CPU device leaves cores idle in every op it does not split
    (it parallelises big matmuls but little else). Accelerator backends are not affected.
    """
    if count < 1:
        raise UserError(f"the number of CPU devices must be positive, got {count}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:  # the CPU backend already exists with its device count
        if len(jax.devices("cpu")) != count:
            raise UserError(f"cannot use {count} CPU devices: JAX already started with "
                            f"{len(jax.devices('cpu'))} ({e})") from None


def create_mesh(num_partitions: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `('data', 'model')` mesh with `num_partitions` devices along `model`.

    Args:
      num_partitions: model-parallel width; must divide the device count.
      devices: devices to use; all of `jax.devices()` when None (arranged by the
        topology-aware `mesh_utils` so that `model` neighbours share fast links).
    """
    all_devices = list(jax.devices() if devices is None else devices)
    if num_partitions < 1 or len(all_devices) % num_partitions:
        raise UserError(f"num_partitions={num_partitions} must be a positive divisor of the "
                        f"device count {len(all_devices)}")
    shape = (len(all_devices) // num_partitions, num_partitions)
    try:
        grid = mesh_utils.create_device_mesh(shape, all_devices)
    except (ValueError, NotImplementedError, AssertionError):
        # Unknown topologies (e.g. an arbitrary subset of devices): plain row-major order.
        grid = np.asarray(all_devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Iterator[Mesh]:
    """Makes `mesh` and `rules` current, so logical constraints inside models take effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh


def logical_to_mesh_sharding(logical_specs: Any, mesh: Mesh,
                             rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Maps a pytree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def _leaf_logical_spec(leaf: Any) -> Any:
    if isinstance(leaf, meta.Partitioned):
        if not jax.tree_util.tree_leaves(leaf.value):
            # An empty subtree (optax's MaskedNode: the state of a frozen parameter) stays
            # empty, so the shardings have the unboxed state's structure.
            return leaf.value
        value_ndim = getattr(leaf.value, "ndim", None)
        # Optimizer states derived from boxed params (e.g. Adafactor's factored moments) keep
        # the box but not the rank: replicate those rather than mislabel their axes.
        if value_ndim is not None and value_ndim != len(leaf.names):
            return PartitionSpec()
        return PartitionSpec(*leaf.names)
    return PartitionSpec()


def param_shardings(boxed_tree: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """`NamedSharding`s for a pytree holding `nn.LogicallyPartitioned` boxes.

    Works on concrete or abstract (`jax.eval_shape`) trees of parameters and of optimizer
    states built from boxed parameters. The result has the structure of the *unboxed* tree;
    leaves without a box (step counters, scalars) are replicated.
    """
    specs = jax.tree_util.tree_map(_leaf_logical_spec, boxed_tree,
                                   is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
    return logical_to_mesh_sharding(specs, mesh, rules)


def data_partition_spec(rules: LogicalRules = DEFAULT_RULES) -> PartitionSpec:
    """The `PartitionSpec` of a batch array: leading (batch) axis by the `batch` rule."""
    return PartitionSpec(*nn.logical_to_mesh_axes(("batch",), rules))


def batch_sharding(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of every batch array: split along the leading axis over `data`."""
    return NamedSharding(mesh, data_partition_spec(rules))


def shard_batch(batch: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Places a pytree of host (numpy) batch arrays on `mesh`, split along the batch axis.

    Each process passes its own slice of the global batch (the whole batch when there is one
    process), as a data loader on a multi-host pod produces it.
    """
    sharding = batch_sharding(mesh, rules)
    data_size = int(np.prod([mesh.shape[a] for a in _mesh_axes_of(sharding.spec[0])]))
    for leaf in jax.tree_util.tree_leaves(batch):
        global_size = np.shape(leaf)[0] * jax.process_count()
        if global_size % data_size:
            raise UserError(f"batch size {global_size} is not divisible by the "
                            f"{data_size} data-parallel devices")
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def _mesh_axes_of(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def sharded_init(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                 rules: LogicalRules = DEFAULT_RULES) -> tuple[Any, Any]:
    """Initialises variables directly on their shards (no full copy on one device).

    Args:
      init_fn: rng -> boxed variables, e.g. `lambda r: model.init(r, *dummy_inputs)`.
      rng: PRNG key.
      mesh: target mesh.
      rules: logical axis rules.

    Returns:
      (unboxed variables placed on `mesh`, the matching pytree of `NamedSharding`s).
    """
    shardings = param_shardings(jax.eval_shape(init_fn, rng), mesh, rules)
    with activate(mesh, rules):
        variables = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)(rng)
    return variables, shardings
