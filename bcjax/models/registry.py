"""Every backbone by name: the families, their architectures and layouts, and how to build one.

A backbone is an `nnx.Module` with the parts the rest of bcjax relies on, whatever its family:

  feature_map(x) -> (B, H, W, C)   the last convolutional feature map (Grad-CAM's default layer)
  pool(fmap)     -> (B, num_features)   from that map to the features a head reads
  __call__(x)    == pool(feature_map(x))
  num_features, arch, layout       ints/strings the converters and loaders check

Converted weights of another architecture may initialise a family's backbones: ERNet starts from
the ImageNet ResNet of its depth. The family says so (`init_archs`, `own_layers`), and the loader
(`bcjax.pretrained`), the converter's `--arch` and the config check go by `Family.init_arch`.

Parameter groups (freezing, per-group learning rates) are the `backbone` and `head` attributes
of a `Classifier`, so they need nothing from a family. The trainer, the converters' loader,
the summary and Grad-CAM go through this table and never name a family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from bcjax.models import ernet, mobilenet_v3, resnet, vgg


@dataclasses.dataclass(frozen=True)
class Family:
    """One backbone family: its architectures, its layouts (which framework's variant of the
    network: padding, epsilon, where a layer sits) and its builder."""

    name: str
    archs: tuple[str, ...]
    layouts: tuple[str, ...]  # the first is the default
    build: Callable[..., nnx.Module]  # build(arch, layout, *, dtype, param_dtype, rngs, **options) -> backbone
    # arch -> the architecture whose converted weights fill it, when not itself (ERNet: its ResNet).
    init_archs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Top-level layers that those converted weights do not cover: they keep their own initialisation.
    own_layers: tuple[str, ...] = ()
    # Options (`model.backbone_kwargs`) that take one of a few values, for the config check.
    option_choices: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def default_layout(self) -> str:
        return self.layouts[0]

    def init_arch(self, arch: str) -> str:
        """The architecture whose converted weights initialise `arch`."""
        return self.init_archs.get(arch, arch)

    def arch_initialised_by(self, init_arch: str) -> str | None:
        """This family's architecture that converted `init_arch` weights initialise, if any."""
        return next((arch for arch in self.archs if self.init_arch(arch) == init_arch), None)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("resnet", tuple(resnet.ARCHITECTURES), resnet.LAYOUTS, resnet.ResNet),
        Family("vgg", tuple(vgg.ARCHITECTURES), vgg.LAYOUTS, vgg.VGG),
        Family("mobilenet_v3", tuple(mobilenet_v3.ARCHITECTURES), mobilenet_v3.LAYOUTS, mobilenet_v3.MobileNetV3),
        Family(
            "ernet",
            tuple(ernet.ARCHITECTURES),
            ernet.LAYOUTS,
            ernet.ERNet,
            init_archs=ernet.ARCHITECTURES,
            own_layers=ernet.OWN_LAYERS,
            option_choices={"newest_map": ernet.NEWEST_MAPS, "er_input": ernet.ER_INPUTS},
        ),
    )
}
ARCHITECTURES: dict[str, Family] = {arch: family for family in FAMILIES.values() for arch in family.archs}
LAYOUTS: tuple[str, ...] = tuple(dict.fromkeys(layout for f in FAMILIES.values() for layout in f.layouts))


def family_of(arch: str) -> Family:
    """The family that builds `arch`; a ValueError naming every architecture otherwise."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_backbone(
    arch: str,
    layout: str | None = None,
    *,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
    **options: Any,
) -> nnx.Module:
    """The backbone `arch` in `layout` (default: its family's first layout); `options` are the
    family's own keyword arguments (`model.backbone_kwargs`)."""
    family = family_of(arch)
    layout = family.default_layout if layout is None else layout
    if layout not in family.layouts:
        raise ValueError(f"unknown layout {layout!r} for {arch}; choose one of {family.layouts}")
    return family.build(arch, layout, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **options)
