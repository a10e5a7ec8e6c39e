"""Synthetic BreakHis: a BreaKHis_v1-shaped tree of H&E-like tissue images.

The demo config and the tests need data that is laid out, named and quirked
exactly like the real archive (REFERENCE.md section 2), so that the TFDS builder
reads it unchanged, and whose classes differ the way the real ones do (nuclear
density, size, stain and arrangement), so that a model can learn them and a
patient-disjoint split still means something. Everything is a pure function of
the flags and the seed: two runs write byte-identical files and `.tar.gz`.

Modules: `layout` (patient folders, names, quirks), `raster` and `tissue` (the
images), `writer` (the tree and its tar), `cli` (`python -m bcjax.datasets.synthetic --help`).
Needs numpy and Pillow, and the BreakHis vocabulary of `bcjax.datasets.breakhis` (which imports
tensorflow_datasets, not TensorFlow).
"""

from bcjax.datasets.breakhis import ARCHIVE_NAME, TOP_DIR

from .layout import COPIES, IMAGE_SIZE, MAGNIFICATION_POWERS, QUIRK_FOLDERS, Patient, plan_patients
from .tissue import render_image
from .writer import SyntheticSummary, write_breakhis_tree

__all__ = [
    "ARCHIVE_NAME",
    "COPIES",
    "IMAGE_SIZE",
    "MAGNIFICATION_POWERS",
    "QUIRK_FOLDERS",
    "TOP_DIR",
    "Patient",
    "SyntheticSummary",
    "plan_patients",
    "render_image",
    "write_breakhis_tree",
]
