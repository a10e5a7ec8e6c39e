"""Grain input pipeline: TFDS data source -> split -> decode once -> augment -> batch -> devices.

PNG decoding costs ~8 ms per image per core, far too slow to repeat every epoch,
so every image a process needs is decoded once, at the working resolution (and
stain-normalised if asked), into an in-memory cache; epochs are then served from
memory. Batches carry uint8 pixels (4x less to move than float32); the
`Normalizer` maps them to model inputs on the device, inside the step.

Reading never imports TensorFlow: records come through `tfds.data_source`
(ArrayRecord) and images are decoded with Pillow.

When the decoded training images fit in device memory, `DeviceData` keeps them
on the devices and `device_batch` draws and augments each batch inside the
jitted step, so no step waits for the host.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from bcjax import augment as aug
from bcjax import augment_device, parallel
from bcjax.datasets import splits as splits_lib

TARGETS = ("label", "tumor_type")
STAIN_NORMALIZATIONS = ("none", "macenko")
_METADATA_CHUNK = 256


class DataNotFoundError(FileNotFoundError):
    """No prepared dataset where the config points; the message says how to get one."""


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Everything the input pipeline needs; mirrors `config.data` field for field."""

    data_dir: str = "~/tensorflow_datasets"
    dataset: str = "breakhis/archive"  # TFDS name/config: 'archive' (published) or 'custom'
    manual_dir: str | None = None  # where BreaKHis_v1.tar.gz lies; builds the dataset if missing
    split: str = "patient_kfold"  # a protocol of bcjax.datasets.splits
    split_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    magnification: str | None = None  # one of 40X/100X/200X/400X (MSB/MSM tasks) or all
    height: int = 224
    width: int = 224
    target: str = "label"  # 'label' (benign/malignant) or 'tumor_type' (8 classes)
    normalization: str = "imagenet"  # see bcjax.augment.make_normalizer
    stain_normalization: str = "none"  # 'macenko' (recipe D), applied once before caching
    augment: aug.AugmentConfig = aug.AugmentConfig()
    balance: bool = False  # oversample the target's classes to equal counts (recipe B)
    seed: int = 0
    decode_threads: int = 2

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"data.target must be one of {TARGETS}, got {self.target!r}")
        if self.stain_normalization not in STAIN_NORMALIZATIONS:
            raise ValueError(
                f"data.stain_normalization must be one of {STAIN_NORMALIZATIONS}, got {self.stain_normalization!r}"
            )
        if self.normalization not in aug.NORMALIZATIONS:
            raise ValueError(f"data.normalization must be one of {aug.NORMALIZATIONS}, got {self.normalization!r}")


# ----------------------------------------------------------------------------- source and metadata


def open_source(data_dir: str, dataset: str, manual_dir: str | None = None):
    """The random-access TFDS source of every image (encoded PNG bytes, not decoded).

    Builds the dataset first when it is missing and `manual_dir` is given.
    """
    import bcjax.datasets.breakhis  # noqa: F401  (registers the builder with TFDS)

    data_dir = str(epath.Path(data_dir).expanduser())
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
        if manual_dir is None:
            raise DataNotFoundError(missing_dataset_message(data_dir, dataset))
        prepare(data_dir=data_dir, dataset=dataset, manual_dir=manual_dir)
    source = tfds.data_source(dataset, data_dir=data_dir, decoders={"image": tfds.decode.SkipDecoding()})
    return source["train"]


def prepare(*, data_dir: str, dataset: str, manual_dir: str) -> None:
    """Builds `dataset` (e.g. 'breakhis/archive') from the archive or tree in `manual_dir`."""
    import bcjax.datasets.breakhis  # noqa: F401

    builder = tfds.builder(dataset, data_dir=str(epath.Path(data_dir).expanduser()))
    config = tfds.download.DownloadConfig(manual_dir=str(epath.Path(manual_dir).expanduser()))
    builder.download_and_prepare(download_config=config)


def missing_dataset_message(data_dir: str, dataset: str) -> str:
    return (
        f"No prepared {dataset} dataset in {data_dir}.\n"
        "  - Get BreaKHis_v1.tar.gz (see bcjax/datasets/breakhis/README.md: it is a manual download),\n"
        "    then either build it once:\n"
        f"      python -m bcjax.datasets.prepare --manual_dir=DIR_WITH_ARCHIVE --data_dir={data_dir}\n"
        "    or point the config at it: --config.data.manual_dir=DIR_WITH_ARCHIVE (built on first use).\n"
        "  - If it was built elsewhere, set --config.data.data_dir to that folder\n"
        f"    (the one holding {dataset.split('/')[0]}/).\n"
        "  - To try bcjax without BreakHis, run the demo on synthetic data:\n"
        "      python -m bcjax.main --config=configs/demo.py --workdir=/tmp/bcjax-demo"
    )


def read_table(source) -> splits_lib.ImageTable:
    """The per-image metadata of every record, in record order."""
    records = []
    for start in range(0, len(source), _METADATA_CHUNK):
        chunk = source.__getitems__(range(start, min(start + _METADATA_CHUNK, len(source))))
        records.extend(_metadata(r) for r in chunk)
    return splits_lib.ImageTable.from_records(records)


def _metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    return {
        "filename": text(record["filename"]),
        "patient_id": text(record["patient_id"]),
        "accession": text(record["accession"]),
        "label": int(record["label"]),
        "tumor_type": int(record["tumor_type"]),
        "magnification": splits_lib.MAGNIFICATIONS[int(record["magnification"])],
    }


# ----------------------------------------------------------------------------- decoded-image cache


def decode_image(png: bytes, height: int, width: int, stain_normalization: str = "none") -> np.ndarray:
    """PNG bytes -> uint8 RGB at the working resolution (stain-normalised if asked)."""
    with Image.open(io.BytesIO(png)) as image:
        image.draft("RGB", (width, height))
        pixels = aug.resize(np.asarray(image.convert("RGB")), height, width)
    if stain_normalization == "macenko":
        pixels = aug.macenko_normalize(pixels)
    return pixels


@dataclasses.dataclass(frozen=True)
class DecodedCache:
    """The decoded images of a set of table rows, held in memory in row order."""

    rows: np.ndarray  # sorted table rows held
    images: np.ndarray  # [len(rows), height, width, 3] uint8

    def image(self, row: int) -> np.ndarray:
        position = int(np.searchsorted(self.rows, row))
        if position >= len(self.rows) or self.rows[position] != row:
            raise KeyError(f"row {row} is not in this process's decoded cache")
        return self.images[position]


def build_cache(
    source,
    rows: Sequence[int],
    *,
    height: int,
    width: int,
    stain_normalization: str = "none",
    threads: int = 2,
    progress: bool = True,
) -> DecodedCache:
    """Decodes `rows` of `source` once, with `threads` decoders, showing progress."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    images = np.empty((len(rows), height, width, 3), np.uint8)
    decode = lambda row: decode_image(source[int(row)]["image"], height, width, stain_normalization)  # noqa: E731
    dataset = grain.MapDataset.source(rows).map(decode)
    options = grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=4 * max(1, threads))
    iterator = iter(dataset.to_iter_dataset(options))
    bar = tfds.core.utils.tqdm(
        total=len(rows),
        desc=f"Decoding images at {height}x{width}",
        unit=" images",
        disable=not progress,
        file=sys.stderr,
    )
    with bar:
        for position, pixels in enumerate(iterator):
            images[position] = pixels
            bar.update(1)
    return DecodedCache(rows=rows, images=images)


# ----------------------------------------------------------------------------- datasets


def host_shard(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """Process `p` owns every `process_count`-th row, so hosts read disjoint shards."""
    return np.asarray(rows)[process_index::process_count]


def balanced_rows(rows: np.ndarray, classes: np.ndarray, seed: int) -> np.ndarray:
    """Oversamples every class of `rows` (with replacement) to the largest class's count."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(rows)
    labels = classes[rows]
    largest = max(np.bincount(labels)) if len(rows) else 0
    parts = []
    for c in np.unique(labels):
        members = rows[labels == c]
        extra = rng.choice(members, largest - len(members), replace=True)
        parts.append(np.concatenate([members, extra]))
    return np.sort(np.concatenate(parts)) if parts else rows


class _Lookup:
    """Row -> example dict from the cache and the table."""

    def __init__(self, cache: DecodedCache, table: splits_lib.ImageTable):
        self.cache = cache
        self.label = table.label.astype(np.int32)
        self.tumor_type = table.tumor_type.astype(np.int32)
        self.magnification = np.array([splits_lib.MAGNIFICATIONS.index(m) for m in table.magnification], np.int32)

    def __call__(self, row: int) -> dict[str, np.ndarray]:
        row = int(row)
        return {
            "image": self.cache.image(row),
            "label": self.label[row],
            "tumor_type": self.tumor_type[row],
            "magnification": self.magnification[row],
            "index": np.int32(row),
        }


def train_dataset(
    cache: DecodedCache,
    table: splits_lib.ImageTable,
    rows: np.ndarray,
    *,
    global_batch: int,
    seed: int,
    augment: aug.AugmentConfig = aug.AugmentConfig(),
    process_index: int = 0,
    process_count: int = 1,
    threads: int = 2,
) -> grain.IterDataset:
    """This process's slices of infinite shuffled, augmented global batches; checkpointable.

    One global sequence (shuffled per epoch, augmented per position) is cut into
    global batches, and process `p` takes the p-th contiguous slice of each. So a
    global batch is the same whatever the number of processes, and every element is
    a pure function of (seed, position): a restored iterator continues exactly.
    """
    if global_batch % process_count:
        raise ValueError(f"Global batch {global_batch} does not divide over {process_count} processes")
    local_batch = global_batch // process_count
    sequence = grain.MapDataset.source(np.asarray(rows)).seed(seed).shuffle().repeat()
    sequence = sequence.map(_Lookup(cache, table))
    if augment.enabled:
        sequence = sequence.random_map(aug.RandomAugment(augment))
    position = lambda k: (k // local_batch) * global_batch + process_index * local_batch + k % local_batch  # noqa: E731
    mine = grain.MapDataset.range(sys.maxsize).map(lambda k: sequence[position(k)])
    mine = mine.batch(local_batch, drop_remainder=True)
    return mine.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=2))


def eval_batches(
    cache: DecodedCache,
    table: splits_lib.ImageTable,
    rows: np.ndarray,
    *,
    local_batch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every row exactly once over all processes; the last batches are padded and `mask`ed.

    All processes yield the same number of batches (collectives need that), so a
    process with fewer rows pads with masked copies.
    """
    lookup = _Lookup(cache, table)
    mine = host_shard(rows, process_index, process_count)
    per_process = math.ceil(len(rows) / process_count)
    for start in range(0, max(per_process, 1), local_batch):
        chunk = mine[start : start + local_batch]
        examples = [lookup(r) for r in chunk] or [_blank(cache)]
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        mask = np.zeros(local_batch, bool)
        mask[: len(chunk)] = True
        if not len(chunk):
            batch["index"][:] = -1
        yield {**{k: _pad(v, local_batch) for k, v in batch.items()}, "mask": mask}


def _blank(cache: DecodedCache) -> dict[str, np.ndarray]:
    zero = np.int32(0)
    return {
        "image": np.zeros(cache.images.shape[1:], np.uint8),
        "label": zero,
        "tumor_type": zero,
        "magnification": zero,
        "index": np.int32(-1),
    }


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    missing = size - len(values)
    if missing <= 0:
        return values
    return np.concatenate([values, np.repeat(values[-1:], missing, axis=0)])


# ----------------------------------------------------------------------------- the whole input


@dataclasses.dataclass
class InputData:
    """The split, the decoded cache and the normaliser of one run, ready to make iterators."""

    config: InputConfig
    table: splits_lib.ImageTable
    split: splits_lib.Split
    cache: DecodedCache
    train_rows: np.ndarray  # the training rows (oversampled when balancing)
    normalizer: aug.Normalizer
    process_index: int = 0
    process_count: int = 1

    @property
    def num_classes(self) -> int:
        return 2 if self.config.target == "label" else len(splits_lib.TUMOR_TYPES)

    def train(self, global_batch: int) -> grain.IterDataset:
        """This process's part of each global training batch."""
        return train_dataset(
            self.cache,
            self.table,
            self.train_rows,
            global_batch=global_batch,
            seed=self.config.seed,
            augment=self.config.augment,
            process_index=self.process_index,
            process_count=self.process_count,
            threads=self.config.decode_threads,
        )

    def on_devices(self, global_batch: int, mesh: jax.sharding.Mesh, *, shard: bool = True) -> DeviceData:
        """The training images on `mesh`, split over its `data` axis (`shard`) or a copy on every device.

        Padding rows repeat the last image and are never drawn. Every process holds
        every training image, so each fills its own devices' shards.
        """
        rows, positions = np.unique(self.train_rows, return_inverse=True)
        padded = np.pad(rows, (0, -len(rows) % mesh.devices.size), mode="edge")
        lookup = _Lookup(self.cache, self.table)
        examples = {
            "label": lookup.label[padded],
            "tumor_type": lookup.tumor_type[padded],
            "magnification": lookup.magnification[padded],
            "index": padded.astype(np.int32),
        }
        images = self.cache.images[np.searchsorted(self.cache.rows, padded)]
        replicated = parallel.replicated(mesh)
        return DeviceData(
            images=_put(images, parallel.batch_sharding(mesh) if shard else replicated),
            examples={k: _put(v, replicated) for k, v in examples.items()},
            positions=_put(positions.astype(np.int32), replicated),
            mesh=mesh,
            global_batch=global_batch,
            seed=self.config.seed,
            augment=self.config.augment,
        )

    def evaluate(self, side: str, local_batch: int) -> Iterator[dict[str, np.ndarray]]:
        rows = getattr(self.split, side)
        return eval_batches(
            self.cache,
            self.table,
            rows,
            local_batch=local_batch,
            process_index=self.process_index,
            process_count=self.process_count,
        )


def load(config: InputConfig, *, process_index: int = 0, process_count: int = 1, progress: bool = True) -> InputData:
    """Opens the dataset, splits it, and decodes the images this process needs, once."""
    source = open_source(config.data_dir, config.dataset, config.manual_dir)
    table = read_table(source)
    split = splits_lib.make_split(table, config.split, magnification=config.magnification, **config.split_kwargs)
    train = split.train
    if config.balance:
        train = balanced_rows(train, getattr(table, config.target), config.seed)
    # Every process holds every training image (global batches draw from all of
    # them) and its own shard of the evaluation images.
    needed = [train] + [host_shard(getattr(split, s), process_index, process_count) for s in ("validation", "test")]
    cache = build_cache(
        source,
        np.concatenate(needed),
        height=config.height,
        width=config.width,
        stain_normalization=config.stain_normalization,
        threads=config.decode_threads,
        progress=progress,
    )
    normalizer = _normalizer(config, cache, np.unique(train))
    return InputData(
        config=config,
        table=table,
        split=split,
        cache=cache,
        train_rows=train,
        normalizer=normalizer,
        process_index=process_index,
        process_count=process_count,
    )


def _normalizer(config: InputConfig, cache: DecodedCache, train_rows: np.ndarray) -> aug.Normalizer:
    """The configured normaliser; z-score statistics come from the training images."""
    if config.normalization != "zscore":
        return aug.make_normalizer(config.normalization)
    positions = np.searchsorted(cache.rows, train_rows)
    return aug.make_normalizer("zscore", cache.images[positions])


# ----------------------------------------------------------------------------- device-resident training data

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
    data_fields=["images", "examples", "positions"],
    meta_fields=["mesh", "global_batch", "seed", "augment"],
)
@dataclasses.dataclass(frozen=True)
class DeviceData:
    """The training images on the devices and how batches are drawn from them (`device_batch`).

    A pytree whose arrays a jitted step takes as an argument: as a closure they
    would be baked into the program as constants.
    """

    images: jax.Array  # [N, H, W, 3] uint8: each distinct training image once, N padded to a multiple of devices
    examples: dict[str, jax.Array]  # label, tumor_type, magnification and index (table row) per image, replicated
    positions: jax.Array  # image position of every training row (rows repeat when balancing), replicated
    mesh: jax.sharding.Mesh
    global_batch: int
    seed: int
    augment: aug.AugmentConfig


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
    order = _shuffled_positions(jax.random.fold_in(key, 0), step * size, size, len(data.positions))
    positions = data.positions[order]
    sharding = parallel.batch_sharding(data.mesh)
    images = jax.lax.with_sharding_constraint(data.images[positions], sharding)
    if data.augment.enabled:
        augment_key = jax.random.fold_in(jax.random.fold_in(key, 1), step)
        params = augment_device.sample_params_device(data.augment, augment_key, size, *images.shape[1:3])
        images = augment_device.apply_params_device(images, params)
    batch = {"image": images, **{k: v[positions] for k, v in data.examples.items()}}
    return jax.lax.with_sharding_constraint(batch, sharding)


def _shuffled_positions(key: jax.Array, start: jax.Array, count: int, length: int) -> jax.Array:
    """Elements start .. start+count-1 of the endless sequence of per-epoch permutations of range(length)."""
    first = start // length
    epochs = count // length + 2  # the most epochs `count` consecutive elements can touch
    orders = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), length))(first + np.arange(epochs))
    return orders.reshape(-1)[start - first * length + np.arange(count)]
