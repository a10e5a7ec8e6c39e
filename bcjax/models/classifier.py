"""Backbone + head, and the factory the trainer builds models with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bcjax.models.heads import HEADS
from bcjax.models.resnet import ResNet


class Classifier(nnx.Module):
    """A ResNet backbone and a head; returns float32 logits (B, num_classes)."""

    def __init__(self, backbone: ResNet, head: nnx.Module):
        self.backbone = backbone
        self.head = head

    def __call__(self, x: jax.Array) -> jax.Array:
        # Logits leave in float32 so that losses and metrics never run in bfloat16.
        return self.head(self.backbone(x)).astype(jnp.float32)


def create_model(
    arch: str = "resnet50",
    layout: str = "v1.5",
    head: str = "linear",
    num_classes: int = 1,
    *,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
    **head_kwargs,
) -> Classifier:
    """Builds a Classifier in train mode (call `model.eval()` for inference).

    Args:
      arch: "resnet18", "resnet34", "resnet50", "resnet101" or "resnet152".
      layout: "v1.5" (torchvision/timm weights), "v1" (Keras ResNet50...) or "v2"
        (Keras ResNet50V2...); it must match the pretrained weights you load.
      head: "linear", "mlp" (kwargs: hidden, dropout, activation, dropout_first) or
        "recipe_a" (Dense 1024 -> Dropout 0.4 -> ReLU -> Dense).
      num_classes: 1 for one binary logit, else the number of classes.
      dtype: compute dtype, e.g. jnp.bfloat16; parameters and BN statistics stay in
        `param_dtype` (float32 by default).
      rngs: needs a "params" (or default) stream; MLP heads also draw "dropout".
      **head_kwargs: passed to the head's constructor.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    backbone = ResNet(arch, layout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    head_module = HEADS[head](
        backbone.num_features, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **head_kwargs
    )
    return Classifier(backbone, head_module)
