"""The benchmark's models: one network per name, built the same way in every framework.

Every framework trains backbone -> global average pool -> Dense(2): the torchvision ResNets as they
come (`num_classes=2`), any other torchvision network as `features` + pool + Linear (VGG without its
4096-wide fc layers, MobileNetV3 without its 1280/1024 pre-logits layer), keras.applications
networks with `include_top=False, pooling="avg"` (MobileNetV3 without its in-model rescaling),
and bcjax's backbone in the layout of the torchvision network with the same options.

Imports no framework: each runner imports its own.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BenchModel:
    """How each framework builds one benchmark model; None where a framework has no such network."""

    layout: str  # bcjax's layout (the torchvision variant)
    torch: str | None  # torchvision.models builder, or "ernet" (benchmarking.torch_ernet)
    keras: str | None  # keras.applications builder
    backbone_kwargs: tuple[tuple[str, object], ...] = ()  # bcjax backbone options

    @property
    def torch_is_resnet(self) -> bool:
        return bool(self.torch and self.torch.startswith("resnet"))


def _resnet(depth: int) -> BenchModel:
    return BenchModel("v1.5", f"resnet{depth}", f"ResNet{depth}" if depth >= 50 else None)


MODELS: dict[str, BenchModel] = {
    **{f"resnet{d}": _resnet(d) for d in (18, 34, 50, 101, 152)},
    "vgg16": BenchModel("torch", "vgg16", "VGG16"),
    "vgg19": BenchModel("torch", "vgg19", "VGG19"),
    "vgg16_bn": BenchModel("torch", "vgg16_bn", None),
    "vgg19_bn": BenchModel("torch", "vgg19_bn", None),
    "mobilenet_v3_large": BenchModel("torch", "mobilenet_v3_large", "MobileNetV3Large", (("pre_logits", False),)),
    "mobilenet_v3_small": BenchModel("torch", "mobilenet_v3_small", "MobileNetV3Small", (("pre_logits", False),)),
    **{f"ernet{d}": BenchModel("v1.5", "ernet", None) for d in (18, 34, 50, 101)},
}
