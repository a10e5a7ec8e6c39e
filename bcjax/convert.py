"""ImageNet ResNet weights from torchvision, Keras or timm files into bcjax checkpoints.

    python -m bcjax.convert --source=torchvision --input=resnet50-0676ba61.pth --output=DIR

Readers: torchvision `.pth` state dicts through `torch.load(weights_only=True)` (never
plain pickle); Keras legacy HDF5 weights (the published `*_tf_kernels[_notop].h5`, or a
full-model `.h5` holding them under `model_weights`) through h5py, no TensorFlow; timm
`model.safetensors` through safetensors' numpy API, no torch. The layout follows from the
source (torchvision/timm: v1.5; Keras: v1, or v2 when `post_bn`/`*_preact_bn` exist) and
the depth from the keys.

DIR gets an orbax checkpoint of the backbone (params + batch stats) in `backbone/`, the
ImageNet classifier, when the file has one, in `imagenet_head/` (so the trainer can leave
it out), and `metadata.json` (architecture, layout, source, input file and sha256, BN
epsilon, the preprocessing the weights expect). Nothing is written unless everything
converts: DIR appears by one rename at the end. `load_pretrained` fills a Classifier.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bcjax.augment import Normalizer
from bcjax.models import ARCHITECTURES, BN_EPSILON, Classifier, LinearHead, ResNet

FORMAT = "bcjax.pretrained/1"

# out = (image[..., channel order] * scale - mean) / std, on uint8 RGB input; the caffe
# mean is in BGR order, as Keras' preprocess_input applies it after flipping channels.
PREPROCESSING = {
    "torch": {
        "mode": "torch",
        "channel_order": "RGB",
        "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "caffe": {
        "mode": "caffe",
        "channel_order": "BGR",
        "scale": 1.0,
        "mean": [103.939, 116.779, 123.68],
        "std": [1.0, 1.0, 1.0],
    },
    "tf": {"mode": "tf", "channel_order": "RGB", "scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0]},
}

# Keras ResNet (v1) expects "caffe" input, ResNetV2 "tf", torchvision and timm "torch".
_PREPROCESSING_OF_LAYOUT = {"v1.5": "torch", "v1": "caffe", "v2": "tf"}

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


# ---------------------------------------------------------------------------------------
# Naming: how each framework names our layers. One table serves torchvision and timm.


def _torch_layer(path: StatePath) -> str:
    match path:
        case ("stem_conv",):
            return "conv1"
        case ("stem_bn",):
            return "bn1"
        case ("stages", i, j, "convs" | "bns" as kind, k):
            return f"layer{i + 1}.{j}.{kind[:-1]}{k + 1}"
        case ("stages", i, j, "shortcut_conv"):
            return f"layer{i + 1}.{j}.downsample.0"
        case ("stages", i, j, "shortcut_bn"):
            return f"layer{i + 1}.{j}.downsample.1"
        case ("dense",):
            return "fc"
    raise ValueError(f"no torchvision name for {path}")


def _keras_layer(path: StatePath) -> str:
    match path:
        case ("stem_conv",):
            return "conv1_conv"
        case ("stem_bn",):
            return "conv1_bn"
        case ("post_bn",):
            return "post_bn"
        case ("dense",):
            return "predictions"
        case ("stages", i, j, *rest):
            block = f"conv{i + 2}_block{j + 1}"
            match rest:
                case ["convs", k]:
                    return f"{block}_{k + 1}_conv"
                case ["bns", k]:
                    return f"{block}_{k + 1}_bn"
                case ["shortcut_conv"]:
                    return f"{block}_0_conv"
                case ["shortcut_bn"]:
                    return f"{block}_0_bn"
                case ["preact_bn"]:
                    return f"{block}_preact_bn"
    raise ValueError(f"no Keras name for {path}")


# Our leaf -> (their leaf, permutation from their array layout to ours).
_TORCH_LEAVES = {
    nnx.Conv: {"kernel": ("weight", (2, 3, 1, 0)), "bias": ("bias", None)},  # OIHW -> HWIO
    nnx.BatchNorm: {
        "scale": ("weight", None),
        "bias": ("bias", None),
        "mean": ("running_mean", None),
        "var": ("running_var", None),
    },
    nnx.Linear: {"kernel": ("weight", (1, 0)), "bias": ("bias", None)},
}
_KERAS_LEAVES = {
    nnx.Conv: {"kernel": ("kernel", None), "bias": ("bias", None)},
    nnx.BatchNorm: {
        "scale": ("gamma", None),
        "bias": ("beta", None),
        "mean": ("moving_mean", None),
        "var": ("moving_variance", None),
    },
    nnx.Linear: {"kernel": ("kernel", None), "bias": ("bias", None)},
}


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


@dataclasses.dataclass(frozen=True)
class _Naming:
    """One framework's names for our layers, and what its files need before mapping."""

    layer: Callable[[StatePath], str]
    leaves: Mapping[type, Mapping[str, tuple[str, tuple[int, ...] | None]]]
    sep: str
    block_key: re.Pattern  # captures (stage number, block number) from a key
    first_stage: int  # the number the names give stage 1 (torch layer1, Keras conv2)
    first_block: int  # the number they give a stage's first block
    head: str
    prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    layout: Callable[[Mapping[str, np.ndarray]], str]

    def key(self, path: StatePath, leaf: str) -> str:
        return f"{self.layer(path)}{self.sep}{leaf}"


_TORCH = _Naming(
    _torch_layer,
    _TORCH_LEAVES,
    ".",
    re.compile(r"^layer(\d+)\.(\d+)\."),
    1,
    0,
    "fc",
    _drop_batch_counters,
    lambda tensors: "v1.5",
)
_KERAS = _Naming(
    _keras_layer,
    _KERAS_LEAVES,
    "/",
    re.compile(r"^conv(\d+)_block(\d+)_"),
    2,
    1,
    "predictions",
    _fold_keras_conv_biases,
    _keras_layout,
)


# ---------------------------------------------------------------------------------------
# Readers: file -> {their key: float32 array}. Any failure to parse is a ConversionError.


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    import torch  # only this reader needs torch

    state = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(
            f"{path} is not a torchvision state dict (a mapping of names to tensors); "
            "pass the .pth file that torchvision.models downloads"
        )
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(path).items()}


def _read_keras(path: Path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise ConversionError(
                f"{path} is not a legacy Keras HDF5 weights file (no 'layer_names'); "
                "use the published *_tf_kernels*.h5 file (Keras 3 .weights.h5 is not read)"
            )
        tensors = {}
        for layer in map(_decode, root.attrs["layer_names"]):
            group = root[layer]
            for weight in map(_decode, group.attrs["weight_names"]):
                leaf = weight.rsplit("/", 1)[-1].removesuffix(":0")
                tensors[f"{layer}/{leaf}"] = np.asarray(group[weight], np.float32)
    return tensors


def _decode(name: bytes | str) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else str(name)


@dataclasses.dataclass(frozen=True)
class _Source:
    read: Callable[[Path], dict[str, np.ndarray]]
    naming: _Naming
    kind: str  # what the user should hand us, for error messages


_SOURCES = {
    "torchvision": _Source(_read_torch, _TORCH, "a torchvision ResNet state dict (.pth)"),
    "keras": _Source(_read_keras, _KERAS, "a Keras ResNet/ResNetV2 legacy HDF5 weights file (.h5)"),
    "timm": _Source(_read_safetensors, _TORCH, "a timm ResNet model.safetensors"),
}
SOURCES = tuple(_SOURCES)


def _source(name: str) -> _Source:
    if name not in _SOURCES:
        raise ConversionError(f"unknown source {name!r}; choose one of {SOURCES}")
    return _SOURCES[name]


# ---------------------------------------------------------------------------------------
# Conversion.


def _infer_arch(tensors: Mapping[str, np.ndarray], naming: _Naming) -> tuple[str | None, str]:
    """(architecture, or None when no ResNet has these blocks; what the keys show)."""
    blocks: dict[int, int] = {}
    for key in tensors:
        if m := naming.block_key.match(key):
            stage, count = int(m[1]), int(m[2]) - naming.first_block + 1
            blocks[stage] = max(blocks.get(stage, 0), count)
    depths = tuple(blocks.get(naming.first_stage + i, 0) for i in range(4))
    third_conv = naming.key(("stages", 0, 0, "convs", 2), naming.leaves[nnx.Conv]["kernel"][0])
    kind = "bottleneck" if third_conv in tensors else "basic"
    found = {spec: name for name, spec in ARCHITECTURES.items()}.get((kind, depths))
    return found, f"{kind} blocks {'-'.join(map(str, depths))}"


def _expected(module: nnx.Module, naming: _Naming) -> dict[str, tuple[StatePath, tuple | None, tuple]]:
    """Their key -> (our path, permutation, the shape their array must have)."""
    table = {}
    for path, sub in nnx.iter_modules(module):
        if type(sub) not in naming.leaves:
            continue
        for leaf, variable in nnx.to_flat_state(nnx.state(sub)):
            their_leaf, perm = naming.leaves[type(sub)][leaf[0]]
            shape = tuple(variable.shape)
            their_shape = tuple(shape[i] for i in np.argsort(perm)) if perm else shape
            table[naming.key(path, their_leaf)] = (path + leaf, perm, their_shape)
    return table


def _problems(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> list[str]:
    """Every missing, unexpected and wrongly shaped key, one line each."""
    lines = [f"missing: {k} (shape {expected[k]})" for k in expected if k not in found]
    lines += [f"unexpected: {k} (shape {found[k]})" for k in found if k not in expected]
    lines += [
        f"wrong shape: {k} is {found[k]}, expected {expected[k]}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    return lines


def _select_arch(requested: str | None, found: str | None, shows: str, what: str) -> str:
    if requested and found and requested != found:
        raise ConversionError(
            f"{what} holds {found} weights ({shows}), not {requested}; pass --arch={found} or leave --arch out"
        )
    if not (requested or found):
        raise ConversionError(
            f"{what} matches no known ResNet ({shows}; known: {sorted(ARCHITECTURES)}); "
            "check that it is a complete ResNet file for this --source"
        )
    return requested or found


def convert_tensors(
    tensors: Mapping[str, np.ndarray], source: str, arch: str | None = None, *, what: str = "the weights"
) -> Converted:
    """Maps a framework's named arrays onto our ResNet (+ ImageNet head when present).

    Args:
      tensors: their key (e.g. "layer1.0.conv1.weight", "conv2_block1_1_conv/kernel")
        -> array, as the readers return them.
      source: "torchvision", "timm" or "keras".
      arch: expected architecture; inferred from the keys when None.
      what: how to name the input in error messages.
    Raises:
      ConversionError: listing every missing, unexpected or wrongly shaped key.
    """
    spec = _source(source)
    naming = spec.naming
    tensors = naming.prepare(dict(tensors))
    layout = naming.layout(tensors)
    found, shows = _infer_arch(tensors, naming)
    arch = _select_arch(arch, found, shows, what)
    backbone = nnx.eval_shape(lambda: ResNet(arch, layout, rngs=nnx.Rngs(0)))
    expected = _expected(backbone, naming)
    head_bias = tensors.get(f"{naming.head}{naming.sep}bias")
    head_expected = {}
    if head_bias is not None and head_bias.ndim == 1:
        head = nnx.eval_shape(lambda: LinearHead(backbone.num_features, head_bias.shape[0], rngs=nnx.Rngs(0)))
        head_expected = _expected(head, naming)
    problems = _problems(
        {k: v[2] for k, v in (expected | head_expected).items()}, {k: v.shape for k, v in tensors.items()}
    )
    if problems:
        raise ConversionError(
            f"{what} does not fit {arch} ({layout}) as {source} names it; {len(problems)} problem(s):\n  "
            + "\n  ".join(problems)
            + f"\nWhat to do: pass {spec.kind} for {arch}, complete and unmodified (compare its sha256 "
            "with the published one and download it again if they differ)."
        )

    def take(table):
        return {
            path: np.ascontiguousarray(np.transpose(tensors[k], perm) if perm else tensors[k])
            for k, (path, perm, _) in table.items()
        }

    metadata = {
        "format": FORMAT,
        "architecture": arch,
        "layout": layout,
        "source": source,
        "bn_epsilon": BN_EPSILON[layout],
        "imagenet_classes": int(head_bias.shape[0]) if head_expected else None,
        "preprocessing": dict(PREPROCESSING[_PREPROCESSING_OF_LAYOUT[layout]]),
    }
    return Converted(metadata, take(expected), take(head_expected) if head_expected else None)


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, as `sha256sum` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_file(path: str | os.PathLike, source: str, arch: str | None = None) -> Converted:
    """Reads and converts one weight file; metadata records its name and sha256."""
    path = Path(path)
    spec = _source(source)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file")
    sha = sha256sum(path)
    # torchvision names its downloads resnetNN-<first 8 hex digits of the sha256>.pth.
    if (m := re.fullmatch(r"resnet\d+-([0-9a-f]{8})\.pth", path.name)) and not sha.startswith(m[1]):
        raise ConversionError(
            f"{path.name}: its sha256 {sha} does not start with {m[1]} as its name says; "
            "the file is corrupt or truncated: download it again"
        )
    try:
        tensors = spec.read(path)
    except ConversionError:
        raise
    except Exception as e:  # each library raises its own type for a damaged file
        raise ConversionError(
            f"cannot read {path} as {spec.kind}: {type(e).__name__}: {e}\n"
            "What to do: the file is truncated, corrupt or of another format; "
            "check its sha256 and download it again"
        ) from e
    converted = convert_tensors(tensors, source, arch, what=str(path))
    converted.metadata.update(input_file=path.name, input_sha256=sha)
    return converted


# ---------------------------------------------------------------------------------------
# Checkpoint directory: save, load.


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


def _assign(module: nnx.Module, flat: Mapping[tuple, Any], what: str) -> None:
    """Copies arrays into `module`'s variables after checking keys and shapes; a variable
    already placed on devices keeps its sharding."""
    variables = {"/".join(map(str, path)): v for path, v in nnx.to_flat_state(nnx.state(module))}
    flat = {"/".join(map(str, path)): value for path, value in flat.items()}
    problems = _problems(
        {k: tuple(v.shape) for k, v in variables.items()}, {k: tuple(np.shape(v)) for k, v in flat.items()}
    )
    if problems:
        raise ConversionError(
            f"{what} does not fit the model; {len(problems)} problem(s):\n  "
            + "\n  ".join(problems)
            + "\nWhat to do: build the model with the architecture, layout and head "
            "the checkpoint was converted for (see its metadata.json)"
        )
    for key, variable in variables.items():
        current = variable.get_value()
        value = np.asarray(flat[key], current.dtype)
        variable.set_value(jax.device_put(value, current.sharding if isinstance(current, jax.Array) else None))


def apply_converted(model: Classifier, converted: Converted, *, load_head: bool = False) -> None:
    """Fills `model.backbone` (and with `load_head`, the ImageNet LinearHead `model.head`)."""
    meta = converted.metadata
    backbone = model.backbone
    wanted = (meta["architecture"], meta["layout"], meta["bn_epsilon"])
    if (backbone.arch, backbone.layout, backbone.bn_epsilon) != wanted:
        raise ConversionError(
            f"the weights are {meta['architecture']} layout {meta['layout']} (BN eps {meta['bn_epsilon']}), "
            f"the model is {backbone.arch} layout {backbone.layout} (BN eps {backbone.bn_epsilon}); "
            f"build it with create_model({meta['architecture']!r}, {meta['layout']!r}, ...)"
        )
    _assign(backbone, converted.backbone, "the backbone weights")
    if load_head:
        if converted.head is None:
            raise ConversionError("the weights have no ImageNet head; call with load_head=False")
        _assign(model.head, converted.head, "the ImageNet head")


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
    return jnp.asarray(normalizer(preprocessing)(jnp.asarray(images)))


def normalizer(preprocessing: Mapping[str, Any]) -> Normalizer:
    """The input pipeline's `Normalizer` for `metadata["preprocessing"]`."""
    return Normalizer(
        name=preprocessing["mode"],
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
        scale=preprocessing["scale"],
        bgr=preprocessing["channel_order"] == "BGR",
    )


# ---------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bcjax.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, choices=SOURCES, help="framework that wrote --input")
    parser.add_argument("--input", required=True, type=Path, help="the weight file")
    parser.add_argument("--output", required=True, type=Path, help="new directory to create")
    parser.add_argument(
        "--arch", choices=list(ARCHITECTURES), help="expected architecture (default: inferred from the file)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.output.exists():
            raise ConversionError(f"{args.output} exists; choose a new --output or remove it first")
        converted = convert_file(args.input, args.source, args.arch)
        output = save_converted(converted, args.output)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = converted.metadata
    stats = sum(v.size for path, v in converted.backbone.items() if path[-1] in ("mean", "var"))
    params = sum(v.size for v in converted.backbone.values()) - stats
    head = f"{meta['imagenet_classes']} classes, in imagenet_head/" if converted.head else "none in the file"
    print(
        f"converted {meta['source']} {meta['architecture']} (layout {meta['layout']})"
        f" from {meta['input_file']}\n"
        f"  sha256         {meta['input_sha256']}\n"
        f"  backbone       {len(converted.backbone)} arrays: {params:,} parameters, {stats:,} BN statistics\n"
        f"  ImageNet head  {head}\n"
        f"  preprocessing  {meta['preprocessing']['mode']}\n"
        f"  written to     {output}\n"
        f"  use it with    --config.model.init_from={output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
