"""Runs of the trainer as a user starts them (`python -m bcjax.main`), and what they leave in the workdir."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(workdir, data_dir, *overrides, devices=8, config=None, wait=True, extra_env=None):
    """Runs `python -m bcjax.main` in a fresh process (as a user would); (returncode, output) or the process."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "bcjax.main",
        f"--config={config or f'tests/tiny_config.py:{data_dir}'}",
        f"--workdir={workdir}",
        *overrides,
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def free_port() -> int:
    """A localhost port free now, for a jax.distributed coordinator."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_processes(workdir, data_dir, *overrides, extra_env=None):
    """The same command as 2 processes x 4 devices (jax.distributed on localhost); their (returncode, output)."""
    port = free_port()
    processes = [
        main(
            workdir,
            data_dir,
            *overrides,
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            devices=4,
            wait=False,
            extra_env=extra_env,
        )
        for i in range(2)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=600)
        results.append((process.returncode, output))
    return results


def wait_for(condition, process, timeout=300):
    """Polls `condition` while `process` runs; fails if it ends or the time runs out first."""
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def records(workdir):
    """metrics.jsonl, oldest first."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def report(workdir, side="test"):
    return json.loads((workdir / "eval" / side / "report.json").read_text())


def saved_steps(workdir):
    """The steps of the checkpoints in the workdir, sorted."""
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def saved_state(workdir, step):
    """The train state of checkpoint `step` as NumPy arrays (whatever the devices that saved it)."""
    path = workdir / "checkpoints" / str(step) / "state"
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(path, restore_args=as_numpy)


def leaves_by_path(tree):
    """{'.params.backbone...': leaf} of a pytree."""
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
