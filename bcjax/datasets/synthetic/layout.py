"""What a synthetic tree holds: patient folders (with the real archive's quirks) and images.

The names, folders and quirks follow the real archive (REFERENCE.md section 2), so that the
TFDS builder reads a synthetic tree unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from bcjax.datasets.breakhis import (
    MAGNIFICATIONS,
    PUBLISHED_PATIENTS,
    SLIDES_DIR,
    TUMOR_TYPES,
    TumorType,
    image_folders,
    image_name,
    patient_folder,
)

from .seeding import keyed_rng

# MAGNIFICATIONS as numbers, as the CLI and the file names write them: (40, 100, 200, 400).
MAGNIFICATION_POWERS = tuple(int(m.removesuffix("X")) for m in MAGNIFICATIONS)
IMAGE_SIZE = (700, 460)  # width, height of most real images
SHORT_HEIGHT = 456  # a few real images are 700x456
SHORT_FRACTION = 0.03

# Patient folders that every tree holds, as (type code, year, slide): the suffix
# siblings of REFERENCE.md section 2 (some across types) and the only year-15 slide.
# With the duplicated 14-13412 below they make the real archive's 82 folders,
# 81 slide ids and 70 accession cores when the other folders get unique cores.
QUIRK_FOLDERS = (
    ("A", 14, "22549AB"),
    ("A", 14, "22549CD"),
    ("A", 14, "22549G"),
    ("A", 14, "29960CD"),
    ("F", 14, "21998CD"),
    ("F", 14, "21998EF"),
    ("F", 14, "29960AB"),
    ("F", 14, "14134"),
    ("F", 14, "14134E"),
    ("F", 14, "23060AB"),
    ("F", 14, "23060CD"),
    ("PT", 14, "21998AB"),
    ("TA", 14, "16184"),
    ("TA", 14, "16184CD"),
    ("DC", 14, "13412"),
    ("LC", 14, "13412"),
    ("LC", 14, "15570"),
    ("LC", 14, "15570C"),
    ("MC", 14, "18842"),
    ("MC", 14, "18842D"),
    ("MC", 14, "19979"),
    ("MC", 14, "19979C"),
    ("PC", 15, "190EF"),
)
# Folders that hold another type's images, byte for byte: (type, year, slide) -> source type.
COPIES = {("LC", 14, "13412"): "DC"}
_SUFFIXES = ("B", "C", "D", "E", "F", "G", "AB", "CD", "DE", "EF")


@dataclasses.dataclass(frozen=True)
class Patient:
    """One patient folder; `source` is the type whose images it holds (another one in COPIES)."""

    tumor: TumorType
    year: int
    slide: str
    source: str

    @property
    def dir_name(self) -> str:
        return patient_folder(self.tumor, self.year, self.slide)

    @property
    def content_id(self) -> str:
        """Seeds the rendering: equal for a folder and its copy, so their bytes are equal."""
        return f"{self.source}_{self.year}-{self.slide}"

    def file_name(self, magnification: int, seq: int) -> str:
        return image_name(self.tumor, self.year, self.slide, f"{magnification}X", seq)

    def image_folder(self, root: Path, magnification: int) -> Path:
        """The folder of this patient's images at `magnification`, below `root` (BreaKHis_v1)."""
        return root.joinpath(*SLIDES_DIR, *image_folders(self.tumor, self.dir_name, f"{magnification}X"))


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """One image to write: the `seq`-th of a patient folder at one magnification."""

    patient: Patient
    magnification: int
    seq: int
    short: bool  # 456/460 of the requested height, like the few 700x456 real images

    @property
    def content_key(self) -> str:
        return f"{self.patient.content_id}-{self.magnification}-{self.seq}"


def plan_patients(patients: str | int, seed: int) -> list[Patient]:
    """Patient folders per type: the real counts ("full") or max(N, the type's quirk folders)."""
    if patients != "full" and (isinstance(patients, bool) or not isinstance(patients, int) or patients < 1):
        raise ValueError(f"patients must be 'full' or an integer >= 1, got {patients!r}")
    rng = keyed_rng(seed, "slides")
    used_cores = {_core(slide) for _, _, slide in QUIRK_FOLDERS}
    plan = []
    for tumor in TUMOR_TYPES:
        slides = [(year, slide) for code, year, slide in QUIRK_FOLDERS if code == tumor.code]
        wanted = PUBLISHED_PATIENTS[tumor.code] if patients == "full" else max(patients, len(slides))
        while len(slides) < wanted:  # the others get unique accession cores, so no new siblings
            core = str(rng.integers(2000, 30000))
            if core not in used_cores:
                used_cores.add(core)
                suffix = _SUFFIXES[rng.integers(len(_SUFFIXES))] if rng.random() < 0.25 else ""
                slides.append((14, core + suffix))
        for year, slide in slides:
            plan.append(Patient(tumor, year, slide, COPIES.get((tumor.code, year, slide), tumor.code)))
    return plan


def plan_images(
    patients: Sequence[Patient], magnifications: Sequence[int], per_magnification: int, seed: int
) -> list[ImageJob]:
    """Every image to write; ~3% (at least one) are short, chosen by content so copies agree."""
    jobs = [
        ImageJob(p, m, s, short=False)
        for p in patients
        for m in magnifications
        for s in range(1, per_magnification + 1)
    ]
    contents = sorted({job.content_key for job in jobs})
    rng = keyed_rng(seed, "short")
    count = max(1, round(SHORT_FRACTION * len(contents)))
    short = {contents[i] for i in rng.choice(len(contents), count, replace=False)}
    return [dataclasses.replace(job, short=job.content_key in short) for job in jobs]


def check_magnifications(magnifications: Sequence[int]) -> tuple[int, ...]:
    """The sorted distinct magnifications; refuses any outside MAGNIFICATION_POWERS."""
    mags = tuple(sorted(set(int(m) for m in magnifications)))
    if not mags or not set(mags) <= set(MAGNIFICATION_POWERS):
        raise ValueError(f"magnifications must be a non-empty subset of {MAGNIFICATION_POWERS}, got {magnifications}")
    return mags


def folder_quirks() -> list[str]:
    """Readable lines for COPIES, the suffix siblings and the odd years of QUIRK_FOLDERS."""
    lines = [
        f"{code} {year}-{slide} holds the images of {source} {year}-{slide}, byte for byte"
        for (code, year, slide), source in COPIES.items()
    ]
    groups = collections.defaultdict(list)
    for code, year, slide in QUIRK_FOLDERS:
        groups[year, _core(slide)].append(f"{code} {year}-{slide}")
    siblings = [" / ".join(g) for g in groups.values() if len({name.split()[1] for name in g}) > 1]
    lines.append("suffix siblings sharing an accession core, some across types: " + "; ".join(siblings))
    lines += [f"year {year}: {code} {year}-{slide}" for code, year, slide in QUIRK_FOLDERS if year != 14]
    return lines


def _core(slide: str) -> str:
    """The accession core of a slide id: its leading digits ('22549' of '22549AB')."""
    return re.match(r"\d+", slide).group()
