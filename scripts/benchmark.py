"""ResNet-50 training-step throughput, side by side: bcjax vs Keras 3 (TensorFlow) vs PyTorch.

    python scripts/benchmark.py [--frameworks=bcjax,keras,torch] [--recipes=a,b]
        [--dtypes=float32,bfloat16] [--warmup=N --steps=N] [--time_to_result] [--breakdown]
        [--arch=resnet50 --height=H --width=W --batch=B]
        [--json_out=FILE] [--xla_flags='...'] [--compilation_cache_dir=DIR]

Every framework trains the same model (ResNet + global average pool + Dense(2), softmax
cross-entropy, Adam 1e-4) on the same uint8 batch (built once on the host, sent to the
device and normalised with ImageNet mean/std inside every step) at the same batch size and
resolution:
  recipe a: batch 32 at 96 high x 144 wide (Abu Al-Haija & Manasra); 2 warm-up + 5 timed steps
  recipe b: batch 32 at 224 x 224 (Nishio et al.); 1 warm-up + 3 timed steps
The first warm-up step carries the compilation; it is reported as "first step". images/s
is batch x timed steps / their wall time (synchronised once, after the last timed step).
TFLOP/s = images/s x 24.5 GFLOP (a ResNet-50 training step per 224x224 image) x H x W / 224^2;
MFU = TFLOP/s / the GPU's dense bfloat16 peak, for bfloat16 rows on H100, H200 or A100.

  bcjax  the trainer's own step (`bcjax.train.make_steps`, Adam from
         `bcjax.optimizers`, `parallel.to_global` every step), ResNet v1.5;
         bfloat16 = bfloat16 compute with float32 parameters. "compile" = JAX's
         trace + lowering + XLA compile (or persistent-cache load) events of the
         first step; "init" = model init + optimizer state, reported apart.
  keras  `keras.applications.ResNet50(weights=None, include_top=False, pooling='avg')`
         + Dense(2), `train_on_batch`; bfloat16 = the 'mixed_bfloat16' policy.
         jit_compile follows `--keras_jit_compile` ('auto', Keras' default, resolves
         to False on CPU-only machines and to True, i.e. XLA, with a GPU); the table
         says which. Keras' ResNet50 is the v1 layout (stride on the 1x1 conv).
  torch  `torchvision.models.resnet50(num_classes=2)`, channels_last, eager,
         `torch.set_num_threads(os.cpu_count())`, cudnn.benchmark on GPUs;
         bfloat16 = `torch.autocast(dtype=torch.bfloat16)`.
"compile" of Keras and torch = first step - mean timed step.

Each (framework, recipe, dtype) runs in its own subprocess (`--framework=NAME` is that worker
mode), so peak memory is per run and TensorFlow and torchvision never share a process
(importing torchvision after TensorFlow segfaults). Peak memory: the worker's RSS high-water
mark (`resource.getrusage`, includes the framework's own import) and, on GPUs, the device
allocator's peak (JAX `memory_stats()['peak_bytes_in_use']`, `torch.cuda.max_memory_allocated`,
TF `get_memory_info('GPU:0')['peak']`). Frameworks that are not installed are reported, not run.

XLA flags of the bcjax workers: the environment's XLA_FLAGS plus the trainer's per-platform
defaults (`bcjax.runtime.PLATFORM_XLA_FLAGS`, as `python -m bcjax.main` sets them), then
`--xla_flags`; `--no_default_xla_flags` drops the defaults. bcjax workers use JAX's persistent
compilation cache (`--compilation_cache_dir`, default a temporary folder removed at the end,
every program cached). Unless `--nocompile_cache_check`, a second bcjax worker per (recipe, dtype) then runs
just the first step against the now warm cache: compile cold vs warm ("cold" is the first run on
that folder; a reused folder may already hold the entries). The RNG programs of model init are
cached too, so only the first bcjax row pays their compile.

`--time_to_result` extrapolates the training wall time of recipe a as published
(200 epochs x 200 steps) and of a 5-fold patient-disjoint recipe b (30 epochs x
floor(0.8 x 0.8 x 7909 / 32) steps per fold x 5 folds) from the measured step times
(training steps only: no input pipeline, evaluation or checkpoints).
`--breakdown` times, for bcjax, the host-to-device transfer, the forward pass (the loss alone)
and the whole step, each jitted apart; backward + update = step - forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import app, flags

FRAMEWORKS = ("bcjax", "keras", "torch")
DTYPES = ("float32", "bfloat16")
NUM_CLASSES = 2
LEARNING_RATE = 1e-4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Modules each framework needs; a missing one makes a "not installed" row.
REQUIRES = {
    "bcjax": ("jax", "flax", "optax", "bcjax"),
    "keras": ("tensorflow", "keras"),
    "torch": ("torch", "torchvision"),
}
VERSIONS = ("jax", "jaxlib", "flax", "optax", "tensorflow", "keras", "torch", "torchvision", "numpy")
KERAS_ARCHS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}
# ResNet-50 training (forward + backward) per 224x224 image; scales with the pixel count.
RESNET50_TRAIN_GFLOP_224 = 24.5
# Dense bfloat16 tensor-core peaks (NVIDIA datasheets, SXM parts), for MFU.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
# Published schedules for --time_to_result.
RECIPE_A_STEPS = 200 * 200
# configs/multiclass.py:patient: 5 patient folds (4/5 of the images train + validate), 20% of
# those validate, batch 32, 30 epochs. Folds group patients, so the fractions are approximate.
RECIPE_B_STEPS_PER_FOLD = 30 * int(0.8 * 0.8 * 7909 / 32)
RECIPE_B_FOLDS = 5


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    height: int
    width: int
    batch: int
    warmup: int
    steps: int


RECIPES = {"a": Recipe("a", 96, 144, 32, 2, 5), "b": Recipe("b", 224, 224, 32, 1, 3)}

_FRAMEWORKS = flags.DEFINE_list("frameworks", list(FRAMEWORKS), "Frameworks to compare: bcjax, keras, torch.")
_RECIPES = flags.DEFINE_list("recipes", list(RECIPES), "Recipes: a (batch 32, 96x144), b (batch 32, 224x224).")
_DTYPES = flags.DEFINE_list(
    "dtypes",
    None,
    "Compute dtypes: float32, bfloat16 (mixed, float32 params). Default: "
    "both on GPUs, float32 on CPUs (a bfloat16 step there takes minutes in Keras and torch).",
)
_WARMUP = flags.DEFINE_integer(
    "warmup", None, "Untimed steps, the compiling one included (default: a 2, b 1).", lower_bound=1
)
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps (default: recipe a 5, recipe b 3).", lower_bound=0)
_ARCH = flags.DEFINE_string("arch", "resnet50", "ResNet depth (resnet18/34/50/101/152); Keras has 50/101/152.")
_HEIGHT = flags.DEFINE_integer("height", None, "Override every recipe's input height.")
_WIDTH = flags.DEFINE_integer("width", None, "Override every recipe's input width.")
_BATCH = flags.DEFINE_integer("batch", None, "Override every recipe's batch size.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write every figure to this JSON file.")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Extra XLA_FLAGS for the bcjax workers (after the defaults).")
_NO_DEFAULT_XLA_FLAGS = flags.DEFINE_bool("no_default_xla_flags", False, "Do not set the per-platform XLA flags.")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "JAX persistent compilation cache (default: a temporary folder, removed at the end)."
)
_CACHE_CHECK = flags.DEFINE_bool(
    "compile_cache_check", True, "Rerun bcjax's first step on the warm cache: compile time cold vs warm."
)
_KERAS_JIT = flags.DEFINE_enum(
    "keras_jit_compile",
    "auto",
    ["auto", "true", "false"],
    "Keras `compile(jit_compile=...)`; 'auto' is Keras' default.",
)
_TIME_TO_RESULT = flags.DEFINE_bool("time_to_result", False, "Extrapolate the published recipes' training wall time.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "bcjax: time the transfer, the forward pass and the step apart.")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds after which a worker is stopped and reported.")
# Worker mode (the driver runs one subprocess per row).
_FRAMEWORK = flags.DEFINE_enum("framework", None, list(FRAMEWORKS), "Worker mode: run this framework only.")
_RECIPE = flags.DEFINE_string("recipe", "a", "Worker mode: the recipe's name (for the record).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Worker mode: compute dtype.")
_RESULT_FILE = flags.DEFINE_string("result_file", None, "Worker mode: where to write the result JSON.")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One worker's configuration."""

    framework: str
    recipe: str
    dtype: str
    arch: str
    height: int
    width: int
    batch: int
    warmup: int
    steps: int
    cache_dir: str | None = None
    keras_jit_compile: str = "auto"
    breakdown: bool = False

    def flags(self) -> list[str]:
        values = [
            f"--framework={self.framework}",
            f"--recipe={self.recipe}",
            f"--dtype={self.dtype}",
            f"--arch={self.arch}",
            f"--height={self.height}",
            f"--width={self.width}",
            f"--batch={self.batch}",
            f"--warmup={self.warmup}",
            f"--steps={self.steps}",
            f"--keras_jit_compile={self.keras_jit_compile}",
            f"--{'' if self.breakdown else 'no'}breakdown",
        ]
        return values + ([f"--compilation_cache_dir={self.cache_dir}"] if self.cache_dir else [])


# ----------------------------------------------------------------------------- shared by the workers


def host_batch(spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 NHWC images and int32 labels every framework trains on."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (spec.batch, spec.height, spec.width, 3), dtype=np.uint8)
    return images, rng.integers(0, NUM_CLASSES, spec.batch, dtype=np.int32)


def time_steps(
    step: Callable[[Any], Any],
    sync: Callable[[Any], None],
    carry: Any,
    spec: RunSpec,
    on_first: Callable[[], None] = lambda: None,
) -> tuple[Any, dict]:
    """Runs `warmup` steps (the first timed alone) then `steps` timed steps, synced once at the end.

    `cpu_s` is the process's CPU time (all threads) per timed step: steadier than wall time on a
    shared machine, but it also counts threads that spin while waiting.
    """
    start = time.perf_counter()
    carry = step(carry)
    sync(carry)
    first = time.perf_counter() - start
    on_first()
    for _ in range(spec.warmup - 1):
        carry = step(carry)
        sync(carry)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(spec.steps):
        carry = step(carry)
    sync(carry)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    step_s = total / spec.steps if spec.steps else None
    return carry, {
        "first_step_s": first,
        "step_s": step_s,
        "cpu_s": cpu / spec.steps if spec.steps else None,
        "images_per_s": spec.batch / step_s if step_s else None,
    }


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mb(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else num_bytes / 2**20


# ----------------------------------------------------------------------------- bcjax


class _CompileEvents:
    """Sums JAX's compile-event durations (trace, lowering, XLA compile or cache load) and counts
    the persistent-cache hits since the last `reset` (from the trainer's own `runtime.CacheStats`)."""

    KEYS = {
        "/jax/core/compile/jaxpr_trace_duration": "trace_s",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
        "/jax/core/compile/backend_compile_duration": "xla_compile_s",
    }

    def __init__(self, cache):
        import jax

        self.cache = cache
        self.reset()
        jax.monitoring.register_event_duration_secs_listener(self._duration)

    def _duration(self, event: str, seconds: float, **kwargs) -> None:
        if event in self.KEYS:
            self.totals[self.KEYS[event]] += seconds

    def reset(self) -> None:
        self.totals = dict.fromkeys(self.KEYS.values(), 0.0)
        self.hits_before = self.cache.hits if self.cache else 0

    def summary(self) -> dict:
        hits = self.cache.hits - self.hits_before if self.cache else 0
        return {**self.totals, "compile_s": sum(self.totals.values()), "cache_hits": hits}


def run_bcjax(spec: RunSpec) -> dict:
    """The trainer's jitted step on uint8 batches sent with `parallel.to_global` every step."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bcjax import augment, losses, optimizers, parallel, runtime, train
    from bcjax.models import create_model

    cache = runtime.enable_compilation_cache(spec.cache_dir, min_compile_time_secs=0) if spec.cache_dir else None
    events = _CompileEvents(cache)
    start = time.perf_counter()
    model = create_model(spec.arch, "v1.5", "linear", NUM_CLASSES, dtype=jnp.dtype(spec.dtype), rngs=nnx.Rngs(0))
    tx = optimizers.make_optimizer(optimizers.default_optimizer_config(), max(spec.warmup + spec.steps, 1))
    graphdef, state = train.initial_state(model, tx)
    mesh = parallel.make_mesh()
    normalizer = augment.make_normalizer("imagenet")
    loss_fn = losses.make_loss("softmax_ce", num_classes=NUM_CLASSES)
    steps = train.make_steps(
        graphdef, state, tx=tx, mesh=mesh, loss_fn=loss_fn, normalizer=normalizer, target="label", shard_params=False
    )
    state = jax.block_until_ready(jax.device_put(state, steps.state_sharding))
    init_s = time.perf_counter() - start
    images, labels = host_batch(spec)
    local = parallel.local_batch_size(spec.batch, mesh)
    batch = {"image": images[:local], "label": labels[:local]}
    events.reset()
    compile_events: dict = {}

    def step(state):
        return steps.train(state, parallel.to_global(batch, mesh))[0]

    state, timing = time_steps(
        step, jax.block_until_ready, state, spec, on_first=lambda: compile_events.update(events.summary())
    )
    result = {
        **timing,
        **compile_events,
        "init_s": init_s,
        "peak_device_mb": _jax_peak_mb(),
        "device": jax.default_backend(),
        "note": f"{len(jax.devices())} device(s)",
    }
    if spec.breakdown:
        result["breakdown_s"] = _bcjax_breakdown(graphdef, state, batch, mesh, normalizer, loss_fn, steps, spec)
    return result


def _jax_peak_mb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats()
    return _mb(stats.get("peak_bytes_in_use")) if stats else None


def _bcjax_breakdown(graphdef, state, batch, mesh, normalizer, loss_fn, steps, spec: RunSpec) -> dict:
    """Mean seconds of the transfer, the forward pass (the loss alone) and the whole step, each jitted apart."""
    import jax
    from flax import nnx

    from bcjax import parallel

    def loss_of(params, rest, images, labels):
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.train()
        return loss_fn(model(normalizer(images)), labels).mean()

    forward = jax.jit(loss_of)
    device_batch = parallel.to_global(batch, mesh)
    reps = max(spec.steps, 1)
    times = {
        "transfer_s": _mean_time(lambda: parallel.to_global(batch, mesh), reps),
        "forward_s": _mean_time(
            lambda: forward(state["params"], state["rest"], device_batch["image"], device_batch["label"]), reps
        ),
    }
    holder = [state]

    def full_step():
        holder[0] = steps.train(holder[0], device_batch)[0]
        return holder[0]

    times["step_s"] = _mean_time(full_step, reps)
    times["backward_update_s"] = times["step_s"] - times["forward_s"]
    return times


def _mean_time(fn: Callable[[], Any], reps: int) -> float:
    """Mean seconds of `fn` after one untimed (compiling) call; blocks on JAX outputs."""
    import jax

    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / reps


# ----------------------------------------------------------------------------- Keras


def run_keras(spec: RunSpec) -> dict:
    """`train_on_batch` of Keras' ResNet + Dense(2) on the uint8 batch."""
    if spec.arch not in KERAS_ARCHS:
        return {"status": f"not available: keras.applications has no {spec.arch}"}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    start = time.perf_counter()
    model = _keras_model(keras, spec)
    jit = {"auto": "auto", "true": True, "false": False}[spec.keras_jit_compile]
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    init_s = time.perf_counter() - start
    images, labels = host_batch(spec)

    def step(carry):
        return model.train_on_batch(images, labels)

    _, timing = time_steps(step, lambda _: None, None, spec)
    gpus = tf.config.list_physical_devices("GPU")
    peak = _mb(tf.config.experimental.get_memory_info("GPU:0")["peak"]) if gpus else None
    return {
        **timing,
        **_compile_estimate(timing),
        "init_s": init_s,
        "peak_device_mb": peak,
        "device": "gpu" if gpus else "cpu",
        "note": f"jit_compile={model.jit_compile} ({spec.keras_jit_compile})",
    }


def _keras_model(keras, spec: RunSpec):
    """uint8 input -> ImageNet normalisation -> keras.applications ResNet -> Dense(2) -> float32 logits."""
    if spec.dtype == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    shape = (spec.height, spec.width, 3)
    inputs = keras.Input(shape, dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Normalization(mean=IMAGENET_MEAN, variance=np.square(IMAGENET_STD))(x)
    backbone = getattr(keras.applications, KERAS_ARCHS[spec.arch])
    x = backbone(weights=None, include_top=False, pooling="avg", input_shape=shape)(x)
    logits = keras.layers.Activation("linear", dtype="float32")(keras.layers.Dense(NUM_CLASSES)(x))
    return keras.Model(inputs, logits)


def _compile_estimate(timing: dict) -> dict:
    """First step minus a steady step: what tracing, compiling and first allocations cost."""
    if timing["step_s"] is None:
        return {}
    return {"compile_s": timing["first_step_s"] - timing["step_s"]}


# ----------------------------------------------------------------------------- PyTorch


def run_torch(spec: RunSpec) -> dict:
    """An eager torchvision ResNet step in channels_last, optionally under bfloat16 autocast."""
    import torch
    import torchvision

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    model = getattr(torchvision.models, spec.arch)(num_classes=NUM_CLASSES)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    init_s = time.perf_counter() - start
    images, labels = host_batch(spec)
    host_images = torch.from_numpy(images).permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last
    host_labels = torch.from_numpy(labels).long()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    autocast = spec.dtype == "bfloat16"

    def step(carry):
        x = host_images.to(device).float().div_(255).sub_(mean).div_(std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(
                model(x.contiguous(memory_format=torch.channels_last)), host_labels.to(device)
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync(carry):
        if device.type == "cuda":
            torch.cuda.synchronize()

    _, timing = time_steps(step, sync, None, spec)
    peak = _mb(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None
    return {
        **timing,
        **_compile_estimate(timing),
        "init_s": init_s,
        "peak_device_mb": peak,
        "device": "gpu" if device.type == "cuda" else "cpu",
        "note": f"eager, {torch.get_num_threads()} threads",
    }


RUNNERS = {"bcjax": run_bcjax, "keras": run_keras, "torch": run_torch}


def worker(spec: RunSpec, result_file: str) -> None:
    """Worker mode: one run, its result (with the peak RSS) written as JSON."""
    result = {"status": "ok", **RUNNERS[spec.framework](spec)}
    result["peak_rss_mb"] = peak_rss_mb()
    with open(result_file, "w") as f:
        json.dump(result, f)


# ----------------------------------------------------------------------------- the driver


def versions() -> dict[str, str | None]:
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


def xla_flags() -> str:
    """XLA_FLAGS for the bcjax workers: the environment's, the trainer's defaults, then --xla_flags."""
    from bcjax import runtime

    current = os.environ.get("XLA_FLAGS", "")
    flags_now = current if _NO_DEFAULT_XLA_FLAGS.value else runtime.with_platform_flags(current)
    return " ".join(f for f in (flags_now, _XLA_FLAGS.value) if f)


def missing_modules(framework: str) -> list[str]:
    return [m for m in REQUIRES[framework] if importlib.util.find_spec(m) is None]


def run_worker(spec: RunSpec, env: dict[str, str]) -> dict:
    """Runs one worker subprocess; failures and crashes become a status, never an exception."""
    record = dataclasses.asdict(spec)
    missing = missing_modules(spec.framework)
    if missing:
        return {**record, "status": f"not installed ({', '.join(missing)})"}
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), *spec.flags(), f"--result_file={result_file}"]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_TIMEOUT.value)
        except subprocess.TimeoutExpired:
            return {**record, "status": f"timed out after {_TIMEOUT.value}s"}
        if done.returncode != 0 or not os.path.exists(result_file):
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return {**record, "status": f"failed (exit {done.returncode}): {tail[0][:200]}"}
        with open(result_file) as f:
            return {**record, **json.load(f)}


def worker_env(framework: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if framework == "bcjax":
        env["XLA_FLAGS"] = xla_flags()
    return env


def default_dtypes(platform_name: str) -> list[str]:
    return list(DTYPES) if platform_name in ("gpu", "tpu") else ["float32"]


def make_specs(cache_dir: str, dtypes: list[str]) -> list[RunSpec]:
    """Every (recipe, dtype, framework) row the flags ask for, in that order."""
    specs = []
    for name in _RECIPES.value:
        recipe = RECIPES[name]
        for dtype in dtypes:
            for framework in _FRAMEWORKS.value:
                specs.append(
                    RunSpec(
                        framework=framework,
                        recipe=name,
                        dtype=dtype,
                        arch=_ARCH.value,
                        height=_HEIGHT.value or recipe.height,
                        width=_WIDTH.value or recipe.width,
                        batch=_BATCH.value or recipe.batch,
                        warmup=_WARMUP.value if _WARMUP.value is not None else recipe.warmup,
                        steps=_STEPS.value if _STEPS.value is not None else recipe.steps,
                        cache_dir=cache_dir if framework == "bcjax" else None,
                        keras_jit_compile=_KERAS_JIT.value,
                        breakdown=_BREAKDOWN.value and framework == "bcjax",
                    )
                )
    return specs


def validate_flags() -> None:
    for values, allowed, name in (
        (_FRAMEWORKS.value, FRAMEWORKS, "frameworks"),
        (_RECIPES.value, RECIPES, "recipes"),
        (_DTYPES.value or [], DTYPES, "dtypes"),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise app.UsageError(f"--{name}: unknown {unknown}; choose from {', '.join(allowed)}")


# ----------------------------------------------------------------------------- reporting


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def compute_figures(row: dict, device_kind: str) -> dict:
    """Achieved TFLOP/s of a ResNet-50 row and, for bfloat16 on a GPU of known peak, its MFU."""
    if row["status"] != "ok" or not row.get("images_per_s") or row["arch"] != "resnet50":
        return {"tflops": None, "mfu": None}
    gflop = RESNET50_TRAIN_GFLOP_224 * row["height"] * row["width"] / 224**2
    tflops = row["images_per_s"] * gflop / 1000
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_kind), None)
    usable = peak and row["device"] == "gpu" and row["dtype"] == "bfloat16"
    return {"tflops": tflops, "mfu": tflops / peak if usable else None}


def results_table(rows: list[dict]) -> str:
    head = (
        f"{'recipe':<17}{'dtype':<10}{'framework':<10}{'images/s':>10}{'TFLOP/s':>9}{'MFU':>6}{'step s':>9}"
        f"{'cpu s':>8}{'first s':>9}{'compile s':>11}{'init s':>8}{'RSS MB':>9}{'dev MB':>9}  device, note"
    )
    lines = [head]
    for r in rows:
        size = f"{r['recipe']} {r['height']}x{r['width']}"
        if r["status"] != "ok":
            lines.append(f"{size:<17}{r['dtype']:<10}{r['framework']:<10}  {r['status']}")
            continue
        lines.append(
            f"{size:<17}{r['dtype']:<10}{r['framework']:<10}{_fmt(r['images_per_s']):>10}"
            f"{_fmt(r.get('tflops'), '.3f'):>9}{_fmt(r.get('mfu'), '.0%'):>6}{_fmt(r['step_s'], '.3f'):>9}"
            f"{_fmt(r['cpu_s'], '.2f'):>8}"
            f"{_fmt(r['first_step_s'], '.1f'):>9}{_fmt(r.get('compile_s'), '.1f'):>11}{_fmt(r['init_s'], '.1f'):>8}"
            f"{_fmt(r['peak_rss_mb'], '.0f'):>9}{_fmt(r['peak_device_mb'], '.0f'):>9}  {r['device']}, {r['note']}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[dict]:
    """bcjax images/s over each other framework's, per (recipe, dtype); None unless both ran on one device kind."""
    ok = {(r["recipe"], r["dtype"], r["framework"]): r for r in rows if r["status"] == "ok" and r["images_per_s"]}
    out = []
    for recipe, dtype in dict.fromkeys((r["recipe"], r["dtype"]) for r in rows):
        mine = ok.get((recipe, dtype, "bcjax"))
        entry = {"recipe": recipe, "dtype": dtype}
        for other in ("keras", "torch"):
            theirs = ok.get((recipe, dtype, other))
            same = mine and theirs and mine["device"] == theirs["device"]
            entry[f"bcjax/{other}"] = mine["images_per_s"] / theirs["images_per_s"] if same else None
        out.append(entry)
    return out


def ratios_table(entries: list[dict]) -> str:
    lines = [f"{'recipe':<8}{'dtype':<10}{'bcjax/keras':>13}{'bcjax/torch':>13}"]
    lines += [
        f"{e['recipe']:<8}{e['dtype']:<10}{_fmt(e['bcjax/keras']):>13}{_fmt(e['bcjax/torch']):>13}" for e in entries
    ]
    return "\n".join(lines)


def compile_table(pairs: list[tuple[dict, dict]]) -> str:
    lines = [
        f"{'recipe':<8}{'dtype':<10}{'':<6}{'first s':>9}{'compile s':>11}{'trace':>8}{'lower':>8}"
        f"{'xla':>8}{'hits':>6}{'init s':>8}"
    ]
    for cold, warm in pairs:
        for label, r in (("cold", cold), ("warm", warm)):
            if r["status"] != "ok":
                lines.append(f"{r['recipe']:<8}{r['dtype']:<10}{label:<6}  {r['status']}")
                continue
            lines.append(
                f"{r['recipe']:<8}{r['dtype']:<10}{label:<6}{r['first_step_s']:>9.1f}{r['compile_s']:>11.1f}"
                f"{r['trace_s']:>8.1f}{r['lower_s']:>8.1f}{r['xla_compile_s']:>8.1f}{r['cache_hits']:>6}"
                f"{r['init_s']:>8.1f}"
            )
    return "\n".join(lines)


def time_to_result(rows: list[dict]) -> list[dict]:
    """Training wall time of the published schedules, from each row's measured step time."""
    schedules = {
        "a": ("recipe a as published: 200 epochs x 200 steps", RECIPE_A_STEPS),
        "b": (
            f"recipe b, 5-fold: {RECIPE_B_FOLDS} x {RECIPE_B_STEPS_PER_FOLD} steps",
            RECIPE_B_FOLDS * RECIPE_B_STEPS_PER_FOLD,
        ),
    }
    out = []
    for r in rows:
        if r["status"] == "ok" and r["step_s"] and r["recipe"] in schedules:
            what, steps = schedules[r["recipe"]]
            out.append(
                {
                    "schedule": what,
                    "framework": r["framework"],
                    "dtype": r["dtype"],
                    "steps": steps,
                    "hours": steps * r["step_s"] / 3600,
                }
            )
    return out


def time_to_result_table(entries: list[dict]) -> str:
    lines = [
        "extrapolated from measured step time (training steps only):",
        f"{'schedule':<48}{'dtype':<10}{'framework':<10}{'steps':>8}{'hours':>9}",
    ]
    lines += [
        f"{e['schedule']:<48}{e['dtype']:<10}{e['framework']:<10}{e['steps']:>8}{e['hours']:>9.1f}" for e in entries
    ]
    return "\n".join(lines)


def breakdown_table(rows: list[dict]) -> str:
    keys = ("transfer_s", "forward_s", "backward_update_s", "step_s")
    lines = [f"{'recipe':<8}{'dtype':<10}" + "".join(f"{k[:-2]:>18}" for k in keys) + "   (bcjax, seconds)"]
    for r in rows:
        if "breakdown_s" in r:
            b = r["breakdown_s"]
            lines.append(f"{r['recipe']:<8}{r['dtype']:<10}" + "".join(f"{b[k]:>18.3f}" for k in keys))
    return "\n".join(lines)


def header(device: dict, flags_for_bcjax: str, cache_dir: str) -> dict:
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
    print(f"date: {info['date']}\ncommand: {info['command']}")
    print(f"machine: {info['machine']} ({info['processor']}), {info['cpu_count']} CPUs, Python {info['python']}")
    d = info["device"]
    print(f"device (JAX): {d['platform']}: {d['device']} x{d['count']}")
    print("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items()))
    print(
        f"bcjax XLA_FLAGS: {info['bcjax_xla_flags'] or '(none)'}; compilation cache: {info['compilation_cache_dir']}\n",
        flush=True,
    )


def write_json(record: dict) -> None:
    """Saves the record to --json_out (after every row, so a long run that is stopped keeps its rows)."""
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(record, f, indent=2)


def run_all(specs: list[RunSpec], record: dict) -> list[tuple[dict, dict]]:
    """Runs the workers into `record['results']`; returns the bcjax (cold, warm-cache) pairs."""
    pairs = []
    for spec in specs:
        print(f"{spec.framework} recipe {spec.recipe} {spec.dtype} {spec.height}x{spec.width}: ", end="", flush=True)
        row = run_worker(spec, worker_env(spec.framework))
        row.update(compute_figures(row, record["header"]["device"]["device"]))
        record["results"].append(row)
        print(row["status"] + (f", {row['images_per_s']:.2f} images/s" if row.get("images_per_s") else ""), flush=True)
        if spec.framework == "bcjax" and _CACHE_CHECK.value and row["status"] == "ok":
            warm = dataclasses.replace(spec, warmup=1, steps=0, breakdown=False)
            pairs.append((row, run_worker(warm, worker_env("bcjax"))))
            record["compile_cold_warm"] = [{"cold": c, "warm": w} for c, w in pairs]
        write_json(record)
    return pairs


def driver() -> None:
    """The benchmark, with a temporary compilation cache unless --compilation_cache_dir names one."""
    validate_flags()
    with contextlib.ExitStack() as stack:
        cache_dir = _CACHE_DIR.value or stack.enter_context(tempfile.TemporaryDirectory(prefix="bcjax-jax-cache-"))
        run_and_report(cache_dir)


def run_and_report(cache_dir: str) -> None:
    """Runs every worker against `cache_dir`, prints the tables and writes the record."""
    device = probe_device()
    record = {"header": header(device, xla_flags(), cache_dir), "results": []}
    print_header(record["header"])
    specs = make_specs(cache_dir, _DTYPES.value or default_dtypes(device["platform"]))
    pairs = run_all(specs, record)
    rows = record["results"]
    record["ratios"] = ratios(rows)
    print("\n" + results_table(rows) + "\n\n" + ratios_table(record["ratios"]))
    if pairs:
        print("\nbcjax compile, cold vs warm persistent cache:\n" + compile_table(pairs))
    if _TIME_TO_RESULT.value:
        record["time_to_result"] = time_to_result(rows)
        print("\n" + time_to_result_table(record["time_to_result"]))
    if _BREAKDOWN.value:
        print("\n" + breakdown_table(rows))
    write_json(record)
    if _JSON_OUT.value:
        print(f"\nwrote {_JSON_OUT.value}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _FRAMEWORK.value:
        driver()
        return
    spec = RunSpec(
        framework=_FRAMEWORK.value,
        recipe=_RECIPE.value,
        dtype=_DTYPE.value,
        arch=_ARCH.value,
        height=_HEIGHT.value,
        width=_WIDTH.value,
        batch=_BATCH.value,
        warmup=_WARMUP.value,
        steps=_STEPS.value,
        cache_dir=_CACHE_DIR.value,
        keras_jit_compile=_KERAS_JIT.value,
        breakdown=_BREAKDOWN.value,
    )
    worker(spec, _RESULT_FILE.value)


if __name__ == "__main__":
    app.run(main)
