"""The ImageNet weights the frameworks publish, by name: `--config.model.init_from=torchvision:resnet50`.

Each entry gives the file's URL and published hash, copied from the framework's own source (named
beside each group; tests/test_weight_hub.py compares them with the installed frameworks), and the
architecture and layout it converts to, so a config can be checked before anything is downloaded.
`bcjax.weight_hub` downloads, checks and converts them; nothing here touches the network.

Hashes: torchvision names each file NAME-<first 8 hex digits of its sha256>.pth (torch.hub's
`check_hash`); Keras gives an md5 `file_hash` per file to `keras.utils.get_file`; timm publishes
none: it loads `model.safetensors` from the Hugging Face Hub, which serves the file's sha256 (its
Git LFS oid) in the `X-Linked-Etag` header of the download's redirect, and `bcjax.weight_hub`
checks that when the server sends it.
"""

from __future__ import annotations

import dataclasses

# What `init_from` values of the SOURCE:NAME form may start with.
SOURCES = ("torchvision", "keras", "timm")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Published:
    """One published weight file and what it converts to."""

    source: str  # "torchvision", "keras" or "timm": the reader bcjax.convert uses
    name: str  # our name for it, after "SOURCE:"
    url: str
    file_name: str  # its name in the cache and on a mirror (BCJAX_WEIGHTS_MIRROR)
    hash_algorithm: str | None  # "sha256" or "md5"; None when the framework publishes none
    hash_prefix: str | None  # the published hex digest, or its first digits (torchvision)
    arch: str  # bcjax.models architecture and layout the file converts to
    layout: str

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.name}"

    @property
    def version(self) -> str:
        """What tells this file from another of the same name: its published hash, or the Hub's tag."""
        return self.hash_prefix[:8] if self.hash_prefix else self.file_name.rsplit(".", 2)[-2]


def _torchvision(name: str, url: str, arch: str, layout: str) -> Published:
    file_name = url.rsplit("/", 1)[-1]
    digits = file_name.removesuffix(".pth").rsplit("-", 1)[-1]
    return Published(
        source="torchvision",
        name=name,
        url=url,
        file_name=file_name,
        hash_algorithm="sha256",
        hash_prefix=digits,
        arch=arch,
        layout=layout,
    )


def _keras(name: str, url: str, md5: str, arch: str, layout: str) -> Published:
    return Published(
        source="keras",
        name=name,
        url=url,
        file_name=url.rsplit("/", 1)[-1],
        hash_algorithm="md5",
        hash_prefix=md5,
        arch=arch,
        layout=layout,
    )


def _timm(name: str, hub_id: str, arch: str, layout: str) -> Published:
    return Published(
        source="timm",
        name=name,
        url=f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors",
        file_name=f"{hub_id.rsplit('/', 1)[-1]}.safetensors",
        hash_algorithm=None,
        hash_prefix=None,
        arch=arch,
        layout=layout,
    )


_TV = "https://download.pytorch.org/models/"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"

_TABLE = (
    # torchvision 0.29 `torchvision.models.<Arch>_Weights.<TAG>.url` (torchvision/models/{resnet,vgg,
    # mobilenetv3}.py); the bare name is the enum's DEFAULT, as `weights="DEFAULT"` loads.
    _torchvision("resnet18", _TV + "resnet18-f37072fd.pth", "resnet18", "v1.5"),
    _torchvision("resnet34", _TV + "resnet34-b627a593.pth", "resnet34", "v1.5"),
    _torchvision("resnet50", _TV + "resnet50-11ad3fa6.pth", "resnet50", "v1.5"),  # IMAGENET1K_V2
    _torchvision("resnet50.IMAGENET1K_V1", _TV + "resnet50-0676ba61.pth", "resnet50", "v1.5"),
    _torchvision("resnet101", _TV + "resnet101-cd907fc2.pth", "resnet101", "v1.5"),  # IMAGENET1K_V2
    _torchvision("resnet101.IMAGENET1K_V1", _TV + "resnet101-63fe2227.pth", "resnet101", "v1.5"),
    _torchvision("resnet152", _TV + "resnet152-f82ba261.pth", "resnet152", "v1.5"),  # IMAGENET1K_V2
    _torchvision("resnet152.IMAGENET1K_V1", _TV + "resnet152-394f9c45.pth", "resnet152", "v1.5"),
    _torchvision("vgg16", _TV + "vgg16-397923af.pth", "vgg16", "torch"),
    _torchvision("vgg19", _TV + "vgg19-dcbb9e9d.pth", "vgg19", "torch"),
    _torchvision("vgg16_bn", _TV + "vgg16_bn-6c64b313.pth", "vgg16_bn", "torch"),
    _torchvision("vgg19_bn", _TV + "vgg19_bn-c79401a0.pth", "vgg19_bn", "torch"),
    _torchvision("mobilenet_v3_large", _TV + "mobilenet_v3_large-5c1a4163.pth", "mobilenet_v3_large", "torch"),
    _torchvision(
        "mobilenet_v3_large.IMAGENET1K_V1", _TV + "mobilenet_v3_large-8738ca79.pth", "mobilenet_v3_large", "torch"
    ),
    _torchvision("mobilenet_v3_small", _TV + "mobilenet_v3_small-047dcff4.pth", "mobilenet_v3_small", "torch"),
    # Keras 3 keras/src/applications/: resnet.py (BASE_WEIGHTS_PATH, WEIGHTS_HASHES[...][1]: the
    # include_top=False file; ResNetV2 in the same table), vgg16.py / vgg19.py (WEIGHTS_PATH_NO_TOP and
    # its file_hash), mobilenet_v3.py (BASE_WEIGHT_PATH, WEIGHTS_HASHES["*_224_1.0_float"][1]).
    _keras(
        "resnet50",
        _KERAS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
        "resnet50",
        "v1",
    ),
    _keras(
        "resnet101",
        _KERAS + "resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "88cf7a10940856eca736dc7b7e228a21",
        "resnet101",
        "v1",
    ),
    _keras(
        "resnet152",
        _KERAS + "resnet/resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "ee4c566cf9a93f14d82f913c2dc6dd0c",
        "resnet152",
        "v1",
    ),
    _keras(
        "resnet50v2",
        _KERAS + "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "fac2f116257151a9d068a22e544a4917",
        "resnet50",
        "v2",
    ),
    _keras(
        "resnet101v2",
        _KERAS + "resnet/resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c0ed64b8031c3730f411d2eb4eea35b5",
        "resnet101",
        "v2",
    ),
    _keras(
        "resnet152v2",
        _KERAS + "resnet/resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "ed17cf2e0169df9d443503ef94b23b33",
        "resnet152",
        "v2",
    ),
    _keras(
        "vgg16",
        _KERAS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
        "vgg16",
        "keras",
    ),
    _keras(
        "vgg19",
        _KERAS + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6",
        "vgg19",
        "keras",
    ),
    _keras(
        "mobilenet_v3_large",
        _KERAS + "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "07fb09a5933dd0c8eaafa16978110389",
        "mobilenet_v3_large",
        "keras",
    ),
    _keras(
        "mobilenet_v3_small",
        _KERAS + "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "d3e8ec802a04aa4fc771ee12a9a9b836",
        "mobilenet_v3_small",
        "keras",
    ),
    # timm 1.0 `timm.models.get_pretrained_cfg(NAME).hf_hub_id` (the model's default tag), loaded from
    # the Hub's model.safetensors as timm does.
    _timm("resnet50", "timm/resnet50.a1_in1k", "resnet50", "v1.5"),
    _timm("vgg16", "timm/vgg16.tv_in1k", "vgg16", "torch"),
    _timm("vgg19", "timm/vgg19.tv_in1k", "vgg19", "torch"),
    _timm("vgg16_bn", "timm/vgg16_bn.tv_in1k", "vgg16_bn", "torch"),
    _timm("vgg19_bn", "timm/vgg19_bn.tv_in1k", "vgg19_bn", "torch"),
    _timm("mobilenetv3_large_100", "timm/mobilenetv3_large_100.ra_in1k", "mobilenet_v3_large", "timm"),
    _timm("mobilenetv3_small_100", "timm/mobilenetv3_small_100.lamb_in1k", "mobilenet_v3_small", "timm"),
)
PUBLISHED: dict[str, Published] = {entry.spec: entry for entry in _TABLE}


def is_published_name(init_from: object) -> bool:
    """Whether `model.init_from` names published weights (SOURCE:NAME) rather than a converted folder."""
    if not isinstance(init_from, str) or ":" not in init_from:
        return False
    source, name = init_from.split(":", 1)
    return source in SOURCES and "/" not in name


def lookup(spec: str) -> Published:
    """The entry for "SOURCE:NAME"; a ValueError whose message lists the names of that source."""
    if spec in PUBLISHED:
        return PUBLISHED[spec]
    source = spec.split(":", 1)[0]
    names = [entry.name for entry in PUBLISHED.values() if entry.source == source]
    raise ValueError(
        f"no published weights {spec!r}; {source} has {', '.join(names)} (python -m bcjax.weight_hub list)"
    )
