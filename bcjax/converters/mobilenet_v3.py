"""MobileNetV3 weights onto `bcjax.models.MobileNetV3`: torchvision (layout "torch"), timm
mobilenetv3_*_100 ("timm") and Keras MobileNetV3Large/Small ("keras"). Large or Small follows from
the number of blocks; the pre-logits layer (`pre_logits=True`) and the ImageNet classifier are
converted when the file has them (Keras' no-top files have neither).

Keras names: the published legacy HDF5 files (Keras 2) call the layers "Conv", "Conv/BatchNorm",
"expanded_conv_3/depthwise/BatchNorm", "expanded_conv_3/squeeze_excite/Conv_1", "Conv_1", "Conv_2",
"Logits", and a depthwise kernel "depthwise_kernel"; Keras 3, which forbids "/" in names, writes
"conv", "conv_bn", "expanded_conv_3_depthwise_bn", ..., and "kernel". Both are read; messages use
the file's own naming. Array layouts: torch OIHW kernels (depthwise (C, 1, k, k)) -> HWIO
(k, k, 1, C); Keras depthwise (k, k, C, 1) -> (k, k, 1, C); Keras' 1x1 Conv_2/Logits and timm's
conv_head -> dense kernels.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

from bcjax.converters.vgg import _TORCH_LEAVES, FileModel, _as_is, _Leaf, convert_with_head
from bcjax.models import MobileNetV3
from bcjax.models.mobilenet_v3 import ARCHITECTURES, STEM_WIDTH
from bcjax.pretrained import ConversionError, Converted, StatePath

_BY_BLOCKS = {len(blocks): arch for arch, (blocks, _, _) in ARCHITECTURES.items()}
# timm groups the blocks into stages (blocks.{stage}.{index}); the last stage is the 1x1 conv to 960/576.
_TIMM_STAGES = {"mobilenet_v3_large": (1, 2, 3, 4, 2, 3), "mobilenet_v3_small": (1, 2, 3, 2, 3)}

# Our module paths inside one block, in a block's order.
_BLOCK_PARTS = (
    ("expand_conv",),
    ("expand_bn",),
    ("depthwise_conv",),
    ("depthwise_bn",),
    ("se", "reduce"),
    ("se", "expand"),
    ("project_conv",),
    ("project_bn",),
)
_KERAS_BLOCK = {
    "expand_conv": "expand",
    "expand_bn": "expand/BatchNorm",
    "depthwise_conv": "depthwise",
    "depthwise_bn": "depthwise/BatchNorm",
    "project_conv": "project",
    "project_bn": "project/BatchNorm",
    "reduce": "squeeze_excite/Conv",
    "expand": "squeeze_excite/Conv_1",
}
_TIMM_BLOCK = {  # an inverted residual ("ir" in timm's architecture strings)
    "expand_conv": "conv_pw",
    "expand_bn": "bn1",
    "depthwise_conv": "conv_dw",
    "depthwise_bn": "bn2",
    "project_conv": "conv_pwl",
    "project_bn": "bn3",
    "reduce": "se.conv_reduce",
    "expand": "se.conv_expand",
}
# timm's first block ("ds", depthwise-separable) has no expansion and numbers its layers from there.
_TIMM_FIRST_BLOCK = _TIMM_BLOCK | {"depthwise_bn": "bn1", "project_conv": "conv_pw", "project_bn": "bn2"}


def _present(arch: str) -> list[list[tuple[str, ...]]]:
    """Per block, the paths of its layers that exist in `arch` (no expand when the width is kept,
    no squeeze-excite in some blocks)."""
    blocks, _, _ = ARCHITECTURES[arch]
    widths = [STEM_WIDTH] + [block[2] for block in blocks]
    present = []
    for i, (_, expanded, _, se, _, _) in enumerate(blocks):
        skip = ({"expand_conv", "expand_bn"} if expanded == widths[i] else set()) | (set() if se else {"se"})
        present.append([part for part in _BLOCK_PARTS if part[0] not in skip])
    return present


# ---------------------------------------------------------------------------------------
# Their layer names for our module paths.


def _torchvision_layers(arch: str) -> dict[StatePath, str]:
    """`features.0` stem, `features.{i}.block.{j}.{0: conv, 1: BN | fc1, fc2: SE}` (j counts the conv+BN
    pairs and the SE module), `features.{n+1}` last conv, `classifier.0` pre-logits, `classifier.3` ImageNet."""
    names = {("stem_conv",): "features.0.0", ("stem_bn",): "features.0.1"}
    blocks = _present(arch)
    for i, parts in enumerate(blocks):
        j = 0
        for part in parts:
            inner = {("se", "reduce"): "fc1", ("se", "expand"): "fc2"}.get(
                part, "1" if part[0].endswith("_bn") else "0"
            )
            names["blocks", i, *part] = f"features.{i + 1}.block.{j}.{inner}"
            j += part[0].endswith("_bn") or part == ("se", "expand")  # the next module of the block
    last = f"features.{len(blocks) + 1}"
    return names | {("last_conv",): f"{last}.0", ("last_bn",): f"{last}.1"} | _TOP["torchvision"]


def _timm_layers(arch: str) -> dict[StatePath, str]:
    """`conv_stem`/`bn1`, `blocks.{stage}.{index}.{layer}`, the last stage's conv/bn1, `conv_head`."""
    names = {("stem_conv",): "conv_stem", ("stem_bn",): "bn1"}
    stages = _TIMM_STAGES[arch]
    where = [(s, b) for s, n in enumerate(stages) for b in range(n)]
    for i, parts in enumerate(_present(arch)):
        theirs = _TIMM_FIRST_BLOCK if i == 0 else _TIMM_BLOCK
        for part in parts:
            names["blocks", i, *part] = "blocks.{}.{}.".format(*where[i]) + theirs[part[-1]]
    last = f"blocks.{len(stages)}.0"
    return names | {("last_conv",): f"{last}.conv", ("last_bn",): f"{last}.bn1"} | _TOP["timm"]


def _keras_layers(arch: str) -> dict[StatePath, str]:
    """The published (Keras 2) names, "expanded_conv_{i}/{layer}"; `_keras3_name` gives Keras 3's."""
    names = {("stem_conv",): "Conv", ("stem_bn",): "Conv/BatchNorm"}
    for i, parts in enumerate(_present(arch)):
        prefix = f"expanded_conv_{i}" if i else "expanded_conv"
        names |= {("blocks", i, *part): f"{prefix}/{_KERAS_BLOCK[part[-1]]}" for part in parts}
    return names | {("last_conv",): "Conv_1", ("last_bn",): "Conv_1/BatchNorm"} | _TOP["keras"]


def _keras3_name(name: str) -> str:
    """Keras 3's name of a published layer: "expanded_conv_3/depthwise/BatchNorm" -> "expanded_conv_3_depthwise_bn"."""
    return name.replace("/BatchNorm", "_bn").replace("/", "_").lower()


_TOP = {
    "torchvision": {("pre_logits",): "classifier.0", ("dense",): "classifier.3"},
    "timm": {("pre_logits",): "conv_head", ("dense",): "classifier"},
    "keras": {("pre_logits",): "Conv_2", ("dense",): "Logits"},
}

# ---------------------------------------------------------------------------------------
# Their leaves and array layouts.


_1X1_AS_DENSE = _Leaf("weight", lambda s: (s[1], s[0], 1, 1), lambda a: a[:, :, 0, 0].T)  # timm conv_head
_KERAS_1X1_AS_DENSE = _Leaf("kernel", lambda s: (1, 1, *s), lambda a: a[0, 0])  # Keras Conv_2, Logits
_KERAS_BN = {
    "scale": _as_is("gamma"),
    "bias": _as_is("beta"),
    "mean": _as_is("moving_mean"),
    "var": _as_is("moving_variance"),
}


def _torch_leaves(conv_head: bool) -> Callable[[StatePath, nnx.Module], Mapping[str, _Leaf]]:
    """torch leaves; `conv_head`: the pre-logits layer is a 1x1 conv (timm), not a Linear (torchvision)."""

    def leaves(path: StatePath, module: nnx.Module) -> Mapping[str, _Leaf]:
        if conv_head and path == ("pre_logits",):
            return {"kernel": _1X1_AS_DENSE, "bias": _as_is("bias")}
        return _TORCH_LEAVES[type(module)]

    return leaves


def _keras_leaves(depthwise_kernel: str) -> Callable[[StatePath, nnx.Module], Mapping[str, _Leaf]]:
    """Keras leaves; `depthwise_kernel` is the depthwise kernel's name ("depthwise_kernel" in Keras 2 files)."""
    depthwise = _Leaf(depthwise_kernel, lambda s: (s[0], s[1], s[3], 1), lambda a: a.transpose(0, 1, 3, 2))

    def leaves(path: StatePath, module: nnx.Module) -> Mapping[str, _Leaf]:
        if isinstance(module, nnx.BatchNorm):
            return _KERAS_BN
        if isinstance(module, nnx.Linear):
            return {"kernel": _KERAS_1X1_AS_DENSE, "bias": _as_is("bias")}
        kernel = depthwise if module.feature_group_count > 1 else _as_is("kernel")
        return {"kernel": kernel, "bias": _as_is("bias")}

    return leaves


# ---------------------------------------------------------------------------------------
# One framework's naming.


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Naming:
    layout: str
    preprocessing: str  # the name in bcjax.normalization.PREPROCESSING
    layers: Callable[[str], dict[StatePath, str]]  # arch -> our module path -> their layer
    rename: Callable[[str], str]  # their layer name as this file spells it
    leaves: Callable[[StatePath, nnx.Module], Mapping[str, _Leaf]]
    sep: str  # between their layer and leaf names
    count_blocks: Callable[[Mapping[str, np.ndarray]], int]

    def key(self, layer: str, leaf: str) -> str:
        return f"{self.rename(layer)}{self.sep}{leaf}"


def _distinct(pattern: str, tensors: Mapping[str, np.ndarray]) -> set[tuple[str, ...]]:
    return {m.groups() for key in tensors if (m := re.match(pattern, key))}


def _torchvision_blocks(tensors: Mapping[str, np.ndarray]) -> int:
    return len(_distinct(r"features\.(\d+)\.block\.", tensors))


def _timm_blocks(tensors: Mapping[str, np.ndarray]) -> int:
    """Blocks in `blocks.{stage}.{index}.`, less the last stage's 1x1 conv (`blocks.{s}.0.conv.weight`)."""
    blocks = _distinct(r"blocks\.(\d+)\.(\d+)\.", tensors)
    return len(blocks - _distinct(r"blocks\.(\d+)\.(0)\.conv\.weight", tensors))


def _keras_blocks(tensors: Mapping[str, np.ndarray]) -> int:
    return len(_distinct(r"expanded_conv(?:_(\d+))?[/_](?:expand|depthwise|project)", tensors))


def _naming(source: str, tensors: Mapping[str, np.ndarray]) -> _Naming:
    """The naming of `source`; for Keras, of the Keras version that wrote these keys."""
    if source in ("torchvision", "timm"):
        timm = source == "timm"
        return _Naming(
            layout=source.replace("torchvision", "torch"),
            preprocessing="torch",
            layers=_timm_layers if timm else _torchvision_layers,
            rename=str,
            leaves=_torch_leaves(conv_head=timm),
            sep=".",
            count_blocks=_timm_blocks if timm else _torchvision_blocks,
        )
    keras3 = any(key.startswith(("conv/", "conv_bn/")) for key in tensors)
    return _Naming(
        layout="keras",
        preprocessing="tf",
        layers=_keras_layers,
        rename=_keras3_name if keras3 else str,
        leaves=_keras_leaves("kernel" if keras3 else "depthwise_kernel"),
        sep="/",
        count_blocks=_keras_blocks,
    )


KINDS = {
    "torchvision": "a torchvision MobileNetV3 state dict (.pth)",
    "keras": "a Keras MobileNetV3Large/Small legacy HDF5 weights file (.h5, with or without top)",
    "timm": "a timm mobilenetv3_large_100/small_100 model.safetensors",
}


def identify(tensors: Mapping[str, np.ndarray], source: str) -> tuple[str | None, str]:
    """(the MobileNetV3 these keys hold, or None; what the keys show)."""
    count = _naming(source, tensors).count_blocks(tensors)
    return _BY_BLOCKS.get(count), f"{count} inverted-residual blocks"


def _expected(module: nnx.Module, naming: _Naming, layers: Mapping[StatePath, str]) -> dict[str, tuple]:
    """Their key -> (our path, their array -> ours, the shape their array must have)."""
    table = {}
    for path, sub in nnx.iter_modules(module):
        if not isinstance(sub, (nnx.Conv, nnx.BatchNorm, nnx.Linear)):
            continue
        leaves = naming.leaves(path, sub)
        for (name,), variable in nnx.to_flat_state(nnx.state(sub)):
            leaf = leaves[name]
            key = naming.key(layers[path], leaf.name)
            table[key] = ((*path, name), leaf.to_ours, leaf.shape(tuple(variable.shape)))
    return table


def convert(tensors: Mapping[str, np.ndarray], source: str, arch: str, what: str) -> Converted:
    """Maps a framework's named arrays (e.g. "features.1.block.0.0.weight", "expanded_conv/depthwise/
    depthwise_kernel") onto our MobileNetV3 `arch`, with pre-logits and ImageNet head when the file has them."""
    naming = _naming(source, tensors)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(".num_batches_tracked")}
    layers = naming.layers(arch)
    pre_logits = naming.key(layers["pre_logits",], "bias") in tensors
    try:
        backbone = nnx.eval_shape(lambda: MobileNetV3(arch, naming.layout, pre_logits=pre_logits, rngs=nnx.Rngs(0)))
    except ValueError as e:
        raise ConversionError(f"{what}: {e}") from None
    described = FileModel(what, KINDS[source], arch, naming.layout, source, naming.preprocessing)
    expected = functools.partial(_expected, naming=naming, layers=layers)
    # A model built without pre_logits (recipe C: the pooled 960/576 map) takes the rest and leaves it out.
    options = {"backbone_kwargs": {"pre_logits": pre_logits}, "optional_layers": ["pre_logits"]}
    return convert_with_head(tensors, backbone, expected, naming.key(layers["dense",], "bias"), described, options)
