"""Image operations (bcjax.augment): augmentation parameters, stain operations; and the normalisers
(bcjax.normalization) on the same images."""

import numpy as np
import pytest

from bcjax import augment, normalization
from bcjax.datasets import synthetic


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
