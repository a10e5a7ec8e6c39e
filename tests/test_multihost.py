"""Two processes of one run on one machine: `bcjax.lead_process`, then the README's multi-host lines as written.

First the mechanism itself, in two small processes: the lead's work while the other waits, and an
error on any process stopping both within seconds. Then the README's blocks, read from README.md
("Many GPUs, many hosts") so that the tests follow the document: each block's lines before the
`python -m bcjax.main` lines run once in bash (they create the fresh folders, under the test's
tmp_path through TMPDIR); then its two process lines start at once, each in its own bash, as a
user's shell runs them. They use the README's fixed coordinator port, so those tests hold a lock
and never overlap, not even with another pytest session on this machine.
"""

import fcntl
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trainer_runs

REPO = Path(__file__).resolve().parent.parent
PROCESS_LINE = "python -m bcjax.main "
BUILT = "downloaded and prepared to"  # TFDS prints it once per build
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- the mechanism alone

_SCENARIO = textwrap.dedent(
    """
    import sys, time
    import jax, numpy as np
    from jax.experimental import multihost_utils
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))
    from bcjax import lead_process
    lead_process._WAIT_SLICE_MS = 300  # the waiting process asks again many times
    scenario = sys.argv[3]

    def work():
        time.sleep(2)
        if scenario == "lead_work_fails":
            raise ValueError("disk full")
        print("work done", flush=True)

    try:
        with lead_process.failures_stop_every_process():
            lead_process.run_on_lead("writing things", work)
            if scenario == "process_1_fails" and jax.process_index() == 1:
                raise RuntimeError("process 1 broke")
            multihost_utils.process_allgather(np.ones(2))  # process 0 waits here for a process that failed
    except lead_process.LeadProcessError as error:
        sys.exit(f"error: {error}")
    print("finished", flush=True)
    """
)


def _two_processes(scenario: str) -> tuple[list[int], list[str], float]:
    port = trainer_runs.free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _SCENARIO, str(port), str(i), scenario],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    return [p.returncode for p in processes], outputs, time.monotonic() - start


def test_the_others_wait_for_the_leads_work():
    codes, outputs, _ = _two_processes("ok")
    assert codes == [0, 0], outputs
    assert [o.count("work done") for o in outputs] == [1, 0] and all("finished" in o for o in outputs)


def test_the_leads_failed_work_fails_every_process_with_its_message():
    codes, outputs, seconds = _two_processes("lead_work_fails")
    assert codes[0] != 0 and "ValueError: disk full" in outputs[0], outputs[0]
    assert codes[1] == 1, outputs[1]
    assert "error: process 0 failed while writing things: ValueError: disk full" in outputs[1], outputs[1]
    assert "finished" not in "".join(outputs) and seconds < 60, seconds


def test_one_process_failing_stops_the_other_waiting_in_a_collective():
    codes, outputs, seconds = _two_processes("process_1_fails")
    assert codes[1] != 0 and "RuntimeError: process 1 broke" in outputs[1], outputs[1]
    assert codes[0] == 1 and "error: process 1 failed: RuntimeError: process 1 broke" in outputs[0], outputs[0]
    for output in outputs:
        assert "Check failure stack trace" not in output and "DEADLINE_EXCEEDED" not in output, output
    assert seconds < 60, seconds  # not the shutdown barrier's 5 minutes


# ----------------------------------------------------------------------------- the README's lines


def _readme_blocks() -> list[list[str]]:
    """The bash blocks of README's multi-host section that run on 127.0.0.1, as logical lines."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Many GPUs, many hosts", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    lines = [block.replace("\\\n", " ").splitlines() for block in blocks if "127.0.0.1:" in block]
    return [[" ".join(line.split()) for line in block if line.strip()] for block in lines]


def _port(block: list[str]) -> int:
    return int(re.search(r"--coordinator_address=127\.0\.0\.1:(\d+)", " ".join(block)).group(1))


def _prepare(block: list[str], tmp_path: Path) -> dict[str, str]:
    """Runs the block's lines before its processes in one bash; returns the environment they leave."""
    setup = "\n".join(line for line in block if not line.startswith(PROCESS_LINE))
    env_file = tmp_path / "env"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python` is this one
        "TMPDIR": str(tmp_path),  # mktemp -d creates the fresh folders here
        "PYTHONUNBUFFERED": "1",
    }
    script = f"set -e\n{setup}\nenv -0 > {env_file}"
    result = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    pairs = (item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
    return dict(pairs)


def _run_processes(block: list[str], env: dict[str, str], timeout: float) -> tuple[list[int], list[str], float]:
    """Starts the block's process lines at once; their exit codes, outputs, and seconds until the last ended."""
    lines = [line.removesuffix("&").strip() for line in block if line.startswith(PROCESS_LINE)]
    assert len(lines) == 2 and all(f"--process_id={i}" in line for i, line in enumerate(lines)), lines
    start = time.monotonic()
    processes = [
        subprocess.Popen(
            ["bash", "-c", line], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in lines
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [p.returncode for p in processes], outputs, time.monotonic() - start


def _expand(text: str, env: dict[str, str]) -> Path:
    return Path(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], text))


def _workdir(block: list[str], env: dict[str, str]) -> Path:
    return _expand(re.search(r"--workdir=(\S+)", " ".join(block)).group(1), env)


def _data_dir(block: list[str], env: dict[str, str], workdir: Path) -> Path:
    found = re.search(r"--config\.data\.data_dir=(\S+)", " ".join(block))
    return _expand(found.group(1), env) if found else workdir / "synthetic" / "tfds"  # the demo's own


@pytest.fixture
def readme_port():
    """Holds the README's coordinator port for the test: runs that use it never overlap."""
    ports = {_port(block) for block in _readme_blocks()}
    assert len(ports) == 1, ports
    with open(Path("/tmp") / f"bcjax-tests-port-{ports.pop()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        fcntl.flock(lock, fcntl.LOCK_UN)


def _check_finished_run(block: list[str], env: dict[str, str], codes, outputs, tmp_path: Path) -> None:
    for code, output in zip(codes, outputs):
        assert code == 0, output[-4000:]
    workdir = _workdir(block, env)
    assert tmp_path in workdir.parents  # the fresh folder mktemp made for this test
    for name in ("config.json", "split.json", "metrics.jsonl", "learning_curves.png"):
        assert (workdir / name).stat().st_size > 0, name
    for side in ("validation", "test"):
        report = json.loads((workdir / "eval" / side / "report.json").read_text())
        assert report["images"] > 0 and "accuracy" in report["overall"]
    # One build, by process 0, and nothing half-built left behind.
    assert [output.count(BUILT) for output in outputs] == [1, 0], [o[-2000:] for o in outputs]
    versions = _data_dir(block, env, workdir) / "breakhis" / "custom"
    assert sorted(p.name for p in versions.iterdir()) == ["1.0.0"]


def test_readme_has_the_one_machine_blocks():
    blocks = _readme_blocks()
    assert len(blocks) == 2
    for block in blocks:
        assert any("mktemp -d" in line for line in block)  # a fresh workdir each time
        assert any("--xla_force_host_platform_device_count=4" in line for line in block)
    assert "configs/demo.py" in blocks[0][1] and "--config.data.manual_dir=" in " ".join(blocks[1])


def test_demo_on_two_processes(tmp_path, readme_port):
    """README's first block: the demo's synthetic tree and dataset, written and built once, by process 0."""
    block = _readme_blocks()[0]
    env = _prepare(block, tmp_path)
    codes, outputs, _ = _run_processes(block, env, timeout=900)
    _check_finished_run(block, env, codes, outputs, tmp_path)


def test_dataset_built_on_first_use_by_process_0(tmp_path, readme_port):
    """README's second block: both processes start at once; process 0 builds from the archive, 1 waits."""
    block = _readme_blocks()[1]
    env = _prepare(block, tmp_path)
    codes, outputs, _ = _run_processes(block, env, timeout=900)
    _check_finished_run(block, env, codes, outputs, tmp_path)
    assert "BreakHis archive" in outputs[0]  # built from BreaKHis_v1.tar.gz, not a tree


def test_a_failed_build_stops_both_processes_with_its_message(tmp_path, readme_port):
    """README's second block with the archive truncated (a partial download): process 0's build fails,
    and both processes stop within seconds, process 1 quoting process 0's error."""
    block = _readme_blocks()[1]
    env = _prepare(block, tmp_path)
    archives = list(_expand(re.search(r"--config\.data\.manual_dir=(\S+)", " ".join(block)).group(1), env).glob("*.gz"))
    assert len(archives) == 1, archives
    data = archives[0].read_bytes()
    archives[0].write_bytes(data[: len(data) // 2])
    codes, outputs, seconds = _run_processes(block, env, timeout=240)
    assert all(code != 0 for code in codes), codes
    lead_error = "The archive is truncated or corrupt"
    assert lead_error in outputs[0], outputs[0][-3000:]
    assert "process 0 failed" in outputs[1] and lead_error in outputs[1], outputs[1][-3000:]
    for output in outputs:
        for crash in ("Traceback", "Check failure stack trace", "Fatal Python error", "DEADLINE_EXCEEDED"):
            assert crash not in output, output[-3000:]
    # Both processes start, import JAX and meet (~10-20 s on a busy 2-core machine); the stop itself takes ~1-2 s.
    assert seconds < 90, seconds
    assert not (_workdir(block, env) / "eval").exists()
