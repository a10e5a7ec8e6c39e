"""The augmentations of `bcjax.augment` in jnp, to run inside the jitted training step.

Split like the host version: `sample_params_device` draws a batch of parameters
with the same distributions as `augment.sample_params`, `apply_params_device`
applies them in the same order as `augment.apply_params` (the rotation, zoom and
translation with the host's own `augment.affine_warp`, in jax.numpy). `params_from_host`
turns host parameters into the device layout, so both paths can be compared on
identical choices (tests/test_augment_device.py measures how close they are).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bcjax import augment

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bfloat16 passes on GPUs: colours must match the host


def sample_params_device(
    config: augment.AugmentConfig, key: jax.Array, batch: int, height: int, width: int
) -> dict[str, jax.Array]:
    """Draws the parameters of `batch` images of `height` x `width`, as arrays with a leading batch axis."""
    keys = jax.random.split(key, 8)
    uniform = lambda k, lo, hi, shape=(batch,): jax.random.uniform(k, shape, jnp.float32, lo, hi)  # noqa: E731
    rotations = 4 if height == width else 2
    k = jax.random.randint(keys[1], (batch,), 0, rotations) * (4 // rotations)
    s = config.hed_sigma
    # Keys of their own, so the draws above stay those of configs without these fields.
    affine_keys = jax.random.split(jax.random.fold_in(key, 8), 3)
    return {
        **_sample_crop(config, keys[0], batch, height, width),
        "flip_h": jnp.logical_and(config.flip_horizontal, uniform(keys[2], 0.0, 1.0) < 0.5),
        "flip_v": jnp.logical_and(config.flip_vertical, uniform(keys[3], 0.0, 1.0) < 0.5),
        "rotate90": (k if config.rotate90 else jnp.zeros_like(k)).astype(jnp.int32),
        "brightness": uniform(keys[4], -config.brightness, config.brightness),
        "contrast": uniform(keys[5], 1 - config.contrast, 1 + config.contrast),
        "hed_scale": uniform(keys[6], 1 - s, 1 + s, (batch, 3)),
        "hed_shift": uniform(keys[7], -s, s, (batch, 3)),
        "rotation": uniform(affine_keys[0], -config.rotation, config.rotation),
        "zoom": uniform(affine_keys[1], 1 - config.zoom, 1 + config.zoom),
        "translation": uniform(affine_keys[2], -config.translation, config.translation, (batch, 2))
        * jnp.array([height, width], jnp.float32),
    }


def _sample_crop(
    config: augment.AugmentConfig, key: jax.Array, batch: int, height: int, width: int
) -> dict[str, jax.Array]:
    """Inception-style crop boxes (y0, x0, h, w) in pixels, as `augment._sample_crop` draws them."""
    full = lambda v: jnp.full((batch,), v, jnp.float32)  # noqa: E731
    if config.crop_scale == (1.0, 1.0) and config.crop_ratio == (1.0, 1.0):
        return {"y0": full(0.0), "x0": full(0.0), "h": full(height), "w": full(width)}
    keys = jax.random.split(key, 4)
    area = height * width * jax.random.uniform(keys[0], (batch,), jnp.float32, *config.crop_scale)
    log_ratio = jax.random.uniform(keys[1], (batch,), jnp.float32, *map(math.log, config.crop_ratio))
    ratio = jnp.exp(log_ratio) * width / height
    h = jnp.minimum(height, jnp.sqrt(area / ratio))
    w = jnp.minimum(width, jnp.sqrt(area * ratio))
    y0 = jax.random.uniform(keys[2], (batch,), jnp.float32) * (height - h)
    x0 = jax.random.uniform(keys[3], (batch,), jnp.float32) * (width - w)
    return {"y0": y0, "x0": x0, "h": h, "w": w}


def params_from_host(params: Sequence[augment.AugmentParams]) -> dict[str, jax.Array]:
    """Host `AugmentParams` of a batch in the layout of `sample_params_device`."""
    column = lambda f, dtype: jnp.asarray(np.array([f(p) for p in params], dtype))  # noqa: E731
    return {
        **{name: column(lambda p, i=i: p.crop[i], np.float32) for i, name in enumerate(("y0", "x0", "h", "w"))},
        "flip_h": column(lambda p: p.flip_horizontal, bool),
        "flip_v": column(lambda p: p.flip_vertical, bool),
        "rotate90": column(lambda p: p.rotate90, np.int32),
        "brightness": column(lambda p: p.brightness, np.float32),
        "contrast": column(lambda p: p.contrast, np.float32),
        "hed_scale": column(lambda p: p.hed_scale, np.float32),
        "hed_shift": column(lambda p: p.hed_shift, np.float32),
        "rotation": column(lambda p: p.rotation, np.float32),
        "zoom": column(lambda p: p.zoom, np.float32),
        "translation": column(lambda p: p.translation, np.float32),
    }


def apply_params_device(
    images: jax.Array, params: dict[str, jax.Array], fill_mode: str = "reflect", *, warp: bool = True
) -> jax.Array:
    """Augments uint8 images [B, H, W, 3] with a batch of parameters; returns uint8 [B, H, W, 3].

    `fill_mode` (one of `augment.FILL_MODES`) and `warp` are static: jit with them among the static
    arguments. `warp=False` (`AugmentConfig.warps` is False: no rotation, zoom or translation) skips
    the resample, whose identity parameters would leave the pixels as they are anyway.
    """
    return jax.vmap(lambda image, p: _apply_one(image, p, fill_mode, warp))(images, params)


def _apply_one(image: jax.Array, p: dict[str, jax.Array], fill_mode: str, warp: bool) -> jax.Array:
    """`augment.apply_params` for one image: crop, flips, quarter turns, rotation/zoom/translation,
    HED, contrast, brightness, round. Identity parameters leave every stage exact."""
    image = _crop_resize(image, p["y0"], p["x0"], p["h"], p["w"])
    image = jnp.where(p["flip_h"], image[:, ::-1], image)
    image = jnp.where(p["flip_v"], image[::-1], image)
    image = _rotate90(image, p["rotate90"])
    pixels = image.astype(jnp.float32)
    if warp:
        pixels = augment.affine_warp(pixels, p["rotation"], p["zoom"], p["translation"], fill_mode, xp=jnp)
    jitter = jnp.any(p["hed_scale"] != 1.0) | jnp.any(p["hed_shift"] != 0.0)
    pixels = jnp.where(jitter, hed_jitter_device(pixels, p["hed_scale"], p["hed_shift"]), pixels)
    mean = pixels.mean()
    pixels = jnp.where(p["contrast"] != 1.0, (pixels - mean) * p["contrast"] + mean, pixels)
    pixels = pixels + p["brightness"] * 255.0
    return jnp.clip(jnp.rint(pixels), 0, 255).astype(jnp.uint8)


def _crop_resize(image: jax.Array, y0, x0, h, w) -> jax.Array:
    """PIL's `resize(size, BILINEAR, box=(x0, y0, x0 + w, y0 + h))` back to the image's own size.

    PIL maps output pixel i to source centre x0 + (i + 0.5) * w / W, weighs the
    pixels within the triangle filter (widened by w / W when downscaling) and
    renormalises at the borders; that is `scale_and_translate` with scale W / w
    and translation -x0 * W / w. Like PIL it runs the horizontal pass first and
    rounds to uint8 in between. A whole-image box is the identity, exactly.
    """
    height, width = image.shape[:2]
    pixels = image.astype(jnp.float32)
    for axis, start, size, out in ((1, x0, w, width), (0, y0, h, height)):
        scale = out / size
        pixels = jax.image.scale_and_translate(
            pixels,
            pixels.shape,
            (axis,),
            scale[None],
            (-start * scale)[None],
            method="linear",
            antialias=True,
            precision=_HIGHEST,
        )
        pixels = jnp.clip(jnp.rint(pixels), 0, 255)
    return pixels.astype(jnp.uint8)


def _rotate90(image: jax.Array, k: jax.Array) -> jax.Array:
    """`np.rot90(image, k)`; non-square images only turn by 0 or 180 degrees (k in {0, 2})."""
    if image.shape[0] == image.shape[1]:
        return jax.lax.switch(k, [lambda x, n=n: jnp.rot90(x, n) for n in range(4)], image)
    return jnp.where(k == 2, jnp.rot90(image, 2), image)


def hed_jitter_device(pixels: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """`augment.hed_jitter`: hed' = hed * scale + shift in optical density."""
    od = -jnp.log((pixels + 1.0) / 256.0)
    hed = jnp.matmul(od, augment.HED_FROM_RGB, precision=_HIGHEST)
    od = jnp.matmul(hed * scale + shift, augment.RGB_FROM_HED, precision=_HIGHEST)
    return 256.0 * jnp.exp(-od) - 1.0
