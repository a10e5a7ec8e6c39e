"""From a config to the parts of a run: the model, the loss, the optimizer, the compiled steps.

The trainer, the benchmarks and the tests build their steps here, so all of them run the same
program for the same config.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from bcjax import losses, optimizers, published_weights
from bcjax.datasets.breakhis_vocabulary import TARGET_CLASSES
from bcjax.device_data import DeviceData
from bcjax.models import create_model
from bcjax.normalization import Normalizer
from bcjax.steps import State, Steps, Task, initial_state, make_steps, run_constants


def compute_dtype(name: str) -> jnp.dtype:
    """'auto' is bfloat16 on GPUs/TPUs (float32 parameters stay) and float32 on CPU."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
    return jnp.dtype(name)


def num_outputs(config: ml_collections.ConfigDict) -> int:
    """One logit for the sigmoid losses, else one per class of the target."""
    if config.loss.name.startswith("sigmoid"):
        return 1
    return len(TARGET_CLASSES[config.data.target])


def build_model(config: ml_collections.ConfigDict) -> tuple[nnx.Module, dict | None]:
    """The configured classifier, and the metadata of its pretrained backbone weights when `model.init_from` is set
    (a converted folder, or published weights by name, downloaded and converted once into the cache)."""
    model = create_model(
        config.model.arch,
        config.model.layout,
        config.model.head,
        num_outputs(config),
        dtype=compute_dtype(config.model.dtype),
        rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
        backbone_kwargs=config.model.backbone_kwargs.to_dict(),
        **config.model.head_kwargs.to_dict(),
    )
    init_from = config.model.init_from
    if not init_from:
        return model, None
    from bcjax import pretrained  # orbax restores only for runs that start from converted weights

    if published_weights.is_published_name(init_from):  # e.g. "torchvision:resnet50"
        from bcjax import weight_hub

        init_from = weight_hub.resolve(init_from)
    return model, pretrained.load_pretrained(model, init_from)


def make_loss(config: ml_collections.ConfigDict) -> losses.LossFn:
    """`config.loss` for the model's number of logits."""
    return losses.make_loss(
        config.loss.name,
        num_classes=num_outputs(config),
        label_smoothing=config.loss.label_smoothing,
        class_weights=config.loss.class_weights,
    )


def build_steps(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    *,
    normalizer: Normalizer,
    total_steps: int,
    model: nnx.Module | None = None,
    device_data: DeviceData | None = None,
    reuse: Steps | None = None,
) -> tuple[Steps, State]:
    """The compiled steps of `config` and the initial state placed on `mesh`.

    `model` defaults to `build_model(config)`'s; `total_steps` is the run's length, which the
    learning-rate schedule spans; with `device_data` the train steps draw their own batches.
    `reuse`: the steps of an earlier run of the same config on the same mesh (another fold):
    its programs serve this run too, compiled once (again only where an input's shape differs).
    """
    model = build_model(config)[0] if model is None else model
    constants = run_constants(normalizer, total_steps)
    if reuse is None:
        optimizer = functools.partial(optimizers.make_optimizer, config.optimizer)
        task = Task(nnx.graphdef(model), optimizer, make_loss(config), normalizer, config.data.target)
        state = initial_state(model, task, constants)
        steps = make_steps(task, state, mesh, shard_params=config.shard_params, device_data=device_data)
    else:
        steps, state = reuse, initial_state(model, reuse.task, constants)
    # Copies: the steps donate their state, and the model's own arrays must outlive it (the next fold
    # starts from them). `device_put(may_alias=False)` alone still shares device 0's buffer of a
    # replicated array on several devices, which the donation then deletes.
    return steps, jax.device_put(jax.tree.map(jnp.array, state), steps.state_sharding)
