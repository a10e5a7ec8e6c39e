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

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

import jax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ is not a package dir

from bcjax import input_pipeline as ip  # noqa: E402
from bcjax import losses, optimizers, parallel, train  # noqa: E402
from bcjax.datasets import synthetic  # noqa: E402
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


def make_runner(config, data: ip.InputData, *, resident: bool) -> Callable[[int], dict[str, float]]:
    """Compiles a training step on every device for one input path; returns `time(steps) -> figures`."""
    mesh = parallel.make_mesh()
    model, _ = train.build_model(config)
    tx = optimizers.make_optimizer(config.optimizer, 10_000)
    graphdef, state = train.initial_state(model, tx)
    loss_fn = losses.make_loss(config.loss.name, num_classes=train.num_outputs(config))
    device_data = data.on_devices(config.batch_size, mesh) if resident else None
    fns = train.make_steps(
        graphdef,
        state,
        tx=tx,
        mesh=mesh,
        loss_fn=loss_fn,
        normalizer=data.normalizer,
        target=config.data.target,
        shard_params=False,
        device_data=device_data,
    )
    carry = {"state": jax.device_put(state, fns.state_sharding)}
    iterator = None if resident else iter(data.train(config.batch_size))
    inputs = lambda: device_data if resident else parallel.to_global(next(iterator), mesh)  # noqa: E731

    def time_steps(steps: int) -> dict[str, float]:
        """Dispatches `steps` steps asynchronously, as the trainer's loop does, timing the waits for input."""
        waiting, start = 0.0, time.perf_counter()
        for _ in range(steps):
            before = time.perf_counter()
            batch = inputs()
            waiting += time.perf_counter() - before
            carry["state"], metrics = fns.train(carry["state"], batch)
        jax.block_until_ready((carry["state"], metrics))
        seconds = time.perf_counter() - start
        return {
            "steps_per_second": steps / seconds,
            "images_per_second": steps * config.batch_size / seconds,
            "step_ms": 1000 * seconds / steps,
            "input_wait_fraction": waiting / seconds,
        }

    time_steps(2)  # compilation and warm-up
    return time_steps


def measure(config, data: ip.InputData, *, steps: int, rounds: int) -> dict[str, dict[str, float]]:
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


def _config(data_dir: str, augment: dict):
    config = demo.get_config()
    config.data.synthetic.enabled = False
    config.data.data_dir, config.data.dataset = data_dir, "breakhis/custom"
    config.data.height, config.data.width = _HEIGHT.value, _WIDTH.value
    config.data.augment.update(augment)
    config.batch_size = _BATCH.value
    return config


def main(argv: list[str]) -> None:
    del argv
    root = _WORKDIR.value or tempfile.mkdtemp(prefix="bcjax-bench-device-")
    if not os.path.isdir(os.path.join(root, "tfds")):
        synthetic.write_breakhis_tree(
            os.path.join(root, "manual"),
            patients=1,
            images_per_magnification=8,
            image_size=(350, 230),
            seed=0,
            progress=False,
        )
        ip.prepare(
            data_dir=os.path.join(root, "tfds"), dataset="breakhis/custom", manual_dir=os.path.join(root, "manual")
        )
    results = {}
    for name, augment in AUGMENTATIONS.items():
        config = _config(os.path.join(root, "tfds"), augment)
        data = ip.load(train.input_config(config, None, None), progress=False)
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
        with open(_JSON_OUT.value, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    app.run(main)
