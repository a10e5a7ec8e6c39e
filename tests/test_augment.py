"""Image operations (bcjax.augment): augmentation parameters, stain operations; and the normalisers
(bcjax.normalization) on the same images."""

import dataclasses
import pathlib
import re

import numpy as np
import pytest

from bcjax import augment, config_checks, input_pipeline, normalization
from bcjax.datasets import synthetic
from configs import default

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    base = np.full((24, 36, 3), (230, 180, 210), np.uint8)
    base[6:18, 8:28] = (90, 40, 130)  # a dark "nucleus" block so stains have something to find
    return np.clip(base + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)


def test_identity_parameters_change_nothing(image):
    params = augment.sample_params(augment.AugmentConfig(), np.random.default_rng(0), *image.shape[:2])
    np.testing.assert_array_equal(augment.apply_params(image, params), image)


def test_flips_and_rotation_follow_the_parameters(image):
    base = augment.sample_params(augment.AugmentConfig(), np.random.default_rng(0), *image.shape[:2])
    flipped = augment.apply_params(image, base.__class__(**{**base.__dict__, "flip_horizontal": True}))
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    rotated = augment.apply_params(image, base.__class__(**{**base.__dict__, "rotate90": 2}))
    np.testing.assert_array_equal(rotated, np.rot90(image, 2))


def test_non_square_images_rotate_by_180_only(image):
    config = augment.AugmentConfig(rotate90=True)
    ks = {augment.sample_params(config, np.random.default_rng(s), 24, 36).rotate90 for s in range(40)}
    assert ks == {0, 2}
    ks = {augment.sample_params(config, np.random.default_rng(s), 32, 32).rotate90 for s in range(40)}
    assert ks == {0, 1, 2, 3}


def test_random_crop_stays_inside_and_keeps_shape(image):
    config = augment.AugmentConfig(crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.33))
    for seed in range(20):
        params = augment.sample_params(config, np.random.default_rng(seed), *image.shape[:2])
        y0, x0, h, w = params.crop
        assert 0 <= y0 and 0 <= x0 and y0 + h <= 24 + 1e-9 and x0 + w <= 36 + 1e-9
        assert augment.apply_params(image, params).shape == image.shape


def test_hed_jitter_is_identity_at_unit_scale_and_zero_shift(image):
    pixels = image.astype(np.float32)
    np.testing.assert_allclose(augment.hed_jitter(pixels, np.ones(3), np.zeros(3)), pixels, atol=1e-2)
    assert np.abs(augment.hed_jitter(pixels, np.array([1.3, 1, 1]), np.zeros(3)) - pixels).max() > 1


def test_macenko_maps_different_stainings_closer_together(image):
    pinker = np.clip(image.astype(int) * [1.0, 0.85, 1.0], 0, 255).astype(np.uint8)
    a, b = augment.macenko_normalize(image), augment.macenko_normalize(pinker)
    assert a.shape == image.shape and a.dtype == np.uint8
    before = np.abs(image.astype(int) - pinker).mean()
    after = np.abs(a.astype(int) - b).mean()
    assert after < before


@pytest.fixture(scope="module")
def torchstain_macenko():
    pytest.importorskip("torchstain", reason="torchstain's numpy Macenko is the reference implementation")
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    reference = NumpyMacenkoNormalizer()
    # Both normalise to Macenko's published reference H&E vectors and maximum concentrations.
    np.testing.assert_array_equal(reference.HERef, augment.MACENKO_REFERENCE_STAINS)
    np.testing.assert_array_equal(reference.maxCRef, augment.MACENKO_REFERENCE_MAX_CONCENTRATIONS)
    return reference


@pytest.mark.parametrize(
    "io, alpha, beta",
    [(240, 1, 0.15), (250, 2.5, 0.25)],  # torchstain's defaults (and ours), then other values of each
    ids=["defaults", "other-parameters"],
)
def test_macenko_matches_torchstain(torchstain_macenko, io, alpha, beta):
    """Synthetic H&E fields of six tumour types, each patient's own stain, against torchstain 1.4.1.

    Same algorithm (eigenvectors of the OD covariance by `eigh`, angle percentiles alpha and
    100 - alpha, H first by its red OD, 99th-percentile concentrations, values above 255 clipped,
    truncation to uint8): measured identical, 0 of 28,800 values differ in every image. One grey
    level is allowed on at most 0.1% of the values for float rounding at truncation boundaries.
    """
    for code, magnification in [("DC", 40), ("F", 100), ("PT", 200), ("MC", 400), ("LC", 100), ("TA", 400)]:
        image = synthetic.render_image(code, magnification, size=(120, 80), seed=1, patient=code)
        ours = augment.macenko_normalize(image, intensity=io, alpha=alpha, beta=beta)
        theirs, _, _ = torchstain_macenko.normalize(image, Io=io, alpha=alpha, beta=beta, stains=False)
        difference = np.abs(ours.astype(int) - theirs)
        assert np.abs(ours.astype(int) - image).mean() > 10  # a real change, not an image left alone
        assert difference.max() <= 1 and (difference > 0).mean() <= 1e-3, (code, difference.max())


def _stained(stains, concentrations, shape):
    """Beer-Lambert with light 240: the uint8 image whose optical density is stains @ concentrations."""
    pixels = 240 * np.exp(-stains @ concentrations) - 1  # -1: the normaliser's OD is -log((I + 1) / 240)
    return np.clip(pixels, 0, 255).T.reshape(*shape, 3).astype(np.uint8)


@pytest.mark.parametrize(
    "stains, scale",
    [
        ([[0.70, 0.30], [0.62, 0.80], [0.35, 0.52]], (0.8, 1.4)),
        ([[0.50, 0.30], [0.80, 0.75], [0.33, 0.60]], (1.2, 1.1)),
    ],
)
def test_macenko_recovers_known_stains(stains, scale):
    """Ground truth without any other implementation: an image painted with known H&E vectors and
    concentrations becomes the same concentrations painted with the reference vectors, scaled to the
    reference maxima. Measured: at most 3 grey levels (uint8 quantisation of input and output), mean
    0.5-0.8, against 19-29 before normalisation.

    Every pure-stain pixel here has OD >= beta in all three channels: Macenko (torchstain alike)
    drops pixels with any channel below beta, so stains with a faint channel (Ruifrok's eosin, red
    OD 0.07) lose their pure pixels and are mis-estimated by both implementations alike.
    """
    rng = np.random.default_rng(0)
    shape = (48, 64)
    kind = rng.choice(4, shape[0] * shape[1], p=[0.2, 0.3, 0.3, 0.2])  # pure H, pure E, mixed, background
    concentrations = np.zeros((2, kind.size))
    concentrations[0, kind == 0] = rng.uniform(0.5, 1.0, (kind == 0).sum())
    concentrations[1, kind == 1] = rng.uniform(0.5, 1.0, (kind == 1).sum())
    concentrations[:, kind == 2] = rng.uniform(0.3, 1.0, (2, (kind == 2).sum()))
    concentrations[:, kind == 3] = rng.uniform(0.0, 0.02, (2, (kind == 3).sum()))
    stains = np.asarray(stains) / np.linalg.norm(stains, axis=0)
    image = _stained(stains, concentrations * np.asarray(scale)[:, None], shape)
    reference_maxima = augment.MACENKO_REFERENCE_MAX_CONCENTRATIONS / np.percentile(concentrations, 99, axis=1)
    expected = _stained(augment.MACENKO_REFERENCE_STAINS, concentrations * reference_maxima[:, None], shape)
    difference = np.abs(augment.macenko_normalize(image).astype(int) - expected)
    assert np.abs(image.astype(int) - expected).mean() > 15
    assert difference.max() <= 3 and difference.mean() < 1.0, (difference.max(), difference.mean())


def test_macenko_leaves_blank_images_alone():
    blank = np.full((8, 8, 3), 250, np.uint8)
    np.testing.assert_array_equal(augment.macenko_normalize(blank), blank)


def test_normalizers_match_their_definitions(image):
    x = image[None].astype(np.float32)
    imagenet = normalization.make_normalizer("imagenet")(image[None])
    np.testing.assert_allclose(
        imagenet, (x / 255 - normalization.IMAGENET_MEAN) / normalization.IMAGENET_STD, rtol=1e-5, atol=1e-5
    )
    caffe = normalization.make_normalizer("caffe")(image[None])
    np.testing.assert_allclose(caffe, x[..., ::-1] - normalization.CAFFE_BGR_MEAN, atol=1e-4)
    tf_style = normalization.make_normalizer("tf")(image[None])
    np.testing.assert_allclose(tf_style, x / 127.5 - 1, atol=1e-5)


def test_zscore_uses_training_statistics(image):
    normalizer = normalization.make_normalizer("zscore", np.stack([image, image[::-1]]))
    out = normalizer(image[None])
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), 1, atol=1e-3)
    with pytest.raises(ValueError, match="training images"):
        normalization.make_normalizer("zscore")
    with pytest.raises(ValueError, match="imagenet"):
        normalization.make_normalizer("nope")


def test_random_augment_is_deterministic_per_rng(image):
    transform = augment.RandomAugment(
        augment.AugmentConfig(flip_vertical=True, brightness=0.1, contrast=0.2, hed_sigma=0.05)
    )
    a = transform({"image": image}, np.random.default_rng(7))["image"]
    b = transform({"image": image}, np.random.default_rng(7))["image"]
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8


# ----------------------------------------------------------------------------- rotation, zoom, translation


def _texture(height, width, seed=0):
    """Every frequency and noise, so a misplaced sample or a wrong fill shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    smooth = np.stack([128 + 100 * np.sin(xx / 3 + yy / 5), 128 + 90 * np.cos(xx / 2), 120 + 60 * np.sin(yy / 2)], -1)
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def _with(params, **changes):
    return dataclasses.replace(params, **changes)


@pytest.fixture(scope="module")
def identity():
    return augment.sample_params(augment.AugmentConfig(), np.random.default_rng(0), 20, 30)


@pytest.fixture(scope="module")
def keras_layers():
    """Keras 3 on TensorFlow, the backend recipe C ran on (tf.keras): ImageProjectiveTransformV3."""
    keras = pytest.importorskip("keras", reason="Keras' own layers are the reference")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("run with KERAS_BACKEND=tensorflow: the reference is Keras on TensorFlow")
    return keras.layers


def _keras(layer, image):
    """A Keras layer applied in training mode to one uint8 image, rounded as `apply_params` rounds."""
    out = np.asarray(layer(image[None].astype(np.float32), training=True))[0]
    return np.clip(np.rint(out), 0, 255).astype(int)


@pytest.mark.parametrize("fill_mode", augment.FILL_MODES)
def test_rotation_zoom_and_translation_are_keras_layers(keras_layers, identity, fill_mode):
    """Keras' RandomRotation, RandomZoom and RandomTranslation with their ranges pinned to one value,
    against `apply_params` with that value: same pixels, fill included (Keras' "reflect" repeats the
    edge pixel, "d c b a | a b c d"). Measured: identical in 5 of the 6 cases, 1 level on 2 of the
    1,800 values for zoom 0.7 (float32 rounding at x.5 ties; Keras' floats are rounded as ours)."""
    image = _texture(20, 30)
    cases = [
        (keras_layers.RandomRotation((0.2, 0.2), fill_mode=fill_mode), dict(rotation=72.0)),  # recipe C's extreme
        (keras_layers.RandomRotation((-0.35, -0.35), fill_mode=fill_mode), dict(rotation=-126.0)),
        (keras_layers.RandomZoom((-0.3, -0.3), fill_mode=fill_mode), dict(zoom=0.7)),
        (keras_layers.RandomZoom((0.4, 0.4), fill_mode=fill_mode), dict(zoom=1.4)),
        (keras_layers.RandomTranslation((0.3, 0.3), (-0.45, -0.45), fill_mode=fill_mode), dict(translation=(6, -13.5))),
        (
            keras_layers.RandomTranslation((-0.9, -0.9), (0.37, 0.37), fill_mode=fill_mode),
            dict(translation=(-18, 11.1)),
        ),
    ]
    for layer, changes in cases:
        ours = augment.apply_params(image, _with(identity, **changes), fill_mode).astype(int)
        difference = np.abs(ours - _keras(layer, image))
        assert np.abs(ours - image).mean() > 10, changes  # a real change
        assert difference.max() <= 1 and (difference > 0).sum() <= 4, (changes, difference.max())


def test_one_resample_is_keras_rotation_then_zoom_then_translation(keras_layers):
    """The composed transform is the three Keras layers in that order. On a linear ramp bilinear
    sampling is exact, so one resample and Keras' three agree to float rounding where no stage
    reads outside its input (the centre); any other order or sign moves the ramp by pixels."""
    height, width = 40, 44
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    ramp = np.stack([40 + 2 * xx + 3 * yy, 200 - 3 * xx + yy, 100 + xx - 2 * yy], -1)
    layers = [
        keras_layers.RandomRotation((0.1, 0.1)),
        keras_layers.RandomZoom((-0.2, -0.2)),
        keras_layers.RandomTranslation((0.05, 0.05), (-0.1, -0.1)),
    ]
    theirs = ramp[None]
    for layer in layers:
        theirs = layer(theirs, training=True)
    ours = augment.affine_warp(ramp, 36.0, 0.8, (0.05 * height, -0.1 * width), "reflect")
    centre = np.s_[height // 2 - 6 : height // 2 + 6, width // 2 - 6 : width // 2 + 6]
    np.testing.assert_allclose(ours[centre], np.asarray(theirs)[0][centre], atol=1e-3)


def test_brightness_is_keras_random_brightness(keras_layers, identity):
    """Recipe C's RandomBrightness(0.2) draws a delta of up to 0.2 * 255 = 51 grey levels, clipped to
    [0, 255]: `brightness=0.2` here. Pinned to the extremes, both give the same pixels."""
    image = _texture(20, 30)
    for factor in (0.2, -0.2):
        ours = augment.apply_params(image, _with(identity, brightness=factor))
        theirs = _keras(keras_layers.RandomBrightness((factor, factor)), image)
        np.testing.assert_array_equal(ours, theirs)


def test_positive_angles_turn_counter_clockwise_like_rot90(identity):
    image = _texture(30, 30)
    turned = _with(identity, crop=(0.0, 0.0, 30.0, 30.0), rotation=90.0)
    np.testing.assert_array_equal(augment.apply_params(image, turned), np.rot90(image))


def test_new_fields_draw_after_the_others():
    """Adding rotation, zoom or translation to a config leaves its other draws as they were, so
    runs of configs without them keep their augmentations."""
    before = augment.AugmentConfig(flip_horizontal=True, crop_scale=(0.3, 1.0), brightness=0.1, hed_sigma=0.05)
    after = dataclasses.replace(before, rotation=72.0, zoom=0.2, translation=0.1)
    for seed in range(5):
        old, new = (augment.sample_params(c, np.random.default_rng(seed), 20, 30) for c in (before, after))
        assert _with(new, rotation=0.0, zoom=1.0, translation=(0.0, 0.0)) == old


def test_rotation_zoom_and_translation_stay_in_their_ranges():
    config = augment.AugmentConfig(rotation=72.0, zoom=0.2, translation=0.1)
    params = [augment.sample_params(config, np.random.default_rng(s), 20, 30) for s in range(500)]
    rotation, zoom = np.array([p.rotation for p in params]), np.array([p.zoom for p in params])
    dy, dx = np.array([p.translation for p in params]).T
    assert -72 <= rotation.min() < -60 and 60 < rotation.max() <= 72
    assert 0.8 <= zoom.min() < 0.82 and 1.18 < zoom.max() <= 1.2
    assert -2 <= dy.min() < -1.8 and 1.8 < dy.max() <= 2 and -3 <= dx.min() < -2.7 and 2.7 < dx.max() <= 3


def test_fill_mode_alone_enables_nothing():
    assert not augment.AugmentConfig(fill_mode="constant").enabled
    assert augment.AugmentConfig(rotation=1.0).enabled


def test_readme_augmentation_settings_are_the_recipes():
    """The README's Augmentation block, run as written on configs/default.py: each recipe passes the
    config checks, and recipe C is MODELS.md's (brightness +-51 grey levels, both flips, +-72 degrees
    with Keras' reflect fill)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n### Augmentation\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    recipes = {}
    for block in code.split("\n\n"):
        config = default.get_config()
        exec(block, {"config": config})
        assert config_checks.config_problems(config, 1) == [], block
        name = re.match(r"# Recipe (\w)", block).group(1)
        recipes[name] = input_pipeline.InputConfig.from_config(config, normalization="imagenet").augment
    assert recipes["C"] == augment.AugmentConfig(
        flip_horizontal=True, flip_vertical=True, brightness=0.2, rotation=72.0
    )
    assert recipes["C"].fill_mode == "reflect" and recipes["C"].brightness * 255 == 51
    assert set(recipes) == {"C", "D"} and recipes["D"].enabled
