"""Losses against hand-computed formulas and optax references; the config mismatch errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bcjax import losses
from configs import default

BINARY_LOGITS = np.array([[2.0], [-1.0], [0.0], [3.5]], np.float32)
BINARY_LABELS = np.array([1, 0, 1, 0])
LOGITS = np.array([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]], np.float32)
LABELS = np.array([0, 2])


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_sigmoid_mse_is_recipe_a_formula():
    loss = losses.make_loss("sigmoid_mse", num_classes=1)(BINARY_LOGITS, BINARY_LABELS)
    expected = (_sigmoid(BINARY_LOGITS[:, 0]) - BINARY_LABELS) ** 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_sigmoid_bce_matches_formula():
    loss = losses.make_loss("sigmoid_bce", num_classes=1)(BINARY_LOGITS, BINARY_LABELS)
    p, y = _sigmoid(BINARY_LOGITS[:, 0]), BINARY_LABELS
    np.testing.assert_allclose(loss, -y * np.log(p) - (1 - y) * np.log(1 - p), rtol=1e-5)


def test_softmax_ce_matches_optax_integer_labels():
    loss = losses.make_loss("softmax_ce", num_classes=3)(LOGITS, LABELS)
    np.testing.assert_allclose(loss, optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS), rtol=1e-6)


def test_binary_label_smoothing_targets():
    loss = losses.make_loss("sigmoid_mse", num_classes=1, label_smoothing=0.2)(BINARY_LOGITS, BINARY_LABELS)
    targets = BINARY_LABELS * 0.8 + 0.1
    np.testing.assert_allclose(loss, (_sigmoid(BINARY_LOGITS[:, 0]) - targets) ** 2, rtol=1e-5)


def test_softmax_label_smoothing_by_hand():
    loss = losses.make_loss("softmax_ce", num_classes=3, label_smoothing=0.3)(LOGITS, LABELS)
    targets = np.eye(3)[LABELS] * 0.7 + 0.1
    log_p = LOGITS - np.log(np.exp(LOGITS).sum(-1, keepdims=True))
    np.testing.assert_allclose(loss, -(targets * log_p).sum(-1), rtol=1e-5)


def test_class_weights_scale_each_example_by_its_label():
    plain = losses.make_loss("sigmoid_bce", num_classes=1)(BINARY_LOGITS, BINARY_LABELS)
    weighted = losses.make_loss("sigmoid_bce", num_classes=1, class_weights=(0.5, 3.0))(BINARY_LOGITS, BINARY_LABELS)
    np.testing.assert_allclose(weighted, plain * np.array([3.0, 0.5, 3.0, 0.5]), rtol=1e-6)


def test_sigmoid_bce_is_finite_for_extreme_logits():
    loss_fn = losses.make_loss("sigmoid_bce", num_classes=1, label_smoothing=0.1)
    logits = jnp.array([[100.0], [-100.0], [100.0], [-100.0]])
    labels = jnp.array([0, 1, 1, 0])
    loss, grads = jax.value_and_grad(lambda z: loss_fn(z, labels).sum())(logits)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grads))
    np.testing.assert_allclose(loss_fn(logits[:1], labels[:1]), [100 * 0.95], rtol=1e-5)


def test_loss_runs_under_jit():
    loss_fn = losses.make_loss("softmax_ce", num_classes=3, class_weights=[1.0, 2.0, 3.0])
    np.testing.assert_allclose(jax.jit(loss_fn)(LOGITS, LABELS), loss_fn(LOGITS, LABELS), rtol=1e-6)


@pytest.mark.parametrize(
    "name, num_classes, kwargs, message",
    [
        ("sigmoid_bce", 8, {}, "takes one binary logit, but 8 logits"),
        ("sigmoid_mse", 2, {}, "softmax_ce"),
        ("softmax_ce", 1, {}, "needs one logit per class"),
        ("hinge", 1, {}, "unknown config.loss.name"),
        ("sigmoid_bce", 1, {"class_weights": "balanced"}, "computed by the caller"),
        ("sigmoid_bce", 1, {"class_weights": [1.0, 2.0, 3.0]}, "needs 2 weights"),
        ("softmax_ce", 3, {"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_config_errors(name, num_classes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.make_loss(name, num_classes=num_classes, **kwargs)


def test_logit_width_mismatch_says_what_the_loss_expects():
    with pytest.raises(ValueError, match="columns but the loss expects 1"):
        losses.make_loss("sigmoid_bce", num_classes=1)(LOGITS, LABELS)


def test_probabilities_and_predictions():
    binary = losses.probabilities(BINARY_LOGITS)
    p = _sigmoid(BINARY_LOGITS[:, 0])
    np.testing.assert_allclose(binary, np.stack([1 - p, p], -1), rtol=1e-6)
    np.testing.assert_array_equal(losses.predictions(BINARY_LOGITS), [1, 0, 0, 1])
    np.testing.assert_allclose(losses.probabilities(LOGITS).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(losses.predictions(LOGITS), [0, 1])


def test_the_default_config_builds_a_loss():
    config = default.get_config().loss
    assert config.class_weights is None
    loss_fn = losses.make_loss(
        config.name, num_classes=3, label_smoothing=config.label_smoothing, class_weights=config.class_weights
    )
    assert loss_fn(LOGITS, LABELS).shape == (len(LABELS),)
