"""Device mesh, shardings and global batches: data parallel over every device of every host."""

from __future__ import annotations

from collections.abc import Mapping

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
