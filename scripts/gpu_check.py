"""Every GPU figure bcjax needs, in one command within a time budget: a JSON and a Markdown report.

    python scripts/gpu_check.py [--budget=8] [--quick] [--out=DIR]

Parts, in order, each timed, and skipped with its reason (never a crash) when the budget left is
too short or a module is missing:
  1. machine      GPU name, driver and memory (nvidia-smi), JAX devices, versions.
  2. correctness  converted torchvision ResNet-50 logits vs torchvision on the same device (float32,
                  highest matmul precision); a bfloat16 train step finite and close to the float32 one;
                  the trainer's tests of steps and device data (pytest, on this machine's JAX platform).
  3. throughput   ResNet-50 train steps side by side, through scripts/benchmark.py's workers: bcjax
                  (bfloat16, device-resident data) vs PyTorch (channels_last, bfloat16 autocast,
                  torch.compile), at 224x224 batch 256 and at recipe A's 96x144 batch 32: images/s,
                  step time, MFU, compile time, peak memory, the ratio. Then the host path (grain,
                  batches sent every step) vs the device path at the same settings, with the input wait.
  4. time to result  recipe A's published schedule and recipe B's 5-fold patient-disjoint one
                  (`bcjax.schedule`), on synthetic BreakHis-sized data on the devices: run in full if
                  the budget allows, else timed over some steps and extrapolated (the report says which).
  5. profile      a profiler trace of a few steps: the share of device time in convolutions and
                  matmuls, normalisation/elementwise, optimizer and batch drawing, collectives, idle.

--quick (the CPU rehearsal, scripts/rehearse_gpu_check.sh) shrinks every part to a ResNet-18 on
32x32 images, runs torch eager (torch.compile takes minutes on a CPU) and is not a measurement.
The data are synthetic arrays throughout: the host path feeds grain from an in-memory decoded
cache, as the trainer does after its one decoding pass, so no TFDS dataset (nor TensorFlow) is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "scripts"), REPO]  # benchmarking/ and configs/ are not installed

from benchmarking.protocol import RunSpec  # noqa: E402

VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "torchvision", "timm", "numpy", "grain")
TRAINER_TESTS = ("tests/test_no_data_stack.py", "tests/test_device_data.py", "tests/test_augment_device.py")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The model and sizes every part uses: the real ones, or --quick's small ones."""

    arch: str
    throughput: tuple[tuple[str, int, int, int], ...]  # (name, height, width, batch)
    warmup: int
    steps: int
    recipe_override: dict  # config fields set on the recipes for time to result
    dataset_images: int  # synthetic BreakHis size on the devices
    convert_size: int
    torch_compile: bool


REAL = Sizes("resnet50", (("224", 224, 224, 256), ("a", 96, 144, 32)), 3, 20, {}, 7909, 224, True)
QUICK = Sizes(
    "resnet18", (("224", 32, 32, 8), ("a", 32, 48, 4)), 1, 2, {"arch": "resnet18", "size": (32, 32)}, 64, 64, False
)


class Budget:
    """Seconds left of the run's budget."""

    def __init__(self, seconds: float):
        self.total = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def share(self, fraction: float) -> float:
        """At most `fraction` of the whole budget, and no more than is left (at least 1 s)."""
        return max(1.0, min(self.left(), fraction * self.total))


# ----------------------------------------------------------------------------- 1. machine


def machine(sizes: Sizes, budget: Budget) -> dict:
    """GPU (nvidia-smi), JAX's devices and the versions of what the check uses."""
    import jax

    try:
        query = "--query-gpu=name,driver_version,memory.total"
        gpu = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        gpu = "no nvidia-smi"
    return {
        "gpu": gpu.strip(),
        "jax_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "versions": {name: _version(name) for name in VERSIONS},
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- 2. correctness


def converted_logits(sizes: Sizes, budget: Budget) -> dict:
    """A random-weight torchvision ResNet converted by bcjax: its logits vs torchvision's, on this device."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torchvision
    from flax import nnx

    from bcjax import convert, pretrained
    from bcjax.models import create_model

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = getattr(torchvision.models, sizes.arch)(weights=None)
    _calibrate_batch_norm(torch, model, sizes.convert_size)
    images = np.random.default_rng(1).standard_normal((2, sizes.convert_size, sizes.convert_size, 3), np.float32)
    with torch.no_grad():
        reference = model.to(device)(torch.from_numpy(images.transpose(0, 3, 1, 2)).to(device)).cpu().numpy()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), os.path.join(tmp, "model.pth"))
        converted = convert.convert_file(os.path.join(tmp, "model.pth"), "torchvision")
    ours_model = nnx.eval_shape(lambda: create_model(sizes.arch, "v1.5", "linear", 1000, rngs=nnx.Rngs(0)))
    pretrained.apply_converted(ours_model, converted, load_head=True)
    ours_model.eval()
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(ours_model.head(ours_model.backbone(jnp.asarray(images))))
    relative = float(np.abs(ours - reference).max() / np.abs(reference).max())
    return {"max_abs_logit": float(np.abs(reference).max()), "max_relative_diff": relative, "ok": relative < 1e-4}


def _calibrate_batch_norm(torch, model, size: int) -> None:
    """Batch-norm statistics of one random batch, so that logits are of a useful size."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)))
    model.eval()


def bfloat16_step(sizes: Sizes, budget: Budget) -> dict:
    """One train step of the benchmark's model in bfloat16 and in float32 from the same state and batch."""
    import jax
    import numpy as np

    from bcjax import components, parallel
    from bcjax.normalization import make_normalizer
    from benchmarking.bcjax_runner import bcjax_config
    from benchmarking.protocol import host_batch

    name, height, width, batch = sizes.throughput[-1]
    figures = {}
    for dtype in ("float32", "bfloat16"):
        spec = RunSpec("bcjax", name, dtype, sizes.arch, height, width, batch, 1, 1)
        mesh = parallel.make_mesh()
        steps, state = components.build_steps(
            bcjax_config(spec), mesh, normalizer=make_normalizer("imagenet"), total_steps=2
        )
        images, labels = host_batch(spec)
        with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
            _, metrics = steps.train(state, parallel.to_global({"image": images, "label": labels}, mesh))
        figures[dtype] = {k: float(v) for k, v in jax.device_get(metrics).items()}
    f32, bf16 = figures["float32"], figures["bfloat16"]
    loss_diff = abs(bf16["loss"] - f32["loss"]) / abs(f32["loss"])
    grad_diff = abs(bf16["grad_norm"] - f32["grad_norm"]) / f32["grad_norm"]
    finite = all(np.isfinite(v) for v in bf16.values())
    return {**figures, "loss_relative_diff": loss_diff, "grad_norm_relative_diff": grad_diff,
            "ok": finite and loss_diff < 0.05 and grad_diff < 0.1}  # fmt: skip


def trainer_tests(sizes: Sizes, budget: Budget) -> dict:
    """The trainer's tests of steps and device data, run by pytest on this machine's JAX platform."""
    import jax

    env = {**os.environ, "JAX_PLATFORMS": jax.default_backend(), "PYTHONPATH": _pythonpath()}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TRAINER_TESTS]
    timeout = budget.share(0.25)
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as stopped:
        output = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else stopped.stdout or ""
        return {
            "summary": f"stopped after {timeout:.0f} s (its share of the budget)",
            "output_tail": output[-3000:],
            "ok": False,
        }
    return {
        "command": " ".join(command[1:]),
        "exit": done.returncode,
        "summary": (done.stdout.strip().splitlines() or [""])[-1],
        "output_tail": (done.stdout + done.stderr)[-3000:],
        "ok": done.returncode == 0,
    }


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)


# ----------------------------------------------------------------------------- 3. throughput


def throughput(sizes: Sizes, budget: Budget) -> dict:
    """bcjax (bfloat16, device-resident) vs torch (channels_last, autocast, torch.compile) at each size."""
    from bcjax import runtime
    from benchmarking import figures
    from benchmarking.record import probe_device
    from benchmarking.workers import run_worker

    device_kind = probe_device()["device"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": _pythonpath()}
    env["XLA_FLAGS"] = runtime.with_platform_flags(env.get("XLA_FLAGS", ""))
    rows, ratios = [], {}
    for name, height, width, batch in sizes.throughput:
        gflop = figures.train_gflop_per_image(sizes.arch, height, width)
        for framework in ("bcjax", "torch"):
            spec = RunSpec(
                framework, name, "bfloat16", sizes.arch, height, width, batch, sizes.warmup, sizes.steps,
                device_resident=framework == "bcjax", torch_compile=framework == "torch" and sizes.torch_compile,
            )  # fmt: skip
            left = int(budget.left())
            row = run_worker(spec, env, timeout=max(left, 1)) if left > 10 else {"status": "skipped: budget spent"}
            row = {**dataclasses.asdict(spec), **row}
            row.update(figures.compute_figures(row, device_kind, gflop))
            rows.append(row)
        ok = [r for r in rows[-2:] if r["status"] == "ok" and r.get("images_per_s")]
        if len(ok) == 2 and ok[0]["device"] == ok[1]["device"]:
            ratios[f"{name} {height}x{width} batch {batch}"] = ok[0]["images_per_s"] / ok[1]["images_per_s"]
    return {"rows": rows, "bcjax/torch": ratios, "ok": all(r["status"] == "ok" for r in rows)}


def host_path(sizes: Sizes, budget: Budget) -> dict:
    """The trainer's host path (grain batches sent every step) vs its device path, with the input wait."""
    import bench_device_data  # imports grain and TFDS (the input pipeline): missing here means skipped
    import numpy as np

    from benchmarking.bcjax_runner import bcjax_config

    results = {}
    for name, height, width, batch in sizes.throughput:
        spec = RunSpec("bcjax", name, "bfloat16", sizes.arch, height, width, batch, 1, sizes.steps)
        config = bcjax_config(spec)
        data = synthetic_input_data(config, images=4 * batch)
        for path, figures in bench_device_data.measure(config, data, steps=sizes.steps, rounds=1).items():
            results[f"{name} {height}x{width} batch {batch} {path}"] = figures
        if budget.left() < 30:
            results["rest"] = "skipped: budget spent"
            break
    return {
        "results": results,
        "ok": bool(np.isfinite([v["step_ms"] for v in results.values() if isinstance(v, dict)]).all()),
    }


def synthetic_input_data(config, *, images: int):
    """The input pipeline's `InputData` over `images` random decoded images, as after its one decoding pass."""
    import numpy as np

    from bcjax import input_pipeline
    from bcjax.datasets import splits
    from bcjax.normalization import make_normalizer

    rng = np.random.default_rng(config.seed)
    pixels = rng.integers(0, 256, (images, config.data.height, config.data.width, 3), dtype=np.uint8)
    records = [
        {"filename": f"{i}.png", "patient_id": f"p{i % 8}", "accession": f"14-{i % 8}", "label": i % 8 // 4,
         "tumor_type": i % 8, "magnification": "40X"}  # tumour types 0-3 are benign, 4-7 malignant
        for i in range(images)
    ]  # fmt: skip
    table = splits.ImageTable.from_records(records)
    rows = np.arange(images)
    empty = np.zeros(0, np.int64)
    return input_pipeline.InputData(
        config=input_pipeline.InputConfig.from_config(config, normalization="imagenet"),
        table=table,
        split=splits.Split("synthetic", rows, empty, empty, {}, table),
        cache=input_pipeline.DecodedCache(rows=rows, images=pixels),
        train_rows=rows,
        normalizer=make_normalizer("imagenet"),
    )


# ----------------------------------------------------------------------------- 4. time to result


def recipe_configs(sizes: Sizes) -> dict:
    """Recipe A as published and recipe B patient-disjoint, with random initial weights (same compute)."""
    from configs import binary, multiclass

    configs = {"a": binary.get_config(), "b": multiclass.get_config("patient")}
    for config in configs.values():
        config.model.init_from = ""
        config.model.dtype = "bfloat16"
        if sizes.recipe_override:
            config.model.arch = sizes.recipe_override["arch"]
            config.data.height, config.data.width = sizes.recipe_override["size"]
    return configs


def time_to_result(sizes: Sizes, budget: Budget) -> dict:
    """Each recipe's whole schedule on synthetic device-resident data: run in full, or extrapolated."""
    from benchmarking import figures

    schedules = figures.published_schedules()
    results = {}
    for name, config in recipe_configs(sizes).items():
        what, total = schedules[name]
        results[name] = {"schedule": what, "steps": total, **_run_schedule(config, total, sizes, budget)}
    return {"results": results, "ok": True}


def _run_schedule(config, total: int, sizes: Sizes, budget: Budget) -> dict:
    """Compiles, times `sizes.steps` steps, then runs the rest when the budget allows (keeping 25% spare)."""
    import jax

    from bcjax import components, parallel
    from bcjax.normalization import make_normalizer
    from benchmarking import timing
    from benchmarking.bcjax_runner import synthetic_device_data

    mesh = parallel.make_mesh()
    data = synthetic_device_data(config, mesh, images=sizes.dataset_images)
    steps, state = components.build_steps(
        config, mesh, normalizer=make_normalizer("imagenet"), total_steps=total, device_data=data
    )
    step = lambda s: steps.train(s, data)[0]  # noqa: E731
    state, compile_s, _ = timing.run_steps(step, state, 1, jax.block_until_ready)
    state, seconds, _ = timing.run_steps(step, state, sizes.steps, jax.block_until_ready)
    step_s = seconds / sizes.steps
    rest = total - 1 - sizes.steps
    out = {"first_step_s": compile_s, "step_s": step_s, "estimated_s": compile_s + total * step_s}
    if rest * step_s < 0.75 * budget.left() - 30:
        _, rest_s, _ = timing.run_steps(step, state, rest, jax.block_until_ready)
        return {**out, "mode": "run in full", "wall_s": compile_s + seconds + rest_s}
    return {**out, "mode": f"extrapolated from {sizes.steps} timed steps", "wall_s": None}


# ----------------------------------------------------------------------------- 5. profile

CATEGORIES = (
    ("collectives", re.compile(r"all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all|nccl", re.I)),
    ("convolutions and matmuls", re.compile(r"conv|cudnn|gemm|cublas|xmma|dot\(|matmul", re.I)),
)


def profile(sizes: Sizes, budget: Budget) -> dict:
    """A trace of a few bfloat16 device-resident steps at the first size: device time by category, and idle."""
    import glob

    import jax
    from jax.profiler import ProfileData

    from bcjax import components, parallel
    from bcjax.normalization import make_normalizer
    from benchmarking.bcjax_runner import bcjax_config, synthetic_device_data

    name, height, width, batch = sizes.throughput[0]
    config = bcjax_config(RunSpec("bcjax", name, "bfloat16", sizes.arch, height, width, batch, 1, 1))
    mesh = parallel.make_mesh()
    data = synthetic_device_data(config, mesh, images=4 * batch)
    steps, state = components.build_steps(config, mesh, normalizer=make_normalizer("imagenet"), total_steps=10)
    hlo = steps.train.lower(state, data).compile().as_text()
    state = jax.block_until_ready(steps.train(state, data)[0])
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(3):
                state = steps.train(state, data)[0]
            jax.block_until_ready(state)
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        events = _op_events(ProfileData.from_file(path))
    if not events:
        return {"ok": False, "reason": "the trace holds no XLA op events"}
    return {"steps": 3, **_shares(events, _instructions(hlo)), "ok": True}


def _op_events(data) -> list[tuple[str, str, float, float]]:
    """(kernel or op name, HLO instruction, start ns, end ns) of every XLA op event, on the GPUs when any."""
    planes = [p for p in data.planes if p.name.startswith("/device:GPU")] or [
        p for p in data.planes if p.name == "/host:CPU"
    ]
    events = []
    for plane in planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    events.append(
                        (event.name, str(stats["hlo_op"]), event.start_ns, event.start_ns + event.duration_ns)
                    )
    return events


def _instructions(hlo: str) -> dict[str, str]:
    """HLO instruction name -> its line in the compiled module's text (opcode, custom-call target, op_name)."""
    found = {}
    for line in hlo.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if match:
            found[match[1]] = line
    return found


def _category(kernel: str, instruction: str, lines: dict[str, str]) -> str:
    text = f"{kernel} {instruction} {lines.get(instruction, '')}"
    for name, pattern in CATEGORIES:
        if pattern.search(text):
            return name
    op_name = re.search(r'op_name="([^"]*)"', lines.get(instruction, ""))
    if op_name and not re.search(r"jvp\(|transpose\(", op_name[1]):
        return "optimizer and batch drawing"  # outside the forward (jvp) and backward (transpose) passes
    return "normalisation and elementwise"


def _shares(events: list[tuple[str, str, float, float]], lines: dict[str, str]) -> dict:
    """Idle: the traced span's share with no op running; the busy rest split over the categories by their op time
    (ops that overlap, on several streams or CPU threads, share the time they overlap). The shares sum to 1."""
    span = max(e[3] for e in events) - min(e[2] for e in events)
    totals: dict[str, float] = {}
    for kernel, instruction, start, end in events:
        category = _category(kernel, instruction, lines)
        totals[category] = totals.get(category, 0.0) + end - start
    busy, last_end = 0.0, float("-inf")
    for _, _, start, end in sorted(events, key=lambda e: e[2]):
        busy += max(0.0, end - max(start, last_end))
        last_end = max(last_end, end)
    op_time = sum(totals.values())
    shares = {k: busy / span * v / op_time for k, v in sorted(totals.items())}
    return {"span_ms": span / 1e6, "shares": {**shares, "idle": 1 - busy / span}}


# ----------------------------------------------------------------------------- the run

PARTS: tuple[tuple[str, Callable[[Sizes, Budget], dict], float], ...] = (
    # (name, part, seconds it needs at least, as a fraction of the whole budget)
    ("machine", machine, 0.0),
    ("correctness/converted_logits", converted_logits, 0.05),
    ("correctness/bfloat16_step", bfloat16_step, 0.05),
    ("correctness/trainer_tests", trainer_tests, 0.05),
    ("throughput", throughput, 0.2),
    ("throughput/host_path", host_path, 0.1),
    ("time_to_result", time_to_result, 0.1),
    ("profile", profile, 0.05),
)


def run_part(part: Callable[[Sizes, Budget], dict], sizes: Sizes, budget: Budget, needs: float) -> dict:
    """One part, timed; skipped when less than `needs` seconds are left or a module is missing; never raises."""
    if budget.left() < needs:
        return {"status": f"skipped: {budget.left():.0f} s left of the budget, the part needs {needs:.0f} s"}
    start = time.monotonic()
    try:
        result = part(sizes, budget)
        status = "ok" if result.pop("ok", True) else "checked: NOT OK"
    except ModuleNotFoundError as error:
        result, status = {}, f"skipped: module {error.name} is not installed"
    except Exception as error:  # noqa: BLE001  (a part's failure is reported, and the next part runs)
        result, status = {"traceback": traceback.format_exc()[-2000:]}, f"failed: {type(error).__name__}: {error}"
    return {"status": status, "seconds": time.monotonic() - start, **result}


def summary_line(report: dict) -> str:
    """One line for BENCHMARKS.md: device, the bcjax/torch ratios, time to result, statuses."""
    parts = report["parts"]
    devices = parts["machine"].get("devices", ["?"])
    bits = [f"gpu_check {report['date']} on {parts['machine'].get('gpu') or devices[0]}"]
    for row in parts["throughput"].get("rows", []):
        if row.get("images_per_s"):
            bits.append(
                f"{row['framework']} {row['height']}x{row['width']}/{row['batch']} {row['images_per_s']:.0f} img/s"
            )
    for key, ratio in parts["throughput"].get("bcjax/torch", {}).items():
        bits.append(f"bcjax/torch {key}: {ratio:.2f}")
    for name, result in parts["time_to_result"].get("results", {}).items():
        bits.append(f"recipe {name} {result['estimated_s'] / 3600:.2f} h ({result['mode']})")
    statuses = [f"{name}={p['status'].split(':')[0]}" for name, p in parts.items()]
    return "; ".join(bits + [" ".join(statuses)]) + (" [--quick: not a measurement]" if report["quick"] else "")


def markdown(report: dict) -> str:
    """The report as Markdown: the summary, then each part's status and figures as JSON."""
    lines = [f"# GPU check, {report['date']}", "", report["summary"], ""]
    for name, part in report["parts"].items():
        lines += [f"## {name}: {part['status']} ({part.get('seconds', 0):.1f} s)", "", "```json"]
        lines += [json.dumps({k: v for k, v in part.items() if k not in ("status", "seconds")}, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=8.0, help="Minutes for the whole check (default 8).")
    parser.add_argument("--quick", action="store_true", help="Small sizes, for the CPU rehearsal; not a measurement.")
    parser.add_argument("--out", default="gpu_check_out", help="Folder for gpu_check.json and gpu_check.md.")
    args = parser.parse_args()
    sizes, budget = (QUICK if args.quick else REAL), Budget(60 * args.budget)
    # One persistent compilation cache for this process and its workers: a program that a later part
    # builds again (the profile's step is the throughput row's) is loaded, not compiled twice.
    cache = tempfile.TemporaryDirectory(prefix="bcjax-gpu-check-cache-")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache.name)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick, "parts": {}}
    for name, part, fraction in PARTS:
        print(f"== {name}", flush=True)
        part_report = report["parts"][name] = run_part(part, sizes, budget, fraction * 60 * args.budget)
        print(f"   {part_report['status']} ({part_report.get('seconds', 0):.1f} s)", flush=True)
    report["summary"] = summary_line(report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(markdown(report))
    print(f"wrote {args.out}/gpu_check.json and gpu_check.md\n{report['summary']}")


if __name__ == "__main__":
    main()
