"""What makes the workers' rows comparable: one spec, one batch, one timing protocol for every framework.

Imports no framework: each worker imports only its own (see `workers`).
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarking import timing

DTYPES = ("float32", "bfloat16")
# What every framework trains (benchmarking.models): backbone + global average pool + Dense(2), softmax
# cross-entropy, Adam.
NUM_CLASSES = 2
LEARNING_RATE = 1e-4


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One worker's configuration."""

    framework: str
    recipe: str
    dtype: str
    model: str  # a name in benchmarking.models
    height: int
    width: int
    batch: int
    warmup: int
    steps: int
    cache_dir: str | None = None
    keras_jit_compile: str = "auto"
    breakdown: bool = False
    device_resident: bool = False  # bcjax: batches drawn on the devices from images kept there (device_data)
    torch_compile: bool = False  # torch: the model under torch.compile

    def flags(self) -> list[str]:
        """The command-line flags of scripts/benchmark.py's worker mode for this spec."""
        values = [
            f"--framework={self.framework}",
            f"--recipe={self.recipe}",
            f"--dtype={self.dtype}",
            f"--model={self.model}",
            f"--height={self.height}",
            f"--width={self.width}",
            f"--batch={self.batch}",
            f"--warmup={self.warmup}",
            f"--steps={self.steps}",
            f"--keras_jit_compile={self.keras_jit_compile}",
            f"--{'' if self.breakdown else 'no'}breakdown",
            f"--{'' if self.device_resident else 'no'}device_resident",
            f"--{'' if self.torch_compile else 'no'}torch_compile",
        ]
        return values + ([f"--compilation_cache_dir={self.cache_dir}"] if self.cache_dir else [])


def host_batch(spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 NHWC images and int32 labels every framework trains on."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (spec.batch, spec.height, spec.width, 3), dtype=np.uint8)
    return images, rng.integers(0, NUM_CLASSES, spec.batch, dtype=np.int32)


def time_steps(
    step: Callable[[Any], Any],
    carry: Any,
    sync: Callable[[Any], Any],
    spec: RunSpec,
    on_first: Callable[[], None] = lambda: None,
) -> tuple[Any, dict]:
    """Every worker's timing: `warmup` synced steps (the first, which compiles, timed alone), then
    `steps` timed steps synced once at the end (`timing.run_steps`)."""
    carry, first, _ = timing.run_steps(step, carry, 1, sync)
    on_first()
    for _ in range(spec.warmup - 1):
        carry, _, _ = timing.run_steps(step, carry, 1, sync)
    carry, total, cpu = timing.run_steps(step, carry, spec.steps, sync)
    step_s = total / spec.steps if spec.steps else None
    return carry, {
        "first_step_s": first,
        "step_s": step_s,
        "cpu_s": cpu / spec.steps if spec.steps else None,
        "images_per_s": spec.batch / step_s if step_s else None,
    }


def compile_estimate(timing_figures: dict) -> dict:
    """First step minus a steady step: what tracing, compiling and first allocations cost (Keras, torch)."""
    if timing_figures["step_s"] is None:
        return {}
    return {"compile_s": timing_figures["first_step_s"] - timing_figures["step_s"]}


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mb(num_bytes: float | None) -> float | None:
    """Bytes as MiB; None (no figure) stays None."""
    return None if num_bytes is None else num_bytes / 2**20
