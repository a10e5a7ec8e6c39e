"""`train_and_evaluate(config, workdir)`: the data, the loop, checkpoints and the final evaluation of a run.

The steps themselves are in bcjax.steps, built from the config by bcjax.components; the
evaluators (bcjax.evaluation) decide what an evaluation logs or writes. This module drives
them: it resumes from the latest checkpoint, logs and saves on the schedule, stops cleanly on
SIGTERM or a NaN, and evaluates every configured split at the end.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from bcjax import checkpoint, evaluation, input_pipeline, metrics, optimizers, parallel, plots, report_text
from bcjax.components import build_model, build_steps
from bcjax.config_checks import check_config
from bcjax.datasets import synthetic
from bcjax.device_data import DeviceData, fits_on_device
from bcjax.lead_process import is_lead, run_on_lead, write_json
from bcjax.metric_writer import MetricWriter
from bcjax.normalization import channel_sums, normalization_for_preprocessing, statistics_of_sums
from bcjax.phases import TIMINGS_FILE, PhaseClock, format_timings
from bcjax.preprocessing import Preprocessing
from bcjax.progress import Throughput, progress_line
from bcjax.schedule import Schedule, make_schedule
from bcjax.steps import State, Steps, all_finite
from bcjax.workdir_guard import CHECKPOINTS_DIR, DATA_PATH_CHOICE_FILE, PREPROCESSING_FILE, SPLIT_FILE, check_workdir


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says why and what is kept."""


# ----------------------------------------------------------------------------- data


def input_config(
    config: ml_collections.ConfigDict, workdir: epath.Path | None, pretrained: dict | None
) -> input_pipeline.InputConfig:
    """`config.data` as the input pipeline's config, with the run's choices resolved.

    The 'auto' normaliser becomes the pretrained weights' own; the synthetic demo's tree is
    written into the workdir (once) and read from there.
    """
    normalization = config.data.normalization
    if normalization == "auto":
        normalization = normalization_for_preprocessing(pretrained["preprocessing"]["mode"] if pretrained else None)
    source = _synthetic_source(config.data.synthetic, workdir) if config.data.synthetic.enabled else {}
    return input_pipeline.InputConfig.from_config(config, normalization=normalization, **source)


def _synthetic_source(spec: ml_collections.ConfigDict, workdir: epath.Path) -> dict[str, str]:
    """Writes (once) the demo's synthetic BreakHis tree into the workdir; explicit, never a fallback.

    The lead process writes it while the others wait (`run_on_lead`); the dataset is then built
    from it the same way (`input_pipeline.open_source`).
    """
    root = workdir / "synthetic"
    manual = root / "manual"

    def write_if_missing() -> None:
        if not (manual / synthetic.TOP_DIR).exists():
            synthetic.write_breakhis_tree(
                manual,
                patients=spec.patients,
                images_per_magnification=spec.images_per_magnification,
                image_size=(spec.image_width, spec.image_height),
                seed=spec.seed,
                progress=True,
            )

    run_on_lead(f"writing the synthetic BreakHis tree in {manual}", write_if_missing)
    return {"manual_dir": str(manual), "data_dir": str(root / "tfds"), "dataset": "breakhis/custom"}


def load_data(
    config: ml_collections.ConfigDict,
    data_config: input_pipeline.InputConfig,
    mesh: jax.sharding.Mesh,
    workdir: epath.Path,
    clock: PhaseClock | None = None,
) -> tuple[input_pipeline.InputData, bool]:
    """This process's share of the data, and whether the training images go on the devices.

    The choice is made before any image is decoded (`choose_device_path`), so that on the device
    path each process decodes only its own devices' shard of the training images. z-score
    statistics are pooled over the processes.
    """
    resident = []

    def training_share(rows: np.ndarray, capacity: input_pipeline.TrainCapacity) -> np.ndarray | None:
        resident.append(choose_device_path(config, capacity, data_config, mesh, workdir))
        return _on_local_devices(rows, capacity, mesh) if resident[0] and jax.process_count() > 1 else None

    data = input_pipeline.load(
        data_config,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        progress=is_lead(),
        clock=clock,
        training_share=training_share,
    )
    if data_config.normalization == "zscore" and jax.process_count() > 1:
        held = data.cache.images[np.searchsorted(data.cache.rows, data.held_train)]
        mean, std = statistics_of_sums(_gathered_float64(channel_sums(held)).sum(0))
        data.normalizer = dataclasses.replace(data.normalizer, mean=mean, std=std)
    return data, resident[0]


def choose_device_path(
    config: ml_collections.ConfigDict,
    capacity: input_pipeline.TrainCapacity,
    data_config: input_pipeline.InputConfig,
    mesh: jax.sharding.Mesh,
    workdir: epath.Path,
) -> bool:
    """Whether the training images go on the devices, as `config.data.device_resident` says.

    'auto' puts them there when every process's devices have room (`fits_on_device`). The
    choice is kept in the workdir (DATA_PATH_CHOICE_FILE), so that a resume (even on another
    machine) keeps the same path: the two paths draw different batches, and only the host path's
    iterator is saved.
    """
    setting = config.data.device_resident
    per_device = -(-capacity.images // mesh.devices.size) * data_config.height * data_config.width * 3
    record = workdir / DATA_PATH_CHOICE_FILE
    if setting == "auto" and record.exists():
        setting = json.loads(record.read_text())["device_resident"]
    elif setting == "auto":
        setting = _on_every_process(fits_on_device(per_device, mesh.local_devices))
    write_json(
        record,
        {"device_resident": bool(setting), "setting": config.data.device_resident, "bytes_per_device": per_device},
    )
    if setting:
        _print(f"Training images on the devices: {capacity.images} images, {per_device / 2**20:.1f} MiB per device")
    return bool(setting)


def _on_local_devices(rows: np.ndarray, capacity: input_pipeline.TrainCapacity, mesh: jax.sharding.Mesh) -> np.ndarray:
    """The distinct training `rows` whose images this process's devices hold on the device path."""
    padded = input_pipeline.resident_rows(rows, capacity, mesh.devices.size)
    shards = parallel.batch_sharding(mesh).addressable_devices_indices_map(padded.shape).values()
    positions = np.unique(np.concatenate([np.arange(len(padded))[index[0]] for index in shards]))
    return padded[positions[positions < len(rows)]]


def _gathered_float64(values: np.ndarray) -> np.ndarray:
    """Every process's float64 `values`, stacked; sent as two float32 parts (JAX without x64 has no
    float64), so that sums of a dataset's pixels keep ~14 digits instead of float32's 7."""
    high = values.astype(np.float32)
    low = (values - high).astype(np.float32)
    parts = multihost_utils.process_allgather(np.stack([high, low]))
    return parts[:, 0].astype(np.float64) + parts[:, 1]


def _on_every_process(flag: bool) -> bool:
    """`flag` if every process says so: they must all choose the same path."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.asarray(flag)).all())


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class Built:
    """What the folds of one command build once: the model (its initial weights) and the compiled steps."""

    model: nnx.Module
    pretrained: dict | None  # the metadata of the backbone's pretrained weights
    steps: Steps


@dataclasses.dataclass
class Run:
    """The parts of one run that the loop drives; built once by `prepare_run`."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    mesh: jax.sharding.Mesh
    data: input_pipeline.InputData
    schedule: Schedule
    device_data: DeviceData | None  # the training images on the devices, or None for the host path
    train_iter: Iterator | None  # the host path's checkpointable iterator
    checkpoints: checkpoint.Checkpoints
    writer: MetricWriter
    validators: list  # evaluators run at every evaluation interval
    clock: PhaseClock  # seconds per phase, written to timings.json
    built: Built  # the model and the compiled steps, which a next fold reuses

    @property
    def steps(self) -> Steps:
        return self.built.steps

    def next_inputs(self) -> Any:
        """The next training batch as global arrays, or the device-resident data the step draws from."""
        if self.device_data is not None:
            return self.device_data
        return parallel.to_global(next(self.train_iter), self.mesh)


def prepare_run(
    config: ml_collections.ConfigDict, workdir: epath.Path, built: Built | None = None
) -> tuple[Run, State]:
    """Builds the model, data, steps, checkpoints and writer of a run; the state is not restored yet.

    `built`: another fold's model and steps (same config but the fold), which this run reuses:
    its fresh state starts from the same weights and runs the same compiled programs.
    """
    clock = PhaseClock()
    mesh = parallel.make_mesh()
    with clock.phase("model"):
        model, pretrained = build_model(config) if built is None else (built.model, built.pretrained)
    if pretrained is None and built is None:
        _print(
            "Note: model.init_from is not set, so the backbone starts from random weights; the published "
            "recipes fine-tune ImageNet weights (README: 'Models and pretrained ImageNet weights')."
        )
    with clock.phase("dataset"):  # the demo writes its synthetic tree here
        data_config = input_config(config, workdir, pretrained)
    data, resident = load_data(config, data_config, mesh, workdir, clock)
    setup = time.perf_counter()
    write_json(workdir / SPLIT_FILE, data.split.to_json_dict())
    write_json(workdir / PREPROCESSING_FILE, Preprocessing.of_input(data.config, data.normalizer).to_json())
    schedule = make_schedule(config, len(data.split.train))
    on_devices = data.on_devices(config.batch_size, mesh) if resident else None
    steps, state = build_steps(
        config,
        mesh,
        normalizer=data.normalizer,
        total_steps=schedule.total_steps,
        model=model,
        device_data=on_devices,
        reuse=built.steps if built else None,
    )
    checkpoints = checkpoint.Checkpoints(
        workdir / CHECKPOINTS_DIR,
        keep=config.keep_checkpoints,
        best_metric=config.best_metric if len(data.split.validation) else None,
    )
    run = Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        data=data,
        schedule=schedule,
        device_data=on_devices,
        train_iter=None if on_devices is not None else iter(data.train(config.batch_size)),
        checkpoints=checkpoints,
        writer=MetricWriter(workdir),
        validators=evaluation.validation_evaluators(config, data, steps, mesh),
        clock=clock,
        built=Built(model, pretrained, steps),
    )
    clock.add("setup", time.perf_counter() - setup)
    return run, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates one run, or every fold when `config.data.all_folds`; returns the test report(s)."""
    check_config(config, jax.device_count())  # every bad field in one error, before any work
    workdir = epath.Path(workdir).absolute()  # orbax saves only under absolute paths; `--workdir=runs/x` is relative
    if config.data.all_folds:
        return _all_folds(config, workdir)
    return _train_and_evaluate_one(config, workdir)[0]


def _all_folds(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
    """Spanhol's protocol: every fold of `patient_kfold` (or `image_kfold`) in `fold_<i>/`, then mean +- std.

    The folds share the decoded images (the image cache), the model and the compiled steps.
    """
    start = time.perf_counter()
    reports_by_fold, timings_by_fold, built = [], [], None
    for fold in range(config.data.split_kwargs.k):
        fold_config = config.copy_and_resolve_references()
        with fold_config.unlocked():
            fold_config.data.all_folds = False
            fold_config.data.split_kwargs.fold = fold
        results, timings, built = _train_and_evaluate_one(fold_config, workdir / f"fold_{fold}", built)
        if not results:  # stopped by SIGTERM: the same command resumes this fold
            return {}
        reports_by_fold.append(results["test"])
        timings_by_fold.append(timings)
    summary = metrics.summarize_folds(reports_by_fold)
    write_json(workdir / "folds_summary.json", summary)
    _print(report_text.format_folds(summary))
    timings = {name: sum(t.get(name, 0.0) for t in timings_by_fold) for name in timings_by_fold[0]}
    timings["total"] = time.perf_counter() - start
    write_json(workdir / TIMINGS_FILE, {**timings, "folds": timings_by_fold})
    _print(f"All folds: {format_timings(timings)} ({TIMINGS_FILE})")
    return {"folds": reports_by_fold, "summary": summary}


def _train_and_evaluate_one(
    config: ml_collections.ConfigDict, workdir: epath.Path, built: Built | None = None
) -> tuple[dict, dict, Built]:
    """The test report(s) of one run (empty when stopped by SIGTERM), its seconds per phase and
    what the next fold can reuse (`prepare_run`)."""
    resuming = check_workdir(workdir, config)
    run, state = prepare_run(config, workdir, built)
    with run.clock.phase("checkpoints"):
        state = _resume(run, state, resuming)
    try:
        final = _loop(run, state)
    finally:
        run.writer.close()
    if final is None:  # stopped by SIGTERM, after saving
        run.checkpoints.close()
        return {}, run.clock.to_json(), run.built
    with run.clock.phase("checkpoints"):
        state = _state_to_evaluate(run, final)
    results = _final_evaluation(run, state)
    timings = run.clock.to_json()
    write_json(workdir / TIMINGS_FILE, timings)
    _print(format_timings(timings) + f" ({TIMINGS_FILE})")
    return results, timings, run.built


def _resume(run: Run, state: State, resuming: bool) -> State:
    """The latest checkpoint's state (and host iterator), with the metrics past it dropped."""
    latest = run.checkpoints.latest_step()
    if latest is not None:
        state = run.checkpoints.restore(latest, state, run.train_iter)
        run.writer.truncate_after(latest)
        _print(f"Resumed from step {latest} in {run.workdir}")
    elif resuming:
        run.writer.truncate_after(0)
    return state


def _state_to_evaluate(run: Run, state: State) -> State:
    """The best checkpoint's state when `evaluation.use_best` and it is not the last; closes the checkpoints."""
    best = run.checkpoints.best_step()
    if run.config.evaluation.use_best and best is not None and best != run.schedule.total_steps:
        state = run.checkpoints.restore(best, state)
        _print(f"Evaluating the best checkpoint (step {best}, {run.config.best_metric})")
    run.checkpoints.close()
    return state


# ----------------------------------------------------------------------------- the loop


class _StopSignal:
    """Remembers a SIGTERM so the loop can save and exit cleanly between steps."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, syncing: bool) -> bool:
        """A SIGTERM seen by any process; across hosts only agreed at steps that sync anyway."""
        if jax.process_count() == 1:
            return self.requested
        return syncing and bool(multihost_utils.process_allgather(np.asarray(self.requested)).any())


def _loop(run: Run, state: State) -> State | None:
    """Runs the steps; returns the final state, or None when stopped by SIGTERM (after saving).

    The host path feeds batches from the run's iterator; the device path passes the
    device-resident data to every step, and its data position is the state's step.
    """
    schedule = run.schedule
    step = int(jax.device_get(state["step"]))
    pending: list[tuple[int, dict]] = []
    throughput = Throughput(step, run.config.batch_size, schedule.total_steps)
    stop = _StopSignal()
    clock, loop_start, before = run.clock, time.perf_counter(), dict(run.clock.seconds)
    first = step
    try:
        while step < schedule.total_steps:
            fetch_start = time.perf_counter()
            inputs = run.next_inputs()
            throughput.input_seconds += time.perf_counter() - fetch_start
            frozen = optimizers.frozen_at(run.config.optimizer, step)
            state, step_metrics = (run.steps.train_frozen if frozen else run.steps.train)(state, inputs)
            if step == first:
                jax.block_until_ready(step_metrics)  # its compilation, timed apart from the steps
                clock.add("first_step", time.perf_counter() - loop_start)
            step += 1
            pending.append((step, step_metrics))
            evaluate = bool(run.validators) and schedule.due(step, schedule.eval_every)
            save = schedule.due(step, schedule.checkpoint_every) or evaluate
            log = schedule.due(step, schedule.log_every)
            stopping = stop.agreed(syncing=log or save)
            if not (log or save or stopping):
                continue
            scalars = _log(run, state, step, pending, throughput, evaluate, saving=save or stopping)
            pending = []
            if save or stopping:
                with clock.phase("checkpoints"):
                    run.checkpoints.save(step, state, run.train_iter, scalars if evaluate else None)
            if stopping:
                run.checkpoints.wait()
                _print(f"SIGTERM: saved step {step}; the same command resumes.")
                return None
    finally:
        stop.restore()
        elsewhere = sum(clock.seconds[k] - before[k] for k in clock.seconds)
        clock.add("training_steps", time.perf_counter() - loop_start - elsewhere)
    return state


def _log(
    run: Run,
    state: State,
    step: int,
    pending: list[tuple[int, dict]],
    throughput: Throughput,
    evaluate: bool,
    saving: bool,
) -> dict[str, float]:
    """Fetches the pending step metrics (the loop's only host sync), evaluates if due, writes and prints.

    Before a checkpoint, the state itself must be finite too: an update can overflow while its
    step's loss and gradient were finite, and no checkpoint may keep such a state.
    """
    scalars = _mean_step_metrics(pending, run.checkpoints)
    if saving and not all_finite((state["params"], state["rest"])):
        raise _not_finite(
            f"The parameters or batch-norm statistics became NaN or Inf by step {step} (with finite losses "
            "and gradient norms)",
            run.checkpoints.latest_step(),
        )
    timing, eta = throughput.tick(step)
    learning_rate = optimizers.learning_rate_at(run.config.optimizer, run.schedule.total_steps, step)
    scalars.update({"train/learning_rate": learning_rate, **timing, "epoch": step / run.schedule.steps_per_epoch})
    if evaluate:
        with run.clock.phase("validation"):
            for evaluator in run.validators:
                scalars.update(evaluator.run(state))
    run.writer.write(step, scalars)
    _print(progress_line(step, run.schedule, scalars, eta))
    return scalars


def _mean_step_metrics(pending: list[tuple[int, dict]], checkpoints: checkpoint.Checkpoints) -> dict[str, float]:
    """The mean of the pending steps' metrics; a non-finite loss or gradient norm stops training."""
    values = jax.device_get([step_metrics for _, step_metrics in pending])
    for (step, _), step_values in zip(pending, values):
        for key, name in (("loss", "loss"), ("grad_norm", "gradient norm")):
            if not np.isfinite(step_values[key]):
                problem = f"The training {name} became {float(step_values[key])} at step {step}"
                raise _not_finite(problem, checkpoints.latest_step())
    return {f"train/{k}": float(np.mean([v[k] for v in values])) for k in values[0]}


def _not_finite(problem: str, kept: int | None) -> TrainingError:
    return TrainingError(
        f"{problem}; training stopped. "
        + (f"The last good checkpoint (step {kept}) is kept. " if kept is not None else "")
        + "Lower --config.optimizer.learning_rate or set --config.optimizer.grad_clip_norm."
    )


# ----------------------------------------------------------------------------- the end


def _final_evaluation(run: Run, state: State) -> dict:
    """Every configured split's report files, the learning curves, then the human summary."""
    results = {}
    with run.clock.phase("final_evaluation"):
        for evaluator in evaluation.final_evaluators(run.config, run.data, run.steps, run.mesh, run.workdir):
            results[evaluator.side] = evaluator.run(state)
    with run.clock.phase("reports"):
        if is_lead():
            plots.plot_learning_curves(run.writer.records(), run.workdir / "learning_curves.png")
        for side, report in results.items():
            summary = report_text.format_summary(report, report["leakage_summary"])
            _print(f"\n{side} ({run.data.split.name}):\n" + summary)
    return results


def _print(message: str) -> None:
    if is_lead():
        print(message, flush=True)
