"""Converted ImageNet weights: the directory `python -m bcjax.convert` writes, and loading it.

A converted directory holds an orbax checkpoint of the backbone (params + batch stats) in
`backbone/`, the ImageNet classifier, when the file had one, in `imagenet_head/` (so the
trainer can leave it out), and `metadata.json` (architecture, layout, source, input file
and sha256, BN epsilon, the preprocessing the weights expect). The trainer fills its model
with `load_pretrained(model, config.model.init_from)`; nothing here reads framework files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bcjax.models import Classifier, family_of
from bcjax.normalization import preprocessing_normalizer

FORMAT = "bcjax.pretrained/1"

StatePath = tuple  # e.g. ("stages", 0, 1, "convs", 2, "kernel")


class ConversionError(Exception):
    """A weight file or converted checkpoint that cannot be used; the message lists
    every problem found and says what to do."""


@dataclasses.dataclass(frozen=True)
class Converted:
    """Converted weights keyed by NNX state path, ready to save or to load into a model."""

    metadata: dict[str, Any]
    backbone: dict[StatePath, np.ndarray]
    head: dict[StatePath, np.ndarray] | None


def check_fit(expected: Mapping[str, tuple], found: Mapping[str, tuple], mismatch: str, advice: str) -> None:
    """Raises one ConversionError listing every missing, unexpected and wrongly shaped key
    (key -> shape on both sides), so a bad file is diagnosed in one go, not key by key."""
    lines = [f"missing: {k} (shape {expected[k]})" for k in expected if k not in found]
    lines += [f"unexpected: {k} (shape {found[k]})" for k in found if k not in expected]
    lines += [
        f"wrong shape: {k} is {found[k]}, expected {expected[k]}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    if lines:
        raise ConversionError(
            f"{mismatch}; {len(lines)} problem(s):\n  " + "\n  ".join(lines) + f"\nWhat to do: {advice}"
        )


# ---------------------------------------------------------------------------------------
# The directory: save, read.


def _nest(flat: Mapping[StatePath, np.ndarray]) -> dict:
    """{("stages", 0, 1, "kernel"): a} -> {"stages": {"0": {"1": {"kernel": a}}}} for orbax."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = value
    return tree


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        flat.update(_flatten(value, path) if isinstance(value, Mapping) else {path: value})
    return flat


def save_converted(converted: Converted, output: str | os.PathLike) -> Path:
    """Writes backbone/, imagenet_head/ and metadata.json into a new directory `output`,
    through a temporary sibling renamed at the end, so a failure leaves nothing behind."""
    import orbax.checkpoint as ocp

    output = Path(output).absolute()
    if output.exists():
        raise ConversionError(f"{output} exists; choose a new --output or remove it first")
    staging = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        staging.mkdir(parents=True)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / "backbone", _nest(converted.backbone))
            if converted.head is not None:
                checkpointer.save(staging / "imagenet_head", _nest(converted.head))
        (staging / "metadata.json").write_text(json.dumps(converted.metadata, indent=2) + "\n")
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def read_converted(directory: str | os.PathLike, *, load_head: bool = False) -> Converted:
    """Reads a directory written by `save_converted` (the head only when asked for)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    try:
        metadata = json.loads((directory / "metadata.json").read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(
            f"{directory} is not a converted checkpoint ({e}); make one with python -m bcjax.convert"
        ) from e
    if metadata.get("format") != FORMAT:
        raise ConversionError(
            f"{directory}/metadata.json has format {metadata.get('format')!r}, "
            f"expected {FORMAT!r}; convert the weights again"
        )
    with ocp.StandardCheckpointer() as checkpointer:
        backbone = _flatten(checkpointer.restore(directory / "backbone"))
        head = None
        if load_head and metadata["imagenet_classes"]:
            head = _flatten(checkpointer.restore(directory / "imagenet_head"))
    return Converted(metadata, backbone, head)


# ---------------------------------------------------------------------------------------
# Into a model.


def _assign(module: nnx.Module, flat: Mapping[tuple, Any], what: str, own_layers: Sequence[str] = ()) -> None:
    """Copies arrays into `module`'s variables after checking keys and shapes; a variable
    already placed on devices keeps its sharding. `own_layers` (top-level) keep their values."""
    # Weights only: parameters and batch statistics, not the RNG state of a dropout layer (VGG fc layers).
    weights = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    variables = {
        "/".join(map(str, path)): v for path, v in nnx.to_flat_state(weights) if str(path[0]) not in own_layers
    }
    flat = {"/".join(map(str, path)): value for path, value in flat.items()}
    check_fit(
        {k: tuple(v.shape) for k, v in variables.items()},
        {k: tuple(np.shape(v)) for k, v in flat.items()},
        f"{what} does not fit the model",
        "build the model with the architecture, layout and head the checkpoint was converted for "
        "(see its metadata.json)",
    )
    for key, variable in variables.items():
        current = variable.get_value()
        value = np.asarray(flat[key], current.dtype)
        variable.set_value(jax.device_put(value, current.sharding if isinstance(current, jax.Array) else None))


def _present_or_required(
    module: nnx.Module, flat: Mapping[StatePath, np.ndarray], optional: Sequence[str]
) -> dict[StatePath, np.ndarray]:
    """`flat` without the `optional` top-level layers that `module` was built without (VGG's ImageNet
    fc1/fc2 when the model pools globally); every other array must still fit."""
    present = {str(path[0]) for path, _ in nnx.to_flat_state(nnx.state(module))}
    return {path: v for path, v in flat.items() if str(path[0]) in present or str(path[0]) not in optional}


def apply_converted(model: Classifier, converted: Converted, *, load_head: bool = False) -> None:
    """Fills `model.backbone` (and with `load_head`, the ImageNet LinearHead `model.head`)."""
    meta = converted.metadata
    backbone = model.backbone
    family = family_of(backbone.arch)  # an ERNet takes the weights of its ResNet and keeps its own layers
    ours = (family.init_arch(backbone.arch), backbone.layout, getattr(backbone, "bn_epsilon", None))
    wanted = (meta["architecture"], meta["layout"], meta.get("bn_epsilon"))
    if ours != wanted:
        model_is = f"{backbone.arch}, initialised from {ours[0]}," if ours[0] != backbone.arch else ours[0]
        raise ConversionError(
            f"the weights are {wanted[0]} layout {wanted[1]} (BN eps {wanted[2]}), "
            f"the model is {model_is} layout {ours[1]} (BN eps {ours[2]}); "
            f"build it with create_model({family.arch_initialised_by(wanted[0]) or wanted[0]!r}, {wanted[1]!r}, ...)"
        )
    _assign(
        backbone,
        _present_or_required(backbone, converted.backbone, meta.get("optional_layers", ())),
        "the backbone weights",
        family.own_layers,
    )
    if load_head:
        if converted.head is None:
            raise ConversionError("the weights have no ImageNet head; call with load_head=False")
        _assign(model.head, converted.head, "the ImageNet head")


def load_pretrained(model: Classifier, directory: str | os.PathLike, *, load_head: bool = False) -> dict:
    """Fills `model` from `python -m bcjax.convert` output; returns its metadata.

    The trainer calls this with `config.model.init_from`; feed the images through
    `preprocess(images, metadata["preprocessing"])`. `load_head=True` also loads the
    ImageNet classifier into a `LinearHead` with as many classes.
    """
    converted = read_converted(directory, load_head=load_head)
    apply_converted(model, converted, load_head=load_head)
    return converted.metadata


def preprocess(images: jax.typing.ArrayLike, preprocessing: Mapping[str, Any]) -> jax.Array:
    """uint8 RGB NHWC images -> float32 input normalised as the pretrained weights expect.

    `preprocessing` is `metadata["preprocessing"]`: (x[..., order] * scale - mean) / std.
    """
    return jnp.asarray(preprocessing_normalizer(preprocessing)(jnp.asarray(images)))
