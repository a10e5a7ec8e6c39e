"""Image-, patient- and magnification-level metrics of one evaluated split, and their summary across folds.

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

Pure NumPy maths, no JAX and no I/O: `bcjax.evaluation_files` writes the reports, `bcjax.plots` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
_BOOTSTRAPPED = ("accuracy", "balanced_accuracy", "roc_auc", "patient_recognition_rate", "sensitivity", "specificity")


# ----------------------------------------------------------------------------- primitives


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio, NaN where the denominator is 0 (undefined, not 0)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without a warning) where all are NaN."""
    defined = ~np.isnan(values)
    return _divide(np.where(defined, values, 0.0).sum(-1), defined.sum(-1))


def _json_float(value: float) -> float | None:
    """NaN (undefined) as None, which JSON can hold."""
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
    """The diagonal [..., C]: images predicted as their true class."""
    return np.diagonal(confusion, axis1=-2, axis2=-1)


def _accuracy(confusion: np.ndarray) -> np.ndarray:
    """Fraction correct [...], NaN for an empty matrix."""
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


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC of one set of predictions (binary: malignant; multiclass: macro OvR); NaN when undefined."""
    return float(_roc_auc(probabilities, labels)[0])


def class_roc_aucs(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC [C] of every class; NaN for a class without positives or negatives."""
    return _auc_per_class(probabilities, labels)[0]


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates, from (0, 0), one point per distinct score."""
    positives, negatives = _score_histograms(scores, positive, np.zeros(len(scores), np.int64), 1)
    fp, tp = np.r_[0, np.cumsum(negatives[0])], np.r_[0, np.cumsum(positives[0])]
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)


# ----------------------------------------------------------------------------- image level


def validated_predictions(
    probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The arrays as float [N, C] and int [N]; ValueError unless N > 0, C = len(class_names) >= 2 and
    the labels lie in 0..C-1, so a wrong target or class list fails loudly instead of scoring nonsense."""
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
    probabilities, labels = validated_predictions(probabilities, labels, class_names)
    num_classes = len(class_names)
    confusion = _confusion(labels, probabilities.argmax(1), num_classes)[0]
    support, predicted = confusion.sum(1), confusion.sum(0)
    present = (support + predicted) > 0  # sklearn's macro runs over labels present in y_true or y_pred
    per_class = {"precision": _precision(confusion), "recall": _recall(confusion), "f1": _f1(confusion)}
    per_class = {k: np.nan_to_num(v, nan=0.0) for k, v in per_class.items()}  # zero_division=0
    class_auc = class_roc_aucs(probabilities, labels)
    metrics = {"images": len(labels)}
    metrics |= {k: _json_float(v) for k, v in _count_metrics(confusion).items()}
    metrics |= {f"macro_{k}": float(v[present].mean()) for k, v in per_class.items()}
    metrics["roc_auc"] = _json_float(roc_auc(probabilities, labels))
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


def majority_vote(counts: np.ndarray) -> np.ndarray:
    """Row-wise argmax of counts [P, C], -1 where the maximum is shared (a tied vote): a patient's
    predicted class from its images' predictions, the patient-level rule of the reports."""
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
    voted, truth = majority_vote(confusion.sum(1)), majority_vote(confusion.sum(2))
    return {
        "patients": len(patients),
        "patient_recognition_rate": float(scores.mean()),
        "patient_majority_vote_accuracy": float(np.mean((voted == truth) & (voted >= 0))),
        "patient_scores": dict(zip(patients.tolist(), scores.tolist())),
    }


# ----------------------------------------------------------------------------- report


def magnification_order(magnification: str) -> tuple[int, str]:
    """Sort key putting '40X' before '100X' (numeric order for names of one pattern)."""
    return len(magnification), magnification


def _split_metrics(
    probabilities: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Image- and patient-level metrics of one group of images."""
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
    probabilities, labels = validated_predictions(probabilities, labels, class_names)
    patient_ids, magnifications = np.asarray(patient_ids).astype(str), np.asarray(magnifications).astype(str)
    by_magnification = {}
    for magnification in sorted(set(magnifications.tolist()), key=magnification_order):
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
    magnifications = sorted({m for r in reports for m in r["by_magnification"]}, key=magnification_order)
    return {
        "folds": len(reports),
        "overall": _summarize([r["overall"] for r in reports]),
        "by_magnification": {
            m: _summarize([r["by_magnification"].get(m, {}) for r in reports]) for m in magnifications
        },
    }


def _is_scalar(value: Any) -> bool:
    """A number to average across folds (bools are flags, not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summarize(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, std and values of every scalar metric found in any fold, in first-seen order."""
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
