"""Only process 0, the lead, writes files: the check, the JSON writes that honour it, and the coordination.

Every process runs the same program; letting one write keeps shared filesystems free of
races and duplicate lines. Writers built on `is_lead` are no-ops elsewhere, so their callers
need no `if process_index == 0` of their own.

With several processes, `run_on_lead` runs longer work (writing the synthetic tree, building the
dataset) on the lead while the others wait for its outcome, and `failures_stop_every_process`
ends every process promptly, with one message, when any of them fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from etils import epath


def is_lead() -> bool:
    """Whether this process is the one that writes and prints."""
    return jax.process_index() == 0


def write_json(path: epath.Path, payload: Any) -> None:
    """Writes `payload` as indented JSON (see `json_safe`) on the lead process, creating the folder."""
    if is_lead():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_safe(payload), indent=2))


def json_safe(value: Any) -> Any:
    """JSON-safe copy: NumPy scalars and arrays to Python, NaN/Inf to None, mapping keys to str."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ----------------------------------------------------------------------------- work of the lead alone, failures


class LeadProcessError(RuntimeError):
    """Raised on the other processes when work of `run_on_lead` or `run_on_every_process` failed on one."""


# A waiting process asks again this often; it waits as long as the lead's work takes.
_WAIT_SLICE_MS = 10_000
# How often every process looks for another process's failure (`failures_stop_every_process`).
_FAILURE_POLL_SECONDS = 0.5
_FAILURE_DIR = "bcjax/failed"
_MESSAGE_LIMIT = 20_000  # characters of an error message sent to the other processes
_lead_calls = itertools.count()  # numbers each `run_on_lead`, the same on every process


def run_on_lead(what: str, work: Callable[[], None]) -> None:
    """Runs `work` on the lead process alone (writing a shared folder) while the others wait.

    Every process calls it at the same point of the program, like a collective. The others wait
    for as long as the work takes (a dataset build can take many minutes), through the key-value
    store of JAX's distributed runtime. If `work` raises, the lead re-raises its error, and every
    other process raises at once a `LeadProcessError` that quotes it, names process 0 and says
    `what` it was doing ("preparing breakhis/archive in DIR"). A single process just runs `work`.
    """
    if jax.process_count() == 1:
        work()
        return
    client = _distributed_client()
    key = f"bcjax/lead_work/{next(_lead_calls)}"
    if not is_lead():
        outcome = _wait_for_key(client, key)
        if outcome != "done":
            raise LeadProcessError(f"process 0 failed while {what}: {outcome.removeprefix('failed: ')}")
        return
    try:
        work()
    except BaseException as error:
        client.key_value_set(key, f"failed: {_describe(error)}")
        raise
    client.key_value_set(key, "done")


def run_on_every_process(what: str, work: Callable[[], None]) -> None:
    """Runs `work` on every process, then waits until every process has finished its own.

    Like `run_on_lead`, a collective with no time limit (decoding a share of a dataset takes
    minutes): if `work` fails on any process, every other process raises a `LeadProcessError`
    that quotes it and says `what` it was doing.
    """
    if jax.process_count() == 1:
        work()
        return
    client = _distributed_client()
    key = f"bcjax/every_process_work/{next(_lead_calls)}"
    try:
        work()
    except BaseException as error:
        client.key_value_set(f"{key}/{jax.process_index()}", f"failed: {_describe(error)}")
        raise
    client.key_value_set(f"{key}/{jax.process_index()}", "done")
    for process in range(jax.process_count()):
        outcome = _wait_for_key(client, f"{key}/{process}")
        if outcome != "done":
            raise LeadProcessError(f"process {process} failed while {what}: {outcome.removeprefix('failed: ')}")


@contextlib.contextmanager
def failures_stop_every_process() -> Iterator[None]:
    """Within it, an error on any process ends every process within a second or two, with its message.

    Without it, an error on one process leaves the others waiting in their next collective, and
    the failing one waiting in the distributed runtime's shutdown barrier, until the barrier times
    out (5 minutes) and every process aborts with a C++ stack trace. Here the failing process posts
    its error to the runtime's key-value store and shuts the runtime down; every other process
    watches for such a post (a thread), prints `error: process N failed: <its message>`, joins the
    same shutdown (so the barrier is met at once) and exits with status 1. The first error posted
    is the one every process reports. A single process runs the body as it is.
    """
    if jax.process_count() == 1:
        yield
        return
    client = _distributed_client()
    watch = _FailureWatch(client)
    try:
        yield
    except BaseException as error:
        watch.stop()  # never returns if the watch is already ending this process for another's failure
        try:
            client.key_value_set(f"{_FAILURE_DIR}/first", f"{jax.process_index()}\n{_describe(error)}")
        except jax.errors.JaxRuntimeError:
            pass  # another process posted its failure first: that one is reported
        jax.distributed.shutdown()
        raise
    watch.stop()


class _FailureWatch:
    """A thread that ends this process when another one posts its failure (`failures_stop_every_process`)."""

    def __init__(self, client: Any):
        self._client = client
        self._lock = threading.Lock()  # held from a failure's discovery until this process exits
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bcjax-failure-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops watching; blocks for good when the watch is already ending this process."""
        with self._lock:
            self._stopped.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stopped.wait(_FAILURE_POLL_SECONDS):
            try:
                posted = self._client.key_value_dir_get(_FAILURE_DIR)
            except jax.errors.JaxRuntimeError:
                return  # the runtime is going down: nothing left to watch
            if posted:
                self._end_process(posted[0][1])

    def _end_process(self, posted: str) -> None:
        with self._lock:
            if self._stopped.is_set():
                return  # this process is failing or finishing by itself
            process, _, message = posted.partition("\n")
            sys.stdout.flush()
            print(f"error: process {process} failed: {message}", file=sys.stderr, flush=True)
            jax.distributed.shutdown()  # meets the failing process at the shutdown barrier
            os._exit(1)


def _wait_for_key(client: Any, key: str) -> str:
    """The value of `key` once some process sets it, however long that takes."""
    while True:
        try:
            return client.blocking_key_value_get(key, _WAIT_SLICE_MS)
        except jax.errors.JaxRuntimeError as error:
            if "DEADLINE_EXCEEDED" not in str(error):
                raise


def _describe(error: BaseException) -> str:
    """`Type: message` of an error, as the other processes quote it."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + " [...]"


def _distributed_client() -> Any:
    """The client of JAX's distributed runtime (`jax.distributed.initialize`), which several processes need."""
    from jax._src import distributed  # no public accessor; orbax and multihost_utils read it too

    if distributed.global_state.client is None:
        raise RuntimeError("several JAX processes without jax.distributed.initialize(): bcjax cannot coordinate them")
    return distributed.global_state.client
