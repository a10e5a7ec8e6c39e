"""Classifier heads on pooled backbone features (the backbone does the global pool).

`num_classes=1` gives one logit (binary, for a sigmoid); more gives softmax logits.
The ImageNet "fc" (torchvision/timm) / "predictions" (Keras) layer is a `LinearHead`
with 1000 classes, which the converter can fill. Every published dense stack (recipe A's,
recipe C's three) is one `MLPHead` setting in `PRESETS`, so a new recipe's head is a line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {"relu": nnx.relu, "gelu": nnx.gelu, "silu": nnx.silu, "tanh": jnp.tanh}


class LinearHead(nnx.Module):
    """Dense(num_classes) on the features."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dense = nnx.Linear(in_features, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense(x)


def dropout_rates(dropout: float | Sequence[float], layers: int) -> tuple[float, ...]:
    """One rate per hidden layer from one rate for all, or from one rate each."""
    rates = tuple(dropout) if isinstance(dropout, Sequence) else (dropout,) * layers
    if len(rates) != layers:
        raise ValueError(f"dropout has {len(rates)} rates for {layers} hidden layers; give one rate, or one per layer")
    return rates


class MLPHead(nnx.Module):
    """[Dropout] -> (Dense -> activation -> Dropout) per hidden layer -> Dense(num_classes).

    `dropout` is one rate for every hidden layer or one per layer (0: none); `input_dropout` drops
    the pooled features before the first Dense, as recipe C's stacks do; `dropout_first` puts each
    Dropout before its activation, as recipe A publishes it (Dense 1024 -> Dropout 0.4 -> ReLU).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int] = (1024,),
        dropout: float | Sequence[float] = 0.0,
        input_dropout: float = 0.0,
        activation: str = "relu",
        dropout_first: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        sizes = (in_features, *hidden)
        self.hidden = nnx.List(
            [nnx.Linear(a, b, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for a, b in zip(sizes, sizes[1:])]
        )
        self.input_dropout = nnx.Dropout(input_dropout, rngs=rngs)
        self.dropouts = nnx.List([nnx.Dropout(rate, rngs=rngs) for rate in dropout_rates(dropout, len(hidden))])
        self.activation = activation
        self.dropout_first = dropout_first
        self.out = nnx.Linear(sizes[-1], num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        x = self.input_dropout(x)
        for dense, dropout in zip(self.hidden, self.dropouts):
            x = dense(x)
            x = act(dropout(x)) if self.dropout_first else dropout(act(x))
        return self.out(x)


# The papers' dense stacks, as MLPHead settings (ReLU hidden layers; MODELS.md section 2).
PRESETS: dict[str, dict[str, Any]] = {
    # Recipe A: Dense 1024 -> Dropout 0.4 -> ReLU -> Dense.
    "recipe_a": dict(hidden=(1024,), dropout=0.4, dropout_first=True),
    # Recipe C, VGG16: Dropout 0.4, Dense 384, Dropout 0.3, Dense 64, Dropout 0.2, Dense.
    "recipe_c_vgg16": dict(input_dropout=0.4, hidden=(384, 64), dropout=(0.3, 0.2)),
    # Recipe C, MobileNetV3: Dropout 0.4, Dense 256, Dropout 0.3, Dense 32, Dropout 0.2, Dense.
    "recipe_c_mobilenetv3": dict(input_dropout=0.4, hidden=(256, 32), dropout=(0.3, 0.2)),
    # Recipe C, ResNet50V2: Dropout 0.4, Dense 256, Dense 32, Dense 32, Dropout 0.2, Dense.
    "recipe_c_resnet50v2": dict(input_dropout=0.4, hidden=(256, 32, 32), dropout=(0.0, 0.0, 0.2)),
}


def _preset(settings: dict[str, Any]) -> Callable[..., MLPHead]:
    """A head builder with the preset's layers fixed: it takes only what create_model gives every head."""

    def build(
        in_features: int,
        num_classes: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> MLPHead:
        return MLPHead(in_features, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **settings)

    return build


HEADS: dict[str, Callable[..., nnx.Module]] = {
    "linear": LinearHead,
    "mlp": MLPHead,
    **{name: _preset(settings) for name, settings in PRESETS.items()},
}
