"""The few human-readable lines a run prints about its evaluation reports (the JSON files hold the rest)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bcjax.metrics import CONFIDENCE


def format_summary(report: Mapping[str, Any], leakage_line: str) -> str:
    """A few lines for the log: headline metrics with their 95% CIs, the leakage line beside accuracy."""
    overall, intervals = report["overall"], report["confidence_intervals"]

    def show(label: str, name: str) -> str:
        value, interval = overall.get(name), intervals.get(name)
        text = f"{label} {'n/a' if value is None else f'{value:.3f}'}"
        return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    lines = [
        f"{report['images']} images of {overall['patients']} patients; intervals: "
        f"{100 * CONFIDENCE:.0f}% patient bootstrap ({report['bootstrap_samples']} resamples)",
        f"{show('accuracy', 'accuracy')} | {leakage_line}",
        f"{show('balanced accuracy', 'balanced_accuracy')} | {show('ROC AUC', 'roc_auc')}",
    ]
    if "sensitivity" in overall:
        lines.append(f"{show('sensitivity', 'sensitivity')} | {show('specificity', 'specificity')}")
    lines.append(
        f"{show('patient recognition rate', 'patient_recognition_rate')} | "
        f"patient majority vote {overall['patient_majority_vote_accuracy']:.3f}"
    )
    lines.append(
        "accuracy by magnification: "
        + ", ".join(f"{m} {r['accuracy']:.3f}" for m, r in report["by_magnification"].items())
    )
    return "\n".join(lines)


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
