"""Prediction throughput, PNG files to CSV: `python -m bcjax.predict`'s path beside a plain PyTorch loop.

    python scripts/bench_predict.py [--arch=resnet18] [--images=256] [--size=224] [--quick]

One random-weight torchvision ResNet (2 classes) is converted with bcjax's converter into a workdir
(config.json, preprocessing.json, a checkpoint), so both sides run the same weights on the same
synthetic 700x460 BreakHis PNGs. Measured, after a warm-up that compiles:
  1. bcjax: files -> CSV through the predictor (host decoding threads, the trainer's eval step over
     every local device), plain, with --tta=flips and --tta=d4, and with --explain (Grad-CAM files);
  2. PyTorch: for each file, PIL open + resize, one forward pass, one CSV row (the papers' loop).
Prints images/s, the ratio to the PyTorch loop, and the largest probability difference between the two.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ is not installed


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="a torchvision ResNet (resnet18 .. resnet152)")
    parser.add_argument("--images", type=int, default=256, help="PNG files to predict")
    parser.add_argument("--size", type=int, default=224, help="the model's square input size")
    parser.add_argument("--workdir", help="where to write the files (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12 files of 175x115 at 64x64")
    args = parser.parse_args(argv)
    args.file_size = (700, 460)
    if args.quick:
        args.images, args.size, args.file_size = 12, 64, (175, 115)
    return args


def make_workdir(root: Path, arch: str, size: int):
    """A bcjax workdir holding the converted weights of a random torchvision `arch` with 2 classes; the torch model."""
    import torch
    import torchvision

    from bcjax import checkpoint, components, convert, parallel, pretrained, workdir_guard
    from bcjax.normalization import make_normalizer
    from bcjax.preprocessing import Preprocessing
    from configs import demo

    reference = getattr(torchvision.models, arch)(weights=None, num_classes=2).eval()
    torch.save(reference.state_dict(), root / f"{arch}.pth")
    converted = convert.convert_file(root / f"{arch}.pth", "torchvision", arch)
    config = demo.get_config()
    config.model.arch, config.data.height, config.data.width = arch, size, size
    config.data.synthetic.enabled = False
    workdir = root / "run"
    workdir_guard.check_workdir(workdir, config)
    normalizer = make_normalizer("imagenet")
    preprocessing = Preprocessing(size, size, "none", normalizer).to_json()
    (workdir / workdir_guard.PREPROCESSING_FILE).write_text(json.dumps(preprocessing))
    model = components.build_model(config)[0]
    pretrained.apply_converted(model, converted, load_head=True)
    _, state = components.build_steps(config, parallel.make_mesh(), normalizer=normalizer, total_steps=1, model=model)
    saver = checkpoint.Checkpoints(workdir / workdir_guard.CHECKPOINTS_DIR)
    saver.save(1, state, None)
    saver.close()
    return workdir, reference


def synthetic_pngs(root: Path, count: int, size: tuple[int, int]) -> list[str]:
    """`count` synthetic BreakHis PNGs of `size` (width, height), repeated when the tree holds fewer."""
    from bcjax.datasets import synthetic

    per_magnification = max(1, -(-count // 60))
    synthetic.write_breakhis_tree(
        root / "images", patients=1, images_per_magnification=per_magnification, image_size=size, seed=1, progress=False
    )
    files = sorted(str(p) for p in (root / "images").rglob("SOB_*.png"))
    return (files * (-(-count // len(files))))[:count]


def bcjax_rates(workdir: Path, files: list[str], out: Path) -> tuple[dict[str, float], np.ndarray]:
    """images/s of files -> CSV through `python -m bcjax.predict`'s code path, per mode, and the plain probabilities."""
    from bcjax import image_files, predict, prediction_files, predictor

    model = predictor.Predictor.from_workdir(workdir)
    rates, probabilities = {}, None
    modes = {"bcjax": [], "bcjax --tta=flips": ["--tta=flips"], "bcjax --tta=d4": ["--tta=d4"]}
    modes["bcjax --explain"] = ["--explain", "--grid=0"]
    for name, flags in modes.items():
        for run in ("warm-up", "timed"):
            chosen = files[: min(len(files), 8)] if run == "warm-up" else files
            csv_path = out / f"{name.replace(' ', '_').replace('-', '')}_{run}.csv"
            args = predict._parser().parse_args([f"--workdir={workdir}", f"--output={csv_path}", *flags, "x"])
            start = time.perf_counter()
            paths = prediction_files.OutputPaths.beside(Path(csv_path))
            inputs = image_files.find_images(chosen)
            results = predict._write_results(
                model, predict._results(model, inputs, args, None), len(inputs), paths, args
            )
            seconds = time.perf_counter() - start
        rates[name] = len(files) / seconds
        if name == "bcjax":
            probabilities = np.stack([r.probabilities for r in results])
    return rates, probabilities


def torch_rate(reference, files: list[str], size: int, out: Path) -> tuple[float, np.ndarray]:
    """images/s of a plain per-file PyTorch loop (PIL open, resize, normalise, forward, CSV row)."""
    import torch
    from PIL import Image

    torch.set_num_threads(os.cpu_count() or 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    probabilities = []
    with torch.no_grad(), open(out / "torch.csv", "w", newline="") as f:
        writer = csv.writer(f)
        start = time.perf_counter()
        for path in files:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
            x = (torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255 - mean) / std
            p = torch.softmax(reference(x[None]), -1)[0].numpy()
            writer.writerow([path, *p])
            probabilities.append(p)
        seconds = time.perf_counter() - start
    return len(files) / seconds, np.stack(probabilities)


def main(argv=None) -> int:
    args = _arguments(argv)
    import jax

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-predict-"))
    root.mkdir(parents=True, exist_ok=True)
    workdir, reference = make_workdir(root, args.arch, args.size)
    files = synthetic_pngs(root, args.images, args.file_size)
    torch_images_per_second, torch_probabilities = torch_rate(reference, files, args.size, root)
    rates, probabilities = bcjax_rates(workdir, files, root)
    devices = f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    width, height = args.file_size
    print(f"\n{args.arch} at {args.size}x{args.size}, {len(files)} PNG files ({width}x{height}) -> CSV on {devices}")
    print(f"{'path':<22} {'images/s':>10} {'x PyTorch loop':>15}")
    print(f"{'PyTorch per-file loop':<22} {torch_images_per_second:>10.1f} {1.0:>15.2f}")
    for name, rate in rates.items():
        print(f"{name:<22} {rate:>10.1f} {rate / torch_images_per_second:>15.2f}")
    print(f"max |probability difference| bcjax vs PyTorch: {np.abs(probabilities - torch_probabilities).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
