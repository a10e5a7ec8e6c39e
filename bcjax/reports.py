"""The workdir's files: resolved config, split, metrics.jsonl, TensorBoard events, evaluation reports.

Only process 0 writes; every writer here is a no-op elsewhere, so callers need
no `if process_index == 0` of their own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from bcjax import metrics as metrics_lib
from bcjax.datasets.breakhis.breakhis_dataset_builder import CLASSES, TUMOR_TYPES

TUMOR_TYPE_NAMES = tuple(folder for folder, _, _ in TUMOR_TYPES)


def class_names(target: str) -> tuple[str, ...]:
    """Names of the classes of `config.data.target`, in label order."""
    return CLASSES if target == "label" else TUMOR_TYPE_NAMES


# Fields that may change between runs of one workdir without changing the run.
RESUMABLE_FIELDS = ("restart",)
# The run's device_resident choice (train.device_data); a resume keeps it.
DATA_PATH_FILE = "data_path.json"


class WorkdirMismatchError(RuntimeError):
    """The workdir holds a run of another config; the message lists the differences."""


def is_lead() -> bool:
    return jax.process_index() == 0


def resolved_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def check_workdir(workdir: epath.Path, config: ml_collections.ConfigDict) -> bool:
    """Writes `config.json`, or checks it against an existing run; returns True when resuming.

    A workdir of another config is refused (it would mix two runs' checkpoints and
    metrics) unless `config.restart` is set, which starts over and deletes the old run.
    """
    path = workdir / "config.json"
    current = resolved_config(config)
    if path.exists():
        saved = json.loads(path.read_text())
        differences = _differences(saved, current)
        if not differences:
            return True
        if not config.restart:
            raise WorkdirMismatchError(
                f"{workdir} holds a run of another config; differences (saved -> now):\n  "
                + "\n  ".join(differences)
                + "\nUse another --workdir, or --config.restart=True to delete that run and start over."
            )
        if is_lead():
            for name in ("checkpoints", "eval", "metrics.jsonl", "tensorboard", "split.json", DATA_PATH_FILE):
                target = workdir / name
                if target.is_dir():
                    target.rmtree()
                elif target.exists():
                    target.unlink()
    if is_lead():
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2, sort_keys=True))
    return False


def _differences(saved: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in RESUMABLE_FIELDS:
            continue
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += _differences(a, b, f"{name}.")
        elif a != b:
            lines.append(f"{name}: {a!r} -> {b!r}")
    return lines


def write_json(path: epath.Path, payload: Any) -> None:
    if is_lead():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_plain(payload), indent=2))


def _plain(value: Any) -> Any:
    """JSON-safe copy: NumPy scalars to Python, NaN/Inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


class MetricWriter:
    """Appends one JSON object per log/evaluation to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: epath.Path):
        self.path = workdir / "metrics.jsonl"
        self.tensorboard = None
        if is_lead():
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not is_lead():
            return
        record = {"step": int(step), **_plain(dict(scalars))}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            if value is not None and np.isfinite(value):
                self.tensorboard.add_scalar(name, float(value), int(step))
        self.tensorboard.flush()

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drops records past `step`: a resumed run repeats them, and must not count them twice."""
        if is_lead() and self.path.exists():
            kept = [json.dumps(r) for r in self.records() if r["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def write_evaluation(
    directory: epath.Path,
    *,
    table,
    rows: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    split,
    side: str,
    bootstrap_samples: int,
    seed: int,
) -> dict:
    """report.json, predictions.csv and the plots of one evaluated split; returns the report."""
    report = metrics_lib.evaluation_report(
        probabilities,
        labels,
        table.patient_id[rows],
        table.magnification[rows],
        list(class_names),
        bootstrap_samples=bootstrap_samples,
        seed=seed,
    )
    leakage = split.leakage if side == "test" else split.validation_leakage
    report = {
        "split": side,
        "protocol": split.name,
        "protocol_params": dict(split.params),
        "test_images_with_seen_accession": leakage.test_images_with_seen_accession,
        "test_images_with_seen_patient": leakage.test_images_with_seen_patient,
        "leakage": leakage.to_json_dict(),
        "leakage_summary": leakage.summary(),
        **report,
    }
    if not is_lead():
        return report
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "report.json", report)
    predictions = probabilities.argmax(-1)
    metrics_lib.write_predictions_csv(
        directory / "predictions.csv",
        filenames=table.filename[rows],
        patient_ids=table.patient_id[rows],
        accessions=table.accession[rows],
        magnifications=table.magnification[rows],
        tumor_types=np.asarray(TUMOR_TYPE_NAMES)[table.tumor_type[rows]],
        labels=labels,
        predictions=predictions,
        probabilities=probabilities,
        class_names=list(class_names),
    )
    metrics_lib.plot_confusion_matrix(
        report["overall"]["confusion_matrix"],
        list(class_names),
        directory / "confusion_matrix.png",
        title=f"{side} ({split.name})",
    )
    metrics_lib.plot_roc(probabilities, labels, table.magnification[rows], list(class_names), directory / "roc.png")
    return report


def format_folds(summary: Mapping[str, Any]) -> str:
    """Mean +- std across folds of the headline metrics (Spanhol's protocol)."""
    overall = summary["overall"]
    parts = []
    for name in ("accuracy", "balanced_accuracy", "roc_auc", "patient_recognition_rate"):
        if name in overall:
            entry = overall[name]
            std = f" +- {entry['std']:.3f}" if entry["std"] is not None else ""
            parts.append(f"{name} {entry['mean']:.3f}{std}")
    return f"{summary['folds']} folds: " + ", ".join(parts)
