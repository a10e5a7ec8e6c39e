"""Where a run's wall clock goes: seconds per phase, written to `<workdir>/timings.json`.

A user's figure is the time from the command to the report, not images/s. Each phase is timed
where it runs; the training steps are what is left of the loop once its validation and checkpoint
saves are taken out, and `other` is what no phase claims between the start of the run's setup and
its end (the split, the z-score statistics, writing files); imports, the workdir check and the
start of JAX come before the clock starts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

TIMINGS_FILE = "timings.json"
# In the order a run goes through them.
PHASES = (
    "model",  # building the model and loading pretrained weights
    "dataset",  # opening the prepared dataset (building it first when missing) and reading its table
    "images",  # decoding the images the image cache lacks, reading the others from it
    "setup",  # the train state, the jitted steps, checkpoints, the training data on the devices
    "first_step",  # the first training step: mostly its compilation
    "training_steps",  # every later step
    "validation",  # the evaluations during training
    "checkpoints",  # the part of each save the loop waits for, and the final wait
    "final_evaluation",  # every configured split's evaluation and report files
    "reports",  # learning curves and the printed summary
)


class PhaseClock:
    """Accumulates wall-clock seconds per phase since it was made."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        if name not in self.seconds:
            raise KeyError(f"unknown phase {name!r}; one of {PHASES}")
        self.seconds[name] += seconds

    def to_json(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        return {**self.seconds, "other": total - sum(self.seconds.values()), "total": total}


def format_timings(timings: dict[str, float]) -> str:
    """One line: the total, then each phase that took at least 0.05 s."""
    shown = [f"{name.replace('_', ' ')} {s:.1f}s" for name, s in timings.items() if name != "total" and s >= 0.05]
    return f"Wall clock {timings['total']:.1f}s: " + ", ".join(shown)
