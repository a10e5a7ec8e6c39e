"""Device-resident training data: the decoded training images on the devices, batches drawn inside the step.

When the decoded training images fit in device memory, `DeviceData` keeps them on the devices
and `device_batch` draws and augments each batch inside the jitted step, so no step waits for
the host. This module imports no TFDS and no grain: steps and benchmarks on synthetic arrays
need neither.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bcjax import augment_device, parallel
from bcjax.augment import AugmentConfig

CPU_DEVICE_BYTES = 1 << 30  # CPU devices report no memory; their copies share host RAM with the decoded cache


def fits_on_device(nbytes: int, devices: Sequence[jax.Device], fraction: float = 0.5) -> bool:
    """Whether `nbytes` on each device stays within `fraction` of its free memory.

    The rest is left to the model, its activations and XLA's workspace. Devices
    without memory statistics (CPU) all draw on host RAM: there the copies of all
    `devices` together must stay below `CPU_DEVICE_BYTES`.
    """
    stats = [device.memory_stats() or {} for device in devices]
    if not all("bytes_limit" in s for s in stats):
        return nbytes * len(devices) <= CPU_DEVICE_BYTES
    return all(nbytes <= fraction * (s["bytes_limit"] - s.get("bytes_in_use", 0)) for s in stats)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["images", "examples", "positions", "rows"],
    meta_fields=["mesh", "global_batch", "seed", "augment", "min_rows"],
)
@dataclasses.dataclass(frozen=True)
class DeviceData:
    """The training images on the devices and how batches are drawn from them (`device_batch`).

    A pytree whose arrays a jitted step takes as an argument: as a closure they
    would be baked into the program as constants. The arrays may be padded past the run's own
    training set (`rows` says how much of `positions` counts), so that runs of different sizes
    (the folds of one command) have the same shapes and share one compiled step.
    """

    images: jax.Array  # [N, H, W, 3] uint8: each distinct training image once, N padded (a multiple of devices)
    examples: dict[str, jax.Array]  # label, tumor_type, magnification and index (table row) per image, replicated
    positions: jax.Array  # image position of every training row (rows repeat when balancing), padded, replicated
    rows: jax.Array  # int32 scalar, replicated: how many of `positions` are training rows; the rest are never drawn
    mesh: jax.sharding.Mesh
    global_batch: int
    seed: int
    augment: AugmentConfig
    min_rows: int  # the fewest training rows of any run sharing this program: bounds the epochs one batch spans

    @classmethod
    def put(
        cls,
        images: np.ndarray,
        examples: dict[str, np.ndarray],
        positions: np.ndarray,
        *,
        mesh: jax.sharding.Mesh,
        shard: bool = True,
        capacity: int = 0,
        min_rows: int = 0,
        **meta,
    ) -> DeviceData:
        """From arrays every process can index (`images` may read only the shards it is asked for): the
        images split over `data` (`shard`) or on every device.

        `positions` is padded to `capacity` rows; `min_rows` (default: this run's) is the fewest
        training rows of any run that is to share the compiled step.
        """
        replicated = parallel.replicated(mesh)
        rows = len(positions)
        return cls(
            images=_put(images, parallel.batch_sharding(mesh) if shard else replicated),
            examples={k: _put(v, replicated) for k, v in examples.items()},
            positions=_put(np.pad(positions, (0, max(capacity - rows, 0))), replicated),
            rows=_put(np.int32(rows), replicated),
            mesh=mesh,
            min_rows=min(min_rows or rows, rows),
            **meta,
        )


def _put(values: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from the full copy every process holds."""
    return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


def device_batch(data: DeviceData, step: jax.Array) -> dict[str, jax.Array]:
    """Global training batch number `step`, drawn and augmented on the devices; jittable.

    Like the host pipeline, one endless sequence of per-epoch shuffles of the
    training rows is cut into global batches, and the augmentation keys fold in
    (seed, step): a batch depends on nothing else (not on the number of devices
    or processes), so resuming needs only the step.
    """
    key, size = jax.random.key(data.seed), data.global_batch
    order = _shuffled_positions(
        jax.random.fold_in(key, 0), step * size, size, data.rows, len(data.positions), data.min_rows
    )
    positions = data.positions[order]
    sharding = parallel.batch_sharding(data.mesh)
    images = jax.lax.with_sharding_constraint(data.images[positions], sharding)
    if data.augment.enabled:
        augment_key = jax.random.fold_in(jax.random.fold_in(key, 1), step)
        params = augment_device.sample_params_device(data.augment, augment_key, size, *images.shape[1:3])
        images = augment_device.apply_params_device(images, params, data.augment.fill_mode, warp=data.augment.warps)
    batch = {"image": images, **{k: v[positions] for k, v in data.examples.items()}}
    return jax.lax.with_sharding_constraint(batch, sharding)


def _shuffled_positions(
    key: jax.Array, start: jax.Array, count: int, rows: jax.Array, capacity: int, min_rows: int
) -> jax.Array:
    """Elements start .. start+count-1 of the endless sequence of per-epoch permutations of range(rows).

    `rows` may be traced (at most `capacity`, at least `min_rows`): each epoch's permutation
    sorts random 32-bit keys with the padding's keys set to the largest, so the first `rows`
    entries are a uniform permutation of the training rows (a stable sort keeps a tied row
    before the padding).
    """
    first = start // rows
    epochs = count // min_rows + 2  # the most epochs `count` consecutive elements can touch

    def permutation(epoch: jax.Array) -> jax.Array:
        bits = jax.random.bits(jax.random.fold_in(key, epoch), (capacity,), jnp.uint32)
        return jnp.argsort(
            jnp.where(jnp.arange(capacity) < rows, bits, np.uint32(np.iinfo(np.uint32).max)), stable=True
        )

    orders = jax.vmap(permutation)(first + jnp.arange(epochs))
    index = start - first * rows + jnp.arange(count)
    return orders[index // rows, index % rows]
