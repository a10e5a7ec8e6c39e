"""Backbone + head, and the factory the trainer builds models with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bcjax.models.heads import HEADS
from bcjax.models.registry import build_backbone


class Classifier(nnx.Module):
    """A backbone (any `bcjax.models.registry` family) and a head; returns float32 logits
    (B, num_classes).

    `feature_map` and `logits_from_feature_map` split the forward pass at the backbone's last
    feature map, where Grad-CAM differentiates: `model(x) == logits_from_feature_map(feature_map(x))`.
    """

    def __init__(self, backbone: nnx.Module, head: nnx.Module):
        self.backbone = backbone
        self.head = head

    def feature_map(self, x: jax.Array) -> jax.Array:
        return self.backbone.feature_map(x)

    def logits_from_feature_map(self, feature_map: jax.Array) -> jax.Array:
        # Logits leave in float32 so that losses and metrics never run in bfloat16.
        return self.head(self.backbone.pool(feature_map)).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.logits_from_feature_map(self.feature_map(x))


def create_model(
    arch: str = "resnet50",
    layout: str | None = None,
    head: str = "linear",
    num_classes: int = 1,
    *,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **head_kwargs,
) -> Classifier:
    """Builds a Classifier in train mode (call `model.eval()` for inference).

    Args:
      arch: any name in `bcjax.models.registry.ARCHITECTURES` ("resnet50", ...).
      layout: the framework variant, which must match the pretrained weights you load; each
        family lists its own (ResNet: "v1.5" torchvision/timm, "v1" Keras ResNet50, "v2"
        Keras ResNet50V2); None takes the family's first.
      head: "linear", "mlp" (kwargs: hidden, dropout, input_dropout, activation, dropout_first)
        or a published stack of `bcjax.models.heads.PRESETS` ("recipe_a", "recipe_c_vgg16", ...).
      num_classes: 1 for one binary logit, else the number of classes.
      dtype: compute dtype, e.g. jnp.bfloat16; parameters and BN statistics stay in
        `param_dtype` (float32 by default).
      rngs: needs a "params" (or default) stream; MLP heads also draw "dropout".
      backbone_kwargs: the family's own options (e.g. ResNet's bn_epsilon).
      **head_kwargs: passed to the head's constructor.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    backbone_kwargs = dict(backbone_kwargs or {})
    key = (arch, layout, head, num_classes, str(dtype), str(param_dtype), repr(backbone_kwargs), repr(head_kwargs))
    if key not in _JITTED_BUILDERS:

        def build(rngs: nnx.Rngs) -> Classifier:
            backbone = build_backbone(arch, layout, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **backbone_kwargs)
            head_module = HEADS[head](
                backbone.num_features, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **head_kwargs
            )
            return Classifier(backbone, head_module)

        _JITTED_BUILDERS[key] = nnx.jit(build)
    return _JITTED_BUILDERS[key](rngs)


# Building a model eagerly compiles one small program per initialiser call and shape (~80 for a
# ResNet-18, ~10 s on a CPU); one jitted builder per configuration is a single program, which
# JAX's persistent cache keeps across processes. Same initial values (to float32 rounding).
_JITTED_BUILDERS: dict[tuple, Any] = {}
