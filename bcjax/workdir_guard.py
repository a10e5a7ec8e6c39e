"""One workdir holds one run: `config.json` records its config, and a resume must match it.

Mixing two configs in one workdir would mix their checkpoints and metrics, so another config
is refused unless `config.restart` asks to delete the old run and start over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from etils import epath
from jax.experimental import multihost_utils

from bcjax.lead_process import is_lead
from bcjax.metric_writer import METRICS_FILE, TENSORBOARD_DIR

# Fields that may change between runs of one workdir without changing the run.
RESUMABLE_FIELDS = ("restart",)
# Records the run's choice between the device-resident and the host data path (train.choose_device_path);
# a resume keeps that choice, a restart forgets it.
DATA_PATH_CHOICE_FILE = "data_path.json"
CHECKPOINTS_DIR = "checkpoints"
EVAL_DIR = "eval"  # eval/<split>/: report.json, predictions.csv, plots
SPLIT_FILE = "split.json"
# The resize, stain normalisation and normaliser of the run (bcjax.preprocessing), which prediction repeats.
PREPROCESSING_FILE = "preprocessing.json"
# What a run leaves in its workdir besides config.json; a restart deletes them.
_RUN_OUTPUTS = (
    CHECKPOINTS_DIR,
    EVAL_DIR,
    METRICS_FILE,
    TENSORBOARD_DIR,
    SPLIT_FILE,
    DATA_PATH_CHOICE_FILE,
    PREPROCESSING_FILE,
)


class WorkdirMismatchError(RuntimeError):
    """The workdir holds a run of another config; the message lists the differences."""


def check_workdir(workdir: epath.Path, config: ml_collections.ConfigDict) -> bool:
    """Writes `config.json`, or checks it against an existing run; returns True when resuming.

    A workdir of another config is refused unless `config.restart` is set, which deletes the
    old run (lead process only, like every write).
    """
    path = workdir / "config.json"
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    differences = _differences(json.loads(path.read_text()), current) if path.exists() else None
    if differences and not config.restart:
        raise WorkdirMismatchError(
            f"{workdir} holds a run of another config; differences (saved -> now):\n  "
            + "\n  ".join(differences)
            + "\nUse another --workdir, or --config.restart=True to delete that run and start over."
        )
    if jax.process_count() > 1:  # every process has read config.json before the lead rewrites it
        multihost_utils.sync_global_devices("workdir checked")
    if differences == []:
        return True
    if is_lead():
        if differences:
            _delete_run_outputs(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2, sort_keys=True))
    return False


def _delete_run_outputs(workdir: epath.Path) -> None:
    for name in _RUN_OUTPUTS:
        target = workdir / name
        if target.is_dir():
            target.rmtree()
        elif target.exists():
            target.unlink()


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'field: saved -> current' lines, nested fields dotted, RESUMABLE_FIELDS ignored."""
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
