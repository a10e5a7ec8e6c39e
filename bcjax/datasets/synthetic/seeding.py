"""Random streams keyed by the seed and a purpose, so that no stream shifts when another changes."""

from __future__ import annotations

import zlib

import numpy as np


def keyed_rng(seed: int, purpose: str) -> np.random.Generator:
    """The stream of `purpose` (e.g. 'slides', or an image's content key) under `seed`."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])
