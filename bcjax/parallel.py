"""Device mesh, shardings and global batches: data parallel over every device of every host."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all devices (of all processes), named `data`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of a global batch; it must divide evenly over the devices."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"Global batch size {global_batch_size} does not divide over {devices} devices; "
            f"use a multiple of {devices}."
        )
    return global_batch_size * len(_local_devices(mesh)) // devices


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local batch into global arrays sharded on `data`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _local_devices(mesh: Mesh) -> list:
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def state_shardings(state: Any, mesh: Mesh, *, shard: bool = False, min_size: int = 2**16) -> Any:
    """Replicates every leaf, or (`shard`) splits large ones on `data` to save memory.

    Sharded leaves are split along their largest dimension that divides evenly over
    the devices; XLA then gathers them where the step needs them (ZeRO-3 style).
    """
    devices = mesh.devices.size

    def spec(leaf) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        if not shard or int(np.prod(shape, dtype=np.int64)) < min_size:
            return replicated(mesh)
        dims = [d for d in np.argsort(shape)[::-1] if shape[d] % devices == 0]
        if not dims:
            return replicated(mesh)
        axes = [None] * len(shape)
        axes[dims[0]] = DATA_AXIS
        return NamedSharding(mesh, PartitionSpec(*axes))

    return jax.tree.map(spec, state)


def fetch(array: jax.Array) -> np.ndarray:
    """A replicated global array as NumPy, on every process (each holds a full copy)."""
    return np.asarray(array.addressable_data(0))
