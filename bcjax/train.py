"""`train_and_evaluate(config, workdir)`: state, jitted sharded steps, the loop, evaluation, reports.

The state is a plain pytree (`params`, the model's other variables, optimizer
state, step), so one `jax.jit` with explicit shardings and donation compiles
the whole step; the host only syncs at log, evaluation and checkpoint intervals.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from bcjax import augment as aug
from bcjax import checkpoint as ckpt_lib
from bcjax import input_pipeline as ip
from bcjax import losses as losses_lib
from bcjax import metrics as metrics_lib
from bcjax import optimizers, parallel, reports
from bcjax.datasets import synthetic
from bcjax.models import create_model

# The normaliser that matches each pretrained weight file's preprocessing mode.
PRETRAINED_NORMALIZATION = {"torch": "imagenet", "caffe": "caffe", "tf": "tf"}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says why and what is kept."""


# ----------------------------------------------------------------------------- model, data, state


def compute_dtype(name: str) -> jnp.dtype:
    """'auto' is bfloat16 on GPUs/TPUs (float32 parameters stay) and float32 on CPU."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
    return jnp.dtype(name)


def num_outputs(config: ml_collections.ConfigDict) -> int:
    """One logit for the sigmoid losses, else one per class of the target."""
    if config.loss.name.startswith("sigmoid"):
        return 1
    return len(reports.class_names(config.data.target))


def build_model(config: ml_collections.ConfigDict) -> tuple[nnx.Module, dict | None]:
    """The configured classifier, with pretrained backbone weights when `model.init_from` is set."""
    model = create_model(
        config.model.arch,
        config.model.layout,
        config.model.head,
        num_outputs(config),
        dtype=compute_dtype(config.model.dtype),
        rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
        **config.model.head_kwargs.to_dict(),
    )
    if not config.model.init_from:
        return model, None
    from bcjax import convert  # the weight readers are only needed here

    return model, convert.load_pretrained(model, config.model.init_from)


def input_config(config: ml_collections.ConfigDict, workdir: epath.Path, pretrained: dict | None) -> ip.InputConfig:
    """`config.data` as the input pipeline's config; writes the synthetic demo tree if asked."""
    data = config.data
    normalization = data.normalization
    if normalization == "auto":
        mode = pretrained["preprocessing"]["mode"] if pretrained else None
        normalization = PRETRAINED_NORMALIZATION.get(mode, "imagenet")
    manual_dir, data_dir, dataset = data.manual_dir, data.data_dir, data.dataset
    if data.synthetic.enabled:
        manual_dir, data_dir, dataset = _synthetic_source(data.synthetic, workdir)
    return ip.InputConfig(
        data_dir=data_dir,
        dataset=dataset,
        manual_dir=manual_dir,
        split=data.split,
        split_kwargs=data.split_kwargs.to_dict(),
        magnification=data.magnification or None,
        height=data.height,
        width=data.width,
        target=data.target,
        normalization=normalization,
        stain_normalization=data.stain_normalization,
        augment=aug.AugmentConfig(**_augment_kwargs(data.augment)),
        balance=data.balance,
        seed=config.seed,
        decode_threads=data.decode_threads,
    )


def _augment_kwargs(augment: ml_collections.ConfigDict) -> dict:
    kwargs = augment.to_dict()
    for name in ("crop_scale", "crop_ratio"):
        kwargs[name] = tuple(kwargs[name])
    return kwargs


def _synthetic_source(spec: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[str, str, str]:
    """Writes (once) the demo's synthetic BreakHis tree into the workdir; explicit, never a fallback."""
    root = workdir / "synthetic"
    manual = root / "manual"
    if reports.is_lead() and not (manual / synthetic.TOP_DIR).exists():
        synthetic.write_breakhis_tree(
            manual,
            patients=spec.patients,
            images_per_magnification=spec.images_per_magnification,
            image_size=(spec.image_width, spec.image_height),
            seed=spec.seed,
            progress=True,
        )
    multihost_utils.sync_global_devices("synthetic data written")
    return str(manual), str(root / "tfds"), "breakhis/custom"


def load_data(config: ip.InputConfig) -> ip.InputData:
    """This process's share of the data; z-score statistics averaged over processes."""
    data = ip.load(
        config, process_index=jax.process_index(), process_count=jax.process_count(), progress=reports.is_lead()
    )
    if config.normalization == "zscore" and jax.process_count() > 1:
        stats = np.asarray([data.normalizer.mean, data.normalizer.std], np.float32)
        mean, std = multihost_utils.process_allgather(stats).mean(0)
        data.normalizer = dataclasses.replace(data.normalizer, mean=tuple(map(float, mean)), std=tuple(map(float, std)))
    return data


def device_data(
    config: ml_collections.ConfigDict, data: ip.InputData, mesh, workdir: epath.Path
) -> ip.DeviceData | None:
    """The training images on the devices when `config.data.device_resident` says so; None for the host path.

    'auto' puts them there when every process's devices have room (`ip.fits_on_device`). The
    choice is kept in `workdir/data_path.json`, so that a resume (even on another machine) keeps
    the same path: the two paths draw different batches, and only the host path's iterator is saved.
    """
    setting = config.data.device_resident
    if setting not in ("auto", True, False):
        raise ValueError(f"config.data.device_resident must be 'auto', True or False, got {setting!r}")
    images = len(np.unique(data.train_rows))
    per_device = -(-images // mesh.devices.size) * data.cache.images[0].nbytes
    record = workdir / reports.DATA_PATH_FILE
    if setting == "auto" and record.exists():
        setting = json.loads(record.read_text())["device_resident"]
    elif setting == "auto":
        setting = _on_every_process(ip.fits_on_device(per_device, mesh.local_devices))
    reports.write_json(
        record,
        {"device_resident": bool(setting), "setting": config.data.device_resident, "bytes_per_device": int(per_device)},
    )
    if not setting:
        return None
    _print(f"Training images on the devices: {images} images, {per_device / 2**20:.1f} MiB per device")
    return data.on_devices(config.batch_size, mesh)


def _on_every_process(flag: bool) -> bool:
    """`flag` if every process says so: they must all choose the same path."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.asarray(flag)).all())


def initial_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[Any, dict]:
    """Splits the model into a static graph and a pytree state the steps carry."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = {"params": params, "rest": rest, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    return graphdef, state


# ----------------------------------------------------------------------------- steps


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted steps of one run and the state sharding they were compiled for."""

    train: Callable  # (state, batch or the DeviceData) -> (state, metrics)
    train_frozen: Callable  # the same with the backbone's batch-norm statistics frozen
    evaluate: Callable  # (state, batch) -> per-image outputs
    state_sharding: Any


def make_steps(
    graphdef,
    state,
    *,
    tx: optax.GradientTransformation,
    mesh,
    loss_fn: Callable,
    normalizer: aug.Normalizer,
    target: str,
    shard_params: bool,
    device_data: ip.DeviceData | None = None,
) -> Steps:
    """Compiles the steps with explicit in/out shardings and donation of the old state.

    Batch-norm statistics are taken over the global batch: the batch is one
    sharded array, so XLA reduces across devices (and hosts) itself. With
    `device_data`, the train steps take it in place of a batch and draw batch
    number `state["step"]` from it themselves: no host transfer per step.
    """
    state_sharding = parallel.state_shardings(state, mesh, shard=shard_params)
    batch_sharding = parallel.batch_sharding(mesh)
    inputs_sharding = batch_sharding if device_data is None else jax.tree.map(lambda x: x.sharding, device_data)
    replicated = parallel.replicated(mesh)

    def forward(params, rest, images, *, train: bool, frozen: bool = False):
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.train() if train else model.eval()
        if frozen:
            model.backbone.eval()
        logits = model(normalizer(images))
        return logits, nnx.state(model, nnx.Not(nnx.Param))

    def train_step(state, inputs, frozen: bool):
        batch = inputs if device_data is None else ip.device_batch(inputs, state["step"])
        labels = batch[target]

        def loss_of(params):
            logits, rest = forward(params, state["rest"], batch["image"], train=True, frozen=frozen)
            return loss_fn(logits, labels).mean(), (logits, rest)

        (loss, (logits, rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "rest": rest,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        correct = losses_lib.predictions(logits) == labels
        return new_state, {"loss": loss, "accuracy": correct.mean(), "grad_norm": optax.tree.norm(grads)}

    def eval_step(state, batch):
        logits, _ = forward(state["params"], state["rest"], batch["image"], train=False)
        return {
            "probabilities": losses_lib.probabilities(logits),
            "loss": loss_fn(logits, batch[target]),
            "index": batch["index"],
            "mask": batch["mask"],
        }

    def jit_train(frozen: bool):
        return jax.jit(
            functools.partial(train_step, frozen=frozen),
            in_shardings=(state_sharding, inputs_sharding),
            out_shardings=(state_sharding, replicated),
            donate_argnums=0,
        )

    evaluate = jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding), out_shardings=replicated)
    return Steps(jit_train(False), jit_train(True), evaluate, state_sharding)


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class Predictions:
    rows: np.ndarray  # table rows, each evaluated image once
    probabilities: np.ndarray  # [N, classes]
    loss: float


def predict(steps: Steps, state, data: ip.InputData, side: str, *, mesh, global_batch: int) -> Predictions:
    """Runs the eval step over every image of `side`; outputs are replicated, so every process gets all."""
    local = parallel.local_batch_size(global_batch, mesh)
    rows, probabilities, losses = [], [], []
    for batch in data.evaluate(side, local):
        out = steps.evaluate(state, parallel.to_global(batch, mesh))
        keep = parallel.fetch(out["mask"])
        rows.append(parallel.fetch(out["index"])[keep])
        probabilities.append(parallel.fetch(out["probabilities"])[keep])
        losses.append(parallel.fetch(out["loss"])[keep])
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    order = np.argsort(rows)
    loss = float(np.concatenate(losses).mean()) if len(rows) else float("nan")
    return Predictions(rows[order], np.concatenate(probabilities)[order], loss)


def quick_metrics(predictions: Predictions, data: ip.InputData, side: str) -> dict[str, float]:
    """The per-evaluation scalars logged during training."""
    labels = getattr(data.table, data.config.target)[predictions.rows]
    names = list(reports.class_names(data.config.target))
    metrics = metrics_lib.classification_metrics(predictions.probabilities, labels, names)
    scalars = {
        "loss": predictions.loss,
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "roc_auc": metrics["roc_auc"],
    }
    return {f"{side}/{k}": (float("nan") if v is None else float(v)) for k, v in scalars.items()}


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Schedule:
    """When to log, evaluate and checkpoint, in steps."""

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    def due(self, step: int, every: int) -> bool:
        return step == self.total_steps or (every > 0 and step % every == 0)


def make_schedule(config: ml_collections.ConfigDict, train_images: int) -> Schedule:
    steps_per_epoch = config.steps_per_epoch or max(1, train_images // config.batch_size)
    total = config.total_steps or steps_per_epoch * config.num_epochs
    return Schedule(
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        log_every=config.log_every_steps or steps_per_epoch,
        eval_every=config.eval_every_steps or steps_per_epoch,
        checkpoint_every=config.checkpoint_every_steps or steps_per_epoch,
    )


class _Stop:
    """Remembers a SIGTERM so the loop can save and exit cleanly between steps."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


class _Throughput:
    """images/s, ETA and the share of wall time spent fetching host batches, between log lines.

    Steps are dispatched asynchronously, so the devices only idle while the host is late with
    a batch: the input share is an upper bound of the time the devices waited for input.
    """

    def __init__(self, step: int, batch: int, total: int):
        self.batch, self.total = batch, total
        self.step, self.time, self.input_seconds = step, time.perf_counter(), 0.0

    def tick(self, step: int) -> tuple[dict[str, float], float]:
        """The scalars since the last tick, and the ETA in seconds."""
        now = time.perf_counter()
        elapsed = max(now - self.time, 1e-9)
        rate = (step - self.step) * self.batch / elapsed
        scalars = {"train/images_per_second": rate, "train/input_wait_fraction": self.input_seconds / elapsed}
        eta = (self.total - step) * self.batch / max(rate, 1e-9)
        self.step, self.time, self.input_seconds = step, now, 0.0
        return scalars, eta


def _flush(pending: list[tuple[int, dict]], checkpoints: ckpt_lib.Checkpoints) -> dict[str, float]:
    """Fetches the step metrics since the last log (the only host sync) and stops on NaN/Inf."""
    values = jax.device_get([m for _, m in pending])
    for (step, _), metrics in zip(pending, values):
        if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
            kept = checkpoints.latest_step()
            bad = "loss" if not np.isfinite(metrics["loss"]) else "gradient norm"
            raise TrainingError(
                f"The training {bad} became {float(metrics['loss' if bad == 'loss' else 'grad_norm'])} "
                f"at step {step}; training stopped. "
                + (f"The last good checkpoint (step {kept}) is kept. " if kept is not None else "")
                + "Lower --config.optimizer.learning_rate or set --config.optimizer.grad_clip_norm."
            )
    return {f"train/{k}": float(np.mean([v[k] for v in values])) for k in values[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates one run, or every fold when `config.data.all_folds`; returns the test report(s)."""
    if config.data.all_folds:
        return _all_folds(config, epath.Path(workdir))
    return _run(config, epath.Path(workdir))


def _all_folds(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
    """Spanhol's protocol: every fold of `patient_kfold` in `fold_<i>/`, then mean +- std."""
    if config.data.split != "patient_kfold":
        raise ValueError("config.data.all_folds needs config.data.split='patient_kfold'")
    reports_by_fold = []
    for fold in range(config.data.split_kwargs.k):
        fold_config = config.copy_and_resolve_references()
        with fold_config.unlocked():
            fold_config.data.all_folds = False
            fold_config.data.split_kwargs.fold = fold
        reports_by_fold.append(_run(fold_config, workdir / f"fold_{fold}")["test"])
    summary = metrics_lib.summarize_folds(reports_by_fold)
    reports.write_json(workdir / "folds_summary.json", summary)
    if reports.is_lead():
        print(reports.format_folds(summary))
    return {"folds": reports_by_fold, "summary": summary}


def _run(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
    resuming = reports.check_workdir(workdir, config)
    mesh = parallel.make_mesh()
    model, pretrained = build_model(config)
    if pretrained is None:
        _print(
            "Note: model.init_from is not set, so the backbone starts from random weights; the published "
            "recipes fine-tune ImageNet weights (README: 'Models and pretrained ImageNet weights')."
        )
    data = load_data(input_config(config, workdir, pretrained))
    reports.write_json(workdir / "split.json", data.split.to_json_dict())
    schedule = make_schedule(config, len(data.split.train))
    tx = optimizers.make_optimizer(config.optimizer, schedule.total_steps)
    graphdef, state = initial_state(model, tx)
    del model
    loss_fn = losses_lib.make_loss(
        config.loss.name,
        num_classes=num_outputs(config),
        label_smoothing=config.loss.label_smoothing,
        class_weights=config.loss.class_weights,
    )
    resident = device_data(config, data, mesh, workdir)
    steps = make_steps(
        graphdef,
        state,
        tx=tx,
        mesh=mesh,
        loss_fn=loss_fn,
        normalizer=data.normalizer,
        target=config.data.target,
        shard_params=config.shard_params,
        device_data=resident,
    )
    state = jax.device_put(state, steps.state_sharding)
    checkpoints = ckpt_lib.Checkpoints(
        workdir / "checkpoints",
        keep=config.keep_checkpoints,
        best_metric=config.best_metric if len(data.split.validation) else None,
    )
    train_iter = None if resident is not None else iter(data.train(config.batch_size))
    writer = reports.MetricWriter(workdir)
    latest = checkpoints.latest_step()
    if latest is not None:
        state = checkpoints.restore(latest, ckpt_lib.abstract(state), train_iter)
        writer.truncate_after(latest)
        _print(f"Resumed from step {latest} in {workdir}")
    elif resuming:
        writer.truncate_after(0)
    try:
        finished = _loop(config, schedule, steps, state, data, train_iter, resident, checkpoints, writer, mesh)
    finally:
        writer.close()
    if not finished:
        checkpoints.close()
        return {}
    state = finished
    best = checkpoints.best_step()
    if config.evaluation.use_best and best is not None and best != schedule.total_steps:
        state = checkpoints.restore(best, ckpt_lib.abstract(state))
        _print(f"Evaluating the best checkpoint (step {best}, {config.best_metric})")
    checkpoints.close()
    return _final_evaluation(config, workdir, steps, state, data, mesh, writer)


def _loop(
    config,
    schedule: Schedule,
    steps: Steps,
    state,
    data: ip.InputData,
    train_iter: Iterator | None,
    resident: ip.DeviceData | None,
    checkpoints: ckpt_lib.Checkpoints,
    writer: reports.MetricWriter,
    mesh,
):
    """Runs the steps; returns the final state, or None when stopped by SIGTERM (after saving).

    The host path feeds batches from `train_iter`; the device path passes `resident`
    to every step, and its data position is the state's step (no iterator to save).
    """
    step = int(jax.device_get(state["step"]))
    freeze = config.optimizer.freeze_backbone_steps
    pending: list[tuple[int, dict]] = []
    throughput = _Throughput(step, config.batch_size, schedule.total_steps)
    stop = _Stop()
    try:
        while step < schedule.total_steps:
            fetch_start = time.perf_counter()
            inputs = resident if resident is not None else parallel.to_global(next(train_iter), mesh)
            throughput.input_seconds += time.perf_counter() - fetch_start
            state, metrics = (steps.train_frozen if step < freeze else steps.train)(state, inputs)
            step += 1
            pending.append((step, metrics))
            evaluate = schedule.due(step, schedule.eval_every) and len(data.split.validation) > 0
            save = schedule.due(step, schedule.checkpoint_every) or evaluate
            log = schedule.due(step, schedule.log_every)
            stopping = _stop_requested(stop, log or save)
            if not (log or save or stopping):
                continue
            scalars = _flush(pending, checkpoints)
            pending = []
            timing, eta = throughput.tick(step)
            scalars.update(
                {
                    "train/learning_rate": optimizers.learning_rate_at(config.optimizer, schedule.total_steps, step),
                    **timing,
                    "epoch": step / schedule.steps_per_epoch,
                }
            )
            if evaluate:
                scalars.update(
                    quick_metrics(
                        predict(steps, state, data, "validation", mesh=mesh, global_batch=config.eval_batch_size),
                        data,
                        "validation",
                    )
                )
            writer.write(step, scalars)
            _print(_progress_line(step, schedule, scalars, eta))
            if save or stopping:
                checkpoints.save(step, state, train_iter, scalars if evaluate else None)
            if stopping:
                _print(f"SIGTERM: saved step {step}; the same command resumes.")
                return None
    finally:
        stop.restore()
    return state


def _stop_requested(stop: _Stop, syncing: bool) -> bool:
    """A SIGTERM seen by any process; across hosts only agreed at steps that sync anyway."""
    if jax.process_count() == 1:
        return stop.requested
    return syncing and bool(multihost_utils.process_allgather(np.asarray(stop.requested)).any())


def _progress_line(step: int, schedule: Schedule, scalars: dict, eta: float) -> str:
    line = (
        f"step {step}/{schedule.total_steps} (epoch {scalars['epoch']:.2f}) "
        f"loss {scalars['train/loss']:.4f} acc {scalars['train/accuracy']:.3f} "
        f"{scalars['train/images_per_second']:.1f} img/s (input {scalars['train/input_wait_fraction']:.0%}) "
        f"ETA {_duration(eta)}"
    )
    if "validation/accuracy" in scalars:
        line += (
            f" | val loss {scalars['validation/loss']:.4f} acc {scalars['validation/accuracy']:.3f} "
            f"bal.acc {scalars['validation/balanced_accuracy']:.3f}"
        )
    return line


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _final_evaluation(
    config, workdir: epath.Path, steps: Steps, state, data: ip.InputData, mesh, writer: reports.MetricWriter
) -> dict:
    """report.json, predictions.csv and plots for every evaluated split, then the human summary."""
    names = reports.class_names(config.data.target)
    results = {}
    for side in config.evaluation.splits:
        if not len(getattr(data.split, side)):
            continue
        predictions = predict(steps, state, data, side, mesh=mesh, global_batch=config.eval_batch_size)
        labels = getattr(data.table, config.data.target)[predictions.rows]
        results[side] = reports.write_evaluation(
            workdir / "eval" / side,
            table=data.table,
            rows=predictions.rows,
            probabilities=predictions.probabilities,
            labels=labels,
            class_names=names,
            split=data.split,
            side=side,
            bootstrap_samples=config.evaluation.bootstrap_samples,
            seed=config.seed,
        )
    if reports.is_lead():
        metrics_lib.plot_learning_curves(writer.records(), workdir / "learning_curves.png")
        for side, report in results.items():
            print(f"\n{side} ({data.split.name}):\n" + metrics_lib.format_summary(report, report["leakage_summary"]))
    return results


def _print(message: str) -> None:
    if reports.is_lead():
        print(message, flush=True)
