"""The training and evaluation steps: module-level functions, bound and compiled by `make_steps`.

`train_step` and `eval_step` are plain functions of (task, state, inputs), so tests and benchmarks
call the very functions the trainer runs. The state is a plain pytree (`params`, the model's
other variables, optimizer state, step, and the run's `constants`), so one `jax.jit` with
explicit shardings and donation compiles the whole step; the host only syncs at log, evaluation
and checkpoint intervals.

The numbers that differ between runs of one config (the normaliser's statistics, the schedule's
length) are `constants` in the state, not in the program: recipe B's five folds, whose z-score
statistics and lengths differ, run the same compiled steps (`build_steps(..., reuse=steps)`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bcjax import losses, parallel
from bcjax.device_data import DeviceData, device_batch
from bcjax.normalization import Normalizer

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
    """What a step computes besides the state and the batch: the model's graph, optimizer, loss, inputs."""

    graphdef: nnx.GraphDef
    optimizer: Callable[[Any], optax.GradientTransformation]  # the run's length (maybe traced) -> its optimizer
    loss_fn: losses.LossFn
    normalizer: Normalizer  # uint8 pixels -> model inputs, on the device; its statistics are the state's constants
    target: str  # the batch key of the labels: 'label' or 'tumor_type'


def run_constants(normalizer: Normalizer, total_steps: int) -> dict[str, Any]:
    """What a step reads of one run besides its config: the state's `constants`."""
    return {"normalizer": normalizer.statistics(), "total_steps": np.int32(total_steps)}


def initial_state(model: nnx.Module, task: Task, constants: dict[str, Any]) -> State:
    """The pytree state the steps carry, from the model's variables (its graph is `task.graphdef`)."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = task.optimizer(constants["total_steps"]).init(params)
    return {
        "params": params,
        "rest": rest,
        "opt_state": opt_state,
        "step": jnp.zeros((), jnp.int32),
        "constants": constants,
    }


def forward(task: Task, state: State, params, images: jax.Array, *, train: bool, frozen: bool = False):
    """Logits of `images` and the model's updated non-parameter state (batch-norm statistics).

    `params` are the state's (or what a gradient is taken of). `frozen` keeps the backbone in
    evaluation mode: its batch-norm statistics neither update nor normalise with the batch's
    own, as while the backbone is frozen.
    """
    model = nnx.merge(task.graphdef, params, state["rest"], copy=True)
    model.train() if train else model.eval()
    if frozen:
        model.backbone.eval()
    logits = model(task.normalizer.apply(images, state["constants"]["normalizer"]))
    return logits, nnx.state(model, nnx.Not(nnx.Param))


def train_step(task: Task, state: State, inputs, *, frozen: bool = False) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer step on a batch, or on batch number `state["step"]` drawn from `DeviceData`."""
    batch = device_batch(inputs, state["step"]) if isinstance(inputs, DeviceData) else inputs
    labels = batch[task.target]

    def loss_of(params):
        logits, rest = forward(task, state, params, batch["image"], train=True, frozen=frozen)
        return task.loss_fn(logits, labels).mean(), (logits, rest)

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
    tx = task.optimizer(state["constants"]["total_steps"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
        "params": optax.apply_updates(state["params"], updates),
        "rest": rest,
        "opt_state": opt_state,
        "step": state["step"] + 1,
        "constants": state["constants"],
    }
    correct = losses.predictions(logits) == labels
    return new_state, {"loss": loss, "accuracy": correct.mean(), "grad_norm": optax.tree.norm(grads)}


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every float in `tree` (a state's parameters, its statistics) is finite: one reduction on the devices."""
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in floats])) if floats else jnp.bool_(True)


def eval_step(task: Task, state: State, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-image probabilities and losses of a (padded, masked) evaluation batch."""
    logits, _ = forward(task, state, state["params"], batch["image"], train=False)
    return {
        "probabilities": losses.probabilities(logits),
        "loss": task.loss_fn(logits, batch[task.target]),
        "index": batch["index"],
        "mask": batch["mask"],
    }


@dataclasses.dataclass(frozen=True)
class Steps:
    """The compiled steps of one run, the task they compute and the state sharding they were compiled for."""

    task: Task
    train: Callable  # (state, batch or DeviceData) -> (state, metrics)
    train_frozen: Callable  # the same with the backbone's batch-norm statistics frozen
    evaluate: Callable  # (state, batch) -> per-image outputs
    state_sharding: Any


def make_steps(
    task: Task,
    state: State,
    mesh: jax.sharding.Mesh,
    *,
    shard_params: bool = False,
    device_data: DeviceData | None = None,
) -> Steps:
    """Binds `task` and jits the steps with explicit in/out shardings, donating the old state.

    Batch-norm statistics are taken over the global batch: the batch is one sharded array, so
    XLA reduces across devices (and hosts) itself. With `device_data` the train steps take it
    in place of a batch and draw their batch from it: no host transfer per step.
    """
    state_sharding = parallel.state_shardings(state, mesh, shard=shard_params)
    batch_sharding = parallel.batch_sharding(mesh)
    inputs_sharding = batch_sharding if device_data is None else jax.tree.map(lambda x: x.sharding, device_data)
    replicated = parallel.replicated(mesh)

    def jit_train(frozen: bool) -> Callable:
        return jax.jit(
            functools.partial(train_step, task, frozen=frozen),
            in_shardings=(state_sharding, inputs_sharding),
            out_shardings=(state_sharding, replicated),
            donate_argnums=0,
        )

    evaluate = jax.jit(
        functools.partial(eval_step, task), in_shardings=(state_sharding, batch_sharding), out_shardings=replicated
    )
    return Steps(task, jit_train(False), jit_train(True), evaluate, state_sharding)
