"""What a benchmark leaves behind: the machine and software it ran on, and its JSON file."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys

VERSIONS = ("jax", "jaxlib", "flax", "optax", "tensorflow", "keras", "torch", "torchvision", "numpy")


def versions() -> dict[str, str | None]:
    """Installed version of each of `VERSIONS` (tensorflow may be installed as tensorflow-cpu)."""
    found = {}
    for name in VERSIONS:
        candidates = (name, f"{name}-cpu") if name == "tensorflow" else (name,)
        found[name] = next((_version(c) for c in candidates if _version(c)), None)
    return found


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def probe_device() -> dict:
    """JAX's platform and first device, asked in a subprocess (the driver never holds a device)."""
    code = (
        "import jax, json; d = jax.devices()[0]; "
        "print(json.dumps([jax.default_backend(), d.device_kind, len(jax.devices())]))"
    )
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        backend, kind, count = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError):
        return {"platform": "unknown", "device": "unknown (JAX not usable)", "count": 0}
    return {"platform": backend, "device": kind, "count": count}


def header(device: dict, flags_for_bcjax: str, cache_dir: str) -> dict:
    """The run's date, command, machine, device and versions, and the bcjax workers' XLA setup."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "device": device,
        "versions": versions(),
        "bcjax_xla_flags": flags_for_bcjax,
        "compilation_cache_dir": cache_dir,
    }


def print_header(info: dict) -> None:
    """The header's lines, printed before the first row."""
    print(f"date: {info['date']}\ncommand: {info['command']}")
    print(f"machine: {info['machine']} ({info['processor']}), {info['cpu_count']} CPUs, Python {info['python']}")
    d = info["device"]
    print(f"device (JAX): {d['platform']}: {d['device']} x{d['count']}")
    print("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items()))
    print(
        f"bcjax XLA_FLAGS: {info['bcjax_xla_flags'] or '(none)'}; compilation cache: {info['compilation_cache_dir']}\n",
        flush=True,
    )


def write_json(path: str | None, record: dict) -> None:
    """Saves `record` to `path` (indented), when the script was given one (`--json_out`)."""
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=2)
