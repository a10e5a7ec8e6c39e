"""Both ends of a worker subprocess: the driver's `run_worker` and the worker's `worker`.

One subprocess per (framework, recipe, dtype) row, so peak memory is per run and TensorFlow and
torchvision never share a process (importing torchvision after TensorFlow segfaults). A worker
imports its own runner module only, so the Keras and torch workers never import JAX.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

from benchmarking.protocol import RunSpec, peak_rss_mb

# The script whose worker mode (`--framework=NAME`) runs one row.
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmark.py")
RUNNERS = {
    "bcjax": "benchmarking.bcjax_runner",
    "keras": "benchmarking.keras_runner",
    "torch": "benchmarking.torch_runner",
}
FRAMEWORKS = tuple(RUNNERS)
# Modules each framework needs; a missing one makes a "not installed" row.
REQUIRES = {
    "bcjax": ("jax", "flax", "optax", "bcjax"),
    "keras": ("tensorflow", "keras"),
    "torch": ("torch", "torchvision"),
}


def missing_modules(framework: str) -> list[str]:
    """The modules `framework` needs that this Python cannot import."""
    return [m for m in REQUIRES[framework] if importlib.util.find_spec(m) is None]


def run_worker(spec: RunSpec, env: dict[str, str], *, timeout: int) -> dict:
    """Runs one worker subprocess; failures and crashes become a status, never an exception."""
    record = dataclasses.asdict(spec)
    missing = missing_modules(spec.framework)
    if missing:
        return {**record, "status": f"not installed ({', '.join(missing)})"}
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        command = [sys.executable, SCRIPT, *spec.flags(), f"--result_file={result_file}"]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {**record, "status": f"timed out after {timeout}s"}
        if done.returncode != 0 or not os.path.exists(result_file):
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return {**record, "status": f"failed (exit {done.returncode}): {tail[0][:200]}"}
        with open(result_file) as f:
            return {**record, **json.load(f)}


def worker(spec: RunSpec, result_file: str) -> None:
    """Worker mode: one run, its result (with the peak RSS) written as JSON."""
    runner = importlib.import_module(RUNNERS[spec.framework])
    result = {"status": "ok", **runner.run(spec)}
    result["peak_rss_mb"] = peak_rss_mb()
    with open(result_file, "w") as f:
        json.dump(result, f)
