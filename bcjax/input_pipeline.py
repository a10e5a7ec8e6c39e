"""Grain input pipeline: TFDS data source -> split -> decode once -> augment -> batch -> devices.

PNG decoding costs ~8 ms per image per core, far too slow to repeat every epoch,
so every image a process needs is decoded once, at the working resolution (and
stain-normalised if asked), into an in-memory cache; epochs are then served from
memory. Batches carry uint8 pixels (4x less to move than float32); the
`Normalizer` maps them to model inputs on the device, inside the step.

Reading never imports TensorFlow: records come through `tfds.data_source`
(ArrayRecord) and images are decoded with Pillow.

`InputData.on_devices` puts the decoded training images on the devices (bcjax.device_data),
where each batch is drawn and augmented inside the jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import PIL
import tensorflow_datasets as tfds
from etils import epath

from bcjax import decoding, image_cache, normalization
from bcjax.augment import (
    MACENKO_REFERENCE_MAX_CONCENTRATIONS,
    MACENKO_REFERENCE_STAINS,
    AugmentConfig,
    RandomAugment,
)
from bcjax.datasets import splits
from bcjax.datasets.breakhis import MAGNIFICATIONS, TARGET_CLASSES
from bcjax.device_data import DeviceData
from bcjax.lead_process import is_lead, run_on_every_process, run_on_lead
from bcjax.phases import PhaseClock

STAIN_NORMALIZATIONS = ("none", "macenko")
_METADATA_CHUNK = 256


class DataNotFoundError(FileNotFoundError):
    """No prepared dataset where the config points; the message says how to get one."""


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """The input pipeline's view of `config.data` and `config.seed`; build it with `from_config`.

    No field has a default here: configs/default.py is the one place they are declared.
    """

    data_dir: str  # folder holding the prepared TFDS dataset
    dataset: str  # TFDS name/config: 'breakhis/archive' (published) or 'breakhis/custom'
    manual_dir: str | None  # where BreaKHis_v1.tar.gz lies; builds the dataset if missing
    split: str  # a protocol of bcjax.datasets.splits
    split_kwargs: Mapping[str, Any]
    magnification: str | None  # one of 40X/100X/200X/400X (MSB/MSM tasks), None for all
    height: int
    width: int
    target: str  # 'label' (benign/malignant) or 'tumor_type' (8 classes)
    normalization: str  # a name of bcjax.augment.make_normalizer ('auto' resolved by the caller)
    stain_normalization: str  # 'macenko' (recipe D), applied once before caching
    augment: AugmentConfig
    balance: bool  # oversample the target's classes to equal counts (recipe B)
    decode_threads: int  # threads feeding the host path's batches
    decode_workers: int  # threads decoding what the image cache lacks; 0: one per host core
    image_cache_dir: str  # '' (beside the dataset), a folder, or 'none'
    seed: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, **resolved: Any) -> InputConfig:
        """`config.data`'s fields of the same names and `config.seed`, then the values the run `resolved`.

        A field added here without its twin in configs/default.py fails here, for every config.
        """
        data = config.data
        values = {field.name: data[field.name] for field in dataclasses.fields(cls) if field.name in data}
        values.update(
            seed=config.seed,
            magnification=data.magnification or None,
            split_kwargs=data.split_kwargs.to_dict(),
            augment=AugmentConfig.from_fields(data.augment),
        )
        return cls(**{**values, **resolved})

    def __post_init__(self):
        if self.target not in TARGET_CLASSES:
            raise ValueError(f"data.target must be one of {tuple(TARGET_CLASSES)}, got {self.target!r}")
        if self.stain_normalization not in STAIN_NORMALIZATIONS:
            raise ValueError(
                f"data.stain_normalization must be one of {STAIN_NORMALIZATIONS}, got {self.stain_normalization!r}"
            )
        if self.normalization not in normalization.NORMALIZATIONS:
            names = normalization.NORMALIZATIONS
            raise ValueError(f"data.normalization must be one of {names}, got {self.normalization!r}")


# ----------------------------------------------------------------------------- source and metadata


def open_source(data_dir: str, dataset: str, manual_dir: str | None = None):
    """The random-access TFDS source of every image (encoded PNG bytes, not decoded).

    Builds the dataset first when it is missing and `manual_dir` is given. With several
    processes, the lead alone checks and builds while the others wait, then every process
    opens it (`lead_process.run_on_lead`): a build fails on every process, with its message.
    """
    import bcjax.datasets.breakhis  # noqa: F401  (registers the builder with TFDS)

    data_dir = _expand(data_dir)

    def build_if_missing() -> None:
        if tfds.builder(dataset, data_dir=data_dir).is_prepared():
            return
        if manual_dir is None:
            raise DataNotFoundError(missing_dataset_message(data_dir, dataset))
        prepare(data_dir=data_dir, dataset=dataset, manual_dir=manual_dir)

    run_on_lead(f"preparing {dataset} in {data_dir}", build_if_missing)
    if not is_lead() and not tfds.builder(dataset, data_dir=data_dir).is_prepared():
        raise DataNotFoundError(
            f"Process 0 has {dataset} in {data_dir}, but process {jax.process_index()} does not see it there: "
            "--config.data.data_dir must be a folder every host shares (or holds its own copy of the dataset)."
        )
    source = tfds.data_source(dataset, data_dir=data_dir, decoders={"image": tfds.decode.SkipDecoding()})
    return source["train"]


def prepare(*, data_dir: str, dataset: str, manual_dir: str) -> None:
    """Builds `dataset` (e.g. 'breakhis/archive') from the archive or tree in `manual_dir`."""
    import bcjax.datasets.breakhis  # noqa: F401

    builder = tfds.builder(dataset, data_dir=_expand(data_dir))
    config = tfds.download.DownloadConfig(manual_dir=_expand(manual_dir))
    builder.download_and_prepare(download_config=config)


def _expand(path: str | epath.Path) -> str:
    return str(epath.Path(path).expanduser())


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


def read_table(source, store: image_cache.ImageCache | None = None) -> splits.ImageTable:
    """The per-image metadata of every record, in record order, kept in `store` when given.

    Reading it means reading every record, PNG bytes included (~6 s for BreakHis' size on a CPU),
    so a run with an image cache reads the copy kept there instead.
    """
    records = store.records() if store is not None else None
    if records is None or len(records) != len(source):
        records = []
        for start in range(0, len(source), _METADATA_CHUNK):
            chunk = source.__getitems__(range(start, min(start + _METADATA_CHUNK, len(source))))
            records.extend(_metadata(r) for r in chunk)
        if store is not None:
            store.keep_records(records)
    return splits.ImageTable.from_records(records)


def _metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's metadata; the magnification ClassLabel id as its name (the builder's MAGNIFICATIONS order)."""
    return {
        "filename": splits.as_text(record["filename"]),
        "patient_id": splits.as_text(record["patient_id"]),
        "accession": splits.as_text(record["accession"]),
        "label": int(record["label"]),
        "tumor_type": int(record["tumor_type"]),
        "magnification": MAGNIFICATIONS[int(record["magnification"])],
    }


# ----------------------------------------------------------------------------- decoded images


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


def image_cache_key(config: InputConfig, dataset_dir: str | epath.Path) -> dict[str, Any]:
    """Everything that changes the decoded bytes of `config`'s images (bcjax.image_cache)."""
    key = {
        "dataset": f"{config.dataset}:{epath.Path(dataset_dir).name}",  # name/config:version
        "dataset_dir": str(dataset_dir),
        "dataset_fingerprint": image_cache.dataset_fingerprint(dataset_dir),
        "height": config.height,
        "width": config.width,
        "resize": f"{decoding.RESIZE} {PIL.__version__}",
        "stain_normalization": config.stain_normalization,
    }
    if config.stain_normalization == "macenko":
        key["macenko_reference"] = [MACENKO_REFERENCE_STAINS.tolist(), MACENKO_REFERENCE_MAX_CONCENTRATIONS.tolist()]
    return key


def open_image_cache(config: InputConfig, dataset_dir: str | epath.Path) -> image_cache.ImageCache | None:
    """The on-disk cache of `config`'s decoded images (`data.image_cache_dir`), or None for 'none'."""
    if config.image_cache_dir == "none":
        return None
    root = config.image_cache_dir or epath.Path(config.data_dir) / image_cache.DEFAULT_FOLDER
    return image_cache.ImageCache(_expand(root), image_cache_key(config, dataset_dir))


def build_cache(
    source,
    rows: Sequence[int],
    *,
    height: int,
    width: int,
    stain_normalization: str = "none",
    workers: int = 1,
    store: image_cache.ImageCache | None = None,
    progress: bool = True,
) -> DecodedCache:
    """The images of `rows`: those `store` holds read from it, the others decoded (and added to it)."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    held = store.held() if store is not None else None
    have = np.isin(rows, held.rows) if held is not None else np.zeros(len(rows), bool)
    if have.all() and len(rows):  # the usual second run: one gather, no copy of a copy
        return DecodedCache(rows=rows, images=held.take(rows))
    images = np.empty((len(rows), height, width, 3), np.uint8)
    if have.any():
        images[have] = held.take(rows[have])
    missing = np.flatnonzero(~have)
    if not len(missing):
        return DecodedCache(rows=rows, images=images)
    bar = tfds.core.utils.tqdm(
        total=len(missing),
        desc=f"Decoding {len(missing)} images at {height}x{width} ({workers} threads; {int(have.sum())} cached)",
        unit=" images",
        disable=not progress,
        file=sys.stderr,
    )
    decoded = decoding.decode_all(
        lambda row: source[int(row)]["image"],
        rows[missing],
        height=height,
        width=width,
        stain_normalization=stain_normalization,
        workers=workers,
    )
    with bar:
        for position, pixels in zip(missing, decoded):
            images[position] = pixels
            bar.update(1)
    if store is not None:
        try:
            store.add(rows[missing], images if len(missing) == len(rows) else images[missing])
        except OSError as error:  # a full disk: this run has its images, the next decodes them again
            print(f"Decoded-image cache: could not keep the images in {store.folder} ({error}).", file=sys.stderr)
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

    def __init__(self, cache: DecodedCache, table: splits.ImageTable):
        self.cache = cache
        self.label = table.label.astype(np.int32)
        self.tumor_type = table.tumor_type.astype(np.int32)
        self.magnification = np.array([MAGNIFICATIONS.index(m) for m in table.magnification], np.int32)

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
    table: splits.ImageTable,
    rows: np.ndarray,
    *,
    global_batch: int,
    seed: int,
    augment: AugmentConfig = AugmentConfig(),
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
        sequence = sequence.random_map(RandomAugment(augment))
    position = lambda k: (k // local_batch) * global_batch + process_index * local_batch + k % local_batch  # noqa: E731
    mine = grain.MapDataset.range(sys.maxsize).map(lambda k: sequence[position(k)])
    mine = mine.batch(local_batch, drop_remainder=True)
    return mine.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=2))


def eval_batches(
    cache: DecodedCache,
    table: splits.ImageTable,
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
    table: splits.ImageTable
    split: splits.Split
    cache: DecodedCache
    train_rows: np.ndarray  # the training rows (oversampled when balancing)
    normalizer: normalization.Normalizer
    capacity: TrainCapacity | None = None  # the largest training set of the protocol's folds (None: this one's)
    held_train: np.ndarray | None = None  # the distinct training rows whose images this process holds (None: all)
    process_index: int = 0
    process_count: int = 1

    @property
    def num_classes(self) -> int:
        return len(TARGET_CLASSES[self.config.target])

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

        The arrays are padded to `capacity`, the largest of the protocol's folds, so that every
        fold's train step has the same shapes; the padding (black images) is never drawn. Each
        process fills its own devices' shards, so its cache needs only their images.
        """
        capacity = self.capacity or train_capacity([self.train_rows])
        padded = resident_rows(self.train_rows, capacity, mesh.devices.size)
        count = len(np.unique(self.train_rows))
        positions = np.searchsorted(padded[:count], self.train_rows)
        lookup = _Lookup(self.cache, self.table)
        examples = {
            "label": lookup.label[padded],
            "tumor_type": lookup.tumor_type[padded],
            "magnification": lookup.magnification[padded],
            "index": padded.astype(np.int32),
        }
        return DeviceData.put(
            _ImagesOfRows(self.cache, padded, count),
            examples,
            positions.astype(np.int32),
            mesh=mesh,
            capacity=capacity.rows,
            min_rows=capacity.min_rows,
            global_batch=global_batch,
            seed=self.config.seed,
            augment=self.config.augment,
            shard=shard,
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


def load(
    config: InputConfig,
    *,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
    clock: PhaseClock | None = None,
    training_share: Callable[[np.ndarray, TrainCapacity], np.ndarray | None] | None = None,
) -> InputData:
    """Opens the dataset, splits it, and gets the images this process needs from the image cache.

    Every process holds its own shard of the evaluation images, and every training image (global
    batches draw from all of them), unless `training_share` says which of the distinct training
    rows (given with the protocol's capacity) this process alone holds (None: all): the
    device-resident path, where each process fills only its own devices' shards. When several
    processes all need every training image, the images the cache lacks are decoded once: each
    decodes and caches a 1/process_count share of them first, so on a shared cache folder no
    image is decoded twice; on unshared folders each process then decodes the rest of what it
    needs itself. With a `training_share` the processes need disjoint images, and each decodes
    just its own. `clock` gets the seconds of the 'dataset' and 'images' phases.
    """
    clock = clock or PhaseClock()
    with clock.phase("dataset"):
        source, store, table, split = _open(config)
    train = _train_rows(config, table, split)
    capacity = train_capacity([_train_rows(config, table, fold) for fold in _every_fold(config, table, split)])
    share = training_share(np.unique(train), capacity) if training_share else None
    held_train = np.unique(train) if share is None else share
    decode = functools.partial(_build_cache, config, source, store, progress=progress)
    needed = [held_train] + [
        host_shard(getattr(split, s), process_index, process_count) for s in ("validation", "test")
    ]
    with clock.phase("images"):
        if store is not None and process_count > 1 and share is None:
            decode_share = lambda: decode(_share_to_decode(store, split, process_index, process_count))  # noqa: E731
            run_on_every_process("decoding its share of the images", decode_share)
        cache = decode(np.concatenate(needed))
    normalizer = _normalizer(config, cache, held_train)
    return InputData(
        config=config,
        table=table,
        split=split,
        cache=cache,
        train_rows=train,
        normalizer=normalizer,
        capacity=capacity,
        held_train=held_train,
        process_index=process_index,
        process_count=process_count,
    )


def load_side(config: InputConfig, side: str, *, progress: bool = True) -> tuple[splits.Split, DecodedCache]:
    """The run's split and the images of its `side` ('train', 'validation' or 'test'), read from the
    image cache (decoded where it lacks them): a trained run's own images, for prediction."""
    source, store, _, split = _open(config)
    return split, _build_cache(config, source, store, np.unique(getattr(split, side)), progress=progress)


def _open(config: InputConfig) -> tuple[Any, image_cache.ImageCache | None, splits.ImageTable, splits.Split]:
    """The data source, the image cache, the per-image table and the split of `config`."""
    source = open_source(config.data_dir, config.dataset, config.manual_dir)
    store = open_image_cache(config, tfds.builder(config.dataset, data_dir=_expand(config.data_dir)).data_dir)
    table = read_table(source, store)
    split = splits.make_split(table, config.split, magnification=config.magnification, **config.split_kwargs)
    return source, store, table, split


def _build_cache(
    config: InputConfig, source, store: image_cache.ImageCache | None, rows: np.ndarray, *, progress: bool
) -> DecodedCache:
    return build_cache(
        source,
        rows,
        height=config.height,
        width=config.width,
        stain_normalization=config.stain_normalization,
        workers=config.decode_workers or decoding.default_workers(),
        store=store,
        progress=progress,
    )


class _ImagesOfRows:
    """The images of `rows` as an array that is read only where indexed: a process fills its own
    devices' shards (`jax.make_array_from_callback`) from a cache that may hold only those. Past the
    first `count` rows (the padding, never drawn) the images are black."""

    def __init__(self, cache: DecodedCache, rows: np.ndarray, count: int):
        self.cache, self.rows, self.count = cache, rows, count
        self.shape = (len(rows), *cache.images.shape[1:])

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        positions = np.arange(len(self.rows))[index[0]]
        images = np.zeros((len(positions), *self.shape[1:]), np.uint8)
        rows = self.rows[positions[positions < self.count]]
        held = np.searchsorted(self.cache.rows, rows).clip(max=len(self.cache.rows) - 1)
        if not np.array_equal(self.cache.rows[held], rows):
            raise RuntimeError("a device shard asks for training images this process did not load")
        images[: len(rows)] = self.cache.images[held]
        return images[(slice(None), *index[1:])]


def resident_rows(train_rows: np.ndarray, capacity: TrainCapacity, devices: int) -> np.ndarray:
    """The table rows of the device-resident arrays in order: each distinct training row once, then
    the last one repeated (padding, never drawn) up to the capacity, rounded up to a multiple of `devices`."""
    rows = np.unique(train_rows)
    return np.pad(rows, (0, capacity.images - len(rows) + -capacity.images % devices), mode="edge")


@dataclasses.dataclass(frozen=True)
class TrainCapacity:
    """What the device-resident training arrays are padded to: the same for every fold of a protocol,
    so the folds of one command share one compiled train step."""

    images: int  # the most distinct training images of any fold
    rows: int  # the most training rows (more than images when balancing)
    min_rows: int  # the fewest training rows


def train_capacity(trains: Sequence[np.ndarray]) -> TrainCapacity:
    """The capacity of these training sets (one per fold)."""
    return TrainCapacity(
        images=max(len(np.unique(t)) for t in trains),
        rows=max(len(t) for t in trains),
        min_rows=min(len(t) for t in trains),
    )


def _train_rows(config: InputConfig, table: splits.ImageTable, split: splits.Split) -> np.ndarray:
    """The split's training rows, oversampled when balancing."""
    if config.balance:
        return balanced_rows(split.train, getattr(table, config.target), config.seed)
    return split.train


def _every_fold(config: InputConfig, table: splits.ImageTable, split: splits.Split) -> list[splits.Split]:
    """Every fold of a k-fold protocol (splitting is cheap: the table is in memory); the split alone otherwise."""
    if config.split not in splits.KFOLD_PROTOCOLS:
        return [split]
    return [splits.make_split(table, config.split, **{**split.params, "fold": f}) for f in range(split.params["k"])]


def _share_to_decode(
    store: image_cache.ImageCache, split: splits.Split, process_index: int, process_count: int
) -> np.ndarray:
    """This process's share of the rows some process needs and the cache lacks."""
    everyone = np.unique(np.concatenate([split.train, split.validation, split.test]).astype(np.int64))
    held = store.held()
    missing = everyone if held is None else everyone[~np.isin(everyone, held.rows)]
    return host_shard(missing, process_index, process_count)


def _normalizer(config: InputConfig, cache: DecodedCache, train_rows: np.ndarray) -> normalization.Normalizer:
    """The configured normaliser; z-score statistics come from the training images."""
    if config.normalization != "zscore":
        return normalization.make_normalizer(config.normalization)
    positions = np.searchsorted(cache.rows, train_rows)
    return normalization.make_normalizer("zscore", cache.images[positions])
