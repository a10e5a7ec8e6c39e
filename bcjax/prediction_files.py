"""What `python -m bcjax.predict` writes: the CSV (one row per input path), the JSON summary, the
Grad-CAM overlays and heatmaps with recipe C's grid figure, and the short table on the terminal.

Nothing here overwrites a previous prediction unless asked: `output_paths` refuses names in use.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from bcjax import metrics, plots
from bcjax.datasets.breakhis import CLASSES, TUMOR_TYPE_NAMES, TUMOR_TYPES_BY_CODE, parse_image_name
from bcjax.lead_process import json_safe
from bcjax.predictor import FileResult

PREDICTIONS_DIR = "predictions"  # under the workdir, where predictions go by default
_TABLE_ROWS = 10


class OutputExistsError(FileExistsError):
    """A previous prediction is where this one would go; the message says how to keep or replace it."""


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    csv: epath.Path
    summary: epath.Path  # beside the CSV, same name, .json
    explanations: epath.Path  # overlays, heatmaps and grid.png

    @classmethod
    def beside(cls, csv_path: epath.Path) -> OutputPaths:
        return cls(csv_path, csv_path.with_suffix(".json"), csv_path.with_name(f"{csv_path.stem}_explained"))

    def existing(self) -> list[epath.Path]:
        return [p for p in (self.csv, self.summary, self.explanations) if p.exists()]


def output_paths(workdir: epath.Path, output: str | None, *, overwrite: bool = False) -> OutputPaths:
    """`output` (a .csv path) or the next free `predictions/predictions-NNN.csv` of the workdir."""
    if output is None:
        folder = workdir / PREDICTIONS_DIR
        number = 1
        while (paths := OutputPaths.beside(folder / f"predictions-{number:03d}.csv")).existing():
            number += 1
        return paths
    if not output.endswith(".csv"):
        raise OutputExistsError(f"--output={output}: name a .csv file (the summary goes beside it as .json)")
    paths = OutputPaths.beside(epath.Path(output).expanduser().absolute())
    if paths.existing() and not overwrite:
        raise OutputExistsError(
            f"{', '.join(map(str, paths.existing()))} already exist (a previous prediction); pass another "
            "--output, leave it out for a new numbered file under the workdir, or add --overwrite to replace it"
        )
    return paths


# ----------------------------------------------------------------------------- CSV and explanations


def csv_header(class_names: Sequence[str], explain: bool) -> list[str]:
    header = ["path", "status", "prediction", "probability", *(f"prob_{name}" for name in class_names)]
    return header + (["explained_class", "overlay", "heatmap"] if explain else [])


def csv_row(
    result: FileResult, class_names: Sequence[str], explain: bool, files: Sequence[str] | None = None
) -> list[Any]:
    """One CSV row; `files` are the overlay and heatmap paths (relative to the CSV) when explained."""
    if not result.ok:
        return [result.path, result.status, *[""] * (2 + len(class_names)), *([""] * 3 if explain else [])]
    p = result.probabilities
    k = int(p.argmax())
    row = [result.path, "ok", class_names[k], f"{p[k]:.7g}", *(f"{v:.7g}" for v in p)]
    return row + ([class_names[result.explained_class], *files] if files else [])


def write_explanation(folder: epath.Path, number: int, result: FileResult) -> tuple[epath.Path, epath.Path]:
    """`NNNNNN_<file stem>.png` (the overlay on the file's own pixels) and `.npy` (the heatmap at the
    model's input size, float32 in [0, 1]); numbered by input order, so equal names in two folders never clash."""
    stem = f"{number:06d}_{os.path.splitext(os.path.basename(result.path))[0]}"
    folder.mkdir(parents=True, exist_ok=True)
    overlay, heatmap = folder / f"{stem}.png", folder / f"{stem}.npy"
    Image.fromarray(plots.heatmap_overlay(result.image, result.heatmap)).save(os.fspath(overlay))
    np.save(os.fspath(heatmap), result.heatmap.astype(np.float32))
    return overlay, heatmap


def write_grid(path: epath.Path, results: Sequence[FileResult], class_names: Sequence[str]) -> None:
    """Recipe C's figure of the first images: the overlay, titled with the predicted class; green when the
    BreakHis name says it is right, red `pred (Actual: ...)` when wrong."""
    images, titles, correct = [], [], []
    for result in results:
        predicted = class_names[int(result.probabilities.argmax())]
        truth = true_class(result.path, class_names)
        images.append(plots.heatmap_overlay(result.image, result.heatmap))
        titles.append(predicted if truth in (None, predicted) else f"{predicted} (Actual: {truth})")
        correct.append(None if truth is None else truth == predicted)
    plots.plot_prediction_grid(images, titles, correct, path)


def true_class(path: str, class_names: Sequence[str]) -> str | None:
    """The class a BreakHis file name states for this target (benign/malignant or the tumour type), else None."""
    fields = parse_image_name(path)
    if fields is None:
        return None
    if tuple(class_names) == CLASSES:
        return fields["class_name"]
    if tuple(class_names) == TUMOR_TYPE_NAMES:
        return TUMOR_TYPES_BY_CODE[fields["tumor_code"]].folder
    return None


# ----------------------------------------------------------------------------- summary


def summary(results: Sequence[FileResult], class_names: Sequence[str], **about: Any) -> dict[str, Any]:
    """Counts per predicted class, the failures, and (for BreakHis names) accuracy and the patient-level
    figures of the reports; `about` (model, checkpoint, preprocessing, ...) leads the summary."""
    done = [r for r in results if r.ok]
    predicted = np.array([int(r.probabilities.argmax()) for r in done], np.int64)
    counts = np.bincount(predicted, minlength=len(class_names)) if len(done) else np.zeros(len(class_names), int)
    return {
        **about,
        "images": len(results),
        "predicted": len(done),
        "failed": len(results) - len(done),
        "counts": dict(zip(class_names, counts.tolist())),
        "failures": [{"path": r.path, "reason": r.status} for r in results if not r.ok],
        "breakhis_names": _breakhis(done, predicted, class_names),
    }


def _breakhis(done: Sequence[FileResult], predicted: np.ndarray, class_names: Sequence[str]) -> dict | None:
    """Accuracy and per-patient majority votes of the images whose names are BreakHis names."""
    named = [(i, parse_image_name(r.path), true_class(r.path, class_names)) for i, r in enumerate(done)]
    named = [(i, fields, truth) for i, fields, truth in named if truth is not None]
    if not named:
        return None
    rows = np.array([i for i, _, _ in named])
    labels = np.array([list(class_names).index(truth) for _, _, truth in named])
    patients = np.array([fields["patient_id"] for _, fields, _ in named])
    guesses = predicted[rows]
    patient = metrics.patient_metrics(guesses, labels, patients)
    per_patient = {}
    for name in np.unique(patients):
        mine = patients == name
        vote = int(metrics.majority_vote(np.bincount(guesses[mine], minlength=len(class_names))[None])[0])
        per_patient[str(name)] = {
            "images": int(mine.sum()),
            "true_class": class_names[labels[mine][0]],
            "voted_class": class_names[vote] if vote >= 0 else "tie",
            "patient_score": patient["patient_scores"][str(name)],
        }
    return {
        "images": len(named),
        "accuracy": float(np.mean(guesses == labels)),
        "patients": patient["patients"],
        "patient_recognition_rate": patient["patient_recognition_rate"],
        "patient_majority_vote_accuracy": patient["patient_majority_vote_accuracy"],
        "per_patient": per_patient,
    }


def write_summary(path: epath.Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(payload), indent=2) + "\n")


def open_csv(path: epath.Path):
    """The CSV file and its writer (rows are written as results arrive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(os.fspath(path), "w", newline="")
    return handle, csv.writer(handle, lineterminator="\n")


def table(results: Sequence[FileResult], class_names: Sequence[str], report: dict[str, Any]) -> str:
    """The terminal's short account: the first rows, the counts per class, BreakHis accuracy when known."""
    lines = [f"{'prediction':<20} {'probability':>11}  path"]
    for result in results[:_TABLE_ROWS]:
        if result.ok:
            k = int(result.probabilities.argmax())
            lines.append(f"{class_names[k]:<20} {result.probabilities[k]:>11.3f}  {result.path}")
        else:
            lines.append(f"{'failed':<20} {'':>11}  {result.path}: {result.status}")
    if len(results) > _TABLE_ROWS:
        lines.append(f"... {len(results) - _TABLE_ROWS} more rows in the CSV")
    counts = ", ".join(f"{name} {n}" for name, n in report["counts"].items())
    lines.append(f"{report['predicted']} predicted ({counts}), {report['failed']} failed")
    named = report["breakhis_names"]
    if named:
        lines.append(
            f"BreakHis names: accuracy {named['accuracy']:.3f} on {named['images']} images; "
            f"{named['patients']} patients, majority-vote accuracy {named['patient_majority_vote_accuracy']:.3f}"
        )
    return "\n".join(lines)
