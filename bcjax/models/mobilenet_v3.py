"""MobileNetV3-Large and -Small backbones (Howard et al. 2019) in Flax NNX, in three layouts.

A 3x3/2 stem conv (16, BN, hard-swish), inverted-residual blocks (1x1 expand, BN, act; kxk depthwise,
BN, act; squeeze-excite; 1x1 project, BN; identity shortcut when stride 1 and widths agree), then a
1x1 conv to 960 (Large) / 576 (Small) with BN and hard-swish: `feature_map`, the last convolutional
map (Grad-CAM's layer). Squeeze-excite: global mean, 1x1 conv to make_divisible(expanded/4, 8),
ReLU, 1x1 conv back, hard-sigmoid gate. Blocks, kernels, widths and activations are the same in
every framework; the layouts (MODELS.md section 4) differ in:
  "torch"  torchvision: symmetric padding (k-1)//2, BN eps 1e-3, momentum 0.01; ImageNet mean/std.
  "keras"  keras.applications MobileNetV3Large/Small: TensorFlow "SAME" padding, asymmetric on the
           stride-2 convs ((0, 1) for 3x3 and (1, 2) for 5x5 on even sizes, as Keras' correct_pad
           pads when the input shape is known; a Keras model built with input_shape=None pads its
           depthwise convs as if every size were even), BN eps 1e-3, momentum 0.001. Keras'
           in-model Rescaling(1/127.5, -1) is the "tf" preprocessing here, outside the model, as
           for every other layout.
  "timm"   timm mobilenetv3_large_100/small_100: symmetric padding, BN eps 1e-5, momentum 0.1.

`pool` is a global average pool of the map, then with `pre_logits` the ImageNet classifier's first
layer: a dense 960->1280 (576->1024) with bias, hard-swish and dropout 0.2 (torchvision
`classifier[0:3]`, timm `conv_head` + `act2`, Keras `Conv_2`, a 1x1 conv on the pooled map). It is
on by default where every published file carries it (torch, timm); Keras' no-top files end at the
960/576 map (Conv_2 belongs to Keras' top since October 2021), so its default is off. A
`LinearHead(1280, 1000)` after `pre_logits` is the ImageNet classifier. Inputs are NHWC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bcjax.models import resnet

# One inverted-residual block: (kernel, expanded width, output width, squeeze-excite, hard-swish, stride).
Block = tuple[int, int, int, bool, bool, int]
# arch -> (blocks, last conv width, pre-logits width); torchvision's _mobilenet_v3_conf, as in Keras and timm.
ARCHITECTURES: dict[str, tuple[tuple[Block, ...], int, int]] = {
    "mobilenet_v3_large": (
        (
            (3, 16, 16, False, False, 1),
            (3, 64, 24, False, False, 2),
            (3, 72, 24, False, False, 1),
            (5, 72, 40, True, False, 2),
            (5, 120, 40, True, False, 1),
            (5, 120, 40, True, False, 1),
            (3, 240, 80, False, True, 2),
            (3, 200, 80, False, True, 1),
            (3, 184, 80, False, True, 1),
            (3, 184, 80, False, True, 1),
            (3, 480, 112, True, True, 1),
            (3, 672, 112, True, True, 1),
            (5, 672, 160, True, True, 2),
            (5, 960, 160, True, True, 1),
            (5, 960, 160, True, True, 1),
        ),
        960,
        1280,
    ),
    "mobilenet_v3_small": (
        (
            (3, 16, 16, True, False, 2),
            (3, 72, 24, False, False, 2),
            (3, 88, 24, False, False, 1),
            (5, 96, 40, True, True, 2),
            (5, 240, 40, True, True, 1),
            (5, 240, 40, True, True, 1),
            (5, 120, 48, True, True, 1),
            (5, 144, 48, True, True, 1),
            (5, 288, 96, True, True, 2),
            (5, 576, 96, True, True, 1),
            (5, 576, 96, True, True, 1),
        ),
        576,
        1024,
    ),
}
LAYOUTS = ("torch", "keras", "timm")
BN_EPSILON = {"torch": 1e-3, "keras": 1e-3, "timm": 1e-5}
# Flax momentum = 1 - torch momentum (torchvision 0.01, timm's default 0.1); Keras' 0.999 is already Flax's.
BN_MOMENTUM = {"torch": 0.99, "keras": 0.999, "timm": 0.9}
STEM_WIDTH = 16
PRE_LOGITS_DROPOUT = 0.2

# torchvision's init of the classifier's Linear layers (normal, std 0.01, zero bias); convs use ResNet's.
_LINEAR_INIT = nnx.initializers.normal(0.01)


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of `divisor` (at least `divisor`), never more than 10% below `value`:
    the rounding of every MobileNet (torchvision _make_divisible, Keras _depth, timm make_divisible)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nnx.Module):
    """x * hard_sigmoid(expand(relu(reduce(mean of x over H, W)))), both 1x1 convs with bias."""

    def __init__(self, width: int, layers: resnet._Layers):
        squeezed = make_divisible(width // 4)
        self.reduce = layers.conv(width, squeezed, 1, use_bias=True)
        self.expand = layers.conv(squeezed, width, 1, use_bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        return x * jax.nn.hard_sigmoid(self.expand(nnx.relu(self.reduce(scale))))


class InvertedResidual(nnx.Module):
    """Expand (when the width changes), depthwise, squeeze-excite (optional), project; a shortcut
    when the block keeps its size and width."""

    def __init__(self, cin: int, block: Block, layers: resnet._Layers, same_padding: bool):
        kernel, expanded, out, se, hard_swish, stride = block
        expands = expanded != cin
        self.expand_conv = layers.conv(cin, expanded, 1) if expands else None
        self.expand_bn = layers.bn(expanded) if expands else None
        same = same_padding and stride > 1
        self.depthwise_conv = layers.conv(expanded, expanded, kernel, stride, groups=expanded, same=same)
        self.depthwise_bn = layers.bn(expanded)
        self.se = SqueezeExcite(expanded, layers) if se else None
        self.project_conv = layers.conv(expanded, out, 1)
        self.project_bn = layers.bn(out)
        self.shortcut = stride == 1 and cin == out
        self.hard_swish = hard_swish

    def __call__(self, x: jax.Array) -> jax.Array:
        act = jax.nn.hard_swish if self.hard_swish else nnx.relu
        y = act(self.expand_bn(self.expand_conv(x))) if self.expand_conv is not None else x
        y = act(self.depthwise_bn(self.depthwise_conv(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project_conv(y))
        return x + y if self.shortcut else y


class MobileNetV3(nnx.Module):
    """MobileNetV3 backbone (the `bcjax.models.registry` interface): (B, 960 | 576) averaged features,
    or with `pre_logits` the (B, 1280 | 1024) output of the ImageNet classifier's first layer."""

    def __init__(
        self,
        arch: str = "mobilenet_v3_large",
        layout: str = "torch",
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        pre_logits: bool | None = None,
        rngs: nnx.Rngs,
    ):
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        blocks, last_width, pre_logits_width = ARCHITECTURES[arch]
        self.arch, self.layout = arch, layout
        self.bn_epsilon = BN_EPSILON[layout]
        layers = resnet._Layers(dtype, param_dtype, self.bn_epsilon, rngs, momentum=BN_MOMENTUM[layout])
        same_padding = layout == "keras"
        self.stem_conv = layers.conv(3, STEM_WIDTH, 3, 2, same=same_padding)
        self.stem_bn = layers.bn(STEM_WIDTH)
        inverted, c = [], STEM_WIDTH
        for block in blocks:
            inverted.append(InvertedResidual(c, block, layers, same_padding))
            c = block[2]
        self.blocks = nnx.List(inverted)
        self.last_conv = layers.conv(c, last_width, 1)
        self.last_bn = layers.bn(last_width)
        if pre_logits is None:
            pre_logits = layout != "keras"
        linear = dict(kernel_init=_LINEAR_INIT, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pre_logits = nnx.Linear(last_width, pre_logits_width, **linear) if pre_logits else None
        self.dropout = nnx.Dropout(PRE_LOGITS_DROPOUT, rngs=rngs) if pre_logits else None
        self.num_features = pre_logits_width if pre_logits else last_width

    def feature_map(self, x: jax.Array) -> jax.Array:
        """NHWC images -> the last 1x1 conv block's output (B, H/32, W/32, 960 | 576)."""
        x = jax.nn.hard_swish(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            x = block(x)
        return jax.nn.hard_swish(self.last_bn(self.last_conv(x)))

    def pool(self, feature_map: jax.Array) -> jax.Array:
        """Global average (B, 960 | 576), or through the pre-logits layer (B, 1280 | 1024)."""
        x = jnp.mean(feature_map, axis=(1, 2))
        if self.pre_logits is None:
            return x
        return self.dropout(jax.nn.hard_swish(self.pre_logits(x)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pool(self.feature_map(x))
