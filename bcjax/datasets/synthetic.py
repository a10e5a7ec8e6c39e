"""Synthetic BreakHis: a BreaKHis_v1-shaped tree of H&E-like tissue images.

The demo config and the tests need data that is laid out, named and quirked
exactly like the real archive (REFERENCE.md section 2), so that the TFDS builder
reads it unchanged, and whose classes differ the way the real ones do (nuclear
density, size, stain and arrangement), so that a model can learn them and a
patient-disjoint split still means something. Everything is a pure function of
the flags and the seed: two runs write byte-identical files and `.tar.gz`.

Needs only numpy and Pillow.  `python -m bcjax.datasets.synthetic --help`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import re
import shutil
import struct
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageChops

TOP_DIR = "BreaKHis_v1"
ARCHIVE_NAME = "BreaKHis_v1.tar.gz"
MAGNIFICATIONS = (40, 100, 200, 400)
IMAGE_SIZE = (700, 460)  # width, height of most real images
SHORT_HEIGHT = 456  # a few real images are 700x456
SHORT_FRACTION = 0.03


@dataclasses.dataclass(frozen=True)
class TumourType:
    """One of the 8 BreakHis tumour types and its patient count in the real archive."""

    code: str
    dir_name: str
    malignant: bool
    full_patients: int

    @property
    def class_name(self) -> str:
        return "malignant" if self.malignant else "benign"

    @property
    def letter(self) -> str:
        return "M" if self.malignant else "B"


TUMOUR_TYPES = (
    TumourType("A", "adenosis", False, 4),
    TumourType("F", "fibroadenoma", False, 10),
    TumourType("PT", "phyllodes_tumor", False, 3),
    TumourType("TA", "tubular_adenoma", False, 7),
    TumourType("DC", "ductal_carcinoma", True, 38),
    TumourType("LC", "lobular_carcinoma", True, 5),
    TumourType("MC", "mucinous_carcinoma", True, 9),
    TumourType("PC", "papillary_carcinoma", True, 6),
)
TYPES_BY_CODE = {t.code: t for t in TUMOUR_TYPES}

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


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Patient:
    """One patient folder; `source` is the type whose images it holds (another one in COPIES)."""

    tumour: TumourType
    year: int
    slide: str
    source: str

    @property
    def dir_name(self) -> str:
        return f"SOB_{self.tumour.letter}_{self.tumour.code}_{self.year}-{self.slide}"

    @property
    def content_id(self) -> str:
        """Seeds the rendering: equal for a folder and its copy, so their bytes are equal."""
        return f"{self.source}_{self.year}-{self.slide}"

    def file_name(self, magnification: int, seq: int) -> str:
        t = self.tumour
        return f"SOB_{t.letter}_{t.code}-{self.year}-{self.slide}-{magnification}-{seq:03d}.png"

    def folder(self, root: Path) -> Path:
        t = self.tumour
        return root / "histology_slides" / "breast" / t.class_name / "SOB" / t.dir_name / self.dir_name


@dataclasses.dataclass(frozen=True)
class _ImageJob:
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
    rng = np.random.default_rng([seed, _crc("slides")])
    used_cores = {re.match(r"\d+", slide).group() for _, _, slide in QUIRK_FOLDERS}
    plan = []
    for tumour in TUMOUR_TYPES:
        slides = [(year, slide) for code, year, slide in QUIRK_FOLDERS if code == tumour.code]
        wanted = tumour.full_patients if patients == "full" else max(patients, len(slides))
        while len(slides) < wanted:  # the others get unique accession cores, so no new siblings
            core = str(rng.integers(2000, 30000))
            if core not in used_cores:
                used_cores.add(core)
                suffix = _SUFFIXES[rng.integers(len(_SUFFIXES))] if rng.random() < 0.25 else ""
                slides.append((14, core + suffix))
        for year, slide in slides:
            plan.append(Patient(tumour, year, slide, COPIES.get((tumour.code, year, slide), tumour.code)))
    return plan


def _plan_images(
    patients: Sequence[Patient], magnifications: Sequence[int], per_magnification: int, seed: int
) -> list[_ImageJob]:
    """Every image to write; ~3% (at least one) are short, chosen by content so copies agree."""
    jobs = [
        _ImageJob(p, m, s, short=False)
        for p in patients
        for m in magnifications
        for s in range(1, per_magnification + 1)
    ]
    contents = sorted({job.content_key for job in jobs})
    rng = np.random.default_rng([seed, _crc("short")])
    count = max(1, round(SHORT_FRACTION * len(contents)))
    short = {contents[i] for i in rng.choice(len(contents), count, replace=False)}
    return [dataclasses.replace(job, short=job.content_key in short) for job in jobs]


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


# ----------------------------------------------------------------- tissue drawing
#
# Geometry lives in "world" units (pixels of a 700-wide 40X image); an image at
# magnification m and width w sees it scaled by w/700 * (m/40)**0.7, so nuclei are
# 5x larger at 400X than at 40X (10x in reality; 0.7 keeps 40X cheap to draw).
# Every shape is a batch of ellipses, rows (x, y, a, b, theta, ink), painted as
# anti-aliased coverage; nuclei go on the full-resolution grid, the smooth
# components (stroma, cytoplasm, lumens, mucin) on a quarter-resolution grid.

_ZOOM_EXPONENT = 0.7
_EMPTY = np.zeros((0, 6), np.float32)


def _ellipses(x, y, a, b, theta, ink) -> np.ndarray:
    """Rows (x, y, a, b, theta, ink) from columns broadcast against each other."""
    columns = np.broadcast_arrays(*(np.asarray(c, np.float32) for c in (x, y, a, b, theta, ink)))
    return np.stack(columns, axis=-1).reshape(-1, 6)


class _Tissue(NamedTuple):
    """What one field of view holds, in world units; the levels are the background's stroma and mucin."""

    nuclei: np.ndarray
    epithelium: np.ndarray = _EMPTY
    lumen: np.ndarray = _EMPTY
    mucin: np.ndarray = _EMPTY
    stroma: np.ndarray = _EMPTY
    stroma_level: float = 0.4
    mucin_level: float = 0.0


@dataclasses.dataclass(frozen=True)
class _Look:
    """Per-patient appearance: stain colours (optical density per unit) and cellularity."""

    hematoxylin: np.ndarray
    eosin: np.ndarray
    mucin: np.ndarray
    background: np.ndarray
    density: float
    nuclear_size: float


def _patient_look(seed: int, content_id: str) -> _Look:
    """Stain hue/intensity and density jitter shared by all images of one patient."""
    rng = np.random.default_rng([seed, _crc("look:" + content_id)])

    def stain(base: tuple[float, float, float], hue: float) -> np.ndarray:
        vector = np.asarray(base) * rng.uniform(1 - hue, 1 + hue, 3)
        return (vector * rng.uniform(0.85, 1.15)).astype(np.float32)

    return _Look(
        hematoxylin=stain((1.05, 1.35, 0.5), 0.12),
        eosin=stain((0.12, 0.95, 0.42), 0.15),
        mucin=stain((0.42, 0.26, 0.12), 0.1),
        background=rng.uniform(0.02, 0.06, 3).astype(np.float32),
        density=float(rng.uniform(0.85, 1.15)),
        nuclear_size=float(rng.uniform(0.9, 1.1)),
    )


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


def _paint(tissue: _Tissue, look: _Look, shape: tuple[int, int], scale: float, rng) -> np.ndarray:
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


def _grid(rng, view, spacing: float, jitter: float = 0.35, margin: float = 0.0):
    """Hexagonal grid of points over the view (plus margin), jittered by jitter*spacing."""
    vw, vh = view
    xs = np.arange(-margin - rng.uniform(0, spacing), vw + margin + spacing, spacing)
    ys = np.arange(-margin - rng.uniform(0, spacing), vh + margin + spacing, spacing * 0.87)
    gx, gy = np.meshgrid(xs, ys)
    gx[1::2] += spacing / 2
    gx = gx.ravel() + rng.uniform(-jitter, jitter, gx.size) * spacing
    gy = gy.ravel() + rng.uniform(-jitter, jitter, gy.size) * spacing
    return gx, gy


def _scatter(rng, view, density: float, margin: float = 0.0):
    """Uniform random points, `density` per square world unit."""
    vw, vh = view[0] + 2 * margin, view[1] + 2 * margin
    n = rng.poisson(density * vw * vh)
    return rng.uniform(0, vw, n) - margin, rng.uniform(0, vh, n) - margin


def _waves(rng, x, y, wavelength: float, n: int = 3) -> np.ndarray:
    """A smooth random field (sum of n plane waves, range [-n, n]) evaluated at points."""
    angle = rng.uniform(0, np.pi, n)
    k = 2 * np.pi / wavelength * rng.uniform(0.7, 1.3, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    return np.cos(np.multiply.outer(x, k * np.cos(angle)) + np.multiply.outer(y, k * np.sin(angle)) + phase).sum(-1)


def _curves(rng, view, count: float, length, amplitude, wavelength, step: float, angle=None):
    """Points every `step` along meandering lines across the view.

    Returns x, y, tangent angle and the relative position along each line (0..1).
    `angle` fixes a common direction (jittered), otherwise each line picks its own.
    """
    n = max(1, rng.poisson(count))
    vw, vh = view
    cx, cy = rng.uniform(0, vw, n), rng.uniform(0, vh, n)
    direction = rng.uniform(0, np.pi, n) if angle is None else angle + rng.normal(0, 0.2, n)
    lengths = rng.uniform(*length, n)
    amp, lam = rng.uniform(*amplitude, n), rng.uniform(*wavelength, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    s = np.arange(0, lengths.max(), step)[None, :] - lengths[:, None] / 2
    keep = np.abs(s) <= lengths[:, None] / 2
    k = (2 * np.pi / lam)[:, None]
    offset = amp[:, None] * np.sin(k * s + phase[:, None])
    slope = amp[:, None] * k * np.cos(k * s + phase[:, None])
    d, nrm = direction[:, None], direction[:, None] + np.pi / 2
    x = cx[:, None] + s * np.cos(d) + offset * np.cos(nrm)
    y = cy[:, None] + s * np.sin(d) + offset * np.sin(nrm)
    tangent = d + np.arctan(slope)
    along = s / lengths[:, None] + 0.5
    return x[keep], y[keep], tangent[keep], along[keep]


def _ring(cx, cy, ra, rb, phi, spacing: float, rng):
    """Points about `spacing` apart on ellipse outlines, with the outward normal angle at each."""
    perimeter = np.pi * (3 * (ra + rb) - np.sqrt((3 * ra + rb) * (ra + 3 * rb)))
    n = np.maximum(4, np.round(perimeter / spacing)).astype(np.int64)
    owner = np.repeat(np.arange(n.size), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    t = 2 * np.pi * k / n[owner] + rng.uniform(0, 2 * np.pi, n.size)[owner]
    a, b, p = ra[owner], rb[owner], phi[owner]
    ex, ey = a * np.cos(t), b * np.sin(t)
    x = cx[owner] + ex * np.cos(p) - ey * np.sin(p)
    y = cy[owner] + ex * np.sin(p) + ey * np.cos(p)
    return x, y, np.arctan2(a * np.sin(t), b * np.cos(t)) + p


def _nuclei(rng, x, y, radius: float, *, elongation=(1.0, 1.3), theta=None, ink=(0.9, 1.1), pleo=0.08):
    """Nuclei at points: size spread `pleo` (log-normal), aspect in `elongation`, ink in `ink`."""
    n = np.size(x)
    r = radius * rng.lognormal(0, pleo, n)
    aspect = rng.uniform(*elongation, n)
    theta = rng.uniform(0, np.pi, n) if theta is None else theta
    jx, jy = rng.normal(0, 0.15 * radius, (2, n))
    return _ellipses(x + jx, y + jy, r * np.sqrt(aspect), r / np.sqrt(aspect), theta, rng.uniform(*ink, n))


def _spindles(rng, view, density: float, look: _Look, angle=None) -> np.ndarray:
    """Fibroblast nuclei of the stroma: thin, elongated, along `angle(x, y)` when given."""
    x, y = _scatter(rng, view, density * look.density, margin=5)
    theta = None if angle is None else angle(x, y) + rng.normal(0, 0.15, x.size)
    return _nuclei(rng, x, y, 1.7 * look.nuclear_size, elongation=(5, 9), theta=theta, ink=(0.8, 1.1))


def _inside(ellipses: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each point lies inside any of the ellipses."""
    ex, ey, a, b, theta = (column[:, None] for column in ellipses[:, :5].T)
    u, v = x[None, :] - ex, y[None, :] - ey
    cos, sin = np.cos(theta), np.sin(theta)
    return (((u * cos + v * sin) / a) ** 2 + ((v * cos - u * sin) / b) ** 2 < 1).any(axis=0)


def _collagen(rng, view, level: float) -> np.ndarray:
    """Wavy collagen bundles: long faint eosin streaks along a flow field, as strong as the stroma."""
    x, y = _scatter(rng, view, 1 / 200, margin=20)
    return _ellipses(
        x,
        y,
        rng.uniform(10, 22, x.size),
        rng.uniform(1.2, 2.5, x.size),
        _flow(rng, 90)(x, y),
        level * rng.uniform(0.3, 0.8, x.size),
    )


def _glands(rng, cx, cy, radius, aspect, nuclear_radius: float, ink, lumen_gap: float):
    """Glands: radial epithelial nuclei in a ring, flat myoepithelial nuclei outside, central lumen."""
    phi = rng.uniform(0, np.pi, cx.size)
    ra, rb = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    ex, ey, normal = _ring(cx, cy, ra - 1.2 * nuclear_radius, rb - 1.2 * nuclear_radius, phi, 2.1 * nuclear_radius, rng)
    mx, my, m_normal = _ring(cx, cy, ra + 0.3, rb + 0.3, phi, 5 * nuclear_radius, rng)
    nuclei = np.concatenate(
        [
            _nuclei(rng, ex, ey, nuclear_radius, elongation=(1.2, 1.6), theta=normal, ink=ink),
            _nuclei(rng, mx, my, 0.8 * nuclear_radius, elongation=(3, 4), theta=m_normal + np.pi / 2, ink=(0.8, 1.0)),
        ]
    )
    gap = lumen_gap * nuclear_radius
    lumen = _ellipses(cx, cy, np.maximum(ra - gap, 0), np.maximum(rb - gap, 0), phi, 1)
    return nuclei, _ellipses(cx, cy, ra + 0.8, rb + 0.8, phi, 1), lumen


def _lined(rng, x, y, tangent, half_width, step: float, nuclear_radius: float, *, rows: int, ink, elongation):
    """Epithelium lining both sides of a channel (cleft, slit, papillary core) sampled along a curve.

    Nuclei stand perpendicular to the channel (cuboidal to columnar by `elongation`), `rows`
    deep; returns the nuclei and the epithelial band.
    """
    normal = tangent + np.pi / 2
    nuclei = []
    for side in (-1, 1):
        for row in range(rows):
            offset = side * (half_width + nuclear_radius * (1.2 + 2.2 * row))
            keep = rng.random(x.size) < 0.9
            nuclei.append(
                _nuclei(
                    rng,
                    (x + offset * np.cos(normal))[keep],
                    (y + offset * np.sin(normal))[keep],
                    nuclear_radius,
                    elongation=elongation,
                    theta=normal[keep],
                    ink=ink,
                )
            )
    band = half_width + nuclear_radius * (0.4 + 2.2 * rows)
    return np.concatenate(nuclei), _ellipses(x, y, step, band, tangent, 1)


def _halo(nuclei: np.ndarray, grow: float, ink: float) -> np.ndarray:
    """Cytoplasm around tumour cells: each nucleus grown by `grow`, with a flat `ink`."""
    return nuclei * np.float32([1, 1, grow, grow, 1, 0]) + np.float32([0, 0, 0, 0, 0, ink])


def _flow(rng, scale: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A smoothly turning direction field for streaming stroma."""
    base = rng.uniform(0, np.pi)
    angle, phase = rng.uniform(0, np.pi, 2), rng.uniform(0, 2 * np.pi, 2)
    return lambda x, y: (
        base
        + 0.7
        * np.sin((x * np.cos(angle[0]) + y * np.sin(angle[0])) / scale + phase[0])
        * np.cos((x * np.cos(angle[1]) + y * np.sin(angle[1])) / scale + phase[1])
    )


# One recipe per tumour type: (rng, view size in world units, look) -> _Tissue.


def _adenosis(rng, view, look) -> _Tissue:
    """Lobules of crowded small glands with myoepithelium, small regular nuclei, pale stroma."""
    r = 2.3 * look.nuclear_size
    cx, cy = _grid(rng, view, 21 / look.density, jitter=0.3, margin=15)
    lobule = _waves(rng, cx, cy, 260) > -0.6
    cx, cy = cx[lobule], cy[lobule]
    radius = rng.uniform(7.5, 10, cx.size)
    nuclei, epithelium, lumen = _glands(rng, cx, cy, radius, rng.uniform(1, 2.2, cx.size), r, (0.85, 1.05), 2.4)
    stroma = _spindles(rng, view, 0.002, look)
    return _Tissue(np.concatenate([nuclei, stroma]), epithelium, lumen, stroma_level=0.3)


def _fibroadenoma(rng, view, look) -> _Tissue:
    """Streaming, loose (slightly myxoid) stroma around compressed slit-like ducts."""
    flow = _flow(rng, 60)
    x, y, tangent, _ = _curves(rng, view, view[0] * view[1] / 120**2, (40, 110), (5, 14), (60, 110), 2.5)
    ducts, epithelium = _lined(
        rng, x, y, tangent, 1.0, 2.5, 2.2 * look.nuclear_size, rows=2, ink=(0.85, 1.05), elongation=(1.0, 1.4)
    )
    lumen = _ellipses(x, y, 2.5, 0.9, tangent, 1)
    stroma = _spindles(rng, view, 0.009, look, flow)
    return _Tissue(np.concatenate([ducts, stroma]), epithelium, lumen, stroma_level=0.32, mucin_level=0.25)


def _phyllodes(rng, view, look) -> _Tissue:
    """Leaf-like clefts lined by epithelium in hypercellular stroma that condenses around them."""
    step = 2.5
    x, y, tangent, along = _curves(rng, view, view[0] * view[1] / 230**2, (160, 420), (15, 40), (90, 170), step)
    half = 1.0 + 5.0 * np.abs(np.sin(np.pi * along * rng.integers(2, 5)))
    nuclei, epithelium = _lined(
        rng, x, y, tangent, half, step, 2.2 * look.nuclear_size, rows=2, ink=(0.85, 1.05), elongation=(1.0, 1.4)
    )
    lumen = _ellipses(x, y, step, half, tangent, 1)
    near = rng.random(x.size * 3) < 0.9
    offset = (np.repeat(half, 3) + rng.uniform(8, 22, x.size * 3)) * rng.choice([-1, 1], x.size * 3)
    normal = np.repeat(tangent, 3) + np.pi / 2
    condensed = _nuclei(
        rng,
        (np.repeat(x, 3) + offset * np.cos(normal))[near],
        (np.repeat(y, 3) + offset * np.sin(normal))[near],
        1.8 * look.nuclear_size,
        elongation=(3, 5),
        theta=np.repeat(tangent, 3)[near],
        ink=(0.9, 1.15),
    )
    stroma = _spindles(rng, view, 0.012, look, _flow(rng, 80))
    return _Tissue(np.concatenate([nuclei, condensed, stroma]), epithelium, lumen, stroma_level=0.42)


def _tubular(rng, view, look) -> _Tissue:
    """Closely packed small round tubules with open lumens, uniform nuclei and scant stroma."""
    r = 2.0 * look.nuclear_size
    cx, cy = _grid(rng, view, 25 / look.density, jitter=0.12, margin=12)
    radius = rng.uniform(9, 10.5, cx.size)
    nuclei, epithelium, lumen = _glands(rng, cx, cy, radius, rng.uniform(1, 1.3, cx.size), r, (0.9, 1.1), 2.2)
    return _Tissue(nuclei, epithelium, lumen, stroma_level=0.35)


def _ductal(rng, view, look) -> _Tissue:
    """Sheets and nests of crowded, large, pleomorphic, hyperchromatic nuclei; desmoplastic stroma."""
    r = 3.5 * look.nuclear_size
    x, y = _grid(rng, view, 2.4 * r / look.density, jitter=0.25, margin=8)
    nest = _waves(rng, x, y, 170) > -1.0
    cells = _nuclei(rng, x[nest], y[nest], r, elongation=(1, 1.6), ink=(1.1, 1.6), pleo=0.25)
    cytoplasm = _halo(cells, 2.1, 1.0)
    lx, ly = _scatter(rng, view, 0.002)
    lymphocytes = _nuclei(rng, lx, ly, 1.5, ink=(1.3, 1.5))
    stroma = _spindles(rng, view, 0.003, look)
    return _Tissue(np.concatenate([cells, lymphocytes, stroma]), cytoplasm, stroma_level=0.5)


def _lobular(rng, view, look) -> _Tissue:
    """Small uniform discohesive cells in single-file lines through dense pink stroma."""
    r = 2.3 * look.nuclear_size
    step = 2.5 * r
    x, y, tangent, _ = _curves(
        rng,
        view,
        (view[0] + view[1]) / 22 * look.density,
        (0.6 * view[0], 1.4 * view[0]),
        (3, 10),
        (60, 130),
        step,
        angle=rng.uniform(0, np.pi),
    )
    keep = rng.random(x.size) < 0.85
    x, y, tangent = x[keep], y[keep], tangent[keep]
    sx, sy = _scatter(rng, view, 0.003 * look.density)
    cells = np.concatenate(
        [
            _nuclei(rng, x, y, r, elongation=(1.1, 1.4), theta=tangent, ink=(1.0, 1.25)),
            _nuclei(rng, sx, sy, r, ink=(1.0, 1.25)),
        ]
    )
    cytoplasm = _halo(cells, 1.7, 0.8)
    stroma = _spindles(rng, view, 0.002, look)
    return _Tissue(np.concatenate([cells, stroma]), cytoplasm, stroma_level=0.55)


def _mucinous(rng, view, look) -> _Tissue:
    """Pale blue mucin pools with small floating clusters of tumour cells, thin septa between."""
    r = 2.8 * look.nuclear_size
    px, py = _grid(rng, view, 140, jitter=0.45, margin=80)
    pools = _ellipses(
        px, py, rng.uniform(50, 95, px.size), rng.uniform(40, 75, px.size), rng.uniform(0, np.pi, px.size), 1
    )
    pool = np.repeat(np.arange(px.size), rng.poisson(2.5 * look.density, px.size))  # a few clusters each
    angle, dist = rng.uniform(0, 2 * np.pi, pool.size), rng.uniform(0, 45, pool.size)
    kx, ky = px[pool] + dist * np.cos(angle), py[pool] + dist * np.sin(angle)
    cells_per_cluster = rng.integers(5, 22, kx.size)
    radius = np.sqrt(cells_per_cluster) * 1.4 * r
    cluster = np.repeat(np.arange(kx.size), cells_per_cluster)
    angle, dist = rng.uniform(0, 2 * np.pi, cluster.size), np.sqrt(rng.random(cluster.size)) * radius[cluster]
    cells = _nuclei(
        rng, kx[cluster] + dist * np.cos(angle), ky[cluster] + dist * np.sin(angle), r, ink=(1.0, 1.3), pleo=0.15
    )
    cytoplasm = _ellipses(kx, ky, radius + 2.5 * r, radius + 2 * r, 0, 1)
    stroma = _spindles(rng, view, 0.003, look)
    stroma = stroma[~_inside(pools, stroma[:, 0], stroma[:, 1])]
    return _Tissue(np.concatenate([cells, stroma]), cytoplasm, mucin=pools, stroma_level=0.5)


def _papillary(rng, view, look) -> _Tissue:
    """Finger-like papillae: thin fibrovascular cores lined by stratified columnar cells, in open space."""
    step = 2.6
    x, y, tangent, _ = _curves(rng, view, view[0] * view[1] / 95**2, (70, 200), (5, 16), (60, 120), step)
    core = rng.uniform(2.5, 4.5)
    nuclei, epithelium = _lined(
        rng, x, y, tangent, core, step, 2.6 * look.nuclear_size, rows=2, ink=(1.15, 1.45), elongation=(1.6, 2.4)
    )
    cores = _ellipses(x, y, step, core, tangent, 0.5)
    keep = rng.random(x.size) < 0.3
    capillary = _nuclei(rng, x[keep], y[keep], 1.6, elongation=(5, 8), theta=tangent[keep])
    return _Tissue(np.concatenate([nuclei, capillary]), epithelium, stroma=cores, stroma_level=0.04)


_RECIPES: dict[str, Callable[..., _Tissue]] = {
    "A": _adenosis,
    "F": _fibroadenoma,
    "PT": _phyllodes,
    "TA": _tubular,
    "DC": _ductal,
    "LC": _lobular,
    "MC": _mucinous,
    "PC": _papillary,
}


def render_image(
    code: str, magnification: int, *, size: tuple[int, int] = IMAGE_SIZE, seed: int = 0, patient: str = "sample"
) -> np.ndarray:
    """One synthetic (height, width, 3) uint8 image of tumour type `code`; for previews and tests.

    Images of one `patient` share a stain and cellularity; `seed` picks both them and the field.
    """
    look = _patient_look(seed, f"{code}:{patient}")
    rng = np.random.default_rng([seed, _crc(f"{code}:{patient}-{magnification}")])
    return _render(code, magnification, size, look, rng)


def _render(code: str, magnification: int, size: tuple[int, int], look: _Look, rng) -> np.ndarray:
    width, height = size
    scale = width / IMAGE_SIZE[0] * (magnification / 40) ** _ZOOM_EXPONENT
    view = (width / scale, height / scale)
    tissue = _RECIPES[code](rng, view, look)
    tissue = tissue._replace(stroma=np.concatenate([tissue.stroma, _collagen(rng, view, tissue.stroma_level)]))
    return _paint(tissue, look, (height, width), scale, rng)


def _png(image: np.ndarray) -> bytes:
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


# ------------------------------------------------------------------ tree writing


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
            [(t.code, [t]) for t in TUMOUR_TYPES]
            + [(name, [t for t in TUMOUR_TYPES if t.class_name == name]) for name in ("benign", "malignant")]
            + [("all", list(TUMOUR_TYPES))]
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
    magnifications: Sequence[int] = MAGNIFICATIONS,
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
    mags = _check_magnifications(magnifications)
    width, height = image_size
    if width < 8 or height < 8:
        raise ValueError(f"image_size must be at least 8x8, got {width}x{height}")
    if images_per_magnification < 1:
        raise ValueError(f"images_per_magnification must be >= 1, got {images_per_magnification}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    start = time.perf_counter()
    plan = plan_patients(patients, seed)
    out_dir = Path(out_dir)
    root, tar_path = out_dir / TOP_DIR, out_dir / ARCHIVE_NAME
    if root.exists() or tar_path.exists():
        if not overwrite:
            raise FileExistsError(f"{root} or {tar_path} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(root, ignore_errors=True)
        tar_path.unlink(missing_ok=True)

    jobs = _plan_images(plan, mags, images_per_magnification, seed)
    short_size = (width, min(height - 1, round(height * SHORT_HEIGHT / IMAGE_SIZE[1])))
    written = 0
    for job in _with_progress(jobs, progress, start):
        look = _patient_look(seed, job.patient.content_id)
        rng = np.random.default_rng([seed, _crc(job.content_key)])
        image = _render(job.patient.source, job.magnification, short_size if job.short else image_size, look, rng)
        folder = job.patient.folder(root) / f"{job.magnification}X"
        folder.mkdir(parents=True, exist_ok=True)
        written += _write(folder / job.patient.file_name(job.magnification, job.seq), _png(image))
    written += _write_extras(root, plan[0], mags[0], seed, patients)
    if tar:
        written += _write_tar(root, tar_path)

    counts = {t.code: {m: 0 for m in mags} for t in TUMOUR_TYPES}
    for job in jobs:
        counts[job.patient.tumour.code][job.magnification] += 1
    return SyntheticSummary(
        root=root,
        tar_path=tar_path if tar else None,
        patients=dict(collections.Counter(p.tumour.code for p in plan)),
        counts=counts,
        num_images=len(jobs),
        short_images=sum(job.short for job in jobs),
        bytes_written=written,
        seconds=time.perf_counter() - start,
        quirks=(
            *_folder_quirks(),
            f"{sum(j.short for j in jobs)} images {short_size[0]}x{short_size[1]} instead of {width}x{height}",
            "non-SOB files: README.txt, histology_slides/.DS_Store, a Thumbs.db and an overview.png "
            f"in {plan[0].dir_name}/{mags[0]}X",
        ),
    )


def _folder_quirks() -> list[str]:
    """Readable lines for COPIES, the suffix siblings and the odd years of QUIRK_FOLDERS."""
    lines = [
        f"{code} {year}-{slide} holds the images of {source} {year}-{slide}, byte for byte"
        for (code, year, slide), source in COPIES.items()
    ]
    groups = collections.defaultdict(list)
    for code, year, slide in QUIRK_FOLDERS:
        groups[year, re.match(r"\d+", slide).group()].append(f"{code} {year}-{slide}")
    siblings = [" / ".join(g) for g in groups.values() if len({name.split()[1] for name in g}) > 1]
    lines.append("suffix siblings sharing an accession core, some across types: " + "; ".join(siblings))
    lines += [f"year {year}: {code} {year}-{slide}" for code, year, slide in QUIRK_FOLDERS if year != 14]
    return lines


def _check_magnifications(magnifications: Sequence[int]) -> tuple[int, ...]:
    mags = tuple(sorted(set(int(m) for m in magnifications)))
    if not mags or not set(mags) <= set(MAGNIFICATIONS):
        raise ValueError(f"magnifications must be a non-empty subset of {MAGNIFICATIONS}, got {magnifications}")
    return mags


def _with_progress(jobs: list[_ImageJob], enabled: bool, start: float) -> Iterator[_ImageJob]:
    """Yields the jobs, printing a line to stderr at every 10% when `enabled`."""
    marks = {round(len(jobs) * k / 10) for k in range(1, 11)}
    for i, job in enumerate(jobs, 1):
        yield job
        if enabled and i in marks:
            rate = i / max(time.perf_counter() - start, 1e-9)
            print(f"synthetic: {i}/{len(jobs)} images ({100 * i // len(jobs)}%), {rate:.0f} img/s", file=sys.stderr)


def _write(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return len(data)


def _write_extras(root: Path, patient: Patient, magnification: int, seed: int, patients: str | int) -> int:
    """The non-image files of the real archive that a loader must skip (plus a non-SOB PNG)."""
    folder = patient.folder(root) / f"{magnification}X"
    readme = (
        f"Synthetic BreakHis-shaped data written by bcjax.datasets.synthetic (seed={seed}, "
        f"patients={patients}).\nNot real tissue: for demos and tests only. Images: "
        "SOB_<B|M>_<type>-<YY>-<slide>-<magnification>-<seq>.png\n"
    )
    thumbnail = np.full((23, 35, 3), (236, 200, 226), np.uint8)
    return (
        _write(root / "README.txt", readme.encode())
        + _write(root / "histology_slides" / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(56))
        + _write(folder / "Thumbs.db", bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504))
        + _write(folder / "overview.png", _png(thumbnail))
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


# ------------------------------------------------------------------------- CLI


def _patients_arg(text: str) -> str | int:
    if text == "full":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'full' or an integer >= 1, got {text!r}")


def _size_arg(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 700x460, got {text!r}")
    return int(match[1]), int(match[2])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bcjax.datasets.synthetic",
        description=(
            "Write a BreakHis-shaped tree of synthetic H&E-like images, OUT/BreaKHis_v1/histology_slides/breast/"
            "{benign,malignant}/SOB/<type>/<patient>/<mag>X/SOB_*.png, with the real archive's naming quirks "
            "(DC/LC twin slide 14-13412, suffix siblings, year-15 slide, 700x456 images, non-image files). "
            "Same flags and seed give byte-identical files."
        ),
        epilog="example: python -m bcjax.datasets.synthetic --out /tmp/breakhis --patients 2 "
        "--images-per-magnification 4 --image-size 175x115 --tar",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder to write BreaKHis_v1/ (and the .tar.gz) into"
    )
    parser.add_argument(
        "--patients",
        type=_patients_arg,
        default="full",
        metavar="full|N",
        help="'full' for the real 82 patient folders (A 4, F 10, PT 3, TA 7, DC 38, LC 5, MC 9, PC 6), or N "
        "patients per tumour type; the quirk folders are always written, so a type may get more (default: full)",
    )
    parser.add_argument(
        "--images-per-magnification",
        type=int,
        default=3,
        metavar="N",
        help="images per patient and magnification (default: 3)",
    )
    parser.add_argument(
        "--magnifications",
        type=int,
        nargs="+",
        choices=MAGNIFICATIONS,
        default=list(MAGNIFICATIONS),
        metavar="MAG",
        help="subset of 40 100 200 400 (default: all four)",
    )
    parser.add_argument(
        "--image-size",
        type=_size_arg,
        default=IMAGE_SIZE,
        metavar="WxH",
        help="width x height; ~3%% of images are 456/460 as high (default: 700x460)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--tar", action="store_true", help=f"also write OUT/{ARCHIVE_NAME} (top folder {TOP_DIR}/)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/BreaKHis_v1 and archive")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    try:
        summary = write_breakhis_tree(
            args.out,
            patients=args.patients,
            images_per_magnification=args.images_per_magnification,
            magnifications=args.magnifications,
            image_size=args.image_size,
            seed=args.seed,
            tar=args.tar,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    rate = summary.num_images / max(summary.seconds, 1e-9)
    print(summary.table())
    print(
        f"\n{summary.num_images} SOB images, {sum(summary.patients.values())} patient folders, "
        f"{summary.bytes_written / 1e6:.1f} MB written in {summary.seconds:.1f} s ({rate:.0f} images/s)"
    )
    print(f"tree: {summary.root}" + (f"\narchive: {summary.tar_path}" if summary.tar_path else ""))
    print("quirks:\n" + "\n".join(f"  - {q}" for q in summary.quirks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
