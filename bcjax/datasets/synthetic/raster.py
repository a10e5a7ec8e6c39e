"""Painting: batches of ellipses to an H&E-like RGB image (Beer-Lambert stain absorption).

Every shape is a batch of ellipses, rows (x, y, a, b, theta, ink), painted as
anti-aliased coverage; nuclei go on the full-resolution grid, the smooth
components (stroma, cytoplasm, lumens, mucin) on a quarter-resolution grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageChops

_EMPTY = np.zeros((0, 6), np.float32)


def ellipses(x, y, a, b, theta, ink) -> np.ndarray:
    """Rows (x, y, a, b, theta, ink) from columns broadcast against each other."""
    columns = np.broadcast_arrays(*(np.asarray(c, np.float32) for c in (x, y, a, b, theta, ink)))
    return np.stack(columns, axis=-1).reshape(-1, 6)


class Tissue(NamedTuple):
    """What one field of view holds, in world units; the levels are the background's stroma and mucin."""

    nuclei: np.ndarray
    epithelium: np.ndarray = _EMPTY
    lumen: np.ndarray = _EMPTY
    mucin: np.ndarray = _EMPTY
    stroma: np.ndarray = _EMPTY
    stroma_level: float = 0.4
    mucin_level: float = 0.0


@dataclasses.dataclass(frozen=True)
class Look:
    """Per-patient appearance: stain colours (optical density per unit) and cellularity."""

    hematoxylin: np.ndarray
    eosin: np.ndarray
    mucin: np.ndarray
    background: np.ndarray
    density: float
    nuclear_size: float


def _patch_radius(extent: np.ndarray) -> np.ndarray:
    """Patch half-size >= extent + 1 px: exact when small, else rounded up to powers of 1.3.

    Ellipses with equal patch sizes are drawn by one array op, so rounding the
    large ones keeps the number of distinct sizes (and Python-level loops) small.
    """
    rounded = np.ceil(1.3 ** np.ceil(np.log(extent + 1) / np.log(1.3)))
    return np.where(extent < 8, np.ceil(extent + 1), rounded).astype(np.int64)


def _stamp(shape: tuple[int, int], layers: Sequence[np.ndarray], scale: float) -> np.ndarray:
    """Sum of coverage x ink of each layer's ellipses on an (h, w) grid: (len(layers), h, w).

    World coordinates are multiplied by `scale`. Each ellipse is evaluated on a
    patch around its bounding box, on a canvas padded so that no index needs a
    bounds check. Coverage ramps from 1 to 0 over about a pixel at the edge (from
    the squared normalised radius r2, as 1 - r ~ (1 - r2) / 2 there). Sub-pixel
    ellipses are drawn at 0.7 px and dimmed by the area ratio, so small images
    keep their ink.
    """
    h, w = shape
    layer = np.repeat(np.arange(len(layers)), [len(e) for e in layers])
    x, y, a, b, theta, ink = (np.concatenate(layers) * np.float32([scale] * 4 + [1, 1])).T
    drawn_a, drawn_b = np.maximum(a, 0.7), np.maximum(b, 0.7)
    ink = ink * (a * b) / (drawn_a * drawn_b)
    cos, sin = np.cos(theta), np.sin(theta)
    reach_x = _patch_radius(np.hypot(drawn_a * cos, drawn_b * sin))
    reach_y = _patch_radius(np.hypot(drawn_a * sin, drawn_b * cos))
    visible = (x > -reach_x) & (x < w + reach_x) & (y > -reach_y) & (y < h + reach_y) & (ink > 0)
    pad = 2 * int(max(reach_x[visible].max(), reach_y[visible].max())) + 2 if visible.any() else 0
    width, height = w + 2 * pad, h + 2 * pad
    canvas = np.zeros(len(layers) * height * width, np.float32)
    # coverage x ink = clip(top - r2 * slope, 0, ink), with r2 = qa u^2 + qb u v + qc v^2 scaled by
    # slope; at least half the long axis for the ramp keeps the tips of long ellipses in the patch
    soft = np.maximum(np.minimum(drawn_a, drawn_b), np.maximum(drawn_a, drawn_b) / 2)
    slope, top = ink * soft / 2, ink * (soft / 2 + 0.5)
    inv_a, inv_b = drawn_a**-2, drawn_b**-2
    qa = slope * (cos**2 * inv_a + sin**2 * inv_b)
    qc = slope * (sin**2 * inv_a + cos**2 * inv_b)
    qb = slope * 2 * cos * sin * (inv_a - inv_b)
    x0, y0 = np.floor(x), np.floor(y)
    base = (layer * height + y0.astype(np.int64) + pad) * width + x0.astype(np.int64) + pad
    key = reach_x * 100_000 + reach_y
    for k in np.unique(key[visible]):
        i = np.flatnonzero(visible & (key == k))
        rx, ry = int(reach_x[i[0]]), int(reach_y[i[0]])
        u = np.arange(-rx, rx + 1, dtype=np.float32) + 0.5 - (x[i] - x0[i])[:, None]
        v = np.arange(-ry, ry + 1, dtype=np.float32) + 0.5 - (y[i] - y0[i])[:, None]
        c = (qa[i, None] * u * u)[:, None, :] + (qc[i, None] * v * v - top[i, None])[:, :, None]
        c += (qb[i, None] * u)[:, None, :] * v[:, :, None]
        np.negative(c, out=c)
        np.clip(c, 0, ink[i, None, None], out=c)
        patch = (np.arange(-ry, ry + 1)[:, None] * width + np.arange(-rx, rx + 1)).ravel()
        np.add.at(canvas, (base[i, None] + patch).ravel(), c.ravel())
    return canvas.reshape(len(layers), height, width)[:, pad : pad + h, pad : pad + w]


def _resize(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(field, np.float32))
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


_INK_LEVELS = 60  # palette entries per unit of nuclear ink
_GRAIN = 10  # mean grain, in palette entries, under every pixel


def paint(tissue: Tissue, look: Look, shape: tuple[int, int], scale: float, rng) -> np.ndarray:
    """Beer-Lambert H&E -> RGB uint8: transmission of the smooth parts x transmission of the nuclei.

    Stroma, cytoplasm, lumens and mucin are mixed at quarter resolution and
    upsampled; nuclear ink (with chromatin texture and a grain over every pixel,
    so images do not compress to nothing) goes through a 256-colour palette. Both
    are uint8 images multiplied by Pillow, which is what keeps this fast.
    """
    h, w = shape
    low = (-(-h // 4), -(-w // 4))
    lumen, epithelium, mucin, stroma = _stamp(
        low, [tissue.lumen, tissue.epithelium, tissue.mucin, tissue.stroma], scale * low[1] / w
    )
    lumen = np.minimum(lumen, 1)
    epithelium = np.minimum(epithelium, 1) * (1 - lumen)
    mucin = np.minimum(tissue.mucin_level + mucin, 1) * (1 - epithelium)
    stroma = np.minimum(tissue.stroma_level + stroma, 1)
    blotches = _resize(rng.random((max(2, h // 10), max(2, w // 10)), np.float32), low)
    stroma = stroma * (1 - lumen) * (1 - mucin) * (1 - epithelium) * (0.7 + 0.6 * blotches)
    wisps = _resize(rng.random((max(2, h // 16), max(2, w // 16)), np.float32), low)
    cytoplasm = 0.5 * look.eosin + 0.1 * look.hematoxylin
    od = (
        look.background
        + stroma[..., None] * look.eosin
        + epithelium[..., None] * cytoplasm
        + (mucin * (0.4 + 0.8 * wisps))[..., None] * look.mucin
    )
    smooth = Image.fromarray((np.exp(-od) * 255 + 0.5).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)

    grain = rng.random(shape, np.float32)
    grain *= 0.8
    grain += 0.6
    level = _stamp(shape, [tissue.nuclei], scale)[0]
    level *= _INK_LEVELS
    level += _GRAIN
    level *= grain
    nuclei = Image.fromarray(np.minimum(level, 255).astype(np.uint8))
    ink = (np.arange(256, dtype=np.float32)[:, None] - _GRAIN) / _INK_LEVELS
    nuclei.putpalette(np.clip(np.exp(-ink * look.hematoxylin) * 255 + 0.5, 0, 255).astype(np.uint8).tobytes())
    return np.asarray(ImageChops.multiply(smooth, nuclei.convert("RGB")))
