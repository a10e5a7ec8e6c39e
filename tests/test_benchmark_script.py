"""scripts/benchmark.py: its help, a tiny bcjax run end to end, and the report's arithmetic."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "benchmark.py")
sys.path.append(os.path.join(REPO, "scripts"))  # the scripts import their package as `benchmarking`

from benchmarking import workers  # noqa: E402
from benchmarking.figures import compute_figures, ratios, time_to_result  # noqa: E402
from benchmarking.protocol import RunSpec  # noqa: E402
from benchmarking.tables import results_table  # noqa: E402


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # One CPU device, whatever conftest set for the in-process tests.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=REPO,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_documents_the_flags():
    done = _run("--help")  # absl's --help exits with 1
    for text in (
        "--frameworks",
        "--recipes",
        "--dtypes",
        "--time_to_result",
        "--compilation_cache_dir",
        "--xla_flags",
        "PLATFORM_XLA_FLAGS",
    ):
        assert text in done.stdout, text


def test_tiny_run_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = _run(
        "--frameworks=bcjax,keras",
        "--recipes=a",
        "--dtypes=float32",
        "--warmup=1",
        "--steps=1",
        "--arch=resnet18",
        "--height=32",
        "--width=32",
        "--nocompile_cache_check",
        "--time_to_result",
        f"--json_out={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "images/s" in done.stdout and "bcjax/keras" in done.stdout
    assert "not available: keras.applications has no resnet18" in done.stdout
    assert "extrapolated from measured step time" in done.stdout
    record = json.loads(out.read_text())
    assert record["header"]["versions"]["jax"]
    bcjax, keras = record["results"]
    assert bcjax["status"] == "ok" and bcjax["images_per_s"] > 0 and bcjax["peak_rss_mb"] > 0
    assert (bcjax["height"], bcjax["width"], bcjax["batch"]) == (32, 32, 32)
    assert keras["status"].startswith("not available")
    assert record["time_to_result"][0]["steps"] == 200 * 200


def test_ratios_and_time_to_result():
    rows = [
        {
            "recipe": "b",
            "dtype": "float32",
            "framework": f,
            "status": "ok",
            "step_s": s,
            "images_per_s": 32 / s,
            "device": "cpu",
        }
        for f, s in (("bcjax", 2.0), ("keras", 1.0), ("torch", 4.0))
    ]
    rows.append({"recipe": "a", "dtype": "float32", "framework": "torch", "status": "not installed (torch)"})
    assert ratios(rows) == [
        {"recipe": "b", "dtype": "float32", "bcjax/keras": 0.5, "bcjax/torch": 2.0},
        {"recipe": "a", "dtype": "float32", "bcjax/keras": None, "bcjax/torch": None},
    ]
    (first, *_) = time_to_result(rows)
    assert first["steps"] == 5 * 30 * 158 and first["hours"] == pytest.approx(23700 * 2.0 / 3600)


def test_missing_framework_is_a_row_not_a_crash(monkeypatch):
    monkeypatch.setitem(workers.REQUIRES, "torch", ("no_such_module_xyz",))
    spec = RunSpec(
        framework="torch",
        recipe="a",
        dtype="float32",
        arch="resnet50",
        height=96,
        width=144,
        batch=32,
        warmup=1,
        steps=1,
    )
    row = workers.run_worker(spec, dict(os.environ), timeout=60)
    assert row["status"] == "not installed (no_such_module_xyz)"
    assert "not installed" in results_table([row])


def test_tflops_and_mfu():
    row = {
        "status": "ok",
        "arch": "resnet50",
        "height": 224,
        "width": 224,
        "images_per_s": 4000.0,
        "device": "gpu",
        "dtype": "bfloat16",
    }
    figures = compute_figures(row, "NVIDIA H100 80GB HBM3")
    assert figures["tflops"] == pytest.approx(98.0) and figures["mfu"] == pytest.approx(98.0 / 989.4)
    assert compute_figures({**row, "dtype": "float32"}, "NVIDIA H100 80GB HBM3")["mfu"] is None
    cpu = compute_figures({**row, "device": "cpu", "height": 96, "width": 144, "images_per_s": 10.0}, "cpu")
    assert cpu["tflops"] == pytest.approx(10 * 24.5 * 96 * 144 / 224**2 / 1000) and cpu["mfu"] is None
