"""The files of one evaluated split: report.json, predictions.csv, confusion_matrix.png and roc.png.

Only the lead process writes them; every process gets the report back, so callers need no
`if process_index == 0` of their own.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from etils import epath

from bcjax import metrics, plots
from bcjax.datasets.breakhis import TUMOR_TYPE_NAMES
from bcjax.lead_process import is_lead, write_json

if TYPE_CHECKING:
    from bcjax.datasets.splits import ImageTable, Split

# The leading columns of predictions.csv, in the order of `write_predictions_csv`'s arguments.
_METADATA_COLUMNS = ("filename", "patient_id", "accession", "magnification", "tumor_type")


def write_evaluation(
    directory: epath.Path,
    *,
    table: ImageTable,
    rows: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    split: Split,
    side: str,
    bootstrap_samples: int,
    seed: int,
) -> dict[str, Any]:
    """report.json, predictions.csv and the plots of `split`'s `side` (rows of `table`); returns the report."""
    class_names = list(class_names)
    patient_ids, magnifications = table.patient_id[rows], table.magnification[rows]
    report = _evaluated_split(split, side) | metrics.evaluation_report(
        probabilities, labels, patient_ids, magnifications, class_names, bootstrap_samples=bootstrap_samples, seed=seed
    )
    if not is_lead():
        return report
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "report.json", report)
    write_predictions_csv(
        directory / "predictions.csv",
        filenames=table.filename[rows],
        patient_ids=patient_ids,
        accessions=table.accession[rows],
        magnifications=magnifications,
        tumor_types=np.asarray(TUMOR_TYPE_NAMES)[table.tumor_type[rows]],
        labels=labels,
        predictions=probabilities.argmax(-1),
        probabilities=probabilities,
        class_names=class_names,
    )
    plots.plot_confusion_matrix(
        report["overall"]["confusion_matrix"],
        class_names,
        directory / "confusion_matrix.png",
        title=f"{side} ({split.name})",
    )
    plots.plot_roc(probabilities, labels, magnifications, class_names, directory / "roc.png")
    return report


def _evaluated_split(split: Split, side: str) -> dict[str, Any]:
    """What the report is of, ahead of its metrics: the side, its protocol, and its leakage."""
    leakage = split.leakage if side == "test" else split.validation_leakage
    return {
        "split": side,
        "protocol": split.name,
        "protocol_params": dict(split.params),
        "test_images_with_seen_accession": leakage.images_with_seen_accession,
        "test_images_with_seen_patient": leakage.images_with_seen_patient,
        "leakage": leakage.to_json_dict(),
        "leakage_summary": leakage.summary(),
    }


def write_predictions_csv(
    path: str | os.PathLike,
    *,
    filenames: Sequence[str],
    patient_ids: Sequence[str],
    accessions: Sequence[str],
    magnifications: Sequence[str],
    tumor_types: Sequence[Any],
    labels: np.ndarray,
    predictions: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
) -> None:
    """One row per image: metadata, `label`/`prediction` as class names and as `label_id`/`prediction_id`,
    then `prob_<class name>` per class (7 significant digits).

    Names keep the file readable; the ids let sklearn recompute every metric from it.
    """
    metadata = [filenames, patient_ids, accessions, magnifications, tumor_types]
    n = len(probabilities)
    if any(len(column) != n for column in [*metadata, labels, predictions]):
        raise ValueError(f"predictions CSV columns differ in length from the {n} probability rows")
    with epath.Path(path).open("w") as f:
        writer = csv.writer(f, lineterminator="\n")
        label_columns = ["label", "label_id", "prediction", "prediction_id"]
        writer.writerow([*_METADATA_COLUMNS, *label_columns, *(f"prob_{name}" for name in class_names)])
        for i in range(n):
            label, prediction = int(labels[i]), int(predictions[i])
            writer.writerow(
                [
                    *(column[i] for column in metadata),
                    class_names[label],
                    label,
                    class_names[prediction],
                    prediction,
                    *(f"{p:.7g}" for p in probabilities[i]),
                ]
            )
