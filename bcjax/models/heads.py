"""Classifier heads on pooled backbone features (the backbone does the global pool).

`num_classes=1` gives one logit (binary, for a sigmoid); more gives softmax logits.
The ImageNet "fc" (torchvision/timm) / "predictions" (Keras) layer is a `LinearHead`
with 1000 classes, which the converter can fill.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class MLPHead(nnx.Module):
    """Dense layers with an activation and dropout each, then Dense(num_classes).

    `dropout_first` puts Dropout before the activation, as recipe A publishes it
    (Dense 1024 -> Dropout 0.4 -> ReLU -> Dense 1).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int] = (1024,),
        dropout: float = 0.0,
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
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.activation = activation
        self.dropout_first = dropout_first
        self.out = nnx.Linear(sizes[-1], num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for dense in self.hidden:
            x = dense(x)
            x = act(self.dropout(x)) if self.dropout_first else self.dropout(act(x))
        return self.out(x)


def recipe_a_head(in_features: int, num_classes: int = 1, **kwargs) -> MLPHead:
    """Recipe A (Abu Al-Haija & Manasra): Dense 1024 -> Dropout 0.4 -> ReLU -> Dense."""
    return MLPHead(
        in_features, num_classes, hidden=(1024,), dropout=0.4, activation="relu", dropout_first=True, **kwargs
    )


HEADS = {"linear": LinearHead, "mlp": MLPHead, "recipe_a": recipe_a_head}
