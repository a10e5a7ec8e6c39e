"""The BreakHis TFDS builder; importing this package registers `breakhis` with TFDS.

Standalone on purpose: it imports nothing else from bcjax, so another project can
`import bcjax.datasets.breakhis` and then call `tfds.builder('breakhis')`.
"""

from .breakhis_dataset_builder import BreakHisBuildError, Builder

__all__ = ["BreakHisBuildError", "Builder"]
