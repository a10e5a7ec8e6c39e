"""Time to result: the wall clock of the real command, phase by phase, on a BreakHis-sized archive.

    python scripts/bench_time_to_result.py [--recipes=a,b] [--steps=3] [--images_per_magnification=24]

Writes a synthetic BreakHis tree with the real 82 patient folders and 700x460 images (24 per
patient and magnification give ~7,900, BreakHis' size), then runs `python -m bcjax.main` as a
user would: recipe A twice (the first run builds the dataset and decodes, the second finds both
done) and recipe B's patient 5-fold protocol in one command, each for `--steps` training steps.
Every run writes timings.json (bcjax.phases); the table shows them side by side, and the
training steps and per-epoch costs (validation, checkpoints) extrapolated to the published
schedules. `--json_out` saves the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ is not installed

from bcjax.datasets import synthetic  # noqa: E402
from bcjax.phases import PHASES  # noqa: E402
from benchmarking.figures import published_schedules  # noqa: E402
from benchmarking.record import write_json  # noqa: E402
from configs import binary, multiclass  # noqa: E402

_RECIPES = flags.DEFINE_list(
    "recipes", ["a", "b"], "Recipes to run: a (binary.py), b (multiclass.py:patient, 5 folds)."
)
_STEPS = flags.DEFINE_integer("steps", 3, "Training steps per run (per fold): enough to time a step.")
_PER_MAG = flags.DEFINE_integer("images_per_magnification", 24, "Synthetic images per patient and magnification.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the tree, dataset and runs go (default: a temp dir).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Optional path for the figures as JSON.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs in order: (name, config, extra overrides, recipe of the published schedule).
RUNS = {
    "a": [("a, first run", "configs/binary.py", [], "a"), ("a, second run", "configs/binary.py", [], "a")],
    "b": [("b, 5 folds", "configs/multiclass.py:patient", ["--config.data.all_folds=True"], "b")],
}


def run_command(name: str, config: str, overrides: list[str], root: str) -> dict:
    """Runs one `python -m bcjax.main` on a fresh workdir; returns its timings.json and wall clock."""
    workdir = os.path.join(root, "runs", name.replace(", ", "_").replace(" ", "_"))
    command = [
        sys.executable,
        "-m",
        "bcjax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.data.dataset=breakhis/custom",
        f"--config.data.data_dir={os.path.join(root, 'tfds')}",
        f"--config.data.manual_dir={os.path.join(root, 'manual')}",
        f"--config.total_steps={_STEPS.value}",
        f"--config.eval_every_steps={_STEPS.value}",  # one validation and one checkpoint, timed
        f"--config.checkpoint_every_steps={_STEPS.value}",
        f"--config.log_every_steps={_STEPS.value}",
        *overrides,
    ]
    print(f"\n== {name}: {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    timings = json.loads(open(os.path.join(workdir, "timings.json")).read())
    return {"name": name, "command_seconds": wall, "timings": timings}


def extrapolate(run: dict, recipe: str) -> dict[str, float]:
    """The published schedule's training and per-epoch costs from this run's measured per-step ones."""
    timings, steps = run["timings"], _STEPS.value
    folds = timings.get("folds", [timings])
    step_seconds = sum(f["training_steps"] for f in folds) / (len(folds) * max(steps - 1, 1))
    _, published_steps = published_schedules()[recipe]
    config = binary.get_config() if recipe == "a" else multiclass.get_config("patient")
    epochs = config.num_epochs * (config.data.split_kwargs.k if recipe == "b" else 1)
    per_epoch = sum(f["validation"] + f["checkpoints"] for f in folds) / len(folds)
    once = timings["total"] - sum(f["training_steps"] + f["validation"] + f["checkpoints"] for f in folds)
    return {
        "published_steps": published_steps,
        "training_seconds": step_seconds * published_steps,
        "overhead_seconds": once + per_epoch * epochs,
    }


def print_table(runs: list[dict]) -> None:
    names = [run["name"] for run in runs]
    width = max(14, *map(len, names)) + 2
    print(f"\n{'phase (seconds)':<20}" + "".join(f"{n:>{width}}" for n in names))
    for phase in (*PHASES, "other", "total", "compiled_programs", "loaded_programs", "compile_seconds"):
        print(f"{phase:<20}" + "".join(f"{run['timings'][phase]:>{width}.1f}" for run in runs))
    print(f"{'command wall clock':<20}" + "".join(f"{run['command_seconds']:>{width}.1f}" for run in runs))
    print("\nPublished schedules on this machine, from the measured step time (training) and the rest:")
    for run in runs:
        steps, training, rest = (
            run["published"][k] for k in ("published_steps", "training_seconds", "overhead_seconds")
        )
        print(
            f"  {run['name']}: {steps} steps -> training {training / 3600:.1f} h, everything else {rest / 60:.1f} min"
        )


def main(argv: list[str]) -> None:
    del argv
    root = _WORKDIR.value or tempfile.mkdtemp(prefix="bcjax-time-to-result-")
    start = time.perf_counter()
    tree = synthetic.write_breakhis_tree(
        os.path.join(root, "manual"), patients="full", images_per_magnification=_PER_MAG.value, seed=0, overwrite=True
    )
    print(f"synthetic archive: {tree.num_images} images of 700x460 in {time.perf_counter() - start:.0f}s")
    runs = []
    for recipe in _RECIPES.value:
        for name, config, overrides, published in RUNS[recipe]:
            run = run_command(name, config, overrides, root)
            runs.append({**run, "published": extrapolate(run, published)})
    print(f"\n{tree.num_images} images, {os.cpu_count()} CPU cores, {_STEPS.value} training steps per run")
    print_table(runs)
    write_json(_JSON_OUT.value, {"images": tree.num_images, "cpu_count": os.cpu_count(), "runs": runs})


if __name__ == "__main__":
    app.run(main)
