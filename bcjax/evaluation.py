"""Evaluators: what the loop calls to evaluate a side of the split, without knowing what they write.

Each evaluator runs the compiled eval step over every image of its side once (the last batch
padded and masked, never dropped). `ValidationScalars.run` returns the scalars the loop logs;
`EvaluationReport.run` writes the side's report files and returns the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from bcjax import evaluation_files, metrics, parallel
from bcjax.datasets.breakhis import TARGET_CLASSES
from bcjax.input_pipeline import InputData
from bcjax.steps import State, Steps
from bcjax.workdir_guard import EVAL_DIR


@dataclasses.dataclass(frozen=True)
class Predictions:
    rows: np.ndarray  # table rows, each evaluated image once, sorted
    probabilities: np.ndarray  # [N, classes]
    loss: float


def predict(
    steps: Steps, state: State, data: InputData, side: str, *, mesh: jax.sharding.Mesh, global_batch: int
) -> Predictions:
    """Runs the eval step over every image of `side`; outputs are replicated, so every process gets all."""
    local = parallel.local_batch_size(global_batch, mesh)
    rows, probabilities, losses = [], [], []
    for batch in data.evaluate(side, local):
        out = steps.evaluate(state, parallel.to_global(batch, mesh))
        keep = parallel.fetch(out["mask"])
        rows.append(parallel.fetch(out["index"])[keep])
        probabilities.append(parallel.fetch(out["probabilities"])[keep])
        losses.append(parallel.fetch(out["loss"])[keep])
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    order = np.argsort(rows)
    loss = float(np.concatenate(losses).mean()) if len(rows) else float("nan")
    return Predictions(rows[order], np.concatenate(probabilities)[order], loss)


@dataclasses.dataclass
class _Evaluator:
    """One side of the split, evaluated with the run's compiled steps."""

    side: str
    data: InputData
    steps: Steps
    mesh: jax.sharding.Mesh
    global_batch: int

    def _predictions(self, state: State) -> tuple[Predictions, np.ndarray, tuple[str, ...]]:
        predictions = predict(self.steps, state, self.data, self.side, mesh=self.mesh, global_batch=self.global_batch)
        target = self.data.config.target
        return predictions, getattr(self.data.table, target)[predictions.rows], TARGET_CLASSES[target]


LOGGED_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")


class ValidationScalars(_Evaluator):
    """The scalars logged at each evaluation during training: loss, accuracy, balanced accuracy, AUC."""

    def run(self, state: State) -> dict[str, float]:
        predictions, labels, names = self._predictions(state)
        image_metrics = metrics.classification_metrics(predictions.probabilities, labels, names)
        scalars = {
            "loss": predictions.loss,
            **{k: image_metrics[k] for k in ("accuracy", "balanced_accuracy", "roc_auc")},
        }
        return {f"{self.side}/{k}": (float("nan") if v is None else float(v)) for k, v in scalars.items()}


@dataclasses.dataclass
class EvaluationReport(_Evaluator):
    """`eval/<side>/`: report.json, predictions.csv and plots; `run` returns the report."""

    directory: epath.Path
    bootstrap_samples: int  # patient-bootstrap resamples of the 95% intervals
    seed: int

    def run(self, state: State) -> dict[str, Any]:
        predictions, labels, names = self._predictions(state)
        return evaluation_files.write_evaluation(
            self.directory,
            table=self.data.table,
            rows=predictions.rows,
            probabilities=predictions.probabilities,
            labels=labels,
            class_names=names,
            split=self.data.split,
            side=self.side,
            bootstrap_samples=self.bootstrap_samples,
            seed=self.seed,
        )


def _sides(data: InputData, sides) -> list[str]:
    """The sides that hold images: a split without validation images evaluates none."""
    return [side for side in sides if len(getattr(data.split, side))]


def validation_evaluators(
    config: ml_collections.ConfigDict, data: InputData, steps: Steps, mesh: jax.sharding.Mesh
) -> list[ValidationScalars]:
    """The evaluators the loop runs at every evaluation interval."""
    return [ValidationScalars(side, data, steps, mesh, config.eval_batch_size) for side in _sides(data, ["validation"])]


def final_evaluators(
    config: ml_collections.ConfigDict, data: InputData, steps: Steps, mesh: jax.sharding.Mesh, workdir: epath.Path
) -> list[EvaluationReport]:
    """The evaluators of `config.evaluation.splits` that run once training ends."""
    return [
        EvaluationReport(
            side,
            data,
            steps,
            mesh,
            config.eval_batch_size,
            directory=workdir / EVAL_DIR / side,
            bootstrap_samples=config.evaluation.bootstrap_samples,
            seed=config.seed,
        )
        for side in _sides(data, config.evaluation.splits)
    ]
