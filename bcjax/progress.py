"""What the training loop tells a person: images/s, input wait, ETA, and the progress line."""

from __future__ import annotations

import time

from bcjax.schedule import Schedule


class Throughput:
    """images/s, ETA and the share of wall time spent fetching host batches, between log lines.

    Steps are dispatched asynchronously, so the devices only idle while the host is late with
    a batch: the input share is an upper bound of the time the devices waited for input.
    """

    def __init__(self, step: int, batch: int, total: int):
        self.batch, self.total = batch, total
        self.step, self.time, self.input_seconds = step, time.perf_counter(), 0.0

    def tick(self, step: int) -> tuple[dict[str, float], float]:
        """The scalars since the last tick, and the ETA in seconds."""
        now = time.perf_counter()
        elapsed = max(now - self.time, 1e-9)
        rate = (step - self.step) * self.batch / elapsed
        scalars = {"train/images_per_second": rate, "train/input_wait_fraction": self.input_seconds / elapsed}
        eta = (self.total - step) * self.batch / max(rate, 1e-9)
        self.step, self.time, self.input_seconds = step, now, 0.0
        return scalars, eta


def progress_line(step: int, schedule: Schedule, scalars: dict[str, float], eta: float) -> str:
    """One line per log interval: training figures, then validation ones when it just ran."""
    line = (
        f"step {step}/{schedule.total_steps} (epoch {scalars['epoch']:.2f}) "
        f"loss {scalars['train/loss']:.4f} acc {scalars['train/accuracy']:.3f} "
        f"{scalars['train/images_per_second']:.1f} img/s (input {scalars['train/input_wait_fraction']:.0%}) "
        f"ETA {format_duration(eta)}"
    )
    if "validation/accuracy" in scalars:
        line += (
            f" | val loss {scalars['validation/loss']:.4f} acc {scalars['validation/accuracy']:.3f} "
            f"bal.acc {scalars['validation/balanced_accuracy']:.3f}"
        )
    return line


def format_duration(seconds: float) -> str:
    """`1h05m` from an hour on, `4m07s` below."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
