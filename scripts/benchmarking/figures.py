"""The report's arithmetic: a row's TFLOP/s and MFU, bcjax's speed over the others, the time to result."""

from __future__ import annotations

from bcjax.datasets.breakhis_vocabulary import PUBLISHED_IMAGES
from bcjax.schedule import make_schedule
from benchmarking.models import MODELS
from benchmarking.protocol import NUM_CLASSES
from configs import binary, multiclass

# A training step's FLOPs per image, as a multiple of the forward pass's (backward: about twice the forward).
TRAIN_FLOPS_PER_FORWARD = 3
# Dense bfloat16 tensor-core peaks (NVIDIA datasheets, SXM parts), for MFU.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def train_gflop_per_image(model: str, height: int, width: int) -> float:
    """3 x the forward FLOPs of one image of the benchmark model, as XLA counts them in bcjax's compiled
    eval-mode forward pass (`bcjax.models.summary.forward_flops`; ResNet-50 at 224x224: 3 x 8.03 = 24.1,
    beside the 24.5 usually quoted, which counts the products with padding zeros too)."""
    from flax import nnx  # the driver's imports: never a Keras or torch worker's

    from bcjax.models import create_model, summary

    bench = MODELS[model]
    network = nnx.eval_shape(
        lambda: create_model(
            model, bench.layout, "linear", NUM_CLASSES, rngs=nnx.Rngs(0), backbone_kwargs=dict(bench.backbone_kwargs)
        )
    )
    return TRAIN_FLOPS_PER_FORWARD * summary.forward_flops(network, height, width) / 1e9


def compute_figures(row: dict, device_kind: str, train_gflop: float | None) -> dict:
    """Achieved TFLOP/s of a row whose model trains `train_gflop` per image and, for bfloat16 on a GPU of
    known peak, its MFU."""
    if row["status"] != "ok" or not row.get("images_per_s") or train_gflop is None:
        return {"tflops": None, "mfu": None}
    tflops = row["images_per_s"] * train_gflop / 1000
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_kind), None)
    usable = peak and row["device"] == "gpu" and row["dtype"] == "bfloat16"
    return {"tflops": tflops, "mfu": tflops / peak if usable else None}


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


def published_schedules() -> dict[str, tuple[str, int]]:
    """Recipe name -> (what, training steps) of the published schedules, counted by `make_schedule`.

    a: configs/binary.py as published. b: configs/multiclass.py:patient over all its folds, each
    training on (k - 1)/k of BreakHis' images less the validation fraction; folds group patients,
    so that image count is approximate.
    """
    recipe_a = binary.get_config()
    a = make_schedule(recipe_a, train_images=0)  # steps_per_epoch is set: the image count is not used
    recipe_b = multiclass.get_config("patient")
    folds, val_fraction = recipe_b.data.split_kwargs.k, recipe_b.data.split_kwargs.val_fraction
    train_images = int((folds - 1) / folds * (1 - val_fraction) * sum(map(sum, PUBLISHED_IMAGES.values())))
    per_fold = make_schedule(recipe_b, train_images).total_steps
    return {
        "a": (f"recipe a as published: {recipe_a.num_epochs} epochs x {a.steps_per_epoch} steps", a.total_steps),
        "b": (f"recipe b, {folds}-fold: {folds} x {per_fold} steps", folds * per_fold),
    }


def time_to_result(rows: list[dict]) -> list[dict]:
    """Training wall time of the published schedules, from each row's measured step time."""
    schedules = published_schedules()
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
