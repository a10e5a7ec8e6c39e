"""VGG-16/19 backbones (Simonyan & Zisserman 2015), with or without batch norm, in Flax NNX.

Five stages of 3x3 convs (padding 1, ReLU; `_bn`: conv, BatchNorm, ReLU) each ending in a 2x2/2
max pool. Layouts (MODELS.md section 4) differ only in the fully connected layers:
  "torch"  torchvision/timm: fc1 reads the 7x7x512 grid flattened channel-major (C, H, W).
  "keras"  keras.applications VGG16/VGG19: Flatten of the NHWC map (H, W, C). Keras publishes
           no batch-norm VGG, so this layout has none.
Converted fc1 weights therefore load as they are; the layout does the reordering.

`feature_map` is the output of the last max pool: torchvision's `features[-1]`, Grad-CAM's
conventional VGG layer (pytorch-grad-cam), and the map Keras' `include_top=False` returns.
`pool` is a global average pool of it (Keras `pooling="avg"`, recipe C), or with
`fc_layers=True` the ImageNet classifier up to its last layer: adaptive average pool to 7x7
(torch's bins, so any input size works), flatten, fc1 4096, ReLU, Dropout 0.5, fc2 4096, ReLU,
Dropout 0.5; a `LinearHead(4096, 1000)` is then the ImageNet classifier. timm applies fc1 as a
7x7 conv, which slides over maps larger than 7x7 (inputs above 224) where torchvision pools:
the two agree up to 224x224. Inputs are NHWC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bcjax.models import resnet

# arch -> (convs per stage, batch norm after each conv)
ARCHITECTURES: dict[str, tuple[tuple[int, ...], bool]] = {
    "vgg16": ((2, 2, 3, 3, 3), False),
    "vgg19": ((2, 2, 4, 4, 4), False),
    "vgg16_bn": ((2, 2, 3, 3, 3), True),
    "vgg19_bn": ((2, 2, 4, 4, 4), True),
}
LAYOUTS = ("torch", "keras")
STAGE_WIDTHS = (64, 128, 256, 512, 512)
FC_WIDTH = 4096
FC_GRID = 7  # torchvision's AdaptiveAvgPool2d((7, 7)); Keras' Flatten sees 7x7 at 224x224
FC_DROPOUT = 0.5
BN_EPSILON = 1e-5  # torch BatchNorm2d

# torchvision's init of the classifier (normal, std 0.01, zero bias); convs use ResNet's (kaiming, fan_out).
_FC_INIT = nnx.initializers.normal(0.01)


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """torch's `adaptive_avg_pool2d` on NHWC: output cell i averages rows floor(i*H/size) up to
    ceil((i+1)*H/size) (likewise columns), so bins overlap or repeat when H is not a multiple."""

    def bins(n: int) -> list[tuple[int, int]]:
        return [((i * n) // size, -((-(i + 1) * n) // size)) for i in range(size)]

    rows = jnp.stack([x[:, a:b].mean(axis=1) for a, b in bins(x.shape[1])], axis=1)
    return jnp.stack([rows[:, :, a:b].mean(axis=2) for a, b in bins(x.shape[2])], axis=2)


class VGGStage(nnx.Module):
    """3x3 convs with ReLU (and a BatchNorm before each ReLU), then a 2x2/2 max pool."""

    def __init__(self, cin: int, width: int, depth: int, layers: resnet._Layers, batch_norm: bool):
        self.convs = nnx.List([layers.conv(cin if k == 0 else width, width, 3, use_bias=True) for k in range(depth)])
        self.bns = nnx.List([layers.bn(width) for _ in range(depth)] if batch_norm else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        for k, conv in enumerate(self.convs):
            x = conv(x)
            if self.bns:
                x = self.bns[k](x)
            x = nnx.relu(x)
        return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class VGG(nnx.Module):
    """VGG backbone (the `bcjax.models.registry` interface): (B, 512) averaged features, or with
    `fc_layers` the (B, 4096) output of the ImageNet fc2 layer."""

    def __init__(
        self,
        arch: str = "vgg16",
        layout: str = "torch",
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        fc_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        depths, batch_norm = ARCHITECTURES[arch]
        if batch_norm and layout == "keras":
            raise ValueError(f"Keras publishes no batch-norm VGG; build {arch} with layout 'torch'")
        self.arch, self.layout = arch, layout
        self.bn_epsilon = BN_EPSILON if batch_norm else None
        layers = resnet._Layers(dtype, param_dtype, BN_EPSILON, rngs)
        widths = (3, *STAGE_WIDTHS)
        self.stages = nnx.List(
            [VGGStage(widths[i], widths[i + 1], d, layers, batch_norm) for i, d in enumerate(depths)]
        )
        linear = dict(kernel_init=_FC_INIT, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        grid_features = FC_GRID * FC_GRID * STAGE_WIDTHS[-1]
        self.fc1 = nnx.Linear(grid_features, FC_WIDTH, **linear) if fc_layers else None
        self.fc2 = nnx.Linear(FC_WIDTH, FC_WIDTH, **linear) if fc_layers else None
        self.dropout = nnx.Dropout(FC_DROPOUT, rngs=rngs) if fc_layers else None
        self.num_features = FC_WIDTH if fc_layers else STAGE_WIDTHS[-1]

    def feature_map(self, x: jax.Array) -> jax.Array:
        """NHWC images -> the last max pool's output (B, H/32, W/32, 512)."""
        for stage in self.stages:
            x = stage(x)
        return x

    def pool(self, feature_map: jax.Array) -> jax.Array:
        """(B, H, W, 512) -> global average (B, 512), or the fc layers' (B, 4096)."""
        if self.fc1 is None:
            return jnp.mean(feature_map, axis=(1, 2))
        x = adaptive_avg_pool(feature_map, FC_GRID)
        if self.layout == "torch":
            x = x.transpose(0, 3, 1, 2)  # flatten as (C, H, W)
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(nnx.relu(self.fc1(x)))
        return self.dropout(nnx.relu(self.fc2(x)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pool(self.feature_map(x))
