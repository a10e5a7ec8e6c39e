"""ERNet-18/34/50/101 (Chandana Mani & Kamalakannan, recipe D): a ResNet whose blocks also sum
weight-normalised connections from every earlier map of their stage.

The paper's Eq. 10 (MODELS.md section 1; it follows Zhang et al.'s DSNet, "ResNet or DenseNet?",
WACV 2021), as implemented here: inside each stage, with f_0 the shortcut output of the stage's
first block (Block A: its projection, or its input where it has none) and f_i (i >= 1) the output
of block i-1,

    block l's output = relu(residual_l + sum over i <= l of ER_l^i(f_i)),   ER(z) = w * BN(z)

with a per-channel weight w and batch norm of its own for every (l, i). The residual branches, the
stem and the Block-A projections are the ResNet's (`bcjax.models.resnet`, same variable paths), so
a converted ImageNet ResNet of the same depth fills them; the ER layers live in `enhanced`
(stage -> block -> i), which converted weights leave at their initialisation.

What the paper leaves open is an option:
  newest_map  "identity" (default): the newest map f_l enters unmodified, as Eq. 10 writes it
              ("h_l * x_l ... without any modification"); ER layers on f_0..f_{l-1} only.
              "normalized": ER on f_l too (MODELS.md's i <= l reading, DSNet's).
  er_input    which form of an earlier block's output the ER layers read: "post" (default: after
              its ReLU, the map the next block reads) or "pre" (the sum before that ReLU). f_0 has
              no activation, and the newest map is always the block input: the ResNet's shortcut,
              so this matters from a stage's third block on (not in ERNet-18).
  layout      "v1.5" (torchvision/timm) or "v1" (Keras), as the ResNet; the pre-activation v2
              has no block activation to put the sum under.

Initialisation, so that step 0 computes the loaded ResNet: w = 0 on every older map, so their
terms are exactly zero (0 * a finite value), in train and eval mode alike; the gradient reaches w
at once (BN(f_i) times the upstream gradient) and the ER batch norms from the first step on, once
w has moved. With "identity" the block is then the ResNet's block bit for bit, in both modes. With
"normalized", BN with mean 0, var 1, scale 1 divides by sqrt(1 + eps) (a 5e-6 error per block that
compounds over the depth), so the newest map's BN starts with scale sqrt(1 + eps) and w = 1: eval
mode matches the ResNet to float32 rounding; train mode normalises f_l with the batch's
statistics, which no initialisation can undo, so fine-tuning starts from a different function.
That is why "identity" is the default.

Extra parameters (3C per ER layer: w, BN scale and bias): ERNet-50 76,032 ("identity") or 121,344
("normalized"); ERNet-101 807,168 or 904,704.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bcjax.models import resnet

# ERNet depth -> the ResNet whose converted weights initialise it (registry `init_archs`).
ARCHITECTURES: dict[str, str] = {f"ernet{depth}": f"resnet{depth}" for depth in (18, 34, 50, 101)}
LAYOUTS = ("v1.5", "v1")
NEWEST_MAPS = ("identity", "normalized")
ER_INPUTS = ("post", "pre")
# The top-level layers that converted ResNet weights do not cover (registry `own_layers`).
OWN_LAYERS = ("enhanced",)


class EnhancedConnection(nnx.Module):
    """ER(z) = w * BN(z), per channel. `newest=True` starts as the identity (eval mode, to rounding),
    else as zero."""

    def __init__(self, features: int, layers: resnet._Layers, *, newest: bool):
        self.bn = layers.bn(features)
        self.weight = nnx.Param(jnp.full((features,), 1.0 if newest else 0.0, layers.param_dtype))
        if newest:  # BN(z) = (z - 0) * rsqrt(1 + eps) * scale: scale sqrt(1 + eps) makes it z
            self.bn.scale.set_value(jnp.full((features,), math.sqrt(1.0 + layers.epsilon), layers.param_dtype))

    def __call__(self, z: jax.Array) -> jax.Array:
        y = self.bn(z)
        return y * self.weight[...].astype(y.dtype)


class ERNet(resnet.ResNet):
    """ERNet backbone (the `bcjax.models.registry` interface): the ResNet of the same depth with
    enhanced residual blocks; returns globally average-pooled features (B, num_features)."""

    def __init__(
        self,
        arch: str = "ernet50",
        layout: str = "v1.5",
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        bn_epsilon: float | None = None,
        newest_map: str = "identity",
        er_input: str = "post",
        rngs: nnx.Rngs,
    ):
        for name, value, allowed in [
            ("arch", arch, tuple(ARCHITECTURES)),
            ("layout", layout, LAYOUTS),
            ("newest_map", newest_map, NEWEST_MAPS),
            ("er_input", er_input, ER_INPUTS),
        ]:
            if value not in allowed:
                raise ValueError(f"unknown ERNet {name} {value!r}; choose one of {allowed}")
        super().__init__(
            ARCHITECTURES[arch], layout, dtype=dtype, param_dtype=param_dtype, bn_epsilon=bn_epsilon, rngs=rngs
        )
        self.arch, self.newest_map, self.er_input = arch, newest_map, er_input
        layers = resnet._Layers(dtype, param_dtype, self.bn_epsilon, rngs)
        self.enhanced = nnx.List([self._stage_connections(stage, layers) for stage in self.stages])

    def _stage_connections(self, stage: nnx.List, layers: resnet._Layers) -> nnx.List:
        """Per block l, its ER layers ER_l^0 .. ER_l^{l-1} (and ER_l^l with "normalized")."""
        extra = int(self.newest_map == "normalized")
        return nnx.List(
            [
                nnx.List([EnhancedConnection(block.out_features, layers, newest=i == j) for i in range(j + extra)])
                for j, block in enumerate(stage)
            ]
        )

    def run_stage(self, index: int, x: jax.Array) -> jax.Array:
        """The stage's enhanced blocks: each sums its residual branch, the newest map and the ER
        terms of the older maps, then applies its ReLU."""
        older: list[jax.Array] = []  # f_0 .. f_{j-1} for block j, in the form the ER layers read
        before_relu = None  # the previous block's sum
        for j, (block, connections) in enumerate(zip(self.stages[index], self.enhanced[index])):
            residual, shortcut = block.branches(x)
            newest = shortcut if j == 0 else x  # f_j: what the ResNet's block adds
            *on_older, on_newest = connections if self.newest_map == "normalized" else (*connections, None)
            total = residual + (newest if on_newest is None else on_newest(newest))
            for connection, f in zip(on_older, older):
                total = total + connection(f)
            # f_0 has no activation; a block output is read before or after its ReLU.
            older.append(before_relu if before_relu is not None and self.er_input == "pre" else newest)
            before_relu = total
            x = nnx.relu(total)
        return x
