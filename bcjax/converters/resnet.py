"""ResNet weights (torchvision, timm: v1.5; Keras: v1, or v2 when `post_bn`/`*_preact_bn` exist)
onto `bcjax.models.ResNet`; the depth follows from the keys."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

from bcjax.models import BN_EPSILON, LinearHead, ResNet
from bcjax.models.resnet import ARCHITECTURES
from bcjax.normalization import PREPROCESSING
from bcjax.pretrained import FORMAT, Converted, StatePath, check_fit

# Keras ResNet (v1) expects "caffe" input, ResNetV2 "tf", torchvision and timm "torch".
_PREPROCESSING_OF_LAYOUT = {"v1.5": "torch", "v1": "caffe", "v2": "tf"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Naming:
    """One framework's names for our layers, and what its files need before mapping."""

    framework: str  # for messages
    layers: Mapping[str, str]  # our top-level layer -> their layer
    block: str  # their prefix of a block's layers, e.g. "layer{stage}.{block}."
    block_layers: Mapping[str, str]  # our layer in a block -> theirs ("{}": 1-based index in a list)
    first_stage: int  # the number the names give stage 1 (torch layer1, Keras conv2)
    first_block: int  # the number they give a stage's first block
    leaves: Mapping[type, Mapping[str, tuple[str, tuple[int, ...] | None]]]  # ours -> (theirs, permutation)
    sep: str  # between their layer and leaf names
    prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    layout: Callable[[Mapping[str, np.ndarray]], str]

    def layer(self, path: StatePath) -> str:
        """Their name for our layer at `path`, e.g. ("stages", 0, 1, "convs", 2) -> "layer1.1.conv3"."""
        match path:
            case (name,) if name in self.layers:
                return self.layers[name]
            case ("stages", i, j, name, *index) if name in self.block_layers:
                block = self.block.format(stage=i + self.first_stage, block=j + self.first_block)
                return block + self.block_layers[name].format(*(k + 1 for k in index))
        raise ValueError(f"no {self.framework} name for {path}")

    def key(self, path: StatePath, module: type, leaf: str) -> str:
        """Their key for our `leaf` of the `module` at `path`."""
        return f"{self.layer(path)}{self.sep}{self.leaves[module][leaf][0]}"

    def block_key(self) -> re.Pattern:
        """Captures (stage number, block number) from one of their keys."""
        pattern = re.escape(self.block).replace(re.escape("{stage}"), r"(\d+)").replace(re.escape("{block}"), r"(\d+)")
        return re.compile(f"^{pattern}")


def _drop_batch_counters(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in tensors.items() if not k.endswith(".num_batches_tracked")}


def _fold_keras_conv_biases(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keras v1 convs have biases that the BN right after them cancels: BN(conv + b)
    with mean m equals BN(conv) with mean m - b. v2 convs without a BN keep theirs."""
    out = dict(tensors)
    for key in tensors:
        bn_mean = re.sub(r"_conv/bias$", "_bn/moving_mean", key)
        if key.endswith("_conv/bias") and bn_mean in tensors:
            out[bn_mean] = tensors[bn_mean] - out.pop(key)
    return out


def _keras_layout(tensors: Mapping[str, np.ndarray]) -> str:
    return "v2" if any(k.startswith("post_bn/") or "_preact_bn/" in k for k in tensors) else "v1"


_TORCH = _Naming(
    framework="torchvision",
    layers={"stem_conv": "conv1", "stem_bn": "bn1", "dense": "fc"},
    block="layer{stage}.{block}.",
    block_layers={"convs": "conv{}", "bns": "bn{}", "shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"},
    first_stage=1,
    first_block=0,
    leaves={
        nnx.Conv: {"kernel": ("weight", (2, 3, 1, 0)), "bias": ("bias", None)},  # OIHW -> HWIO
        nnx.BatchNorm: {
            "scale": ("weight", None),
            "bias": ("bias", None),
            "mean": ("running_mean", None),
            "var": ("running_var", None),
        },
        nnx.Linear: {"kernel": ("weight", (1, 0)), "bias": ("bias", None)},
    },
    sep=".",
    prepare=_drop_batch_counters,
    layout=lambda tensors: "v1.5",
)
_KERAS = _Naming(
    framework="Keras",
    layers={"stem_conv": "conv1_conv", "stem_bn": "conv1_bn", "post_bn": "post_bn", "dense": "predictions"},
    block="conv{stage}_block{block}_",
    block_layers={
        "convs": "{}_conv",
        "bns": "{}_bn",
        "shortcut_conv": "0_conv",
        "shortcut_bn": "0_bn",
        "preact_bn": "preact_bn",
    },
    first_stage=2,
    first_block=1,
    leaves={
        nnx.Conv: {"kernel": ("kernel", None), "bias": ("bias", None)},
        nnx.BatchNorm: {
            "scale": ("gamma", None),
            "bias": ("beta", None),
            "mean": ("moving_mean", None),
            "var": ("moving_variance", None),
        },
        nnx.Linear: {"kernel": ("kernel", None), "bias": ("bias", None)},
    },
    sep="/",
    prepare=_fold_keras_conv_biases,
    layout=_keras_layout,
)


_NAMINGS = {"torchvision": _TORCH, "timm": _TORCH, "keras": _KERAS}
KINDS = {
    "torchvision": "a torchvision ResNet state dict (.pth)",
    "keras": "a Keras ResNet/ResNetV2 legacy HDF5 weights file (.h5)",
    "timm": "a timm ResNet model.safetensors",
}


def _infer_arch(tensors: Mapping[str, np.ndarray], naming: _Naming) -> tuple[str | None, str]:
    """(architecture, or None when no ResNet has these blocks; what the keys show)."""
    blocks: dict[int, int] = {}
    block_key = naming.block_key()
    for key in tensors:
        if m := block_key.match(key):
            stage, count = int(m[1]), int(m[2]) - naming.first_block + 1
            blocks[stage] = max(blocks.get(stage, 0), count)
    depths = tuple(blocks.get(naming.first_stage + i, 0) for i in range(4))
    kind = "bottleneck" if naming.key(("stages", 0, 0, "convs", 2), nnx.Conv, "kernel") in tensors else "basic"
    found = {spec: name for name, spec in ARCHITECTURES.items()}.get((kind, depths))
    return found, f"{kind} blocks {'-'.join(map(str, depths))}"


def _expected(module: nnx.Module, naming: _Naming) -> dict[str, tuple[StatePath, tuple | None, tuple]]:
    """Their key -> (our path, permutation, the shape their array must have)."""
    table = {}
    for path, sub in nnx.iter_modules(module):
        if type(sub) not in naming.leaves:
            continue
        for (leaf,), variable in nnx.to_flat_state(nnx.state(sub)):
            perm = naming.leaves[type(sub)][leaf][1]
            shape = tuple(variable.shape)
            their_shape = tuple(shape[i] for i in np.argsort(perm)) if perm else shape
            table[naming.key(path, type(sub), leaf)] = ((*path, leaf), perm, their_shape)
    return table


def _expected_head(
    tensors: Mapping[str, np.ndarray], naming: _Naming, num_features: int
) -> tuple[int | None, dict[str, tuple[StatePath, tuple | None, tuple]]]:
    """(number of ImageNet classes, expected keys) of the file's classifier; (None, {}) without one."""
    bias = tensors.get(naming.key(("dense",), nnx.Linear, "bias"))
    if bias is None or bias.ndim != 1:
        return None, {}
    head = nnx.eval_shape(lambda: LinearHead(num_features, bias.shape[0], rngs=nnx.Rngs(0)))
    return int(bias.shape[0]), _expected(head, naming)


def _take(tensors: Mapping[str, np.ndarray], table: Mapping[str, tuple]) -> dict[StatePath, np.ndarray]:
    """Their arrays under our paths, permuted into our layout."""
    return {
        path: np.ascontiguousarray(np.transpose(tensors[k], perm) if perm else tensors[k])
        for k, (path, perm, _) in table.items()
    }


def identify(tensors: Mapping[str, np.ndarray], source: str) -> tuple[str | None, str]:
    """(the ResNet these keys hold, or None; what the keys show)."""
    naming = _NAMINGS[source]
    return _infer_arch(naming.prepare(dict(tensors)), naming)


def convert(tensors: Mapping[str, np.ndarray], source: str, arch: str, what: str) -> Converted:
    """Maps a framework's named arrays (e.g. "layer1.0.conv1.weight", "conv2_block1_1_conv/kernel")
    onto our ResNet `arch` (+ ImageNet head when present); the layout follows from the keys."""
    naming = _NAMINGS[source]
    tensors = naming.prepare(dict(tensors))
    layout = naming.layout(tensors)
    backbone = nnx.eval_shape(lambda: ResNet(arch, layout, rngs=nnx.Rngs(0)))
    expected = _expected(backbone, naming)
    classes, head_expected = _expected_head(tensors, naming, backbone.num_features)
    check_fit(
        {k: v[2] for k, v in (expected | head_expected).items()},
        {k: v.shape for k, v in tensors.items()},
        f"{what} does not fit {arch} ({layout}) as {source} names it",
        f"pass {KINDS[source]} for {arch}, complete and unmodified (compare its sha256 "
        "with the published one and download it again if they differ).",
    )
    metadata = {
        "format": FORMAT,
        "architecture": arch,
        "layout": layout,
        "source": source,
        "bn_epsilon": BN_EPSILON[layout],
        "imagenet_classes": classes,
        "preprocessing": dict(PREPROCESSING[_PREPROCESSING_OF_LAYOUT[layout]]),
    }
    return Converted(metadata, _take(tensors, expected), _take(tensors, head_expected) if head_expected else None)
