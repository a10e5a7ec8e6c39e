"""Wall-clock timing shared by the benchmark scripts: three measurements, each for its own question.

- `timed`: one call of host work, how long it took (no device, nothing to wait for).
- `mean_seconds`: one program alone, each call synced: its own latency, with no overlap between calls.
- `run_steps`: a training loop's throughput, steps dispatched back to back and synced once at the end,
  so the host prepares step n+1 while the device runs step n, as in the trainer's loop.

No framework is imported here: `sync` is the caller's (`jax.block_until_ready`, `torch.cuda.synchronize`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """`fn()`'s result and its wall seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def mean_seconds(fn: Callable[[], Any], reps: int, sync: Callable[[Any], Any]) -> float:
    """Mean wall seconds of `fn` over `reps` calls, each synced, after one untimed (compiling) call."""
    sync(fn())
    start = time.perf_counter()
    for _ in range(reps):
        sync(fn())
    return (time.perf_counter() - start) / reps


def run_steps(step: Callable[[T], T], carry: T, count: int, sync: Callable[[T], Any]) -> tuple[T, float, float]:
    """`count` steps threaded through `carry`, synced once after the last: (carry, wall s, CPU s).

    The CPU seconds are the process's, all threads together: steadier than wall time on a shared
    machine, but they also count threads that spin while waiting.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(count):
        carry = step(carry)
    sync(carry)
    return carry, time.perf_counter() - start, time.process_time() - cpu_start
