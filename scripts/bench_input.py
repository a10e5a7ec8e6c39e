"""Input-pipeline throughput, side by side in one run: the papers' PIL loader vs bcjax's cache.

    python scripts/bench_input.py [--patients=1 --images_per_magnification=12] [--height=96 --width=144]

Writes a synthetic BreakHis tree at the real 700x460 size, builds it with the
TFDS builder, then measures images/s for
  1. baseline: PIL opens each PNG file one by one, converts and resizes it
     (what the papers' Keras/PyTorch loaders do every epoch);
  2. first pass: bcjax decodes every record once, with 1 decoding thread and with `--workers`
     (in memory only, as with data.image_cache_dir='none');
  3. the image cache: a first run that decodes and writes it, a second run that reads it;
  4. cached pass: training batches served from memory (grain), plain and augmented;
and prints the ratios to the baseline. `--json_out` saves the figures.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import tempfile

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ is not installed

from bcjax import decoding, input_pipeline  # noqa: E402
from bcjax.augment import AugmentConfig  # noqa: E402
from bcjax.datasets import synthetic  # noqa: E402
from benchmarking.record import write_json  # noqa: E402
from benchmarking.timing import timed  # noqa: E402
from configs import default  # noqa: E402

_PATIENTS = flags.DEFINE_integer("patients", 1, "Synthetic patients per tumour type (quirk folders come on top).")
_PER_MAG = flags.DEFINE_integer("images_per_magnification", 12, "Images per patient and magnification.")
_HEIGHT = flags.DEFINE_integer("height", 96, "Working height (recipe A: 96).")
_WIDTH = flags.DEFINE_integer("width", 144, "Working width (recipe A: 144).")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size of the cached pass.")
_WORKERS = flags.DEFINE_integer("workers", decoding.default_workers(), "Decoding threads of the first pass.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write the tree and dataset (default: a temp dir).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Optional path for the figures as JSON.")


def baseline_pil(files: list[str], height: int, width: int) -> None:
    """The papers' loader: open, decode, convert and resize each file, one by one."""
    for path in files:
        with Image.open(path) as image:
            np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))


def cached_pass(data: input_pipeline.InputData, images: int, batch: int, augment: AugmentConfig) -> None:
    """At least one batch, and about `images` images, from the training iterator over the decoded cache."""
    iterator = iter(
        input_pipeline.train_dataset(
            data.cache, data.table, data.train_rows, global_batch=batch, seed=0, augment=augment
        )
    )
    for _ in range(max(1, images // batch)):
        next(iterator)


def prepare_dataset(root: str) -> tuple[str, list[str]]:
    """Writes the synthetic tree and builds it as `breakhis/custom`, printing how long each took;
    returns the TFDS data_dir and the tree's PNG files in record order."""
    manual = os.path.join(root, "manual")
    tree, seconds = timed(
        lambda: synthetic.write_breakhis_tree(
            manual,
            patients=_PATIENTS.value,
            images_per_magnification=_PER_MAG.value,
            seed=0,
            progress=False,
            overwrite=True,
        )
    )
    print(f"synthetic tree: {tree.num_images} images of 700x460 in {seconds:.1f}s")
    data_dir = os.path.join(root, "tfds")
    _, seconds = timed(lambda: input_pipeline.prepare(data_dir=data_dir, dataset="breakhis/custom", manual_dir=manual))
    print(f"TFDS build: {seconds:.1f}s")
    source = input_pipeline.open_source(data_dir, "breakhis/custom")
    return data_dir, [os.path.join(manual, f) for f in input_pipeline.read_table(source).filename]


def measure_rates(data_dir: str, files: list[str], height: int, width: int, cache_dir: str) -> dict[str, float]:
    """Images/s of the PIL baseline, bcjax's first (decoding) pass, the image cache and the cached passes."""
    n = len(files)
    _, t_baseline = timed(lambda: baseline_pil(files, height, width))
    rates = {"baseline_pil_per_file": n / t_baseline}

    def load(**fields) -> input_pipeline.InputData:
        config = input_pipeline.InputConfig.from_config(
            default.get_config(),
            normalization="imagenet",
            split_kwargs={},
            data_dir=data_dir,
            dataset="breakhis/custom",
            split="recipe_a",
            height=height,
            width=width,
            **fields,
        )
        return input_pipeline.load(config, progress=False)

    for workers in sorted({1, _WORKERS.value}):
        _, seconds = timed(functools.partial(load, decode_workers=workers, image_cache_dir="none"))
        rates[f"first_pass_{workers}_workers"] = n / seconds
    _, seconds = timed(lambda: load(decode_workers=_WORKERS.value, image_cache_dir=cache_dir))
    rates["image_cache_first_run_writes"] = n / seconds
    data, seconds = timed(lambda: load(decode_workers=_WORKERS.value, image_cache_dir=cache_dir))
    rates["image_cache_second_run_reads"] = n / seconds
    cached_images = max(n, 20 * _BATCH.value)
    _, t_cached = timed(lambda: cached_pass(data, cached_images, _BATCH.value, AugmentConfig()))
    flips = AugmentConfig(flip_horizontal=True, flip_vertical=True, rotate90=True)
    _, t_augmented = timed(lambda: cached_pass(data, cached_images, _BATCH.value, flips))
    served = (cached_images // _BATCH.value) * _BATCH.value
    return {**rates, "cached_pass": served / t_cached, "cached_pass_flips_rotations": served / t_augmented}


def main(argv: list[str]) -> None:
    del argv
    root = _WORKDIR.value or tempfile.mkdtemp(prefix="bcjax-bench-input-")
    data_dir, files = prepare_dataset(root)
    height, width, n = _HEIGHT.value, _WIDTH.value, len(files)
    rates = measure_rates(data_dir, files, height, width, tempfile.mkdtemp(prefix="image_cache-", dir=root))
    print(
        f"\nInput pipeline, {n} BreakHis-sized PNGs (700x460) -> {height}x{width}, "
        f"{os.cpu_count()} CPU cores, {_WORKERS.value} decoding threads"
    )
    print(f"{'path':<32}{'images/s':>12}{'x baseline':>12}")
    for name, rate in rates.items():
        print(f"{name:<32}{rate:>12.1f}{rate / rates['baseline_pil_per_file']:>12.1f}")
    record = {
        "images": n,
        "height": height,
        "width": width,
        "batch": _BATCH.value,
        "cpu_count": os.cpu_count(),
        "workers": _WORKERS.value,
        "machine": platform.platform(),
        "images_per_second": rates,
    }
    write_json(_JSON_OUT.value, record)


if __name__ == "__main__":
    app.run(main)
