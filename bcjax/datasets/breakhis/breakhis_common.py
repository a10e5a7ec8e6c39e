"""The BreakHis vocabulary, written once: tumour types, classes, magnifications, counts, names.

The builder, the splits, the synthetic trees and the reports must agree on every name and
order here: the dataset's ClassLabel ids are positions in these tuples. It imports nothing: the
package re-exports it and registers the builder with TFDS, and the model, step and benchmark code
read it as `bcjax.datasets.breakhis_vocabulary`, without the package and so without the data stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

ARCHIVE_NAME = "BreaKHis_v1.tar.gz"
TOP_DIR = "BreaKHis_v1"
SLIDES_DIR = ("histology_slides", "breast")  # between TOP_DIR and the class folders

CLASSES = ("benign", "malignant")
CLASS_LETTERS = {"benign": "B", "malignant": "M"}  # as file and patient names write the class
MAGNIFICATIONS = ("40X", "100X", "200X", "400X")


class TumorType(NamedTuple):
    """One tumour type: its archive folder (the `tumor_type` class name), name code and class."""

    folder: str
    code: str
    class_name: str

    @property
    def letter(self) -> str:
        """`B` or `M`: the class as file and patient names write it."""
        return CLASS_LETTERS[self.class_name]

    @property
    def malignant(self) -> bool:
        return self.class_name == "malignant"


# In the order of the paper; the `tumor_type` label ids follow it.
TUMOR_TYPES: tuple[TumorType, ...] = (
    TumorType("adenosis", "A", "benign"),
    TumorType("fibroadenoma", "F", "benign"),
    TumorType("phyllodes_tumor", "PT", "benign"),
    TumorType("tubular_adenoma", "TA", "benign"),
    TumorType("ductal_carcinoma", "DC", "malignant"),
    TumorType("lobular_carcinoma", "LC", "malignant"),
    TumorType("mucinous_carcinoma", "MC", "malignant"),
    TumorType("papillary_carcinoma", "PC", "malignant"),
)
TUMOR_TYPE_NAMES = tuple(t.folder for t in TUMOR_TYPES)
TUMOR_TYPE_CODES = tuple(t.code for t in TUMOR_TYPES)
TUMOR_TYPES_BY_CODE = {t.code: t for t in TUMOR_TYPES}

# The class names of each classification target (a ClassLabel feature), in label order.
TARGET_CLASSES: Mapping[str, tuple[str, ...]] = {"label": CLASSES, "tumor_type": TUMOR_TYPE_NAMES}

# Images per tumour type code and magnification (in MAGNIFICATIONS order) and patient folders
# per type in the published archive (REFERENCE.md section 2; the official web page misstates
# some of these totals).
PUBLISHED_IMAGES: dict[str, tuple[int, int, int, int]] = {
    "A": (114, 113, 111, 106),
    "F": (253, 260, 264, 237),
    "PT": (109, 121, 108, 115),
    "TA": (149, 150, 140, 130),
    "DC": (864, 903, 896, 788),
    "LC": (156, 170, 163, 137),
    "MC": (205, 222, 196, 169),
    "PC": (145, 142, 135, 138),
}
PUBLISHED_PATIENTS = {"A": 4, "F": 10, "PT": 3, "TA": 7, "DC": 38, "LC": 5, "MC": 9, "PC": 6}

_NAME = r"SOB_([BM])_([A-Z]+)-(\d+)-([0-9A-Za-z]+)-(\d+)-(\d+)"
FILE_RE = re.compile(rf"^{_NAME}\.png$")
# The same name with any image suffix: a PNG of the archive converted to JPEG keeps what its name states.
IMAGE_NAME_RE = re.compile(rf"^{_NAME}\.[A-Za-z0-9]+$")
_SLIDE_DIGITS_RE = re.compile(r"^(\d+)")


def patient_folder(tumor: TumorType, year: int | str, slide: str) -> str:
    """The patient folder (`patient_id`), e.g. `SOB_B_A_14-22549AB`."""
    return f"SOB_{tumor.letter}_{tumor.code}_{year}-{slide}"


def image_name(tumor: TumorType, year: int | str, slide: str, magnification: str, seq: int) -> str:
    """The file name of an image, e.g. `SOB_B_A-14-22549AB-40-001.png`."""
    return f"SOB_{tumor.letter}_{tumor.code}-{year}-{slide}-{magnification.removesuffix('X')}-{seq:03d}.png"


def image_folders(tumor: TumorType, patient: str, magnification: str) -> tuple[str, ...]:
    """The folders below SLIDES_DIR that hold an image: class/SOB/type/patient/magnification."""
    return (tumor.class_name, "SOB", tumor.folder, patient, magnification)


def is_source_image(name: str) -> bool:
    """Only `SOB_*.png` are BreakHis images; the archive holds other files too."""
    return name.startswith("SOB") and name.endswith(".png")


def parse_filename(filename: str) -> tuple[dict[str, str] | None, str | None]:
    """Parses `.../<class>/SOB/<type>/<patient>/<mag>/<file>`; returns (fields, error).

    The file name alone decides the metadata, and every folder on the way must
    agree with it, so a misplaced file is an error rather than a silent label.
    """
    parts = filename.split("/")
    match = FILE_RE.match(parts[-1])
    if match is None:
        return None, "name does not match SOB_<B|M>_<TYPE>-<YY>-<SLIDE>-<MAG>-<SEQ>.png"
    fields, error = _name_fields(*match.groups()[:5])
    if error:
        return None, error
    expected = list(
        image_folders(TUMOR_TYPES_BY_CODE[fields["tumor_code"]], fields["patient_id"], fields["magnification"])
    )
    found = parts[-6:-1]
    if found != expected:
        return None, f"folders {'/'.join(found)} contradict the name (expected {'/'.join(expected)})"
    return fields, None


def parse_image_name(name: str) -> dict[str, str] | None:
    """What a BreakHis file name (any image suffix, any folder) states: tumour code, class name, patient,
    accession and magnification; None when it is not one."""
    match = IMAGE_NAME_RE.match(name.replace("\\", "/").split("/")[-1])
    if match is None:
        return None
    fields, error = _name_fields(*match.groups()[:5])
    if error:
        return None
    return {**fields, "class_name": TUMOR_TYPES_BY_CODE[fields["tumor_code"]].class_name}


def _name_fields(letter: str, code: str, year: str, slide: str, mag: str) -> tuple[dict[str, str] | None, str | None]:
    """The fields of a name's parts, or the error that makes them no BreakHis name."""
    if code not in TUMOR_TYPES_BY_CODE:
        return None, f"unknown tumour type code {code!r} (known: {', '.join(TUMOR_TYPES_BY_CODE)})"
    tumor = TUMOR_TYPES_BY_CODE[code]
    patient, magnification = patient_folder(tumor, year, slide), f"{mag}X"
    if letter != tumor.letter:
        return None, f"class letter {letter} contradicts type {code} ({tumor.class_name})"
    if magnification not in MAGNIFICATIONS:
        return None, f"unknown magnification {mag}"
    digits = _SLIDE_DIGITS_RE.match(slide)
    if digits is None:
        return None, f"slide id {slide!r} does not start with digits"
    fields = {
        "tumor_code": code,
        "magnification": magnification,
        "patient_id": patient,
        "accession": f"{year}-{digits.group(1)}",
    }
    return fields, None
