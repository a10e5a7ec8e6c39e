"""ResNet-18..152 backbones in Flax NNX, in the three published layouts.

Layouts (REFERENCE.md section 4):
  "v1.5"  torchvision/timm: stride on the 3x3 conv of a bottleneck, no conv biases.
  "v1"    Keras ResNet50/101/152: stride on the first 1x1 conv and the projection.
          Keras convs carry biases, but each is followed by a BatchNorm, so the
          converter folds them into the BN mean and the model has none (an exact
          rewrite in eval and train mode alike).
  "v2"    Keras ResNet50V2/101V2/152V2, pre-activation: stem conv with bias and no BN,
          stride on the LAST block of stages 1-3, a 1x1 max-pool (a subsample) as
          shortcut when a block strides without a projection, post_bn/relu at the end.

Basic blocks (ResNet-18/34) exist in every layout; Keras publishes none, so their v1/v2
forms follow the same rules. Padding is explicit and symmetric everywhere, as in torch
and in Keras' ZeroPadding2D + 'valid' (Flax "SAME" pads stride-2 convs asymmetrically).
Inputs are NHWC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

ARCHITECTURES: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
LAYOUTS = ("v1.5", "v1", "v2")
# torch BatchNorm2d uses 1e-5; every Keras ResNet uses 1.001e-5.
BN_EPSILON = {"v1.5": 1e-5, "v1": 1.001e-5, "v2": 1.001e-5}
# Flax momentum 0.9 == torch momentum 0.1, for every layout (Keras trains with 0.99).
BN_MOMENTUM = 0.9
STAGE_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64

# torchvision's init (kaiming_normal_, fan_out): a sensible start when training from scratch.
_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: jax.lax.ConvDimensionNumbers | None = None,
    feature_group_count: int = 1,
    precision: jax.lax.PrecisionLike = None,
    **kwargs,
) -> jax.Array:
    """`jax.lax.conv_general_dilated`, except that on CPUs a 1x1 NHWC convolution is a matrix product
    and a depthwise one a sum of shifted products.

    XLA:CPU runs its matrix products and elementwise loops much faster than its convolutions: on
    ResNet-50's 1x1 convolutions the backward pass (the weight gradient above all) takes 1.6-6x less
    time; with its depthwise ones as shifted products, a MobileNetV3-Large training step runs 3.7x
    as fast (BENCHMARKS.md, "Why XLA:CPU trailed" and "Other zoo models"). Both compute the same
    sums; only their order differs.
    Other platforms (cuDNN) and other convolutions keep the convolution.
    """
    plain = (
        jax.default_backend() != "cpu"
        or set(lhs_dilation or (1,)) != {1}
        or set(rhs_dilation or (1,)) != {1}
        or kwargs.get("out_sharding") is not None
        or dimension_numbers != jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    pads = () if plain else _explicit_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    if not plain and feature_group_count == 1 and rhs.shape[:2] == (1, 1) and set(pads) == {(0, 0)}:
        return _pointwise(lhs, rhs, window_strides, precision, kwargs.get("preferred_element_type"))
    if not plain and feature_group_count == lhs.shape[3] == rhs.shape[3] and rhs.shape[2] == 1:
        return _depthwise(lhs, rhs, window_strides, pads)
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        precision=precision,
        **kwargs,
    )


def _explicit_pads(
    spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding
) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(spatial, window, strides, padding))
    return tuple(tuple(p) for p in padding)


def _pointwise(lhs, rhs, window_strides, precision, preferred_element_type) -> jax.Array:
    (sh, sw) = window_strides
    return jax.lax.dot_general(
        lhs[:, ::sh, ::sw],
        rhs[0, 0],
        (((3,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _depthwise(lhs, rhs, window_strides, pads) -> jax.Array:
    """Each output is the sum over the kernel's taps of a strided slice of the padded input times
    that tap's per-channel weight: loops XLA fuses, forward and backward."""
    x = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    (kh, kw), (sh, sw) = rhs.shape[:2], window_strides
    out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    taps = [
        jax.lax.slice(
            x,
            (0, i, j, 0),
            (x.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, x.shape[3]),
            (1, sh, sw, 1),
        )
        * rhs[i, j, 0]
        for i in range(kh)
        for j in range(kw)
    ]
    return sum(taps[1:], taps[0])


@dataclasses.dataclass(frozen=True)
class _Layers:
    """Builds convs and batch norms sharing one dtype policy and BN epsilon."""

    dtype: jnp.dtype
    param_dtype: jnp.dtype
    epsilon: float
    rngs: nnx.Rngs
    momentum: float = BN_MOMENTUM

    def conv(
        self,
        cin: int,
        cout: int,
        size: int,
        stride: int = 1,
        *,
        use_bias: bool = False,
        groups: int = 1,
        same: bool = False,
    ) -> nnx.Conv:
        """`same=True`: TensorFlow's "SAME" padding (asymmetric on stride 2, e.g. Keras MobileNetV3)."""
        pad = size // 2
        return nnx.Conv(
            cin,
            cout,
            (size, size),
            (stride, stride),
            padding="SAME" if same else ((pad, pad), (pad, pad)),
            use_bias=use_bias,
            feature_group_count=groups,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
            conv_general_dilated=conv_general_dilated,
        )

    def bn(self, features: int) -> nnx.BatchNorm:
        # Two-pass variance, mean((x - mean)^2): the fast E[x^2] - E[x]^2 cancels
        # catastrophically when the mean dominates, so batch statistics (and
        # training) would depend on the summation order, i.e. on the device count.
        bn = nnx.BatchNorm(
            features,
            momentum=self.momentum,
            epsilon=self.epsilon,
            use_fast_variance=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
        )
        if jnp.finfo(self.param_dtype).bits > 32:
            # Flax keeps batch statistics in float32 whatever param_dtype says; a float64 model
            # (the parity tests) would round its statistics, and JAX is deprecating the cast.
            bn.mean = nnx.BatchStat(bn.mean[...].astype(self.param_dtype))
            bn.var = nnx.BatchStat(bn.var[...].astype(self.param_dtype))
        return bn


def _max_pool_zero_padded(x: jax.Array) -> jax.Array:
    """3x3/2 max pool over a 1-pixel zero border, as Keras pools.

    The v1/v1.5 stem output is non-negative (after ReLU), so this equals torch's -inf
    padding there; the v2 stem pools raw conv outputs, where only zeros reproduce Keras.
    """
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class ResidualBlock(nnx.Module):
    """One basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block.

    `convs[k]` is followed by `bns[k]`; in v2 the last conv has a bias and no BN, and a
    `preact_bn` normalises the block input instead.
    """

    def __init__(self, cin: int, width: int, kind: str, stride: int, layout: str, layers: _Layers):
        sizes = (3, 3) if kind == "basic" else (1, 3, 1)
        widths = (width, width) if kind == "basic" else (width, width, 4 * width)
        stride_at = 0 if kind == "basic" or layout == "v1" else 1
        self.preact = layout == "v2"
        self.stride = stride
        self.out_features = widths[-1]
        convs, bns, c = [], [], cin
        for k, (size, cout) in enumerate(zip(sizes, widths)):
            last = k == len(sizes) - 1
            conv_stride = stride if k == stride_at else 1
            convs.append(layers.conv(c, cout, size, conv_stride, use_bias=self.preact and last))
            if not (self.preact and last):
                bns.append(layers.bn(cout))
            c = cout
        self.convs = nnx.List(convs)
        self.bns = nnx.List(bns)
        self.preact_bn = layers.bn(cin) if self.preact else None
        project = cin != c or (stride != 1 and not self.preact)
        self.shortcut_conv = layers.conv(cin, c, 1, stride, use_bias=self.preact) if project else None
        self.shortcut_bn = layers.bn(c) if project and not self.preact else None

    def branches(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(residual branch, shortcut) of the block input: the two terms the block sums
        (ERNet adds its enhanced connections to the same two)."""
        if self.preact:
            y = nnx.relu(self.preact_bn(x))
            # Keras' MaxPooling2D(1, strides) on the raw input: a plain subsample.
            subsampled = x[:, :: self.stride, :: self.stride]
            shortcut = self.shortcut_conv(y) if self.shortcut_conv is not None else subsampled
        else:
            y = x
            shortcut = self.shortcut_bn(self.shortcut_conv(x)) if self.shortcut_conv is not None else x
        for k, conv in enumerate(self.convs):
            y = conv(y)
            if k < len(self.bns):
                y = self.bns[k](y)
            if k < len(self.convs) - 1:
                y = nnx.relu(y)
        return y, shortcut

    def __call__(self, x: jax.Array) -> jax.Array:
        residual, shortcut = self.branches(x)
        y = residual + shortcut
        return y if self.preact else nnx.relu(y)


def _block_strides(layout: str, depth: int, stage: int) -> list[int]:
    """Stride of each block in a stage: v1/v1.5 stride the first block of stages 2-4,
    Keras v2 strides the last block of stages 1-3."""
    strides = [1] * depth
    if layout == "v2":
        strides[-1] = 2 if stage < 3 else 1
    else:
        strides[0] = 2 if stage > 0 else 1
    return strides


class ResNet(nnx.Module):
    """ResNet backbone (the `bcjax.models.registry` interface); returns globally average-pooled
    features (B, num_features)."""

    def __init__(
        self,
        arch: str = "resnet50",
        layout: str = "v1.5",
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        bn_epsilon: float | None = None,
        rngs: nnx.Rngs,
    ):
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        kind, depths = ARCHITECTURES[arch]
        self.arch, self.layout = arch, layout
        self.bn_epsilon = BN_EPSILON[layout] if bn_epsilon is None else bn_epsilon
        layers = _Layers(dtype, param_dtype, self.bn_epsilon, rngs)
        preact = layout == "v2"
        self.stem_conv = layers.conv(3, STEM_WIDTH, 7, 2, use_bias=preact)
        self.stem_bn = None if preact else layers.bn(STEM_WIDTH)
        stages, c = [], STEM_WIDTH
        for i, (width, depth) in enumerate(zip(STAGE_WIDTHS, depths)):
            blocks = []
            for stride in _block_strides(layout, depth, i):
                blocks.append(ResidualBlock(c, width, kind, stride, layout, layers))
                c = blocks[-1].out_features
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.post_bn = layers.bn(c) if preact else None
        self.num_features = c

    def feature_map(
        self, x: jax.Array, *, return_stages: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """NHWC images -> the last feature map (B, H/32, W/32, num_features); torchvision's
        `layer4` output, Keras' `post_relu` in v2.

        With `return_stages=True` returns `(feature_map, stages)` where `stages` holds the
        outputs of "stem" (after the max pool) and "stage1".."stage4" (the last block's
        output; in v2 before post_bn, like Keras' `convN_blockM_out`), for parity tests.
        """
        x = self.stem_conv(x)
        if self.stem_bn is not None:
            x = nnx.relu(self.stem_bn(x))
        x = _max_pool_zero_padded(x)
        stages = {"stem": x}
        for i in range(len(self.stages)):
            x = self.run_stage(i, x)
            stages[f"stage{i + 1}"] = x
        if self.post_bn is not None:
            x = nnx.relu(self.post_bn(x))
        return (x, stages) if return_stages else x

    def run_stage(self, index: int, x: jax.Array) -> jax.Array:
        """Stage `index` (0-based) on its input: its blocks one after another (ERNet adds its connections here)."""
        for block in self.stages[index]:
            x = block(x)
        return x

    def pool(self, feature_map: jax.Array) -> jax.Array:
        """Global average pool: (B, H, W, C) -> (B, C)."""
        return jnp.mean(feature_map, axis=(1, 2))

    def __call__(
        self, x: jax.Array, *, return_stages: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Pooled features (B, num_features); with `return_stages`, `(features, stages)` as in `feature_map`."""
        if not return_stages:
            return self.pool(self.feature_map(x))
        fmap, stages = self.feature_map(x, return_stages=True)
        return self.pool(fmap), stages
