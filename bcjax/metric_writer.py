"""The training log of a workdir: `metrics.jsonl` (one JSON object per record) and TensorBoard events."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from etils import epath

from bcjax.lead_process import is_lead, json_safe

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Appends one JSON object per log/evaluation to `metrics.jsonl` and mirrors scalars to TensorBoard.

    Only the lead process writes; elsewhere `write` and `truncate_after` do nothing.
    """

    def __init__(self, workdir: epath.Path):
        self.path = workdir / METRICS_FILE
        self.tensorboard = None
        if is_lead():
            from tensorboardX import SummaryWriter  # only the lead needs it

            self.tensorboard = SummaryWriter(str(workdir / TENSORBOARD_DIR))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """One record at `step`; NaN/Inf become null in the file and are left out of TensorBoard."""
        if not is_lead():
            return
        record = {"step": int(step), **json_safe(dict(scalars))}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            if value is not None and np.isfinite(value):
                self.tensorboard.add_scalar(name, float(value), int(step))
        self.tensorboard.flush()

    def records(self) -> list[dict]:
        """Every record written so far, oldest first."""
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
