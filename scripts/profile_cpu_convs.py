"""Where a ResNet-50 training step spends its convolution time, layer shape by layer shape.

    python scripts/profile_cpu_convs.py [--height=96 --width=144 --batch=32 --reps=3]

For every distinct convolution of ResNet-50 (v1.5) at the given input, times the forward pass
and the backward pass (input and weight gradients; the stem needs only the weight gradient)
with `jax.lax.conv_general_dilated` and with bcjax's `resnet.conv_general_dilated` (a matrix
product for 1x1 kernels on CPU), and sums them over the network with each shape's count.
This is the profile behind the 1x1-as-matrix-product change (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import app, flags

from bcjax.models import resnet
from benchmarking import timing

_HEIGHT = flags.DEFINE_integer("height", 96, "Input height.")
_WIDTH = flags.DEFINE_integer("width", 144, "Input width.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_REPS = flags.DEFINE_integer("reps", 3, "Timed repetitions (after one warm-up).")

Layer = tuple[str, int, int, int, int, int, int]  # name, height, width, cin, cout, kernel, stride


def resnet50_layers(height: int, width: int) -> list[tuple[Layer, int]]:
    """(layer, count) for every distinct conv of ResNet-50 v1.5 on a height x width input."""

    def out(size: int, stride: int) -> int:
        return (size - 1) // stride + 1

    h, w = out(height, 2), out(width, 2)
    layers = [(("stem 7x7/2", height, width, 3, 64, 7, 2), 1)]
    h, w, cin = out(h, 2), out(w, 2), 64  # max pool
    for stage, (width_, blocks) in enumerate(zip(resnet.STAGE_WIDTHS, (3, 4, 6, 3))):
        stride = 1 if stage == 0 else 2
        ho, wo = out(h, stride), out(w, stride)
        name = f"stage {stage + 1}"
        layers += [
            ((f"{name} 1x1 in", h, w, cin, width_, 1, 1), 1),
            ((f"{name} 3x3/{stride}", h, w, width_, width_, 3, stride), 1),
            ((f"{name} 1x1 out", ho, wo, width_, 4 * width_, 1, 1), blocks),
            ((f"{name} projection 1x1/{stride}", h, w, cin, 4 * width_, 1, stride), 1),
            ((f"{name} 1x1 in (later)", ho, wo, 4 * width_, width_, 1, 1), blocks - 1),
            ((f"{name} 3x3", ho, wo, width_, width_, 3, 1), blocks - 1),
        ]
        h, w, cin = ho, wo, 4 * width_
    return layers


def mean_ms(fn: Callable, *args: jax.Array) -> float:
    """Milliseconds per call of `fn(*args)` alone (each call synced), after a compiling call."""
    return 1000 * timing.mean_seconds(lambda: fn(*args), _REPS.value, jax.block_until_ready)


def time_layer(layer: Layer, conv: Callable) -> tuple[float, float]:
    """Forward and backward milliseconds of one conv implementation."""
    _, height, width, cin, cout, size, stride = layer
    x = jax.random.normal(jax.random.key(0), (_BATCH.value, height, width, cin))
    kernel = jax.random.normal(jax.random.key(1), (size, size, cin, cout)) * 0.01
    dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    pad = ((size // 2, size // 2),) * 2

    def forward(x, kernel):
        return conv(x, kernel, (stride, stride), pad, dimension_numbers=dims)

    y = forward(x, kernel)
    wrt = (1,) if cin == 3 else (0, 1)  # the stem's input gradient is never needed

    def backward(x, kernel, g):
        _, pullback = jax.vjp(forward, x, kernel)
        return tuple(pullback(g)[i] for i in wrt)

    return mean_ms(jax.jit(forward), x, kernel), mean_ms(jax.jit(backward), x, kernel, jnp.ones_like(y))


def main(argv: list[str]) -> None:
    del argv
    print(
        f"ResNet-50 convolutions, batch {_BATCH.value} at {_HEIGHT.value}x{_WIDTH.value}, "
        f"{jax.devices()[0].device_kind}; milliseconds per call"
    )
    print(f"{'layer':<30}{'count':>6}{'lax fwd':>10}{'lax bwd':>10}{'bcjax fwd':>11}{'bcjax bwd':>11}")
    totals = [0.0] * 4
    for layer, count in resnet50_layers(_HEIGHT.value, _WIDTH.value):
        if count == 0:
            continue
        times = (*time_layer(layer, jax.lax.conv_general_dilated), *time_layer(layer, resnet.conv_general_dilated))
        totals = [t + count * v for t, v in zip(totals, times)]
        print(
            f"{layer[0]:<30}{count:>6}"
            + "".join(f"{v:>10.1f}" if i < 2 else f"{v:>11.1f}" for i, v in enumerate(times)),
            flush=True,
        )
    print(
        f"{'whole network (x count)':<36}"
        + "".join(f"{v:>10.0f}" if i < 2 else f"{v:>11.0f}" for i, v in enumerate(totals))
    )
    print(
        f"lax fwd+bwd {totals[0] + totals[1]:.0f} ms, bcjax fwd+bwd {totals[2] + totals[3]:.0f} ms: "
        f"{(totals[0] + totals[1]) / (totals[2] + totals[3]):.2f}x"
    )


if __name__ == "__main__":
    app.run(main)
