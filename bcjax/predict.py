"""Classify image files with a trained workdir: `python -m bcjax.predict --workdir=RUN PATH...`.

Each PATH is a file, a folder (searched recursively for image files) or a glob. Every input path gets
a CSV row (its status is 'ok' or why it failed) and the run's JSON summary goes beside the CSV;
`--explain` adds Grad-CAM overlays, heatmaps and a grid figure. `--split=test` (or train, validation)
predicts the run's own split instead, its images read from the image cache the run filled. The
Python API is `bcjax.predictor`.

Exit status: 0 when every path was predicted, 1 when any failed (each reason printed once on
stderr), 2 when nothing could run (a workdir without a checkpoint, a bad flag).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from bcjax.image_files import IMAGE_SUFFIXES

_EPILOG = f"""
formats: {", ".join(s.removeprefix(".") for s in IMAGE_SUFFIXES)} (a GIF's first frame; EXIF orientation applied;
palette, grey, 16-bit and transparent images become RGB, transparency over white). Images are squashed to the
run's input size as in training, so each must be at least that large.
outputs: --output=FILE.csv, else RUN/predictions/predictions-NNN.csv (the next free number); the summary is
FILE.json, explanations FILE_explained/ (NNNNNN_<name>.png overlay, .npy heatmap, grid.png). An existing
prediction is never replaced without --overwrite.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bcjax.predict",
        description="Predict image files with a trained bcjax workdir (the run's preprocessing and eval step).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (recursive) or globs")
    parser.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        help="predict this side of the run's own split instead of PATHs (images from the run's image cache)",
    )
    parser.add_argument("--workdir", required=True, help="the training run's --workdir")
    parser.add_argument("--checkpoint", default="best", help="best (default; latest if none), latest, or a step")
    parser.add_argument("--output", help="the CSV to write (default: RUN/predictions/predictions-NNN.csv)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--tta", default="none", choices=("none", "flips", "d4"), help="average the probabilities of flips / all 8"
    )
    parser.add_argument("--explain", action="store_true", help="write Grad-CAM overlays, heatmaps and a grid")
    parser.add_argument("--explain_class", help="explain this class (default: the predicted one)")
    parser.add_argument(
        "--explain_layer",
        help="module path of the layer to explain, e.g. backbone.stages.2 (default: last feature map)",
    )
    parser.add_argument("--grid", type=int, default=28, help="images in the grid figure (recipe C: 28; 0: none)")
    parser.add_argument("--threads", type=int, default=None, help="host threads decoding files (default: CPUs + 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.split):
        parser.error("give image PATHs or --split=train|validation|test (one of the two)")
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # orbax and TFDS log at INFO and WARNING on every read
    from bcjax import image_files, input_pipeline, prediction_files, predictor, preprocessing, runtime

    runtime.enable_compilation_cache(runtime.default_cache_dir())
    from etils import epath

    try:
        model = predictor.Predictor.from_workdir(args.workdir, args.checkpoint)
        explain_class = _class_id(args.explain_class, model.class_names)
        model.check_tta(args.tta)
        paths = prediction_files.output_paths(epath.Path(args.workdir), args.output, overwrite=args.overwrite)
        start = time.perf_counter()
        if args.split:
            names, pixels = model.split_images(args.split)
            options = dict(tta=args.tta, explain=args.explain, explain_class=explain_class, layer=args.explain_layer)
            predictions, count = model.predict_pixels(names, pixels, **options), len(names)
        else:
            inputs = image_files.find_images(args.paths)
            predictions, count = _results(model, inputs, args, explain_class), len(inputs)
    except (
        predictor.PredictorError,
        preprocessing.PreprocessingNotRecordedError,
        prediction_files.OutputExistsError,
        input_pipeline.DataNotFoundError,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = _write_results(model, predictions, count, paths, args)
    seconds = time.perf_counter() - start
    report = prediction_files.summary(results, model.class_names, **_about(model, args, paths, seconds))
    prediction_files.write_summary(paths.summary, report)
    if args.explain and args.grid:
        shown = [r for r in results if r.ok][: args.grid]
        if shown:
            prediction_files.write_grid(paths.explanations / "grid.png", shown, model.class_names)
    print(prediction_files.table(results, model.class_names, report))
    print(f"{len(results)} paths in {seconds:.1f} s ({len(results) / max(seconds, 1e-9):.1f} images/s)")
    print(
        f"CSV: {paths.csv}\nsummary: {paths.summary}"
        + (f"\nexplanations: {paths.explanations}" if args.explain else "")
    )
    return 1 if report["failed"] else 0


def _class_id(name: str | None, class_names: Sequence[str]) -> int | None:
    if name is None:
        return None
    if name not in class_names:
        raise ValueError(f"--explain_class={name}: this run's classes are {', '.join(class_names)}")
    return list(class_names).index(name)


def _write_results(model, predictions, count: int, paths, args) -> list:
    """Writes CSV rows (and explanations) as the `count` results of `predictions` arrive; the results."""
    from tqdm import tqdm

    from bcjax import prediction_files

    results, shown = [], 0
    handle, writer = prediction_files.open_csv(paths.csv)
    with handle, tqdm(total=count, unit=" images", file=sys.stderr, disable=None) as bar:
        writer.writerow(prediction_files.csv_header(model.class_names, args.explain))
        for number, result in enumerate(predictions):
            files = None
            if args.explain and result.ok:
                files = [
                    os.path.relpath(path, paths.csv.parent)
                    for path in prediction_files.write_explanation(paths.explanations, number, result)
                ]
                shown += 1
                if shown > args.grid:  # only the grid's images keep their pixels
                    result.image = None
            if not result.ok:
                tqdm.write(f"failed: {result.path}: {result.status}", file=sys.stderr)
            writer.writerow(prediction_files.csv_row(result, model.class_names, args.explain, files))
            results.append(result)
            bar.update(1)
    return results


def _results(model, inputs, args, explain_class):
    """A FileResult per input, in input order: the failures of finding them, and the predictor's results."""
    from bcjax.predictor import FileResult

    stream = model.predict_files(
        [path for path, reason in inputs if reason is None],
        tta=args.tta,
        explain=args.explain,
        explain_class=explain_class,
        layer=args.explain_layer,
        threads=args.threads,
    )
    for path, reason in inputs:
        yield FileResult(path, reason) if reason is not None else next(stream)


def _about(model, args, paths, seconds) -> dict:
    """What the summary says about the prediction before its counts."""
    config = model.config
    about = {
        "workdir": os.path.abspath(args.workdir),
        "checkpoint": {"requested": args.checkpoint, "step": model.step},
        "model": {
            "arch": config.model.arch,
            "layout": config.model.layout,
            "head": config.model.head,
            "target": config.data.target,
            "classes": list(model.class_names),
        },
        "preprocessing": model.preprocessing.to_json(),
        "tta": {"mode": args.tta, "views": {"none": 1, "flips": 4, "d4": 8}[args.tta]},
        "csv": str(paths.csv),
        "seconds": seconds,
    }
    if args.split:
        about["split"] = {
            "side": args.split,
            "name": model.config.data.split,
            "params": model.config.data.split_kwargs.to_dict(),
        }
    if args.explain:
        about["explanations"] = {
            "folder": str(paths.explanations),
            "method": "Grad-CAM",
            "class": args.explain_class or "predicted",
            "layer": args.explain_layer or "the backbone's last feature map",
        }
    return about


if __name__ == "__main__":
    sys.exit(main())
