"""Writes a synthetic tree to disk: the images, the archive's non-image files, a reproducible tar.

Everything is a pure function of the arguments and the seed: two runs write
byte-identical files and `.tar.gz`.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import shutil
import struct
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bcjax.datasets.breakhis import ARCHIVE_NAME, CLASSES, SLIDES_DIR, TOP_DIR, TUMOR_TYPES

from .layout import (
    IMAGE_SIZE,
    MAGNIFICATION_POWERS,
    SHORT_HEIGHT,
    ImageJob,
    Patient,
    check_magnifications,
    folder_quirks,
    plan_images,
    plan_patients,
)
from .seeding import keyed_rng
from .tissue import patient_look, render


@dataclasses.dataclass(frozen=True)
class SyntheticSummary:
    """What `write_breakhis_tree` wrote."""

    root: Path  # the BreaKHis_v1 folder
    tar_path: Path | None
    patients: dict[str, int]  # patient folders per type code
    counts: dict[str, dict[int, int]]  # SOB images per type code and magnification
    num_images: int
    short_images: int  # images 456/460 of the requested height
    bytes_written: int
    seconds: float
    quirks: tuple[str, ...]

    def table(self) -> str:
        """Counts in the layout of REFERENCE.md's table: rows per type, class and all."""
        mags = sorted({m for per_mag in self.counts.values() for m in per_mag})
        groups = (
            [(t.code, [t]) for t in TUMOR_TYPES]
            + [(name, [t for t in TUMOR_TYPES if t.class_name == name]) for name in CLASSES]
            + [("all", list(TUMOR_TYPES))]
        )
        header = f"{'type (patients)':<18}" + "".join(f"{f'{m}X':>7}" for m in mags) + f"{'total':>8}"
        lines = [header]
        for name, types in groups:
            per_mag = [sum(self.counts[t.code].get(m, 0) for t in types) for m in mags]
            patients = sum(self.patients[t.code] for t in types)
            lines.append(f"{f'{name} ({patients})':<18}" + "".join(f"{c:>7}" for c in per_mag) + f"{sum(per_mag):>8}")
        return "\n".join(lines)


def write_breakhis_tree(
    out_dir: str | Path,
    *,
    patients: str | int = "full",
    images_per_magnification: int = 3,
    magnifications: Sequence[int] = MAGNIFICATION_POWERS,
    image_size: tuple[int, int] = IMAGE_SIZE,
    seed: int = 0,
    tar: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> SyntheticSummary:
    """Writes `<out_dir>/BreaKHis_v1/...` (and `<out_dir>/BreaKHis_v1.tar.gz` if `tar`).

    `patients` is "full" (the real 82 folders) or patients per tumour type (the quirk
    folders are always written, so a type may get more). `image_size` is (width,
    height); ~3% of images are 456/460 as high. Refuses an existing tree unless
    `overwrite`, so a stale tree never mixes with a new one.
    """
    mags = check_magnifications(magnifications)
    _check_arguments(image_size, images_per_magnification, seed)
    start = time.perf_counter()
    plan = plan_patients(patients, seed)
    root, tar_path = _clear(Path(out_dir), overwrite)
    jobs = plan_images(plan, mags, images_per_magnification, seed)
    width, height = image_size
    short_size = (width, min(height - 1, round(height * SHORT_HEIGHT / IMAGE_SIZE[1])))
    written = sum(
        _write_image(root, job, short_size if job.short else image_size, seed)
        for job in _with_progress(jobs, progress, start)
    )
    written += _write_extras(root, plan[0], mags[0], seed, patients)
    if tar:
        written += _write_tar(root, tar_path)
    short_note = f"{sum(j.short for j in jobs)} images {short_size[0]}x{short_size[1]} instead of {width}x{height}"
    extras_note = (
        "non-SOB files: README.txt, histology_slides/.DS_Store, a Thumbs.db and an overview.png "
        f"in {plan[0].dir_name}/{mags[0]}X"
    )
    return SyntheticSummary(
        root=root,
        tar_path=tar_path if tar else None,
        patients=dict(collections.Counter(p.tumor.code for p in plan)),
        counts=_counts(jobs, mags),
        num_images=len(jobs),
        short_images=sum(job.short for job in jobs),
        bytes_written=written,
        seconds=time.perf_counter() - start,
        quirks=(*folder_quirks(), short_note, extras_note),
    )


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (h, w, 3) uint8 image: unfiltered rows, zlib level 1, no metadata.

    Twice as fast as Pillow's encoder (whose adaptive row filters cost more than they
    save on grainy tissue), and the same array always gives the same bytes.
    """
    h, w, _ = image.shape
    rows = np.zeros((h, 1 + 3 * w), np.uint8)  # a leading 0 per row: filter "none"
    rows[:, 1:] = image.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    idat = zlib.compress(rows.tobytes(), 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _check_arguments(image_size: tuple[int, int], images_per_magnification: int, seed: int) -> None:
    width, height = image_size
    if width < 8 or height < 8:
        raise ValueError(f"image_size must be at least 8x8, got {width}x{height}")
    if images_per_magnification < 1:
        raise ValueError(f"images_per_magnification must be >= 1, got {images_per_magnification}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _clear(out_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    """The tree's root and tar paths, after removing an earlier tree if `overwrite`."""
    root, tar_path = out_dir / TOP_DIR, out_dir / ARCHIVE_NAME
    if root.exists() or tar_path.exists():
        if not overwrite:
            raise FileExistsError(f"{root} or {tar_path} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(root, ignore_errors=True)
        tar_path.unlink(missing_ok=True)
    return root, tar_path


def _counts(jobs: Sequence[ImageJob], mags: Sequence[int]) -> dict[str, dict[int, int]]:
    counts = {t.code: {m: 0 for m in mags} for t in TUMOR_TYPES}
    for job in jobs:
        counts[job.patient.tumor.code][job.magnification] += 1
    return counts


def _with_progress(jobs: list[ImageJob], enabled: bool, start: float) -> Iterator[ImageJob]:
    """Yields the jobs, printing a line to stderr at every 10% when `enabled`."""
    marks = {round(len(jobs) * k / 10) for k in range(1, 11)}
    for i, job in enumerate(jobs, 1):
        yield job
        if enabled and i in marks:
            rate = i / max(time.perf_counter() - start, 1e-9)
            print(f"synthetic: {i}/{len(jobs)} images ({100 * i // len(jobs)}%), {rate:.0f} img/s", file=sys.stderr)


def _write_image(root: Path, job: ImageJob, size: tuple[int, int], seed: int) -> int:
    """Renders and writes one image; a folder and its copy share a content_id, so their bytes agree."""
    look = patient_look(seed, job.patient.content_id)
    image = render(job.patient.source, job.magnification, size, look, keyed_rng(seed, job.content_key))
    path = job.patient.image_folder(root, job.magnification) / job.patient.file_name(job.magnification, job.seq)
    return _write(path, encode_png(image))


def _write(path: Path, data: bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


def _write_extras(root: Path, patient: Patient, magnification: int, seed: int, patients: str | int) -> int:
    """The non-image files of the real archive that a loader must skip (plus a non-SOB PNG)."""
    folder = patient.image_folder(root, magnification)
    readme = (
        f"Synthetic BreakHis-shaped data written by bcjax.datasets.synthetic (seed={seed}, "
        f"patients={patients}).\nNot real tissue: for demos and tests only. Images: "
        "SOB_<B|M>_<type>-<YY>-<slide>-<magnification>-<seq>.png\n"
    )
    thumbnail = np.full((23, 35, 3), (236, 200, 226), np.uint8)
    return (
        _write(root / "README.txt", readme.encode())
        + _write(root / SLIDES_DIR[0] / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(56))
        + _write(folder / "Thumbs.db", bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504))
        + _write(folder / "overview.png", encode_png(thumbnail))
    )


def _write_tar(root: Path, tar_path: Path) -> int:
    """`BreaKHis_v1.tar.gz` of the tree; sorted members, fixed owners and times, gzip mtime 0."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    paths = [root, *sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())]
    with tar_path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=1) as gz:
        # compresslevel 1: the payload is already-deflated PNG, harder work buys nothing.
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for path in paths:
                archive.add(path, arcname=path.relative_to(root.parent).as_posix(), recursive=False, filter=normalise)
    return tar_path.stat().st_size
