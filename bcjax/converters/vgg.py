"""VGG weights onto `bcjax.models.VGG`: torchvision and timm (layout "torch"), Keras VGG16/VGG19
("keras"). The depth and batch norm follow from the convs' keys; the fc layers (`fc_layers=True`)
and the ImageNet classifier are converted when the file has them (Keras' `_notop` files have none).

fc1 needs no reordering: each layout flattens the 7x7x512 grid in its framework's order. timm
stores fc1/fc2 as 7x7/1x1 convs, whose (out, C, H, W) kernels reshape to torch's (out, C*H*W).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from bcjax.models import VGG, LinearHead
from bcjax.models.vgg import ARCHITECTURES, FC_GRID
from bcjax.normalization import PREPROCESSING
from bcjax.pretrained import FORMAT, ConversionError, Converted, StatePath, check_fit


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """Their name for one of our leaves, their shape given ours, and their array -> ours."""

    name: str
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    to_ours: Callable[[np.ndarray], np.ndarray]


def _as_is(name: str) -> _Leaf:
    return _Leaf(name, lambda shape: shape, lambda a: a)


def _conv_as_linear(size: int) -> _Leaf:
    """timm's fc as a size x size conv: (out, C, size, size) -> our (C*size*size, out)."""
    return _Leaf("weight", lambda s: (s[1], s[0] // size**2, size, size), lambda a: a.reshape(a.shape[0], -1).T)


_TORCH_LEAVES = {
    nnx.Conv: {
        "kernel": _Leaf("weight", lambda s: (s[3], s[2], s[0], s[1]), lambda a: a.transpose(2, 3, 1, 0)),  # OIHW
        "bias": _as_is("bias"),
    },
    nnx.BatchNorm: {
        "scale": _as_is("weight"),
        "bias": _as_is("bias"),
        "mean": _as_is("running_mean"),
        "var": _as_is("running_var"),
    },
    nnx.Linear: {"kernel": _Leaf("weight", lambda s: (s[1], s[0]), lambda a: a.T), "bias": _as_is("bias")},
}
_KERAS_LEAVES = {
    nnx.Conv: {"kernel": _as_is("kernel"), "bias": _as_is("bias")},
    nnx.Linear: {"kernel": _as_is("kernel"), "bias": _as_is("bias")},
}


def _torch_features(depths: tuple[int, ...], batch_norm: bool) -> dict[StatePath, str]:
    """Our convs and BNs -> torchvision's `features.{i}`: conv, (BN,) ReLU per conv, a max pool per stage."""
    names, i = {}, 0
    for s, depth in enumerate(depths):
        for k in range(depth):
            names["stages", s, "convs", k] = f"features.{i}"
            if batch_norm:
                names["stages", s, "bns", k] = f"features.{i + 1}"
            i += 3 if batch_norm else 2
        i += 1
    return names


def _keras_features(depths: tuple[int, ...], batch_norm: bool) -> dict[StatePath, str]:
    return {
        ("stages", s, "convs", k): f"block{s + 1}_conv{k + 1}" for s, depth in enumerate(depths) for k in range(depth)
    }


def _torch_depths(tensors: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], bool]:
    """Convs per stage from the `features.{i}` indices: a stage ends where a max pool leaves a gap."""
    convs = sorted(
        int(m[1]) for k, v in tensors.items() if (m := re.fullmatch(r"features\.(\d+)\.weight", k)) and v.ndim == 4
    )
    batch_norm = bool(convs) and f"features.{convs[0] + 1}.running_var" in tensors
    step, depths = (3 if batch_norm else 2), []
    for i, index in enumerate(convs):
        if i == 0 or index - convs[i - 1] > step:
            depths.append(0)
        depths[-1] += 1
    return tuple(depths), batch_norm


def _keras_depths(tensors: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], bool]:
    stages: dict[int, int] = {}
    for key in tensors:
        if m := re.fullmatch(r"block(\d+)_conv(\d+)/kernel", key):
            stages[int(m[1])] = max(stages.get(int(m[1]), 0), int(m[2]))
    return tuple(stages.get(b, 0) for b in range(1, max(stages, default=0) + 1)), False


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Naming:
    """One framework's names for our layers, and how its arrays map onto ours."""

    layout: str
    preprocessing: str  # the name in bcjax.normalization.PREPROCESSING
    depths: Callable[[Mapping[str, np.ndarray]], tuple[tuple[int, ...], bool]]  # (convs per stage, BN) of a file
    features: Callable[[tuple[int, ...], bool], dict[StatePath, str]]  # our conv/BN paths -> their layers
    top: Mapping[StatePath, str]  # our ("fc1",), ("fc2",) and the head's ("dense",) -> their layers
    leaves: Mapping[type, Mapping[str, _Leaf]]
    top_leaves: Mapping[StatePath, Mapping[str, _Leaf]]  # where the fc layers differ from `leaves`
    sep: str  # between their layer and leaf names

    def key(self, layer: str, leaf: _Leaf) -> str:
        return f"{layer}{self.sep}{leaf.name}"


_TORCHVISION = _Naming(
    layout="torch",
    preprocessing="torch",
    depths=_torch_depths,
    features=_torch_features,
    top={("fc1",): "classifier.0", ("fc2",): "classifier.3", ("dense",): "classifier.6"},
    leaves=_TORCH_LEAVES,
    top_leaves={},
    sep=".",
)
_NAMINGS = {
    "torchvision": _TORCHVISION,
    "timm": dataclasses.replace(
        _TORCHVISION,
        top={("fc1",): "pre_logits.fc1", ("fc2",): "pre_logits.fc2", ("dense",): "head.fc"},
        top_leaves={
            ("fc1",): {"kernel": _conv_as_linear(FC_GRID), "bias": _as_is("bias")},
            ("fc2",): {"kernel": _conv_as_linear(1), "bias": _as_is("bias")},
        },
    ),
    "keras": _Naming(
        layout="keras",
        preprocessing="caffe",
        depths=_keras_depths,
        features=_keras_features,
        top={("fc1",): "fc1", ("fc2",): "fc2", ("dense",): "predictions"},
        leaves=_KERAS_LEAVES,
        top_leaves={},
        sep="/",
    ),
}
KINDS = {
    "torchvision": "a torchvision VGG state dict (.pth)",
    "keras": "a Keras VGG16/VGG19 legacy HDF5 weights file (.h5, with or without top)",
    "timm": "a timm VGG model.safetensors",
}


def identify(tensors: Mapping[str, np.ndarray], source: str) -> tuple[str | None, str]:
    """(the VGG these keys hold, or None; what the keys show)."""
    depths, batch_norm = _NAMINGS[source].depths(tensors)
    found = {spec: arch for arch, spec in ARCHITECTURES.items()}.get((depths, batch_norm))
    shows = f"convs per stage {'-'.join(map(str, depths)) or 'none'}{', batch norm' if batch_norm else ''}"
    return found, shows


def _expected(module: nnx.Module, naming: _Naming, layers: Mapping[StatePath, str]) -> dict[str, tuple]:
    """Their key -> (our path, their array -> ours, the shape their array must have)."""
    table = {}
    for path, sub in nnx.iter_modules(module):
        if type(sub) not in naming.leaves:
            continue
        leaves = naming.top_leaves.get(path, naming.leaves[type(sub)])
        for (name,), variable in nnx.to_flat_state(nnx.state(sub)):
            leaf = leaves[name]
            table[naming.key(layers[path], leaf)] = ((*path, name), leaf.to_ours, leaf.shape(tuple(variable.shape)))
    return table


def _take(tensors: Mapping[str, np.ndarray], table: Mapping[str, tuple]) -> dict[StatePath, np.ndarray]:
    return {path: np.ascontiguousarray(to_ours(tensors[k])) for k, (path, to_ours, _) in table.items()}


def convert(tensors: Mapping[str, np.ndarray], source: str, arch: str, what: str) -> Converted:
    """Maps a framework's named arrays (e.g. "features.0.weight", "block1_conv1/kernel") onto our
    VGG `arch`, with fc layers and ImageNet head when the file has them."""
    naming = _NAMINGS[source]
    tensors = {k: v for k, v in tensors.items() if not k.endswith(".num_batches_tracked")}
    fc_layers = naming.key(naming.top["fc1",], _as_is("bias")) in tensors
    try:
        backbone = nnx.eval_shape(lambda: VGG(arch, naming.layout, fc_layers=fc_layers, rngs=nnx.Rngs(0)))
    except ValueError as e:
        raise ConversionError(f"{what}: {e}") from None
    layers = naming.features(*ARCHITECTURES[arch]) | dict(naming.top)
    described = FileModel(what, KINDS[source], arch, naming.layout, source, naming.preprocessing)
    expected = functools.partial(_expected, naming=naming, layers=layers)
    # A model built without fc_layers (global average pool) takes the convs and leaves fc1 and fc2 out.
    options = {"backbone_kwargs": {"fc_layers": fc_layers}, "optional_layers": ["fc1", "fc2"]}
    return convert_with_head(
        tensors, backbone, expected, naming.key(naming.top["dense",], _as_is("bias")), described, options
    )


@dataclasses.dataclass(frozen=True)
class FileModel:
    """A weight file and the model it is converted for, as its metadata and messages name them."""

    what: str  # the file, as messages name it
    kind: str  # the kind of file to pass instead of one that does not fit
    arch: str
    layout: str
    source: str
    preprocessing: str  # a key of bcjax.normalization.PREPROCESSING


def convert_with_head(
    tensors: Mapping[str, np.ndarray],
    backbone: nnx.Module,
    expected: Callable[[nnx.Module], Mapping[str, tuple]],
    head_bias_key: str,
    file: FileModel,
    options: Mapping[str, Any],
) -> Converted:
    """The backbone's tensors, and the ImageNet classifier's when the file has one, checked to fit first.

    `expected(module)` maps the file's keys to ours (a converter's `_expected`); `options` are the
    metadata's `backbone_kwargs` and `optional_layers`.
    """
    head_bias = tensors.get(head_bias_key)
    classes = int(head_bias.shape[0]) if head_bias is not None and head_bias.ndim == 1 else None
    backbone_expected, head_expected = expected(backbone), {}
    if classes:
        head_expected = expected(nnx.eval_shape(lambda: LinearHead(backbone.num_features, classes, rngs=nnx.Rngs(0))))
    check_fit(
        {k: v[2] for k, v in (backbone_expected | head_expected).items()},
        {k: v.shape for k, v in tensors.items()},
        f"{file.what} does not fit {file.arch} ({file.layout} layout) as {file.source} names it",
        f"pass {file.kind} for {file.arch}, complete and unmodified (compare its sha256 "
        "with the published one and download it again if they differ).",
    )
    metadata = {
        "format": FORMAT,
        "architecture": file.arch,
        "layout": file.layout,
        "source": file.source,
        "bn_epsilon": backbone.bn_epsilon,
        "imagenet_classes": classes,
        "preprocessing": dict(PREPROCESSING[file.preprocessing]),
        **options,
    }
    head = _take(tensors, head_expected) if head_expected else None
    return Converted(metadata, _take(tensors, backbone_expected), head)
