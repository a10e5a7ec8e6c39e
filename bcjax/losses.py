"""Per-example losses and the probabilities and predictions that evaluation reads from logits.

Logits are float32 [B, K]: K = 1 is one binary logit (malignant vs benign), otherwise K is the
number of classes. The losses of the recipes:

- 'sigmoid_mse': recipe A, the squared error between sigmoid(logit) and the 0/1 label.
- 'sigmoid_bce': recipe C, binary cross-entropy on one logit (computed from log-sigmoids, so
  logits of +-100 give finite losses and gradients).
- 'softmax_ce': recipes B and D, categorical cross-entropy over K >= 2 logits (recipe D's
  "softmax 2 with binary cross-entropy" is this loss with K = 2).

Label smoothing moves every target towards the uniform distribution over the C label classes
(C = 2 for one logit): target = one_hot * (1 - ls) + ls / C, so a binary target is
y * (1 - ls) + 0.5 * ls. Class weights multiply each example's loss by the weight of its label;
the caller averages, as Keras' `class_weight` does (the sum over the batch divided by its size,
not by the sum of the weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _sigmoid_mse(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.square(jax.nn.sigmoid(logits[:, 0]) - targets[:, 1])


def _sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], targets[:, 1])


def _softmax_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy(logits, targets)


# name -> (per-example loss of logits and smoothed one-hot targets, whether it takes one logit)
LOSSES = {
    "sigmoid_mse": (_sigmoid_mse, True),
    "sigmoid_bce": (_sigmoid_bce, True),
    "softmax_ce": (_softmax_ce, False),
}


def make_loss(
    name: str,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | np.ndarray | jax.Array | None = None,
) -> LossFn:
    """The loss `name` as a function of (logits [B, K] float, labels [B] int) -> losses [B].

    Args:
      name: 'sigmoid_mse', 'sigmoid_bce' (both need num_classes == 1) or 'softmax_ce'
        (num_classes >= 2); config.loss.name.
      num_classes: the model's number of logits K: 1 for the sigmoid losses, else the number of
        classes of config.data.target.
      label_smoothing: in [0, 1); see the module docstring.
      class_weights: one weight per label class (2 for one logit), or None. Weights such as
        sklearn's 'balanced' are computed by the caller from the training labels.
    """
    loss_fn = _loss_for(name, num_classes)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"config.loss.label_smoothing must be in [0, 1), got {label_smoothing}")
    label_classes = max(num_classes, 2)
    weights = _class_weights(class_weights, label_classes)

    def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
        if logits.shape[-1] != num_classes:
            raise ValueError(
                f"logits have {logits.shape[-1]} columns but the loss expects {num_classes} "
                "(1 for a sigmoid loss, else one per class of config.data.target)"
            )
        targets = optax.smooth_labels(jax.nn.one_hot(labels, label_classes), label_smoothing)
        per_example = loss_fn(logits.astype(jnp.float32), targets)
        return per_example if weights is None else per_example * weights[labels]

    return loss


def probabilities(logits: jax.Array) -> jax.Array:
    """Class probabilities [B, C]: [1 - p, p] for one logit, else the softmax."""
    if logits.shape[-1] == 1:
        return jnp.concatenate([jax.nn.sigmoid(-logits), jax.nn.sigmoid(logits)], axis=-1)
    return jax.nn.softmax(logits, axis=-1)


def predictions(logits: jax.Array) -> jax.Array:
    """The predicted class [B] (for one logit: 1 where p > 0.5)."""
    return jnp.argmax(probabilities(logits), axis=-1)


def _loss_for(name: str, num_classes: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if name not in LOSSES:
        raise ValueError(f"unknown config.loss.name {name!r}; choose one of {sorted(LOSSES)}")
    loss_fn, one_logit = LOSSES[name]
    if one_logit and num_classes != 1:
        raise ValueError(
            f"config.loss.name={name!r} takes one binary logit, but {num_classes} logits were asked "
            f"for; use 'softmax_ce' for {num_classes} logits (one per class of config.data.target)"
        )
    if not one_logit and num_classes < 2:
        raise ValueError(
            f"config.loss.name={name!r} needs one logit per class (>= 2), got {num_classes}; "
            "use 'sigmoid_bce' or 'sigmoid_mse' with one logit"
        )
    return loss_fn


def _class_weights(class_weights, label_classes: int) -> jax.Array | None:
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        raise ValueError(
            f"config.loss.class_weights={class_weights!r}: pass one weight per class; weights "
            "such as 'balanced' are computed by the caller from the training labels"
        )
    weights = jnp.asarray(class_weights, jnp.float32)
    if weights.shape != (label_classes,):
        raise ValueError(
            f"config.loss.class_weights needs {label_classes} weights (one per class), got shape {weights.shape}"
        )
    return weights
