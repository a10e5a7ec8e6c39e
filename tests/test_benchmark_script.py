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
from benchmarking.figures import compute_figures, ratios, time_to_result, train_gflop_per_image  # noqa: E402
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
        "--model=resnet18",
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
        model="resnet50",
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
    row = {"status": "ok", "height": 224, "width": 224, "images_per_s": 4000.0, "device": "gpu", "dtype": "bfloat16"}
    figures = compute_figures(row, "NVIDIA H100 80GB HBM3", 24.5)
    assert figures["tflops"] == pytest.approx(98.0) and figures["mfu"] == pytest.approx(98.0 / 989.4)
    assert compute_figures({**row, "dtype": "float32"}, "NVIDIA H100 80GB HBM3", 24.5)["mfu"] is None
    assert compute_figures(row, "NVIDIA H100 80GB HBM3", None) == {"tflops": None, "mfu": None}
    cpu = compute_figures({**row, "device": "cpu", "images_per_s": 10.0}, "cpu", 24.5)
    assert cpu["tflops"] == pytest.approx(10 * 24.5 / 1000) and cpu["mfu"] is None


def test_training_flops_are_three_forward_passes_as_xla_counts_them():
    """ResNet-50 at 224x224: XLA counts 8.03 forward GFLOPs (summary's figure), so 24.1 for a step;
    the count follows the pixels and the model."""
    assert train_gflop_per_image("resnet50", 224, 224) == pytest.approx(24.1, abs=0.1)
    recipe_a = train_gflop_per_image("resnet50", 96, 144)
    assert recipe_a == pytest.approx(24.1 * 96 * 144 / 224**2, rel=0.1)
    assert train_gflop_per_image("vgg16", 224, 224) > 3 * 24.1  # VGG16's convs: 14.9 GMACs a forward pass


@pytest.mark.parametrize("model", ["vgg16", "mobilenet_v3_large", "ernet50"])
def test_torch_builds_the_same_network_as_bcjax(model):
    """Backbone + pool + Linear(2) in torch has as many parameters as bcjax's model with a linear head."""
    from flax import nnx

    from bcjax.models import create_model
    from bcjax.models.summary import parameter_counts
    from benchmarking import torch_runner
    from benchmarking.models import MODELS

    bench = MODELS[model]
    ours = nnx.eval_shape(
        lambda: create_model(
            model, bench.layout, "linear", 2, rngs=nnx.Rngs(0), backbone_kwargs=dict(bench.backbone_kwargs)
        )
    )
    theirs = torch_runner.build_model(model)
    assert sum(parameter_counts(ours).values()) == sum(p.numel() for p in theirs.parameters())
