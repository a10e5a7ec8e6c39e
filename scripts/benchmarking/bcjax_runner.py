"""The bcjax worker: the trainer's own compiled step, built by `bcjax.components.build_steps` from a config.

The config is configs/default.py with the benchmark's model (protocol.py) set field by field, so the
row times the very program the trainer runs for that config. Nothing here reads a dataset: the
steps need neither TFDS nor grain.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from bcjax import components, parallel, runtime
from bcjax.augment import AugmentConfig
from bcjax.datasets.breakhis_vocabulary import TARGET_CLASSES
from bcjax.device_data import DeviceData
from bcjax.normalization import make_normalizer
from bcjax.steps import State, Steps, Task, forward
from benchmarking import timing
from benchmarking.models import MODELS
from benchmarking.protocol import LEARNING_RATE, RunSpec, host_batch, mb, time_steps
from configs import default


class CompileEvents:
    """Sums JAX's compile-event durations (trace, lowering, XLA compile or cache load) and counts
    the persistent-cache hits since the last `reset` (from the trainer's own `runtime.CacheStats`)."""

    KEYS = {
        "/jax/core/compile/jaxpr_trace_duration": "trace_s",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
        "/jax/core/compile/backend_compile_duration": "xla_compile_s",
    }

    def __init__(self, cache: runtime.CacheStats | None):
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


def bcjax_config(spec: RunSpec) -> ml_collections.ConfigDict:
    """configs/default.py with the benchmark's model (`benchmarking.models`: the torchvision layout) and
    compute dtype, a linear head over the two labels, softmax cross-entropy, Adam at `LEARNING_RATE`.

    Set even where default.py agrees today, so the comparison with Keras and torch holds if it changes.
    """
    config = default.get_config()
    model = MODELS[spec.model]
    config.model.arch, config.model.layout, config.model.head = spec.model, model.layout, "linear"
    config.model.backbone_kwargs = ml_collections.ConfigDict(dict(model.backbone_kwargs))
    config.model.dtype = spec.dtype
    config.data.target = "label"
    config.loss.name = "softmax_ce"
    config.optimizer.name, config.optimizer.learning_rate = "adam", LEARNING_RATE
    config.batch_size, config.data.height, config.data.width = spec.batch, spec.height, spec.width
    return config


def run(spec: RunSpec) -> dict:
    """The trainer's jitted step on uint8 batches sent with `parallel.to_global` every step, or with
    `spec.device_resident` drawn inside the step from images kept on the devices (`synthetic_device_data`)."""
    cache = runtime.enable_compilation_cache(spec.cache_dir, min_compile_time_secs=0) if spec.cache_dir else None
    events = CompileEvents(cache)
    config = bcjax_config(spec)
    (mesh, compiled, state, on_devices), init_s = timing.timed(lambda: _build(config, spec))
    images, labels = host_batch(spec)
    local = parallel.local_batch_size(spec.batch, mesh)
    batch = {"image": images[:local], "label": labels[:local]}
    events.reset()
    compile_events: dict = {}

    def step(state: State) -> State:
        inputs = on_devices if on_devices is not None else parallel.to_global(batch, mesh)
        return compiled.train(state, inputs)[0]

    state, figures = time_steps(
        step, state, jax.block_until_ready, spec, on_first=lambda: compile_events.update(events.summary())
    )
    result = {
        **figures,
        **compile_events,
        "init_s": init_s,
        "peak_device_mb": _jax_peak_mb(),
        "device": jax.default_backend(),
        "note": f"{len(jax.devices())} device(s), {'device-resident data' if on_devices else 'batch sent every step'}",
    }
    if spec.breakdown:
        loss = _forward_loss(compiled.task)
        result["breakdown_s"] = breakdown(compiled, state, loss, batch, mesh, reps=max(spec.steps, 1))
    return result


def _total_steps(spec: RunSpec) -> int:
    """The run length the learning-rate schedule spans (constant for Adam here, but never 0)."""
    return max(spec.warmup + spec.steps, 1)


def _build(
    config: ml_collections.ConfigDict, spec: RunSpec
) -> tuple[jax.sharding.Mesh, Steps, State, DeviceData | None]:
    """Model init, the compiled steps, the optimizer state and (device-resident) the images on the devices:
    the row's "init"."""
    mesh = parallel.make_mesh()
    normalizer = make_normalizer("imagenet")
    on_devices = synthetic_device_data(config, mesh, images=4 * spec.batch) if spec.device_resident else None
    compiled, state = components.build_steps(
        config, mesh, normalizer=normalizer, total_steps=_total_steps(spec), device_data=on_devices
    )
    return mesh, compiled, jax.block_until_ready(state), on_devices


def synthetic_device_data(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, images: int) -> DeviceData:
    """`images` random uint8 images at the config's size with random labels of its target, on `mesh`,
    drawn in batches of `config.batch_size` and augmented as `config.data.augment` says."""
    rng = np.random.default_rng(config.seed)
    count = images + -images % mesh.devices.size
    pixels = rng.integers(0, 256, (count, config.data.height, config.data.width, 3), dtype=np.uint8)
    labels = rng.integers(0, len(TARGET_CLASSES[config.data.target]), count)
    examples = {k: labels.astype(np.int32) for k in ("label", "tumor_type", "magnification")}
    examples["index"] = np.arange(count, dtype=np.int32)
    return DeviceData.put(
        pixels,
        examples,
        np.arange(images, dtype=np.int32),
        mesh=mesh,
        global_batch=config.batch_size,
        seed=config.seed,
        augment=AugmentConfig.from_fields(config.data.augment),
    )


def _jax_peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats()
    return mb(stats.get("peak_bytes_in_use")) if stats else None


def _forward_loss(task: Task) -> Callable:
    """The jitted training-mode loss alone: `bcjax.steps.forward`, the step's own forward pass."""

    def loss_of(state: State, images: jax.Array, labels: jax.Array) -> jax.Array:
        logits, _ = forward(task, state, state["params"], images, train=True)
        return task.loss_fn(logits, labels).mean()

    return jax.jit(loss_of)


def breakdown(
    compiled: Steps, state: State, loss: Callable, batch: dict, mesh: jax.sharding.Mesh, *, reps: int
) -> dict:
    """Mean seconds of the transfer, the forward pass (the loss alone) and the whole step, each jitted apart."""
    on_devices = parallel.to_global(batch, mesh)
    sync = jax.block_until_ready
    times = {
        "transfer_s": timing.mean_seconds(lambda: parallel.to_global(batch, mesh), reps, sync),
        "forward_s": timing.mean_seconds(lambda: loss(state, on_devices["image"], on_devices["label"]), reps, sync),
    }
    holder = [state]  # the step donates its state: each call takes the last one's

    def full_step() -> State:
        holder[0] = compiled.train(holder[0], on_devices)[0]
        return holder[0]

    times["step_s"] = timing.mean_seconds(full_step, reps, sync)
    times["backward_update_s"] = times["step_s"] - times["forward_s"]
    return times
