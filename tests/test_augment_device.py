"""The device augmentations against the host ones, parameter for parameter, and the device sampler.

Tolerances, measured on this CPU with 300 parameter draws per case:
- flips, rotations and an identity box: bit-exact;
- colour (HED, contrast, brightness): at most 1 level; ~1e-5 of the values differ
  (float32 on the device, float64 HED on the host; rounding ties);
- random resized crops: at most 1 level; ~6e-5 of the values differ (PIL's
  fixed-point filter weights). Both sides run the horizontal pass first and round to
  uint8 between the passes; a single 2-D pass would leave ~16% of the values 1 off;
- rotation, zoom and translation (one function, `augment.affine_warp`, in numpy and
  in jnp): at most 1 level, ~2e-5 of the values differ, in every fill mode;
- everything together: at most 2 levels (a crop's 1-level difference times a
  contrast factor above 1), ~7e-5 of the values differ.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bcjax import augment, augment_device

FULL = augment.AugmentConfig(
    flip_horizontal=True,
    flip_vertical=True,
    rotate90=True,
    crop_scale=(0.08, 1.0),
    crop_ratio=(0.75, 1.33),
    brightness=0.1,
    contrast=0.2,
    hed_sigma=0.05,
    rotation=72.0,
    zoom=0.2,
    translation=0.1,
)
AFFINE = augment.AugmentConfig(rotation=72.0, zoom=0.2, translation=0.1)
apply = jax.jit(augment_device.apply_params_device, static_argnames=("fill_mode", "warp"))
sample = jax.jit(augment_device.sample_params_device, static_argnums=(0, 2, 3, 4))


def _image(height, width, seed=0):
    """Texture with every frequency, so interpolation differences would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    smooth = np.stack([128 + 100 * np.sin(xx / 5 + yy / 7), 128 + 90 * np.cos(xx / 3), 120 + 60 * np.sin(yy / 4)], -1)
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def _host_and_device(config, image, draws=300):
    params = [augment.sample_params(config, np.random.default_rng(s), *image.shape[:2]) for s in range(draws)]
    host = np.stack([augment.apply_params(image, p, config.fill_mode) for p in params])
    images = jnp.asarray(np.repeat(image[None], draws, 0))
    device = np.asarray(apply(images, augment_device.params_from_host(params), fill_mode=config.fill_mode))
    return host.astype(int), device.astype(int)


@pytest.mark.parametrize("shape", [(24, 36), (32, 32)])
def test_flips_and_rotations_are_exact(shape):
    config = augment.AugmentConfig(flip_horizontal=True, flip_vertical=True, rotate90=True)
    host, device = _host_and_device(config, _image(*shape), draws=40)
    np.testing.assert_array_equal(device, host)


@pytest.mark.parametrize(
    "config, max_levels, max_fraction",
    [
        (augment.AugmentConfig(brightness=0.1, contrast=0.2, hed_sigma=0.05), 1, 1e-4),
        (augment.AugmentConfig(crop_scale=(0.08, 1.0), crop_ratio=(0.75, 1.33)), 1, 5e-4),
        *((dataclasses.replace(AFFINE, fill_mode=mode), 1, 1e-4) for mode in augment.FILL_MODES),
        (FULL, 2, 5e-4),
    ],
    ids=["colour", "crop", *(f"affine-{mode}" for mode in augment.FILL_MODES), "all"],
)
def test_device_matches_host_on_the_same_parameters(config, max_levels, max_fraction):
    host, device = _host_and_device(config, _image(46, 70))
    difference = np.abs(host - device)
    assert difference.max() <= max_levels
    assert (difference > 0).mean() <= max_fraction


def test_identity_parameters_change_nothing():
    image = _image(24, 36)
    params = sample(augment.AugmentConfig(), jax.random.key(0), 4, 24, 36)
    out = apply(jnp.asarray(np.repeat(image[None], 4, 0)), params)
    np.testing.assert_array_equal(np.asarray(out), np.repeat(image[None], 4, 0))


def _host_params(config, height, width, draws):
    return augment_device.params_from_host(
        [augment.sample_params(config, np.random.default_rng(s), height, width) for s in range(draws)]
    )


def test_sampler_has_the_host_distributions():
    draws, height, width = 4000, 46, 70
    device = jax.device_get(sample(FULL, jax.random.key(1), draws, height, width))
    host = jax.device_get(_host_params(FULL, height, width, draws))
    y0, x0, h, w = (device[k] for k in ("y0", "x0", "h", "w"))
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + h <= height + 1e-4).all() and (x0 + w <= width + 1e-4).all()
    area = lambda p: p["h"] * p["w"] / (height * width)  # noqa: E731
    assert area(device).min() >= 0.08 - 1e-6 and area(device).max() <= 1 + 1e-6
    np.testing.assert_allclose(
        np.quantile(area(device), [0.1, 0.5, 0.9]), np.quantile(area(host), [0.1, 0.5, 0.9]), atol=0.03
    )
    for name in ("flip_h", "flip_v"):
        assert abs(device[name].mean() - 0.5) < 0.03
    assert set(np.unique(device["rotate90"])) == {0, 2}  # 46x70 is not square: 0 or 180 degrees
    for name, (lo, hi) in {
        "brightness": (-0.1, 0.1),
        "contrast": (0.8, 1.2),
        "hed_scale": (0.95, 1.05),
        "hed_shift": (-0.05, 0.05),
        "rotation": (-72, 72),
        "zoom": (0.8, 1.2),
    }.items():
        assert lo <= device[name].min() and device[name].max() <= hi, name
        np.testing.assert_allclose(device[name].std(), host[name].std(), rtol=0.05)
    for axis, size in enumerate((height, width)):  # dy, dx: up to a tenth of the height, of the width
        shift, host_shift = device["translation"][:, axis], host["translation"][:, axis]
        assert np.abs(shift).max() <= 0.1 * size + 1e-4
        np.testing.assert_allclose(shift.std(), host_shift.std(), rtol=0.05)


def test_square_images_take_all_four_rotations_and_disabled_ones_none():
    rotations = np.asarray(sample(FULL, jax.random.key(2), 4000, 32, 32)["rotate90"])
    np.testing.assert_allclose(np.bincount(rotations, minlength=4) / 4000, 0.25, atol=0.03)
    off = jax.device_get(sample(augment.AugmentConfig(), jax.random.key(2), 50, 32, 32))
    assert not off["rotate90"].any() and not off["flip_h"].any() and not off["flip_v"].any()
    assert (off["h"] == 32).all() and (off["contrast"] == 1).all() and (off["brightness"] == 0).all()
    assert not off["rotation"].any() and (off["zoom"] == 1).all() and not off["translation"].any()


def test_configs_without_rotation_zoom_or_translation_skip_the_resample():
    config = augment.AugmentConfig(flip_horizontal=True, rotate90=True, brightness=0.1, crop_scale=(0.5, 1.0))
    assert not config.warps and AFFINE.warps
    image = _image(32, 32)
    params = [augment.sample_params(config, np.random.default_rng(s), 32, 32) for s in range(20)]
    images, device_params = jnp.asarray(np.repeat(image[None], 20, 0)), augment_device.params_from_host(params)
    np.testing.assert_array_equal(apply(images, device_params, warp=False), apply(images, device_params))
    jaxpr = functools.partial(augment_device.apply_params_device, warp=False)
    assert "floor" not in str(jax.make_jaxpr(jaxpr)(images, device_params))  # the bilinear sampler floors
    assert "floor" in str(jax.make_jaxpr(augment_device.apply_params_device)(images, device_params))
