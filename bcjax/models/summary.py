"""Parameter counts (total, per part) and XLA-counted FLOPs of any registered model.

    python -m bcjax.models.summary resnet50 --layout v1.5 --height 224 --width 224

FLOPs come from XLA's cost analysis of the compiled eval-mode forward pass of one
image. XLA counts a multiply-add as 2 FLOPs and skips the products with padding zeros,
so ResNet-50 at 224x224 shows 8.03 GFLOPs where the usual dense count is 4.09 GMACs
(8.18 GFLOPs, the figure papers quote as "4.1 GFLOPs").
"""

from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bcjax.models.classifier import Classifier, create_model
from bcjax.models.heads import HEADS
from bcjax.models.registry import ARCHITECTURES, LAYOUTS


def _group(path: tuple) -> str:
    """Names the part of the model a parameter belongs to: the backbone's top-level attribute
    (a list such as ResNet's `stages` counts per element: stage1..4; `stem*` is one stem), or head."""
    if path[0] == "head":
        return "head"
    part = str(path[1])
    if part == "stages":
        return f"stage{path[2] + 1}"
    return "stem" if part.startswith("stem") else part


def parameter_counts(model: Classifier) -> dict[str, int]:
    """Trainable parameter counts per part, in the model's order (BN statistics excluded, as torch counts)."""
    counts: dict[str, int] = collections.Counter()
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        counts[_group(path)] += value.size
    return dict(sorted(counts.items(), key=lambda item: item[0] == "head"))


def forward_flops(model: Classifier, height: int, width: int) -> float:
    """FLOPs of one eval-mode forward pass at height x width, per XLA's cost analysis."""
    model.eval()
    graphdef, state = nnx.split(model)
    image = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return float(forward.lower(state, image).compile().cost_analysis()["flops"])


def _key_value(item: str) -> tuple[str, Any]:
    """ "fc_layers=true" -> ("fc_layers", True); a VALUE that is not JSON stays a string."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--backbone-kwarg {item!r}: write KEY=VALUE, e.g. fc_layers=true")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bcjax.models.summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("arch", choices=list(ARCHITECTURES))
    parser.add_argument("--layout", choices=LAYOUTS, help="default: the family's first layout")
    parser.add_argument("--head", choices=sorted(HEADS), default="linear")
    parser.add_argument("--num-classes", type=int, default=1000, help="1000 = the ImageNet classifier")
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument(
        "--backbone-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a family's own option, as config model.backbone_kwargs takes it (e.g. fc_layers=true for VGG's "
        "ImageNet fc layers); VALUE is read as JSON, else as a string; repeatable",
    )
    args = parser.parse_args(argv)

    try:
        backbone_kwargs = dict(_key_value(item) for item in args.backbone_kwarg)
        model = nnx.eval_shape(
            lambda: create_model(
                args.arch, args.layout, args.head, args.num_classes, rngs=nnx.Rngs(0), backbone_kwargs=backbone_kwargs
            )
        )
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    counts = parameter_counts(model)
    total = sum(counts.values())
    print(f"{args.arch} layout={model.backbone.layout} head={args.head} num_classes={args.num_classes}")
    for part, count in counts.items():
        print(f"  {part:<8} {count:>13,}")
    print(f"  {'backbone':<8} {total - counts['head']:>13,}")
    print(f"  {'total':<8} {total:>13,}")
    flops = forward_flops(model, args.height, args.width)
    print(
        f"FLOPs per {args.height}x{args.width} image (XLA cost analysis, padding excluded):"
        f" {flops / 1e9:.2f} GFLOPs = {flops / 2e9:.2f} GMACs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
