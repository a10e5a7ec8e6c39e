"""PNG figures of a run: learning curves, the confusion matrix and ROC curves of an evaluated split.

The only module that uses matplotlib. It draws on an Agg canvas without pyplot, so no global
backend or figure registry is touched, and imports matplotlib only when a figure is drawn, so
processes that never plot (all but the lead) never load it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from etils import epath

from bcjax import metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_DPI = 120


def _figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on an Agg canvas: safe in threads and servers, nothing left registered."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> None:
    """PNG at `path`: a local path or any `epath` location (cloud storage too)."""
    with epath.Path(path).open("wb") as f:
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
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # a class without images: 0
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


def plot_roc(
    probabilities: np.ndarray,
    labels: np.ndarray,
    magnifications: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """Binary: the malignant ROC per magnification and for all images. Multiclass: per-class
    one-vs-rest curves on all images, and the macro-average curve per magnification."""
    probabilities, labels = metrics.validated_predictions(probabilities, labels, class_names)
    binary = len(class_names) == 2
    figure = _figure(6 if binary else 12, 5.5)
    axes = [figure.subplots()] if binary else list(figure.subplots(1, 2))
    _plot_magnification_curves(axes[-1], probabilities, labels, np.asarray(magnifications).astype(str))
    if binary:
        axes[0].set_title(f"ROC of {class_names[1]} per magnification")
    else:
        _plot_class_curves(axes[0], probabilities, labels, class_names)
        axes[0].set_title("one-vs-rest per class, all images")
        axes[1].set_title("macro one-vs-rest per magnification")
    for ax in axes:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def _plot_magnification_curves(
    axes: Axes, probabilities: np.ndarray, labels: np.ndarray, magnifications: np.ndarray
) -> None:
    """One curve per magnification and a bold one for all images (binary: malignant; else macro OvR)."""
    groups = [(m, magnifications == m) for m in sorted(set(magnifications.tolist()), key=metrics.magnification_order)]
    groups.append(("all", np.ones(len(labels), bool)))
    grid = np.linspace(0, 1, 201)
    for color, (name, keep) in enumerate(groups):
        p, y = probabilities[keep], labels[keep]
        auc = metrics.roc_auc(p, y)
        fpr, tpr = metrics.roc_curve(p[:, 1], y == 1) if p.shape[1] == 2 else (grid, _macro_roc_curve(p, y, grid))
        style = {"color": "black", "linewidth": 2.5} if name == "all" else {"color": f"C{color}", "linewidth": 1.5}
        axes.plot(fpr, tpr, label=_auc_label(name, auc, len(y)), **style)


def _plot_class_curves(axes: Axes, probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> None:
    """The one-vs-rest curve of every class with positives and negatives."""
    aucs = metrics.class_roc_aucs(probabilities, labels)
    for k, name in enumerate(class_names):
        if 0 < np.sum(labels == k) < len(labels):
            axes.plot(
                *metrics.roc_curve(probabilities[:, k], labels == k),
                color=f"C{k}",
                label=_auc_label(name, aucs[k], int(np.sum(labels == k))),
            )


def _macro_roc_curve(probabilities: np.ndarray, labels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Mean TPR on a false-positive-rate grid over the classes with positives and negatives."""
    curves = [
        np.interp(grid, *metrics.roc_curve(probabilities[:, k], labels == k))
        for k in range(probabilities.shape[1])
        if 0 < np.sum(labels == k) < len(labels)
    ]
    return np.mean(curves, 0) if curves else np.full_like(grid, np.nan)


def _auc_label(name: str, auc: float, n: int) -> str:
    """Legend entry: the curve's name, its AUC (n/a when undefined) and image count."""
    return f"{name} (AUC {'n/a' if math.isnan(auc) else f'{auc:.3f}'}, n={n})"


# ----------------------------------------------------------------------------- explanations


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """uint8 RGB: `heatmap` ([0, 1], any size) in the jet colormap, resized to `image` and blended with
    it at `weight` (pytorch-grad-cam's `show_cam_on_image`)."""
    from matplotlib import colormaps
    from PIL import Image

    height, width = image.shape[:2]
    resized = np.asarray(Image.fromarray(np.asarray(heatmap, np.float32)).resize((width, height), Image.BILINEAR))
    colours = colormaps["jet"](np.clip(resized, 0, 1))[..., :3]
    blended = weight * colours + (1 - weight) * image.astype(np.float64) / 255
    return np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8)


def plot_prediction_grid(
    images: Sequence[np.ndarray], titles: Sequence[str], correct: Sequence[bool | None], path: str | os.PathLike
) -> None:
    """Recipe C's grid of predictions: one panel per image titled with its class, green when the true
    class is known and right, red when wrong (the title then says `pred (Actual: ...)`), black when unknown."""
    columns = min(7, max(1, len(images)))
    rows = math.ceil(len(images) / columns)
    figure = _figure(2.2 * columns, 2.4 * rows)
    panels = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes, image, title, right in zip(panels, images, titles, correct):
        axes.imshow(image)
        axes.set_title(title, fontsize=8, color={True: "green", False: "red", None: "black"}[right])
    for axes in panels:
        axes.axis("off")
    _save(figure, path)
