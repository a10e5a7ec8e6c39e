"""Patient-grouped splits of BreakHis, the published split protocols, and a leakage report.

Every protocol returns a `Split` of row indices into an `ImageTable`. The patient-disjoint
protocols group images by accession (`<YY>-<digits>`), not by patient folder: suffix siblings
(22549AB/CD/G) and the DC and LC folders of slide 14-13412 may be one patient, so only
accession-disjoint sides are safe. The image-level recipes A and B are kept as published, and
their `leakage` report shows how many test patients the model has already seen.

Splits are deterministic in the seed and do not depend on the table's row order: units
(accession groups, or images keyed by filename) are numbered in sorted key order before any
shuffling.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import inspect
import os
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bcjax.datasets.breakhis import CLASSES, MAGNIFICATIONS, TUMOR_TYPES

SIDES = ("train", "validation", "test")
_MAX_LISTED = 10  # names shown in an error before "..."
_LABEL_OF_TYPE = np.array([CLASSES.index(t.class_name) for t in TUMOR_TYPES])  # label id of each type id
# report.json and split.json keep the keys from when these LeakageReport fields were named test_*.
_LEAKAGE_JSON_KEYS = {
    "held_out_patients": "test_patients",
    "held_out_accessions": "test_accessions",
    "held_out_images": "test_images",
    "images_with_seen_patient": "test_images_with_seen_patient",
    "images_with_seen_accession": "test_images_with_seen_accession",
}


@dataclasses.dataclass(frozen=True, eq=False)
class ImageTable:
    """Per-image metadata of one BreakHis dataset, row i = record i of the TFDS split."""

    filename: np.ndarray  # str, path inside the archive (…/histology_slides/breast/…/<file>.png)
    patient_id: np.ndarray  # str, the patient folder, e.g. 'SOB_B_A_14-22549AB'
    accession: np.ndarray  # str, '<YY>-<digits>' grouping key, e.g. '14-22549'
    label: np.ndarray  # int, 0 benign, 1 malignant
    tumor_type: np.ndarray  # int 0..7 in the order of TUMOR_TYPES
    magnification: np.ndarray  # str, one of MAGNIFICATIONS

    def __post_init__(self) -> None:
        for name in ("filename", "patient_id", "accession", "magnification"):
            object.__setattr__(self, name, _as_str(getattr(self, name)))
        for name in ("label", "tumor_type"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        lengths = {f.name: len(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"ImageTable columns differ in length: {lengths}")
        _require_none(
            f"ImageTable magnifications outside {MAGNIFICATIONS}",
            sorted(set(self.magnification.tolist()) - set(MAGNIFICATIONS)),
        )
        bad_type = (self.tumor_type < 0) | (self.tumor_type >= len(TUMOR_TYPES))
        _require_none(f"ImageTable tumor_type outside 0..{len(TUMOR_TYPES) - 1}", self.filename[bad_type].tolist())
        _require_none(
            "ImageTable label disagrees with tumor_type (A F PT TA are benign 0, DC LC MC PC malignant 1)",
            self.filename[self.label != _LABEL_OF_TYPE[self.tumor_type]].tolist(),
        )

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> ImageTable:
        """One mapping per image, as the input pipeline reads them; other keys (the image) are ignored."""
        names = [f.name for f in dataclasses.fields(cls)]
        columns: dict[str, list[Any]] = {name: [] for name in names}
        for i, record in enumerate(records):
            missing = [name for name in names if name not in record]
            if missing:
                raise ValueError(f"record {i} lacks {missing}")
            for name in names:
                columns[name].append(record[name])
        return cls(**columns)

    def __len__(self) -> int:
        return len(self.filename)


@dataclasses.dataclass(frozen=True)
class LeakageReport:
    """Which held-out patients and accessions the model already met while training.

    `held_out` is 'test' (checked against train and validation together) or 'validation'
    (checked against train); the counts describe that held-out side. Accession sharing is the
    safe measure: patient folders miss suffix siblings and 14-13412.
    """

    held_out: str
    shared_patients: tuple[str, ...]
    shared_accessions: tuple[str, ...]
    held_out_patients: int
    held_out_accessions: int
    held_out_images: int
    images_with_seen_patient: int  # held-out images whose patient folder was seen
    images_with_seen_accession: int  # held-out images whose accession was seen

    @property
    def n_shared_patients(self) -> int:
        return len(self.shared_patients)

    @property
    def n_shared_accessions(self) -> int:
        return len(self.shared_accessions)

    @property
    def fraction_with_seen_patient(self) -> float:
        return self.images_with_seen_patient / max(self.held_out_images, 1)

    @property
    def fraction_with_seen_accession(self) -> float:
        return self.images_with_seen_accession / max(self.held_out_images, 1)

    def summary(self) -> str:
        """One line for logs and reports."""
        side = self.held_out
        if not self.held_out_images:
            return f"leakage: none (no {side} images)"
        if not self.shared_accessions:
            return f"leakage: none (0 of {self.held_out_accessions} {side} accessions seen in training)"
        line = (
            f"leakage: {self.n_shared_patients}/{self.held_out_patients} {side} patients seen in training "
            f"({self.images_with_seen_patient}/{self.held_out_images} {side} images, "
            f"{100 * self.fraction_with_seen_patient:.1f}%)"
        )
        if self.images_with_seen_accession > self.images_with_seen_patient:
            line += (
                f"; by accession {self.n_shared_accessions}/{self.held_out_accessions} "
                f"({self.images_with_seen_accession}/{self.held_out_images} images, "
                f"{100 * self.fraction_with_seen_accession:.1f}%)"
            )
        return line

    def to_json_dict(self) -> dict[str, Any]:
        return {
            **{_LEAKAGE_JSON_KEYS.get(k, k): v for k, v in dataclasses.asdict(self).items()},
            "fraction_with_seen_patient": self.fraction_with_seen_patient,
            "fraction_with_seen_accession": self.fraction_with_seen_accession,
            "summary": self.summary(),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of an ImageTable: sorted, disjoint row indices per side (validation may be empty)."""

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    params: Mapping[str, Any]
    table: ImageTable = dataclasses.field(repr=False)

    @functools.cached_property
    def leakage(self) -> LeakageReport:
        """Test against everything the run learned or selected on (train and validation)."""
        seen = np.concatenate([self.train, self.validation])
        return _leakage(self.table, self.test, seen, "test")

    @functools.cached_property
    def validation_leakage(self) -> LeakageReport:
        """Validation against train: a leaky validation set picks over-optimistic checkpoints."""
        return _leakage(self.table, self.validation, self.train, "validation")

    def to_json_dict(self) -> dict[str, Any]:
        """What a run records next to its results, so that every figure names its split."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "sides": {side: _describe(self.table, getattr(self, side)) for side in SIDES},
            "leakage": {
                "test": self.leakage.to_json_dict(),
                "validation": self.validation_leakage.to_json_dict(),
            },
        }


def patient_kfold(
    table: ImageTable,
    *,
    k: int = 5,
    fold: int = 0,
    val_fraction: float = 0.2,
    seed: int = 0,
    magnification: str | None = None,
) -> Split:
    """Fold `fold` of k accession-grouped, class- and type-stratified folds: the default protocol.

    The fold assignment depends on the seed only, so folds 0..k-1 of one seed test every image
    exactly once. Validation is carved from the training groups, stratified by class.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1} for k={k}, got {fold}")
    _check_fraction("val_fraction", val_fraction)
    _check_magnification(magnification)
    units = _Units.of(table, table.accession)
    groups = np.bincount(units.label, minlength=len(CLASSES))
    short = [f"{name} has {n}" for name, n in zip(CLASSES, groups, strict=True) if n < k]
    if short:
        raise ValueError(
            f"patient_kfold with k={k} needs at least {k} accession groups of each class, "
            f"so that every test fold holds both; {', '.join(short)}"
        )
    rng = np.random.default_rng(seed)
    test = np.flatnonzero(_assign_folds(units, k, rng) == fold)
    sides = _sides(units, test, units.label, val_fraction, rng)
    return _split("patient_kfold", table, sides, magnification, k=k, fold=fold, val_fraction=val_fraction, seed=seed)


def patient_holdout(
    table: ImageTable,
    *,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    seed: int = 0,
    magnification: str | None = None,
) -> Split:
    """Spanhol 2016: a random patient-level 70/30 split (one seed per trial, five trials).

    Groups by accession rather than Spanhol's patient folder, stratified by class.
    """
    return _random_holdout(
        "patient_holdout",
        table,
        table.accession,
        "label",
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        seed=seed,
        magnification=magnification,
    )


def recipe_a(table: ImageTable, *, val_fraction: float = 0.0, seed: int = 0, magnification: str | None = None) -> Split:
    """Recipe A as published: train on all 100X/200X/400X images, test on all 40X images.

    Every patient sits on both sides. `val_fraction` (default 0, as published) carves a random,
    type-stratified validation set out of the training images; `seed` drives only that carving.
    """
    if magnification is not None:
        raise ValueError(
            "recipe_a splits by magnification itself (train 100X/200X/400X, test 40X); "
            f"a magnification filter ({magnification!r}) would empty one side"
        )
    _check_fraction("val_fraction", val_fraction)
    units = _Units.of(table, table.filename)
    test = np.unique(units.of_row[table.magnification == "40X"])
    sides = _sides(units, test, units.tumor_type, val_fraction, np.random.default_rng(seed))
    return _split("recipe_a", table, sides, magnification, val_fraction=val_fraction, seed=seed)


def image_random(
    table: ImageTable,
    *,
    test_fraction: float = 0.3,
    val_fraction: float = 0.25,
    seed: int = 0,
    stratify: bool = True,
    magnification: str | None = None,
) -> Split:
    """Recipe B as published: a random 70/30 split of images, 25% of train as validation.

    Stratified by tumour type unless `stratify` is False. Patients land on every side.
    """
    return _random_holdout(
        "image_random",
        table,
        table.filename,
        "tumor_type" if stratify else None,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        seed=seed,
        magnification=magnification,
        stratify=stratify,
    )


def image_kfold(
    table: ImageTable,
    *,
    test_fraction: float = 0.3,
    k: int = 5,
    fold: int = 0,
    seed: int = 0,
    magnification: str | None = None,
) -> Split:
    """Recipe D as published: a random `test_fraction` of the images (stratified by tumour type)
    is the test set and the rest is cut into k folds; fold `fold` validates, the others train.

    The test set depends on the seed only, so the k folds share it (the paper averages its k
    runs on one test set). Images, not patients, are the units: patients land on every side.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1} for k={k}, got {fold}")
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    _check_magnification(magnification)
    units = _Units.of(table, table.filename)
    rng = np.random.default_rng(seed)
    test = _pick(np.arange(len(units)), units.sizes, units.tumor_type, test_fraction, rng)
    rest = rng.permutation(np.setdiff1d(np.arange(len(units)), test))
    rest = rest[np.argsort(units.tumor_type[rest], kind="stable")]  # dealt round-robin: every type in every fold
    validation = rest[np.arange(len(rest)) % k == fold]
    sides = (units.rows(np.setdiff1d(rest, validation)), units.rows(validation), units.rows(test))
    return _split("image_kfold", table, sides, magnification, test_fraction=test_fraction, k=k, fold=fold, seed=seed)


def official_folds(
    table: ImageTable, *, folds_csv: str | os.PathLike[str], fold: int, magnification: str | None = None
) -> Split:
    """One fold of the original BreakHis `Folds.csv` (columns fold,mag,grp,filename).

    `fold` is numbered as in the file (1..5 in the mirrored copy). The fold must list every table
    image of the chosen magnification (all of them when None) exactly once, and nothing else.
    """
    _check_magnification(magnification)
    entries = _read_folds(folds_csv, fold, magnification)
    rows = _match_rows(table, [name for name, _ in entries])
    _require_none(
        f"{folds_csv}: fold {fold} lists images missing from the table",
        [name for (name, _), row in zip(entries, rows, strict=True) if row < 0],
    )
    listed, times = np.unique(rows, return_counts=True)
    _require_none(f"{folds_csv}: fold {fold} lists images more than once", table.filename[listed[times > 1]].tolist())
    expected = np.flatnonzero(_keep(table, magnification))
    _require_none(
        f"table images missing from fold {fold} of {folds_csv}", table.filename[np.setdiff1d(expected, listed)].tolist()
    )
    is_test = np.array([group == "test" for _, group in entries], dtype=bool)
    sides = (rows[~is_test], np.zeros(0, dtype=np.int64), rows[is_test])
    return _split("official_folds", table, sides, magnification, folds_csv=os.fspath(folds_csv), fold=fold)


PROTOCOLS: Mapping[str, Callable[..., Split]] = {
    protocol.__name__: protocol
    for protocol in (patient_kfold, patient_holdout, recipe_a, image_random, image_kfold, official_folds)
}
# Protocols numbered by `fold` out of `k`, which `config.data.all_folds` runs one after another.
KFOLD_PROTOCOLS = ("patient_kfold", "image_kfold")


def make_split(table: ImageTable, protocol: str, **kwargs: Any) -> Split:
    """Runs the protocol a config names, with its arguments."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    signature = inspect.signature(PROTOCOLS[protocol])
    try:
        signature.bind(table, **kwargs)
    except TypeError as error:
        valid = ", ".join(name for name in signature.parameters if name != "table")
        raise TypeError(f"split protocol {protocol!r}: {error}; valid arguments: {valid}") from None
    return PROTOCOLS[protocol](table, **kwargs)


@dataclasses.dataclass(frozen=True, eq=False)
class _Units:
    """Images grouped by a key (accession, or filename for image-level protocols).

    Units are numbered in sorted key order, so that shuffling them does not depend on row order.
    A unit's class and tumour type are its majority ones; `types` marks every type it holds.
    """

    of_row: np.ndarray  # unit of each table row
    sizes: np.ndarray  # images per unit
    label: np.ndarray
    tumor_type: np.ndarray
    types: np.ndarray  # (units, len(TUMOR_TYPES)) bool

    @classmethod
    def of(cls, table: ImageTable, key: np.ndarray) -> _Units:
        """The units of `key`'s distinct values."""
        keys, of_row = np.unique(key, return_inverse=True)
        by_label = _tally(of_row, table.label, len(keys), len(CLASSES))
        by_type = _tally(of_row, table.tumor_type, len(keys), len(TUMOR_TYPES))
        return cls(of_row, by_type.sum(1), by_label.argmax(1), by_type.argmax(1), by_type > 0)

    def __len__(self) -> int:
        return len(self.sizes)

    def rows(self, units: np.ndarray) -> np.ndarray:
        """Sorted table rows of the given units."""
        return np.flatnonzero(np.isin(self.of_row, units))


def _tally(of_row: np.ndarray, values: np.ndarray, n_units: int, n_values: int) -> np.ndarray:
    counts = np.zeros((n_units, n_values), dtype=np.int64)
    np.add.at(counts, (of_row, values), 1)
    return counts


def _assign_folds(units: _Units, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every unit, by greedy stratified assignment.

    Units go in random order, those of the rarest tumour types first, each to the fold that still
    lacks its class, then lacks most of its types, then holds fewest images of its class. The
    first k units of a class thus land in k different folds, and rare types spread before the
    common ones fill the gaps.
    """
    units_per_type = units.types.sum(0)
    rarity = np.where(units.types, units_per_type, np.iinfo(np.int64).max).min(1)
    order = rng.permutation(len(units))
    order = order[np.argsort(rarity[order], kind="stable")]
    class_images = np.zeros((k, len(CLASSES)), dtype=np.int64)
    has_type = np.zeros((k, len(TUMOR_TYPES)), dtype=bool)
    fold_of = np.empty(len(units), dtype=np.int64)
    for unit in order:
        label = units.label[unit]
        missing_types = (units.types[unit] & ~has_type).sum(1)
        # lexsort: last key first; ties go to the lowest fold index.
        best = np.lexsort((class_images[:, label], -missing_types, class_images[:, label] > 0))[0]
        fold_of[unit] = best
        class_images[best, label] += units.sizes[unit]
        has_type[best] |= units.types[unit]
    return fold_of


def _pick(
    candidates: np.ndarray, sizes: np.ndarray, strata: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Random units holding about `fraction` of each stratum's images.

    At least one unit per stratum and never all of them, so a stratum with two or more units
    lands on both sides.
    """
    if fraction == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = [np.zeros(0, dtype=np.int64)]
    for stratum in np.unique(strata[candidates]):
        pool = rng.permutation(candidates[strata[candidates] == stratum])
        if len(pool) < 2:
            continue
        reached = np.cumsum(sizes[pool])[:-1]
        chosen.append(pool[: np.argmin(np.abs(reached - fraction * sizes[pool].sum())) + 1])
    return np.concatenate(chosen)


def _sides(
    units: _Units, test: np.ndarray, strata: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Table rows of (train, validation, test), validation carved from the non-test units."""
    rest = np.setdiff1d(np.arange(len(units)), test)
    validation = _pick(rest, units.sizes, strata, val_fraction, rng)
    return units.rows(np.setdiff1d(rest, validation)), units.rows(validation), units.rows(test)


def _random_holdout(
    name: str,
    table: ImageTable,
    key: np.ndarray,
    stratify_by: str | None,
    *,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    magnification: str | None,
    **params: Any,
) -> Split:
    """Random units of `key` as test, then validation, each ~its fraction of every stratum's images.

    `stratify_by` names a `_Units` column (None: one stratum). `params` follow the common ones.
    """
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    _check_fraction("val_fraction", val_fraction)
    _check_magnification(magnification)
    units = _Units.of(table, key)
    strata = np.zeros(len(units), dtype=np.int64) if stratify_by is None else getattr(units, stratify_by)
    rng = np.random.default_rng(seed)
    test = _pick(np.arange(len(units)), units.sizes, strata, test_fraction, rng)
    sides = _sides(units, test, strata, val_fraction, rng)
    common = dict(test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    return _split(name, table, sides, magnification, **common, **params)


def _split(
    name: str, table: ImageTable, sides: Sequence[np.ndarray], magnification: str | None, **params: Any
) -> Split:
    """The Split, keeping only `magnification`'s images on every side (MSB/MSM tasks)."""
    keep = _keep(table, magnification)
    train, validation, test = (np.sort(rows[keep[rows]]) for rows in sides)
    return Split(name, train, validation, test, {**params, "magnification": magnification}, table)


def _keep(table: ImageTable, magnification: str | None) -> np.ndarray:
    if magnification is None:
        return np.ones(len(table), dtype=bool)
    return table.magnification == magnification


def _leakage(table: ImageTable, held_out: np.ndarray, seen: np.ndarray, side: str) -> LeakageReport:
    patients, accessions = table.patient_id[held_out], table.accession[held_out]
    seen_patient = np.isin(patients, table.patient_id[seen])
    seen_accession = np.isin(accessions, table.accession[seen])
    return LeakageReport(
        held_out=side,
        shared_patients=tuple(np.unique(patients[seen_patient]).tolist()),
        shared_accessions=tuple(np.unique(accessions[seen_accession]).tolist()),
        held_out_patients=len(np.unique(patients)),
        held_out_accessions=len(np.unique(accessions)),
        held_out_images=len(held_out),
        images_with_seen_patient=int(seen_patient.sum()),
        images_with_seen_accession=int(seen_accession.sum()),
    )


def _describe(table: ImageTable, rows: np.ndarray) -> dict[str, Any]:
    classes = np.bincount(table.label[rows], minlength=len(CLASSES))
    return {
        "images": len(rows),
        "classes": dict(zip(CLASSES, classes.tolist(), strict=True)),
        "patients": np.unique(table.patient_id[rows]).tolist(),
        "accessions": np.unique(table.accession[rows]).tolist(),
    }


def _read_folds(folds_csv: str | os.PathLike[str], fold: int, magnification: str | None) -> list[tuple[str, str]]:
    """(filename, grp) of one fold's rows, of one magnification when given."""
    with open(folds_csv, newline="") as file:
        reader = csv.DictReader(file)
        missing = {"fold", "mag", "grp", "filename"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{folds_csv}: missing columns {sorted(missing)}; expected fold,mag,grp,filename")
        records = list(reader)
    folds = sorted({int(record["fold"]) for record in records})
    if fold not in folds:
        raise ValueError(f"{folds_csv} has no fold {fold}; its folds: {folds}")
    entries = [
        (record["filename"].strip(), record["grp"].strip())
        for record in records
        if int(record["fold"]) == fold
        and (magnification is None or _mag_number(record["mag"]) == _mag_number(magnification))
    ]
    _require_none(f"{folds_csv}: grp must be train or test, found", sorted({g for _, g in entries} - {"train", "test"}))
    return entries


def _mag_number(magnification: str) -> str:
    """'40X', '40x' and '40' alike: Folds.csv writes the bare number."""
    return magnification.strip().upper().removesuffix("X")


def _match_rows(table: ImageTable, names: Sequence[str]) -> np.ndarray:
    """Table row of each name, -1 where absent.

    Matched by the path from 'histology_slides/' on, since copies of the archive differ in
    their root prefix, and else by basename where the table's basename is unique.
    """
    paths = [_archive_path(name) for name in table.filename]
    by_path = {path: row for row, path in enumerate(paths)}
    basenames = [posixpath.basename(path) for path in paths]
    counts = collections.Counter(basenames)
    by_basename = {name: row for row, name in enumerate(basenames) if counts[name] == 1}
    wanted = [_archive_path(name) for name in names]
    return np.array(
        [by_path.get(path, by_basename.get(posixpath.basename(path), -1)) for path in wanted], dtype=np.int64
    )


def _archive_path(path: str) -> str:
    path = path.replace("\\", "/")
    start = path.find("histology_slides/")
    return path[start:] if start >= 0 else path


def _check_fraction(name: str, value: float, *, allow_zero: bool = True) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not low_ok or value >= 1:
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def _check_magnification(magnification: str | None) -> None:
    if magnification is not None and magnification not in MAGNIFICATIONS:
        raise ValueError(f"magnification must be None or one of {MAGNIFICATIONS}, got {magnification!r}")


def _require_none(problem: str, items: Sequence[str]) -> None:
    """Raises with the first few offending names and their total count."""
    if len(items):
        shown = ", ".join(map(str, items[:_MAX_LISTED])) + (", ..." if len(items) > _MAX_LISTED else "")
        raise ValueError(f"{problem}: {len(items)} ({shown})")


def as_text(value: Any) -> str:
    """`value` as str, decoding bytes as UTF-8: TFDS hands text features back as bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _as_str(values: Iterable[Any]) -> np.ndarray:
    return np.array([as_text(v) for v in values], dtype=str)
