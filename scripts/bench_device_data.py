"""Training steps/s with the host input path vs the device-resident one, and the host path's input wait.

    python scripts/bench_device_data.py [--height=80 --width=80 --batch=32 --steps=10 --rounds=3]

Trains the same ResNet-18 (Adam, the demo's settings) on synthetic BreakHis
twice per augmentation set: batches from the grain iterator, transferred each
step (host path), and batches drawn and augmented inside the jitted step from
images kept on the devices (device path). For the host path it reports the
fraction of the wall time spent blocked in `next(iterator)` plus the transfer,
with steps dispatched asynchronously as in the trainer's loop. `measure` is
usable from other scripts.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ is not installed

from bcjax import components, input_pipeline, parallel, train  # noqa: E402
from bcjax.datasets import synthetic  # noqa: E402
from benchmarking import timing  # noqa: E402
from benchmarking.record import write_json  # noqa: E402
from configs import demo  # noqa: E402

_HEIGHT = flags.DEFINE_integer("height", 80, "Working height (not 64: see BENCHMARKS.md on 2x2 feature maps).")
_WIDTH = flags.DEFINE_integer("width", 80, "Working width.")
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per round (after 2 warm-up steps).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per path; the fastest one is reported.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write the synthetic dataset (default: a temp dir).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Optional path for the figures as JSON.")

AUGMENTATIONS = {
    "flips+rot90": {"flip_horizontal": True, "flip_vertical": True, "rotate90": True},
    "flips+rot90+crop+colour": {
        "flip_horizontal": True,
        "flip_vertical": True,
        "rotate90": True,
        "crop_scale": (0.5, 1.0),
        "crop_ratio": (0.75, 1.33),
        "brightness": 0.1,
        "contrast": 0.2,
        "hed_sigma": 0.05,
    },
}
SCHEDULE_STEPS = 10_000  # the run length the optimizer's schedule is built for; no run gets near it


def make_runner(
    config: ml_collections.ConfigDict, data: input_pipeline.InputData, *, resident: bool
) -> Callable[[int], dict[str, float]]:
    """Compiles the trainer's step (`components.build_steps`) on every device for one input path;
    returns `time(steps) -> figures`, after a first call of 2 steps that compiles and warms up."""
    mesh = parallel.make_mesh()
    device_data = data.on_devices(config.batch_size, mesh) if resident else None
    steps, state = components.build_steps(
        config, mesh, normalizer=data.normalizer, total_steps=SCHEDULE_STEPS, device_data=device_data
    )
    if resident:
        next_inputs = lambda: device_data  # noqa: E731
    else:
        iterator = iter(data.train(config.batch_size))
        next_inputs = lambda: parallel.to_global(next(iterator), mesh)  # noqa: E731
    carry: list[Any] = [(state, None)]  # (state, last metrics), carried from one call to the next

    def time_steps(count: int) -> dict[str, float]:
        """Dispatches `count` steps asynchronously, as the trainer's loop does, timing the waits for input."""
        waiting = 0.0

        def step(state_and_metrics: tuple) -> tuple:
            nonlocal waiting
            before = time.perf_counter()
            inputs = next_inputs()
            waiting += time.perf_counter() - before
            return steps.train(state_and_metrics[0], inputs)

        carry[0], seconds, _ = timing.run_steps(step, carry[0], count, jax.block_until_ready)
        return {
            "steps_per_second": count / seconds,
            "images_per_second": count * config.batch_size / seconds,
            "step_ms": 1000 * seconds / count,
            "input_wait_fraction": waiting / seconds,
        }

    time_steps(2)  # compilation and warm-up
    return time_steps


def measure(
    config: ml_collections.ConfigDict, data: input_pipeline.InputData, *, steps: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Host and device path, `rounds` alternating rounds of `steps` steps each; the fastest round of each.

    Alternating and keeping the fastest round discounts other load on a shared machine.
    """
    runners = {path: make_runner(config, data, resident=path == "device") for path in ("host", "device")}
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for path, run in runners.items():
            figures = run(steps)
            if path not in best or figures["step_ms"] < best[path]["step_ms"]:
                best[path] = figures
    return best


def _config(data_dir: str, augment: dict) -> ml_collections.ConfigDict:
    """The demo's config on the prepared synthetic dataset, at the flags' size and with `augment`."""
    config = demo.get_config()
    config.data.synthetic.enabled = False
    config.data.data_dir, config.data.dataset = data_dir, "breakhis/custom"
    config.data.height, config.data.width = _HEIGHT.value, _WIDTH.value
    config.data.augment.update(augment)
    config.batch_size = _BATCH.value
    return config


def _prepare_dataset(root: str) -> None:
    """A one-patient-per-type synthetic BreakHis, built as `breakhis/custom` under `root`/tfds (once)."""
    if os.path.isdir(os.path.join(root, "tfds")):
        return
    synthetic.write_breakhis_tree(
        os.path.join(root, "manual"),
        patients=1,
        images_per_magnification=8,
        image_size=(350, 230),
        seed=0,
        progress=False,
    )
    input_pipeline.prepare(
        data_dir=os.path.join(root, "tfds"), dataset="breakhis/custom", manual_dir=os.path.join(root, "manual")
    )


def main(argv: list[str]) -> None:
    del argv
    root = _WORKDIR.value or tempfile.mkdtemp(prefix="bcjax-bench-device-")
    _prepare_dataset(root)
    results = {}
    for name, augment in AUGMENTATIONS.items():
        config = _config(os.path.join(root, "tfds"), augment)
        data = input_pipeline.load(train.input_config(config, None, None), progress=False)
        for path, figures in measure(config, data, steps=_STEPS.value, rounds=_ROUNDS.value).items():
            results[f"{name}/{path}"] = figures
            print(
                f"{name:<26}{path:<8}{figures['steps_per_second']:>8.3f} steps/s {figures['step_ms']:>8.1f} ms"
                f"/step {figures['images_per_second']:>8.1f} img/s  input wait {figures['input_wait_fraction']:.1%}",
                flush=True,
            )
    if _JSON_OUT.value:
        record = {
            "height": _HEIGHT.value,
            "width": _WIDTH.value,
            "batch": _BATCH.value,
            "steps": _STEPS.value,
            "rounds": _ROUNDS.value,
            "devices": [str(d) for d in jax.devices()],
            "cpu_count": os.cpu_count(),
            "machine": platform.platform(),
            "jax": jax.__version__,
            "results": results,
        }
        write_json(_JSON_OUT.value, record)


if __name__ == "__main__":
    app.run(main)
