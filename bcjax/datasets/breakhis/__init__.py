"""The BreakHis TFDS builder and its vocabulary; importing this package registers `breakhis` with TFDS.

Standalone on purpose: it imports nothing else from bcjax but the vocabulary
(`bcjax.datasets.breakhis_vocabulary`, which imports nothing), so another project can
`import bcjax.datasets.breakhis` and then call `tfds.builder('breakhis')`. Code that needs the
vocabulary without TFDS imports that module instead.
"""

from ..breakhis_vocabulary import (
    ARCHIVE_NAME,
    CLASS_LETTERS,
    CLASSES,
    FILE_RE,
    IMAGE_NAME_RE,
    MAGNIFICATIONS,
    PUBLISHED_IMAGES,
    PUBLISHED_PATIENTS,
    SLIDES_DIR,
    TARGET_CLASSES,
    TOP_DIR,
    TUMOR_TYPE_CODES,
    TUMOR_TYPE_NAMES,
    TUMOR_TYPES,
    TUMOR_TYPES_BY_CODE,
    TumorType,
    image_folders,
    image_name,
    is_source_image,
    parse_filename,
    parse_image_name,
    patient_folder,
)
from .breakhis_dataset_builder import BreakHisBuildError, Builder

__all__ = [
    "ARCHIVE_NAME",
    "CLASS_LETTERS",
    "CLASSES",
    "FILE_RE",
    "IMAGE_NAME_RE",
    "MAGNIFICATIONS",
    "PUBLISHED_IMAGES",
    "PUBLISHED_PATIENTS",
    "SLIDES_DIR",
    "TARGET_CLASSES",
    "TOP_DIR",
    "TUMOR_TYPE_CODES",
    "TUMOR_TYPE_NAMES",
    "TUMOR_TYPES",
    "TUMOR_TYPES_BY_CODE",
    "BreakHisBuildError",
    "Builder",
    "TumorType",
    "image_folders",
    "image_name",
    "is_source_image",
    "parse_filename",
    "parse_image_name",
    "patient_folder",
]
