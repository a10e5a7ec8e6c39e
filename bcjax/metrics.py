"""Image-, patient- and magnification-level metrics of one evaluated split; report, CSV and plots.

The trainer hands over host NumPy arrays covering every evaluated image exactly once:
`probabilities` [N, C] (binary: columns benign, malignant), `labels` [N], `patient_ids` [N],
`magnifications` [N]. Predictions are the argmax of the probabilities (ties: the lower class).

Every count-based metric is computed from confusion matrices of shape [..., C, C] (rows true,
columns predicted) and the ROC-AUC from per-patient-pair counts, so the point estimates and the
patient bootstrap (B resamples at once) share one code path.

Conventions follow scikit-learn with `zero_division=0`: an undefined precision, recall or F1 is
0, the macro averages run over the classes present in the labels or the predictions (what
sklearn's default `labels=None` does on the predictions CSV), and balanced accuracy averages the
recall of the classes present in the labels. Metrics that stay undefined (an AUC without
positives or negatives, the sensitivity without malignant images) are None, never NaN, so every
returned dict is JSON-serialisable.

NumPy and the standard library only; matplotlib is imported inside the plotting functions and
draws on an Agg canvas without pyplot, so no global backend or figure registry is touched.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONFIDENCE = 0.95
_BOOTSTRAPPED = ("accuracy", "balanced_accuracy", "roc_auc", "patient_recognition_rate", "sensitivity", "specificity")
_DPI = 120


# ----------------------------------------------------------------------------- primitives


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio, NaN where the denominator is 0 (undefined, not 0)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without a warning) where all are NaN."""
    defined = ~np.isnan(values)
    return _divide(np.where(defined, values, 0.0).sum(-1), defined.sum(-1))


def _open(path: str | os.PathLike, mode: str) -> IO:
    """Opens local paths and path objects with their own `open` (etils.epath: also cloud storage)."""
    return path.open(mode) if hasattr(path, "open") else open(path, mode)


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _confusion(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, groups: np.ndarray | None = None, num_groups: int = 1
) -> np.ndarray:
    """Counts [num_groups, C, C] (rows true, columns predicted), one matrix per group index."""
    groups = np.zeros_like(labels) if groups is None else groups
    flat = (groups * num_classes + labels) * num_classes + predictions
    counts = np.bincount(flat, minlength=num_groups * num_classes**2)
    return counts.reshape(num_groups, num_classes, num_classes)


def _true_positives(confusion: np.ndarray) -> np.ndarray:
    return np.diagonal(confusion, axis1=-2, axis2=-1)


def _accuracy(confusion: np.ndarray) -> np.ndarray:
    return _divide(_true_positives(confusion).sum(-1), confusion.sum((-2, -1)))


def _recall(confusion: np.ndarray) -> np.ndarray:
    """Per-class recall [..., C], NaN for classes without images."""
    return _divide(_true_positives(confusion), confusion.sum(-1))


def _precision(confusion: np.ndarray) -> np.ndarray:
    """Per-class precision [..., C], NaN for classes never predicted."""
    return _divide(_true_positives(confusion), confusion.sum(-2))


def _f1(confusion: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); NaN when both are 0."""
    return _divide(2 * _true_positives(confusion), confusion.sum(-1) + confusion.sum(-2))


def _score_histograms(
    scores: np.ndarray, positive: np.ndarray, groups: np.ndarray, num_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative image counts [groups, T] at each of the T distinct scores, highest first."""
    thresholds, rank = np.unique(-scores, return_inverse=True)
    cell, size = groups * len(thresholds) + rank, num_groups * len(thresholds)
    positives = np.bincount(cell, weights=positive, minlength=size).reshape(num_groups, -1)
    negatives = np.bincount(cell, weights=~positive, minlength=size).reshape(num_groups, -1)
    return positives, negatives


def _auc(
    scores: np.ndarray, positive: np.ndarray, groups: np.ndarray | None = None, draws: np.ndarray | None = None
) -> np.ndarray:
    """Exact ROC-AUC (Mann-Whitney, ties count half) [B]; NaN without positives or negatives.

    `wins[p, q]` sums over positives of patient p and negatives of patient q the pairs ranked
    right (1) or tied (1/2); a resample drawing patient p `draws[b, p]` times counts these pairs
    `draws[b, p] * draws[b, q]` times, so B resamples cost B x P x P, not B x N. Without `draws`
    all images form one group drawn once: the plain AUC.
    """
    if draws is None:
        groups, draws = np.zeros(len(scores), np.int64), np.ones((1, 1))
    positives, negatives = _score_histograms(scores, positive, groups, draws.shape[1])
    below = negatives.sum(1, keepdims=True) - np.cumsum(negatives, 1)  # negatives scored strictly lower
    wins = positives @ (below + negatives / 2).T
    pairs = (draws @ positives.sum(1)) * (draws @ negatives.sum(1))
    return _divide(np.sum((draws @ wins) * draws, 1), pairs)


def _auc_per_class(
    probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, draws: np.ndarray | None = None
) -> np.ndarray:
    """One-vs-rest AUC [B, C] of every class."""
    return np.stack([_auc(probabilities[:, k], labels == k, groups, draws) for k in range(probabilities.shape[1])], -1)


def _roc_auc(
    probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, draws: np.ndarray | None = None
) -> np.ndarray:
    """Binary: AUC [B] of the malignant probability; multiclass: macro OvR over the defined classes."""
    if probabilities.shape[1] == 2:
        return _auc(probabilities[:, 1], labels == 1, groups, draws)
    return _nanmean(_auc_per_class(probabilities, labels, groups, draws))


# ----------------------------------------------------------------------------- image level


def _check(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Arrays as float [N, C] and int [N], N > 0, C = len(class_names) >= 2, labels in 0..C-1."""
    probabilities, labels = np.asarray(probabilities, float), np.asarray(labels, np.int64)
    c = len(class_names)
    if (
        probabilities.ndim != 2
        or not len(probabilities)
        or probabilities.shape[1] != c
        or c < 2
        or labels.shape != probabilities.shape[:1]
    ):
        raise ValueError(
            f"need probabilities [N > 0, {c} classes] and labels [N]; got {probabilities.shape} and {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels outside 0..{c - 1}")
    return probabilities, labels


def _count_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """The scalar count metrics of confusion matrices [..., C, C]; NaN where undefined."""
    recall = _recall(confusion)
    metrics = {"accuracy": _accuracy(confusion), "balanced_accuracy": _nanmean(recall)}
    if confusion.shape[-1] == 2:
        metrics["sensitivity"], metrics["specificity"] = recall[..., 1], recall[..., 0]
    return metrics


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Image-level metrics of argmax predictions, with sklearn's conventions (module docstring).

    `per_class` holds precision, recall, F1, support and the one-vs-rest AUC of each class by
    name; `confusion_matrix` is a list of rows (true) of counts per predicted class. Binary
    reports add sensitivity (recall of class 1, malignant) and specificity (recall of class 0),
    None when that class has no images.
    """
    probabilities, labels = _check(probabilities, labels, class_names)
    num_classes = len(class_names)
    confusion = _confusion(labels, probabilities.argmax(1), num_classes)[0]
    support, predicted = confusion.sum(1), confusion.sum(0)
    present = (support + predicted) > 0  # sklearn's macro runs over labels present in y_true or y_pred
    per_class = {"precision": _precision(confusion), "recall": _recall(confusion), "f1": _f1(confusion)}
    per_class = {k: np.nan_to_num(v, nan=0.0) for k, v in per_class.items()}  # zero_division=0
    class_auc = _auc_per_class(probabilities, labels)[0]
    metrics = {"images": len(labels)}
    metrics |= {k: _json_float(v) for k, v in _count_metrics(confusion).items()}
    metrics |= {f"macro_{k}": float(v[present].mean()) for k, v in per_class.items()}
    metrics["roc_auc"] = _json_float(_roc_auc(probabilities, labels)[0])
    metrics["per_class"] = {
        name: {
            **{k: float(v[i]) for k, v in per_class.items()},
            "support": int(support[i]),
            "roc_auc": _json_float(class_auc[i]),
        }
        for i, name in enumerate(class_names)
    }
    metrics["confusion_matrix"] = confusion.tolist()
    return metrics


# ----------------------------------------------------------------------------- patient level


def _unique_mode(counts: np.ndarray) -> np.ndarray:
    """Row-wise argmax of counts [P, C], -1 where the maximum is shared (a tied vote)."""
    top = counts.max(1, keepdims=True)
    return np.where((counts == top).sum(1) == 1, counts.argmax(1), -1)


def patient_metrics(predictions: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray) -> dict[str, Any]:
    """Spanhol's patient score and recognition rate, plus patient-level majority-vote accuracy.

    Patient score = correct images of the patient / its images; the recognition rate is their
    mean, each patient counting once. Majority vote: a patient's predicted class is the most
    frequent prediction among its images and its class the most frequent label (its only label
    with BreakHis' patient folders); the patient is correct when both are unique and equal, so a
    tied vote counts as wrong.
    """
    predictions, labels = np.asarray(predictions, np.int64), np.asarray(labels, np.int64)
    patient_ids = np.asarray(patient_ids).astype(str)
    if not len(labels) or not predictions.shape == labels.shape == patient_ids.shape:
        raise ValueError(
            f"need N > 0 predictions, labels and patient ids; got {predictions.shape}, "
            f"{labels.shape} and {patient_ids.shape}"
        )
    patients, index = np.unique(patient_ids, return_inverse=True)
    num_classes = int(max(predictions.max(), labels.max())) + 1
    confusion = _confusion(labels, predictions, num_classes, index, len(patients))
    scores = _accuracy(confusion)
    voted, truth = _unique_mode(confusion.sum(1)), _unique_mode(confusion.sum(2))
    return {
        "patients": len(patients),
        "patient_recognition_rate": float(scores.mean()),
        "patient_majority_vote_accuracy": float(np.mean((voted == truth) & (voted >= 0))),
        "patient_scores": dict(zip(patients.tolist(), scores.tolist())),
    }


# ----------------------------------------------------------------------------- report


def _magnification_order(magnification: str) -> tuple[int, str]:
    """Sort key putting '40X' before '100X' (numeric order for names of one pattern)."""
    return len(magnification), magnification


def _split_metrics(
    probabilities: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    return classification_metrics(probabilities, labels, class_names) | patient_metrics(
        probabilities.argmax(1), labels, patient_ids
    )


def _interval(values: np.ndarray) -> list[float] | None:
    """Percentile interval of the defined bootstrap values, None when none is defined."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = 50 * (1 - CONFIDENCE)
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def _bootstrap(
    probabilities: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray, samples: int, seed: int
) -> dict[str, list[float] | None]:
    """Percentile intervals from resampling patients with replacement, all images of a drawn patient.

    A resample is a vector of draw counts per patient: its confusion matrix is the count-weighted
    sum of per-patient matrices and its AUC comes from per-patient-pair counts (`_auc`), so no
    image is copied per draw.
    """
    patients, index = np.unique(patient_ids.astype(str), return_inverse=True)
    num_classes = probabilities.shape[1]
    per_patient = _confusion(labels, probabilities.argmax(1), num_classes, index, len(patients))
    scores = _accuracy(per_patient)
    draws = np.random.default_rng(seed).multinomial(len(patients), np.full(len(patients), 1 / len(patients)), samples)
    draws = draws.astype(float)
    values = _count_metrics(np.tensordot(draws, per_patient, axes=1)) | {
        "roc_auc": _roc_auc(probabilities, labels, index, draws),
        "patient_recognition_rate": draws @ scores / len(patients),
    }
    return {name: _interval(values[name]) for name in _BOOTSTRAPPED if name in values}


def evaluation_report(
    probabilities: np.ndarray,
    labels: np.ndarray,
    patient_ids: np.ndarray,
    magnifications: np.ndarray,
    class_names: Sequence[str],
    *,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything about one evaluated split: overall, per magnification, and 95% patient-bootstrap CIs.

    Intervals resample patients, not images: images of one patient are correlated, and an image
    bootstrap would give intervals far too narrow. `bootstrap_samples=0` leaves them out ({}).
    """
    probabilities, labels = _check(probabilities, labels, class_names)
    patient_ids, magnifications = np.asarray(patient_ids).astype(str), np.asarray(magnifications).astype(str)
    by_magnification = {}
    for magnification in sorted(set(magnifications.tolist()), key=_magnification_order):
        keep = magnifications == magnification
        by_magnification[magnification] = _split_metrics(
            probabilities[keep], labels[keep], patient_ids[keep], class_names
        )
    intervals = _bootstrap(probabilities, labels, patient_ids, bootstrap_samples, seed) if bootstrap_samples else {}
    return {
        "images": len(labels),
        "overall": _split_metrics(probabilities, labels, patient_ids, class_names),
        "by_magnification": by_magnification,
        "confidence_intervals": intervals,
        "bootstrap_samples": bootstrap_samples,
    }


def summarize_folds(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Spanhol's protocol across folds or trials: mean, sample std (ddof=1) and per-fold values.

    Covers every scalar of "overall" and of each magnification. A fold where a metric is
    undefined (None) keeps None among the values and is left out of mean and std; std needs two
    defined folds.
    """
    magnifications = sorted({m for r in reports for m in r["by_magnification"]}, key=_magnification_order)
    return {
        "folds": len(reports),
        "overall": _summarize([r["overall"] for r in reports]),
        "by_magnification": {
            m: _summarize([r["by_magnification"].get(m, {}) for r in reports]) for m in magnifications
        },
    }


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summarize(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    names = [k for k in dict.fromkeys(k for m in metrics for k in m) if any(_is_scalar(m.get(k)) for m in metrics)]
    summary = {}
    for name in names:
        values = [m[name] if _is_scalar(m.get(name)) else None for m in metrics]
        defined = np.array([v for v in values if v is not None], float)
        summary[name] = {
            "mean": float(defined.mean()),
            "std": float(defined.std(ddof=1)) if len(defined) > 1 else None,
            "values": values,
        }
    return summary


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


# ----------------------------------------------------------------------------- CSV


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
    columns = [filenames, patient_ids, accessions, magnifications, tumor_types, labels, predictions]
    n = len(probabilities)
    if any(len(column) != n for column in columns):
        raise ValueError(f"predictions CSV columns differ in length from the {n} probability rows")
    with _open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(
            [
                "filename",
                "patient_id",
                "accession",
                "magnification",
                "tumor_type",
                "label",
                "label_id",
                "prediction",
                "prediction_id",
                *(f"prob_{name}" for name in class_names),
            ]
        )
        for i in range(n):
            label, prediction = int(labels[i]), int(predictions[i])
            writer.writerow(
                [
                    filenames[i],
                    patient_ids[i],
                    accessions[i],
                    magnifications[i],
                    tumor_types[i],
                    class_names[label],
                    label,
                    class_names[prediction],
                    prediction,
                    *(f"{p:.7g}" for p in probabilities[i]),
                ]
            )


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on an Agg canvas: safe in threads and servers, nothing left registered."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> None:
    with _open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=_DPI)


def plot_learning_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Loss and accuracy against step for every split with `<split>/loss` or `<split>/accuracy` keys."""
    figure = _figure(11, 4)
    panels = dict(zip(("loss", "accuracy"), figure.subplots(1, 2)))
    splits = list(
        dict.fromkeys(k.split("/")[0] for r in records for k in r if "/" in k and k.split("/", 1)[1] in panels)
    )
    for metric, axes in panels.items():
        for color, split in enumerate(splits):
            points = [(r["step"], r[f"{split}/{metric}"]) for r in records if r.get(f"{split}/{metric}") is not None]
            if points:
                steps, values = zip(*points)
                axes.plot(
                    steps,
                    values,
                    color=f"C{color}",
                    label=split,
                    marker="o" if len(points) <= 50 else None,
                    markersize=3,
                )
        axes.set(xlabel="step", ylabel=metric, title=metric)
        axes.grid(alpha=0.3)
        if axes.has_data():
            axes.legend()
    _save(figure, path)


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    """Counts in the cells, colours by row-normalised fraction (recall per true class)."""
    counts = np.asarray(confusion)
    fractions = np.nan_to_num(_divide(counts, counts.sum(1, keepdims=True)))
    size = 2.5 + 0.8 * len(class_names)
    figure = _figure(size + 1.2, size)
    axes = figure.subplots()
    image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        axes.text(
            j,
            i,
            f"{count}\n{fractions[i, j]:.0%}",
            ha="center",
            va="center",
            fontsize=10 if len(class_names) <= 4 else 8,
            color="white" if fractions[i, j] > 0.5 else "black",
        )
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(ticks, class_names)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    _save(figure, path)


def _roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates, from (0, 0), one point per distinct score."""
    positives, negatives = _score_histograms(scores, positive, np.zeros(len(scores), np.int64), 1)
    fp, tp = np.r_[0, np.cumsum(negatives[0])], np.r_[0, np.cumsum(positives[0])]
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)


def _macro_roc_curve(probabilities: np.ndarray, labels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mean TPR on a false-positive-rate grid over the classes with positives and negatives."""
    curves = [
        np.interp(grid, *_roc_curve(probabilities[:, k], labels == k))
        for k in range(probabilities.shape[1])
        if 0 < np.sum(labels == k) < len(labels)
    ]
    return np.mean(curves, 0) if curves else np.full_like(grid, np.nan)


def _auc_label(name: str, auc: float, n: int) -> str:
    return f"{name} (AUC {'n/a' if math.isnan(auc) else f'{auc:.3f}'}, n={n})"


def plot_roc(
    probabilities: np.ndarray,
    labels: np.ndarray,
    magnifications: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """Binary: the malignant ROC per magnification and for all images. Multiclass: per-class
    one-vs-rest curves on all images, and the macro-average curve per magnification."""
    probabilities, labels = _check(probabilities, labels, class_names)
    magnifications = np.asarray(magnifications).astype(str)
    groups = [(m, magnifications == m) for m in sorted(set(magnifications.tolist()), key=_magnification_order)]
    groups.append(("all", np.ones(len(labels), bool)))
    binary = len(class_names) == 2
    figure = _figure(6 if binary else 12, 5.5)
    axes = [figure.subplots()] if binary else list(figure.subplots(1, 2))
    grid = np.linspace(0, 1, 201)
    for color, (name, keep) in enumerate(groups):
        p, y = probabilities[keep], labels[keep]
        auc = float(_roc_auc(p, y)[0])
        fpr, tpr = _roc_curve(p[:, 1], y == 1) if binary else (grid, _macro_roc_curve(p, y, grid))
        style = {"color": "black", "linewidth": 2.5} if name == "all" else {"color": f"C{color}", "linewidth": 1.5}
        axes[-1].plot(fpr, tpr, label=_auc_label(name, auc, len(y)), **style)
    if binary:
        axes[0].set_title(f"ROC of {class_names[1]} per magnification")
    else:
        aucs = _auc_per_class(probabilities, labels)[0]
        for k, name in enumerate(class_names):
            if 0 < np.sum(labels == k) < len(labels):
                axes[0].plot(
                    *_roc_curve(probabilities[:, k], labels == k),
                    color=f"C{k}",
                    label=_auc_label(name, aucs[k], int(np.sum(labels == k))),
                )
        axes[0].set_title("one-vs-rest per class, all images")
        axes[1].set_title("macro one-vs-rest per magnification")
    for ax in axes:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    _save(figure, path)
