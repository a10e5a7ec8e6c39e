"""ImageNet weights from torchvision, Keras or timm files into bcjax checkpoints.

    python -m bcjax.convert --source=torchvision --input=resnet50-0676ba61.pth --output=DIR

Readers: torchvision `.pth` state dicts through `torch.load(weights_only=True)` (never
plain pickle); Keras legacy HDF5 weights (the published `*_tf_kernels[_notop].h5`, or a
full-model `.h5` holding them under `model_weights`) through h5py, no TensorFlow; timm
`model.safetensors` through safetensors' numpy API, no torch. The architecture (family and
depth) and its layout follow from the keys (`bcjax.converters`, one module per family).

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
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bcjax import weight_files
from bcjax.converters import CONVERTERS
from bcjax.models import ARCHITECTURES, family_of
from bcjax.pretrained import ConversionError, Converted, save_converted


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Source:
    read: Callable[[Path], dict[str, np.ndarray]]
    kind: str  # what the user should hand us, for error messages


_SOURCES = {
    "torchvision": _Source(read=weight_files.read_torch, kind="a torchvision state dict (.pth)"),
    "keras": _Source(read=weight_files.read_keras, kind="a Keras legacy HDF5 weights file (.h5)"),
    "timm": _Source(read=weight_files.read_safetensors, kind="a timm model.safetensors"),
}
SOURCES = tuple(_SOURCES)


def _source(name: str) -> _Source:
    if name not in _SOURCES:
        raise ConversionError(f"unknown source {name!r}; choose one of {SOURCES}")
    return _SOURCES[name]


# ---------------------------------------------------------------------------------------
# Conversion.


def _identify(tensors: Mapping[str, np.ndarray], source: str, arch: str | None, what: str) -> tuple[str, str]:
    """(family, architecture) of the keys, checked against the one the user expects."""
    if arch is not None:
        try:
            arch = family_of(arch).init_arch(arch)  # an ERNet is initialised from its ResNet's weights
            family = family_of(arch).name
        except ValueError as e:
            raise ConversionError(str(e)) from None
        found, shows = CONVERTERS[family].identify(tensors, source)
        if found and found != arch:
            raise ConversionError(
                f"{what} holds {found} weights ({shows}), not {arch}; pass --arch={found} or leave --arch out"
            )
        return family, arch
    seen = []
    for family, converter in CONVERTERS.items():
        found, shows = converter.identify(tensors, source)
        if found:
            return family, found
        seen.append(f"as {family}: {shows}")
    raise ConversionError(
        f"{what} matches no known architecture ({'; '.join(seen)}; known: {sorted(ARCHITECTURES)}); "
        f"check that it is a complete {_source(source).kind} of one of them"
    )


def convert_tensors(
    tensors: Mapping[str, np.ndarray], source: str, arch: str | None = None, *, what: str = "the weights"
) -> Converted:
    """Maps a framework's named arrays onto our backbone (+ ImageNet head when present).

    Args:
      tensors: their key (e.g. "layer1.0.conv1.weight", "conv2_block1_1_conv/kernel")
        -> array, as the readers return them.
      source: "torchvision", "timm" or "keras".
      arch: expected architecture; inferred from the keys when None.
      what: how to name the input in error messages.
    Raises:
      ConversionError: listing every missing, unexpected or wrongly shaped key.
    """
    _source(source)
    family, arch = _identify(tensors, source, arch, what)
    return CONVERTERS[family].convert(tensors, source, arch, what)


def convert_file(path: str | os.PathLike, source: str, arch: str | None = None) -> Converted:
    """Reads and converts one weight file; metadata records its name and sha256."""
    path = Path(path)
    spec = _source(source)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file")
    with path.open("rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    # torchvision names its downloads NAME-<first hex digits of the sha256>.pth (torch.hub's check_hash).
    if (m := re.fullmatch(r"[a-z0-9_]+-([0-9a-f]{8,})\.pth", path.name)) and not sha.startswith(m[1]):
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


def _summary(converted: Converted, output: Path) -> str:
    """What the CLI prints once the directory is written."""
    meta = converted.metadata
    stats = sum(v.size for path, v in converted.backbone.items() if path[-1] in ("mean", "var"))
    params = sum(v.size for v in converted.backbone.values()) - stats
    head = f"{meta['imagenet_classes']} classes, in imagenet_head/" if converted.head else "none in the file"
    return (
        f"converted {meta['source']} {meta['architecture']} (layout {meta['layout']})"
        f" from {meta['input_file']}\n"
        f"  sha256         {meta['input_sha256']}\n"
        f"  backbone       {len(converted.backbone)} arrays: {params:,} parameters, {stats:,} BN statistics\n"
        f"  ImageNet head  {head}\n"
        f"  preprocessing  {meta['preprocessing']['mode']}\n"
        f"  written to     {output}\n"
        f"  use it with    --config.model.init_from={output}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: 0 once the directory is written; 1 with one `error:` line block on stderr."""
    args = _parser().parse_args(argv)
    try:
        if args.output.exists():
            raise ConversionError(f"{args.output} exists; choose a new --output or remove it first")
        converted = convert_file(args.input, args.source, args.arch)
        output = save_converted(converted, args.output)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_summary(converted, output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
