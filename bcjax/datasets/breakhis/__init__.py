"""The BreakHis TFDS builder and its vocabulary; importing this package registers `breakhis` with TFDS.

Standalone on purpose: it imports nothing else from bcjax, so another project can copy it and
`import bcjax.datasets.breakhis`, then call `tfds.builder('breakhis')`. Code that needs the
vocabulary without TFDS reads `bcjax.datasets.breakhis_vocabulary` (breakhis_common.py without
this `__init__`) instead.
"""

from .breakhis_common import (
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
