"""Where a run's wall clock goes: seconds per phase, written to `<workdir>/timings.json`.

A user's figure is the time from the command to the report, not images/s. Each phase is timed
where it runs; the training steps are what is left of the loop once its validation and checkpoint
saves are taken out, and `other` is what no phase claims between the start of the run's setup and
its end (the split, the z-score statistics, writing files); imports, the workdir check and the
start of JAX come before the clock starts. Beside the phases: how many XLA programs the run
compiled, how many it loaded from the persistent compilation cache instead, and the seconds both
took (a fold that reuses the earlier fold's compiled steps needs none).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import jax

TIMINGS_FILE = "timings.json"
# In the order a run goes through them.
PHASES = (
    "model",  # building the model and loading pretrained weights
    "dataset",  # opening the prepared dataset (building it, and the demo's tree, when missing) and reading its table
    "images",  # decoding the images the image cache lacks, reading the others from it
    "setup",  # the train state, the jitted steps, checkpoints, the training data on the devices
    "first_step",  # the first training step: mostly its compilation
    "training_steps",  # every later step
    "validation",  # the evaluations during training
    "checkpoints",  # the part of each save the loop waits for, and the final wait
    "final_evaluation",  # every configured split's evaluation and report files
    "reports",  # learning curves and the printed summary
)


# JAX's events: an executable compiled or loaded from the persistent cache (timed), and a load.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
# In this process, since bcjax.phases was imported.
_compiled = {"compiled_programs": 0, "loaded_programs": 0, "compile_seconds": 0.0}


def _count_compilation(event: str, seconds: float, **kwargs) -> None:
    if event == COMPILE_EVENT:
        _compiled["compiled_programs"] += 1
        _compiled["compile_seconds"] += seconds


def _count_cache_hit(event: str, **kwargs) -> None:
    if event == CACHE_HIT_EVENT:  # inside a COMPILE_EVENT, which counted it as compiled
        _compiled["loaded_programs"] += 1
        _compiled["compiled_programs"] -= 1


jax.monitoring.register_event_duration_secs_listener(_count_compilation)
jax.monitoring.register_event_listener(_count_cache_hit)


class PhaseClock:
    """Accumulates wall-clock seconds per phase since it was made, and counts the XLA compilations."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._compiled_before = dict(_compiled)

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
        compiled = {k: v - self._compiled_before[k] for k, v in _compiled.items()}
        return {**self.seconds, "other": total - sum(self.seconds.values()), "total": total, **compiled}


def format_timings(timings: dict[str, float]) -> str:
    """One line: the total, each phase that took at least 0.05 s, then the programs compiled and loaded."""
    phases = [name for name in timings if name not in ("total", *_compiled)]
    shown = [f"{name.replace('_', ' ')} {timings[name]:.1f}s" for name in phases if timings[name] >= 0.05]
    return (
        f"Wall clock {timings['total']:.1f}s: "
        + ", ".join(shown)
        + f"; XLA programs: {timings['compiled_programs']:.0f} compiled, {timings['loaded_programs']:.0f} loaded"
        + f" from the persistent cache, in {timings['compile_seconds']:.1f}s"
    )
