"""Grad-CAM (Selvaraju et al. 2017) for any backbone of `bcjax.models.registry`, one jitted function per batch.

The map of class c is ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of d y_c / d A_k, where A
is a feature map and y_c the class's pre-softmax score (for one binary logit: +logit for class 1,
-logit for class 0, as pytorch-grad-cam's `BinaryClassifierOutputTarget`). By default A is the
backbone's last feature map: the model is split there (`Classifier.feature_map`) and the head's
`jax.vjp` gives the gradient. Another layer is named by its module path in the model
(`backbone.stages.2`): its output is tapped and perturbed, and the gradient taken at zero
perturbation. Maps are min-max scaled per image, bilinearly upsampled to the input size and
scaled again, exactly as pytorch-grad-cam's `GradCAM` does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from bcjax.normalization import Normalizer

_EPSILON = 1e-7  # pytorch-grad-cam's: (x - min) / (1e-7 + max)


class LayerError(ValueError):
    """`layer` names no module of the model; the message lists the names one level down."""


def grad_cam(
    model: nnx.Module, inputs: jax.Array, targets: jax.Array | None = None, *, layer: str | None = None
) -> jax.Array:
    """Grad-CAM maps (B, H, W) in [0, 1] of model inputs (B, H, W, 3) (already normalised).

    `targets` holds one class id per image (default: each image's highest-scoring class);
    `layer` a module path such as "backbone.stages.2" (default: the backbone's last feature map).
    The model runs in evaluation mode.
    """
    graphdef, state = nnx.split(model)
    return _grad_cam(graphdef, (state,), jnp.asarray(inputs), None if targets is None else jnp.asarray(targets), layer)


def batch_grad_cam(graphdef: nnx.GraphDef, normalizer: Normalizer, layer: str | None) -> Callable:
    """`fn(states, images, targets) -> maps`: Grad-CAM of uint8 images, normalised inside, for a model split
    into `graphdef` and `states` (e.g. the train state's (params, rest)); jitted, as the predictor calls it.
    The maps follow the images' sharding."""
    return jax.jit(functools.partial(_cam_of_pixels, graphdef, normalizer, layer))


def _cam_of_pixels(graphdef, normalizer, layer, states, images, targets):
    return _maps(nnx.merge(graphdef, *states, copy=True), normalizer(images), targets, layer)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _grad_cam(graphdef, states, inputs, targets, layer):
    return _maps(nnx.merge(graphdef, *states, copy=True), inputs, targets, layer)


def _maps(model: nnx.Module, inputs: jax.Array, targets: jax.Array | None, layer: str | None) -> jax.Array:
    model.eval()
    activations, gradients = (_at_feature_map if layer is None else _at_layer)(model, inputs, targets, layer)
    weights = gradients.astype(jnp.float32).mean(axis=(1, 2), keepdims=True)
    cam = jax.nn.relu((weights * activations.astype(jnp.float32)).sum(-1))
    cam = jax.image.resize(_min_max(cam), (*cam.shape[:1], *inputs.shape[1:3]), "bilinear")
    return _min_max(cam)


def _score_cotangent(logits: jax.Array, targets: jax.Array | None) -> jax.Array:
    """d(sum of each image's target score)/d logits: one-hot rows, or +-1 for one binary logit."""
    if logits.shape[-1] == 1:
        targets = (logits[:, 0] > 0).astype(jnp.int32) if targets is None else targets
        return jnp.where(targets == 1, 1.0, -1.0)[:, None].astype(logits.dtype)
    targets = jnp.argmax(logits, -1) if targets is None else targets
    return jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)


def _at_feature_map(model, inputs, targets, layer):
    """The backbone's last feature map and the gradient of the target scores there (vjp of the head)."""
    del layer
    activations = model.feature_map(inputs)
    logits, head_vjp = jax.vjp(model.logits_from_feature_map, activations)
    (gradients,) = head_vjp(_score_cotangent(logits, targets))
    return activations, gradients


def _at_layer(model, inputs, targets, layer):
    """The output of the module at `layer` and the target scores' gradient there: the module is swapped
    (here, outside the inner transforms, where the merged model may change) for a tap that records its
    output and adds a perturbation, whose gradient at zero is the gradient at the output."""
    parent, key = _parent_of(model, layer)
    inner = _child(parent, key)
    cell: dict = {}

    def tap(output):
        cell["activations"] = output
        return output + cell["perturbation"] if cell.get("perturbation") is not None else output

    def logits_with(perturbation):
        cell.update(perturbation=perturbation, activations=None)
        logits = model(inputs)
        if cell["activations"] is None:
            raise LayerError(f"layer {layer!r} is never called on its own (a container?): name one of its modules")
        return logits, cell["activations"]

    _replace(parent, key, _Tap(inner, tap))
    try:
        shape = jax.eval_shape(lambda: logits_with(None)[1])
        logits, vjp, activations = jax.vjp(logits_with, jnp.zeros(shape.shape, shape.dtype), has_aux=True)
    finally:
        _replace(parent, key, inner)
    (gradients,) = vjp(_score_cotangent(logits, targets))
    if activations.ndim != 4:
        raise LayerError(f"layer {layer!r} gives {activations.ndim}-D outputs; Grad-CAM needs a (B, H, W, C) map")
    return activations, gradients


class _Tap(nnx.Module):
    """Stands in for a module and passes its output through `tap`."""

    def __init__(self, inner: nnx.Module, tap: Callable):
        self.inner, self.tap = inner, tap

    def __call__(self, *args, **kwargs):
        return self.tap(self.inner(*args, **kwargs))


def _parent_of(model: nnx.Module, layer: str) -> tuple[object, str | int]:
    """The module holding `layer`'s last part, and that part (an index for lists)."""
    parts = [int(p) if p.isdigit() else p for p in layer.split(".")]
    node = model
    for depth, part in enumerate(parts):
        child = _child(node, part)
        if not isinstance(child, nnx.Module):
            where = ".".join(map(str, parts[:depth])) or "the model"
            raise LayerError(f"no layer {layer!r}: {where} holds {_children(node)}")
        parent, node = node, child
    return parent, parts[-1]


def _child(node, part):
    if isinstance(part, int):
        return node[part] if isinstance(node, nnx.List) and part < len(node) else None
    return getattr(node, part, None)


def _children(node) -> str:
    names = [str(key) for key, _ in nnx.iter_children(node)]
    return ", ".join(names) if names else "no submodules"


def _replace(parent, key, module) -> None:
    if isinstance(key, int):
        parent[key] = module
    else:
        setattr(parent, key, module)


def _min_max(maps: jax.Array) -> jax.Array:
    """(x - min) / (1e-7 + max of x - min), per image."""
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    return maps / (_EPSILON + maps.max(axis=(1, 2), keepdims=True))
