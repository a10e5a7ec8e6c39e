"""Image operations for histopathology on the host: resizing, augmentation, HED jitter, Macenko.

Augmentation is split in two: `sample_params` draws every random choice for one
image, `apply_params` applies them deterministically. A device-side
implementation (`bcjax.augment_device`) can then be checked against this one
parameter for parameter; the any-angle rotation, zoom and translation are one
function written for numpy and jax.numpy alike (`affine_warp`). Pixel
normalisation lives in `bcjax.normalization`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import jax

    Array = np.ndarray | jax.Array  # `affine_warp` runs on both

# Colour deconvolution for haematoxylin, eosin and DAB (Ruifrok & Johnston 2001).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)

# Macenko's reference H&E stain vectors (columns) and 99th-percentile concentrations.
MACENKO_REFERENCE_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_REFERENCE_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])

# What `affine_warp` reads where it looks outside the image, as Keras' RandomRotation/Zoom/Translation:
# reflect "d c b a | a b c d | d c b a" (edge pixel repeated), nearest "a a | a b c d | d d", constant 0.
FILL_MODES = ("reflect", "nearest", "constant")


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes (squashes, like Keras' loaders) a uint8 HxWx3 image with antialiased bilinear."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


# ----------------------------------------------------------------------------- augmentation


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run in training, with their ranges; all off by default."""

    flip_horizontal: bool = False
    flip_vertical: bool = False
    rotate90: bool = False  # square images: any multiple of 90 degrees; others: 0 or 180
    crop_scale: tuple[float, float] = (1.0, 1.0)  # random resized crop: area fraction kept
    crop_ratio: tuple[float, float] = (1.0, 1.0)  # aspect-ratio change of the crop box
    brightness: float = 0.0  # additive delta in +-brightness * 255 grey levels: Keras RandomBrightness(brightness)
    contrast: float = 0.0  # multiplicative around the mean: factor in [1-c, 1+c]
    hed_sigma: float = 0.0  # HED stain jitter (Tellez 2018): scale 1+-s, shift +-s per stain
    rotation: float = 0.0  # any angle in +-rotation degrees: Keras RandomRotation(rotation / 360)
    zoom: float = 0.0  # sampling-grid scale in [1-z, 1+z], below 1 zooms in: Keras RandomZoom(zoom)
    translation: float = 0.0  # shift in +-translation of the height and of the width: Keras RandomTranslation
    fill_mode: str = "reflect"  # one of FILL_MODES: what rotation, zoom and translation bring in from outside

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> AugmentConfig:
        """From `config.data.augment` (a ConfigDict or dict), whose ranges may be lists."""
        return cls(**{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in fields.items()})

    @property
    def enabled(self) -> bool:
        return dataclasses.replace(self, fill_mode=AugmentConfig.fill_mode) != AugmentConfig()

    @property
    def warps(self) -> bool:
        """Whether rotation, zoom or translation resample the image (the costly stage)."""
        return bool(self.rotation or self.zoom or self.translation)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Every random choice for one image: crop box (y0, x0, h, w), flips, rotations, colour, zoom and shift.

    `rotation` is in degrees, `zoom` the sampling grid's scale, `translation` (dy, dx) in pixels.
    """

    crop: tuple[float, float, float, float]
    flip_horizontal: bool
    flip_vertical: bool
    rotate90: int
    brightness: float
    contrast: float
    hed_scale: tuple[float, float, float]
    hed_shift: tuple[float, float, float]
    rotation: float = 0.0
    zoom: float = 1.0
    translation: tuple[float, float] = (0.0, 0.0)


def sample_params(config: AugmentConfig, rng: np.random.Generator, height: int, width: int) -> AugmentParams:
    """Draws the augmentation parameters for one `height` x `width` image."""
    crop = _sample_crop(config, rng, height, width)
    rotations = 4 if height == width else 2
    k = int(rng.integers(rotations)) * (4 // rotations) if config.rotate90 else 0
    s = config.hed_sigma
    return AugmentParams(
        crop=crop,
        flip_horizontal=bool(config.flip_horizontal and rng.random() < 0.5),
        flip_vertical=bool(config.flip_vertical and rng.random() < 0.5),
        rotate90=k,
        brightness=float(rng.uniform(-config.brightness, config.brightness)),
        contrast=float(rng.uniform(1 - config.contrast, 1 + config.contrast)),
        hed_scale=tuple(float(v) for v in rng.uniform(1 - s, 1 + s, 3)),
        hed_shift=tuple(float(v) for v in rng.uniform(-s, s, 3)),
        # Drawn last, so the draws above stay those of configs without these fields.
        rotation=float(rng.uniform(-config.rotation, config.rotation)),
        zoom=float(rng.uniform(1 - config.zoom, 1 + config.zoom)),
        translation=tuple(float(v) for v in rng.uniform(-config.translation, config.translation, 2) * (height, width)),
    )


def _sample_crop(config: AugmentConfig, rng: np.random.Generator, height: int, width: int):
    """Inception-style random resized crop box, in pixels; the whole image when disabled."""
    if config.crop_scale == (1.0, 1.0) and config.crop_ratio == (1.0, 1.0):
        return (0.0, 0.0, float(height), float(width))
    area = height * width * rng.uniform(*config.crop_scale)
    log_ratio = rng.uniform(math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]))
    ratio = math.exp(log_ratio) * width / height
    h = min(float(height), math.sqrt(area / ratio))
    w = min(float(width), math.sqrt(area * ratio))
    y0 = rng.uniform(0, height - h)
    x0 = rng.uniform(0, width - w)
    return (float(y0), float(x0), h, w)


def apply_params(image: np.ndarray, params: AugmentParams, fill_mode: str = "reflect") -> np.ndarray:
    """Applies `params` to a uint8 HxWx3 image; returns uint8 of the same shape.

    Geometry first (crop, flips, quarter turns, then rotation, zoom and translation in one
    resample), then colour (HED, contrast, brightness), rounded once at the end.
    """
    height, width = image.shape[:2]
    y0, x0, h, w = params.crop
    if (h, w) != (height, width):
        box = (x0, y0, x0 + w, y0 + h)
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR, box=box))
    if params.flip_horizontal:
        image = image[:, ::-1]
    if params.flip_vertical:
        image = image[::-1]
    if params.rotate90:
        image = np.rot90(image, params.rotate90)
    pixels = image.astype(np.float32)
    if (params.rotation, params.zoom, params.translation) != (0.0, 1.0, (0.0, 0.0)):
        pixels = affine_warp(pixels, params.rotation, params.zoom, params.translation, fill_mode)
    if params.hed_scale != (1.0, 1.0, 1.0) or params.hed_shift != (0.0, 0.0, 0.0):
        pixels = hed_jitter(pixels, np.array(params.hed_scale), np.array(params.hed_shift))
    if params.contrast != 1.0:
        pixels = (pixels - pixels.mean()) * params.contrast + pixels.mean()
    pixels = pixels + params.brightness * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def affine_warp(
    pixels: Array,
    rotation: float | Array,
    zoom: float | Array,
    translation: tuple[float, float] | Array,
    fill_mode: str,
    xp: ModuleType = np,
) -> Array:
    """Rotates float HxWxC `pixels` by `rotation` degrees about the centre, scales the sampling grid
    by `zoom` and shifts by `translation` (dy, dx) pixels, in one bilinear resample.

    Output pixel p reads source c + zoom * R (p - c - translation), c = (size - 1) / 2 the centre:
    Keras' RandomRotation, then RandomZoom, then RandomTranslation, without resampling in between.
    `xp` is numpy on the host and jax.numpy inside the jitted step, so both paths share one definition.
    """
    height, width, channels = pixels.shape
    angle = xp.asarray(rotation, xp.float32) * xp.float32(math.pi / 180)
    cos, sin = xp.cos(angle) * zoom, xp.sin(angle) * zoom
    cy, cx = (height - 1) / 2, (width - 1) / 2
    y, x = xp.meshgrid(xp.arange(height, dtype=xp.float32), xp.arange(width, dtype=xp.float32), indexing="ij")
    y, x = y - cy - translation[0], x - cx - translation[1]
    # Channels first: numpy's gathers and its arithmetic with (H, W) weights are several times
    # faster on whole planes than on rows of 3 values.
    planes = xp.stack([pixels[..., c] for c in range(channels)]).reshape(channels, -1)
    warped = _bilinear(planes, cy + sin * x + cos * y, cx + cos * x - sin * y, height, width, fill_mode, xp)
    return xp.moveaxis(warped, 0, -1)


def _bilinear(planes, ys, xs, height: int, width: int, fill_mode: str, xp: ModuleType):
    """Samples the (C, height * width) pixel `planes` at float coordinates (ys, xs), the image
    extended beyond its edges by `fill_mode`; returns (C, *ys.shape)."""
    y0, x0 = xp.floor(ys), xp.floor(xs)
    fy, fx = ys - y0, xs - x0
    rows = [_fold(y, height, fill_mode, xp) * width for y in (y0, y0 + 1)]
    columns = [_fold(x, width, fill_mode, xp) for x in (x0, x0 + 1)]
    (a, b), (c, d) = ([xp.take(planes, row + column, axis=1) for column in columns] for row in rows)
    if fill_mode == "constant":  # taps outside the image read 0
        inside_y = [(y >= 0) & (y < height) for y in (y0, y0 + 1)]
        inside_x = [(x >= 0) & (x < width) for x in (x0, x0 + 1)]
        (a, b), (c, d) = (
            [xp.where(iy & ix, tap, 0.0) for ix, tap in zip(inside_x, taps)]
            for iy, taps in zip(inside_y, ((a, b), (c, d)))
        )
    top, bottom = a * (1 - fx) + b * fx, c * (1 - fx) + d * fx
    return top * (1 - fy) + bottom * fy


def _fold(index, size: int, fill_mode: str, xp: ModuleType):
    """Whole-number float pixel indices anywhere -> int indices in 0..size-1, as `fill_mode` extends the image."""
    if fill_mode == "reflect":  # period 2 * size: a b c d d c b a; float division: numpy's int mod is slow
        index = index - 2 * size * xp.floor(index / (2 * size))
        index = xp.where(index >= size, 2 * size - 1 - index, index)
    return xp.clip(index, 0, size - 1).astype(xp.int32)  # nearest; constant masks these taps afterwards


def hed_jitter(pixels: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Perturbs stain concentrations in optical density: hed' = hed * scale + shift."""
    od = -np.log((pixels + 1.0) / 256.0)
    hed = od @ HED_FROM_RGB
    od = (hed * scale + shift) @ RGB_FROM_HED
    return 256.0 * np.exp(-od) - 1.0


class RandomAugment:
    """A grain-style random map: augments `example['image']` with the given RNG."""

    def __init__(self, config: AugmentConfig):
        self.config = config

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        image = example["image"]
        params = sample_params(self.config, rng, *image.shape[:2])
        return {**example, "image": apply_params(image, params, self.config.fill_mode)}


# ----------------------------------------------------------------------------- stain normalisation


def macenko_normalize(
    image: np.ndarray, intensity: float = 240.0, alpha: float = 1.0, beta: float = 0.15
) -> np.ndarray:
    """Macenko et al. (2009) stain normalisation of a uint8 RGB image to a reference H&E.

    Deterministic per image, so the input pipeline runs it once, before caching.
    Images with too little stained tissue to estimate stains are returned unchanged.
    """
    shape = image.shape
    od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1.0) / intensity)
    tissue = od[np.all(od >= beta, axis=1)]
    if len(tissue) < 16:
        return image
    _, eigvecs = np.linalg.eigh(np.cov(tissue.T))
    plane = eigvecs[:, 1:3]
    projected = tissue @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
    concentrations = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    max_conc = np.percentile(concentrations, 99, axis=1)
    max_conc = np.where(max_conc > 1e-6, max_conc, 1.0)
    concentrations *= (MACENKO_REFERENCE_MAX_CONCENTRATIONS / max_conc)[:, None]
    normalized = intensity * np.exp(-MACENKO_REFERENCE_STAINS @ concentrations)
    return np.clip(normalized.T, 0, 255).astype(np.uint8).reshape(shape)
