"""Training-step throughput of any zoo model, side by side: bcjax vs Keras 3 (TensorFlow) vs PyTorch.

    python scripts/benchmark.py [--frameworks=bcjax,keras,torch] [--recipes=a,b]
        [--dtypes=float32,bfloat16] [--warmup=N --steps=N] [--time_to_result] [--breakdown]
        [--model=resnet50 --height=H --width=W --batch=B]
        [--json_out=FILE] [--xla_flags='...'] [--compilation_cache_dir=DIR]

Every framework trains the same model (`--model`, built as scripts/benchmarking/models.py says:
backbone + global average pool + Dense(2)), with softmax cross-entropy and Adam 1e-4, on the same
uint8 batch (built once on the host, sent to the device and normalised with ImageNet mean/std inside
every step) at the same batch size and resolution:
  recipe a: batch 32 at 96 high x 144 wide (Abu Al-Haija & Manasra); 2 warm-up + 5 timed steps
  recipe b: batch 32 at 224 x 224 (Nishio et al.); 1 warm-up + 3 timed steps
The first warm-up step carries the compilation; it is reported as "first step". images/s
is batch x timed steps / their wall time (synchronised once, after the last timed step).
TFLOP/s = images/s x the model's training GFLOP per image at that size (3 x the forward FLOPs XLA
counts for bcjax's model: 24.1 for ResNet-50 at 224x224); MFU = TFLOP/s / the GPU's dense bfloat16
peak, for bfloat16 rows on H100, H200 or A100.

  bcjax  the trainer's own step (`bcjax.components.build_steps` on configs/default.py
         with this model in torchvision's layout, `parallel.to_global` every step);
         bfloat16 = bfloat16 compute with float32 parameters. "compile" = JAX's
         trace + lowering + XLA compile (or persistent-cache load) events of the
         first step; "init" = model init + optimizer state, reported apart.
  keras  the keras.applications network (`weights=None, include_top=False, pooling='avg'`)
         + Dense(2), `train_on_batch`; bfloat16 = the 'mixed_bfloat16' policy.
         jit_compile follows `--keras_jit_compile` ('auto', Keras' default, resolves
         to False on CPU-only machines and to True, i.e. XLA, with a GPU); the table
         says which. Keras' ResNets are the v1 layout (stride on the 1x1 conv); Keras has
         no ResNet-18/34, batch-norm VGG or ERNet (a "not available" row).
  torch  the torchvision network with 2 classes (or benchmarking/torch_ernet.py), channels_last,
         eager, `torch.set_num_threads(os.cpu_count())`, cudnn.benchmark on GPUs;
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
floor(0.8 x 0.8 x 7909 / 32) steps per fold x 5 folds; both counted from configs/binary.py and
configs/multiclass.py:patient by `bcjax.schedule.make_schedule`) from the measured step times
(training steps only: no input pipeline, evaluation or checkpoints).
`--breakdown` times, for bcjax, the host-to-device transfer, the forward pass (the loss alone)
and the whole step, each jitted apart; backward + update = step - forward.
"""

# This script is the entry point, the flags and the driver; the workers, the report and the timing are
# in scripts/benchmarking/ (its __init__ says which module does what).

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ is not installed

from benchmarking import figures, tables  # noqa: E402
from benchmarking.models import MODELS  # noqa: E402
from benchmarking.protocol import DTYPES, RunSpec  # noqa: E402
from benchmarking.record import header, print_header, probe_device, write_json  # noqa: E402
from benchmarking.workers import FRAMEWORKS, run_worker, worker  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A published recipe's input size and batch, and how many steps the benchmark runs of it."""

    height: int
    width: int
    batch: int
    warmup: int
    steps: int


RECIPES = {"a": Recipe(96, 144, 32, 2, 5), "b": Recipe(224, 224, 32, 1, 3)}

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
_MODEL = flags.DEFINE_enum(
    "model", "resnet50", list(MODELS), "The network every framework trains (scripts/benchmarking/models.py)."
)
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
_DEVICE_RESIDENT = flags.DEFINE_bool(
    "device_resident", False, "bcjax: draw batches on the devices from images kept there (as the trainer's default)."
)
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "torch: run the model under torch.compile.")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds after which a worker is stopped and reported.")
# Worker mode (the driver runs one subprocess per row).
_FRAMEWORK = flags.DEFINE_enum("framework", None, list(FRAMEWORKS), "Worker mode: run this framework only.")
_RECIPE = flags.DEFINE_string("recipe", "a", "Worker mode: the recipe's name (for the record).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Worker mode: compute dtype.")
_RESULT_FILE = flags.DEFINE_string("result_file", None, "Worker mode: where to write the result JSON.")


def xla_flags() -> str:
    """XLA_FLAGS for the bcjax workers: the environment's, the trainer's defaults, then --xla_flags."""
    from bcjax import runtime  # imports JAX: the driver's business, never a Keras or torch worker's

    current = os.environ.get("XLA_FLAGS", "")
    flags_now = current if _NO_DEFAULT_XLA_FLAGS.value else runtime.with_platform_flags(current)
    return " ".join(f for f in (flags_now, _XLA_FLAGS.value) if f)


def worker_env(framework: str) -> dict[str, str]:
    """A worker's environment: unbuffered output, quiet TensorFlow, and the bcjax workers' XLA flags."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if framework == "bcjax":
        env["XLA_FLAGS"] = xla_flags()
    return env


def default_dtypes(platform_name: str) -> list[str]:
    """Both dtypes on accelerators; float32 alone on CPUs, where a bfloat16 step takes minutes in Keras and torch."""
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
                        model=_MODEL.value,
                        height=_HEIGHT.value or recipe.height,
                        width=_WIDTH.value or recipe.width,
                        batch=_BATCH.value or recipe.batch,
                        warmup=_WARMUP.value if _WARMUP.value is not None else recipe.warmup,
                        steps=_STEPS.value if _STEPS.value is not None else recipe.steps,
                        cache_dir=cache_dir if framework == "bcjax" else None,
                        keras_jit_compile=_KERAS_JIT.value,
                        breakdown=_BREAKDOWN.value and framework == "bcjax",
                        device_resident=_DEVICE_RESIDENT.value and framework == "bcjax",
                        torch_compile=_TORCH_COMPILE.value and framework == "torch",
                    )
                )
    return specs


def validate_flags() -> None:
    """Rejects unknown frameworks, recipes and dtypes before any worker starts."""
    for values, allowed, name in (
        (_FRAMEWORKS.value, FRAMEWORKS, "frameworks"),
        (_RECIPES.value, RECIPES, "recipes"),
        (_DTYPES.value or [], DTYPES, "dtypes"),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise app.UsageError(f"--{name}: unknown {unknown}; choose from {', '.join(allowed)}")


def run_all(specs: list[RunSpec], record: dict) -> list[tuple[dict, dict]]:
    """Runs the workers into `record['results']`; returns the bcjax (cold, warm-cache) pairs.

    The record is saved after every row, so a long run that is stopped keeps its rows.
    """
    pairs = []
    gflop = {size: figures.train_gflop_per_image(_MODEL.value, *size) for size in {(s.height, s.width) for s in specs}}
    for spec in specs:
        print(f"{spec.framework} {spec.model} recipe {spec.recipe} {spec.dtype} {spec.height}x{spec.width}: ", end="")
        row = run_worker(spec, worker_env(spec.framework), timeout=_TIMEOUT.value)
        row["train_gflop_per_image"] = gflop[spec.height, spec.width]
        row.update(figures.compute_figures(row, record["header"]["device"]["device"], row["train_gflop_per_image"]))
        record["results"].append(row)
        print(row["status"] + (f", {row['images_per_s']:.2f} images/s" if row.get("images_per_s") else ""), flush=True)
        if spec.framework == "bcjax" and _CACHE_CHECK.value and row["status"] == "ok":
            warm = dataclasses.replace(spec, warmup=1, steps=0, breakdown=False)
            pairs.append((row, run_worker(warm, worker_env("bcjax"), timeout=_TIMEOUT.value)))
            record["compile_cold_warm"] = [{"cold": c, "warm": w} for c, w in pairs]
        write_json(_JSON_OUT.value, record)
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
    record["ratios"] = figures.ratios(rows)
    print("\n" + tables.results_table(rows) + "\n\n" + tables.ratios_table(record["ratios"]))
    if pairs:
        print("\nbcjax compile, cold vs warm persistent cache:\n" + tables.compile_table(pairs))
    if _TIME_TO_RESULT.value:
        record["time_to_result"] = figures.time_to_result(rows)
        print("\n" + tables.time_to_result_table(record["time_to_result"]))
    if _BREAKDOWN.value:
        print("\n" + tables.breakdown_table(rows))
    write_json(_JSON_OUT.value, record)
    if _JSON_OUT.value:
        print(f"\nwrote {_JSON_OUT.value}")


def worker_spec() -> RunSpec:
    """Worker mode: the row the driver's flags describe (`RunSpec.flags`)."""
    return RunSpec(
        framework=_FRAMEWORK.value,
        recipe=_RECIPE.value,
        dtype=_DTYPE.value,
        model=_MODEL.value,
        height=_HEIGHT.value,
        width=_WIDTH.value,
        batch=_BATCH.value,
        warmup=_WARMUP.value,
        steps=_STEPS.value,
        cache_dir=_CACHE_DIR.value,
        keras_jit_compile=_KERAS_JIT.value,
        breakdown=_BREAKDOWN.value,
        device_resident=_DEVICE_RESIDENT.value,
        torch_compile=_TORCH_COMPILE.value,
    )


def main(argv: list[str]) -> None:
    """The driver, or with --framework one worker."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _FRAMEWORK.value:
        worker(worker_spec(), _RESULT_FILE.value)
    else:
        driver()


if __name__ == "__main__":
    app.run(main)
