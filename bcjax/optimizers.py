"""Optimizers for a Classifier's parameters: one optax transformation built from a config.

The parameters are split into two groups by their first path key, `backbone` and `head`
(`nnx.split(model, nnx.Param, ...)` of a `bcjax.models.Classifier`). Each group gets its own copy
of the optimizer, so the groups can have their own learning rates and the backbone can be frozen
for the first steps. The chain is:

    [zero the frozen backbone's gradients, clip by global norm]    (only when clipping)
    partition: backbone -> [L2 weight decay] -> optimizer(schedule x backbone_lr_multiplier)
               head     -> [L2 weight decay] -> optimizer(schedule x head_lr_multiplier)

Config fields (`configs/default.py` declares them, each with its default and a comment):

- `name`: 'rmsprop', 'adam', 'adamw' and 'sgd' read the fields below; any other optax optimizer
  function that takes `learning_rate` ('lamb', 'lion', 'adafactor', ...) is called with
  `learning_rate` and `kwargs` only. `kwargs` also extends or overrides the four named ones
  (e.g. `{'initial_scale': 1.0}` for TF1's RMSprop).
- `learning_rate`, `schedule`: the base (peak) learning rate and its shape over `total_steps`:
  'constant'; 'cosine' (from `learning_rate` down to `learning_rate * end_learning_rate_factor` at
  `total_steps`); 'warmup_constant' and 'warmup_cosine' (a linear rise from 0 over `warmup_steps`
  first; the cosine ends at `total_steps` all the same); 'step' (multiplied by `decay_rate` every
  `decay_steps`). `warmup_steps` with a schedule that does not warm up is an error, not ignored.
- rmsprop: `decay` (rho), `eps`, `eps_in_sqrt`, `momentum`, `nesterov`, `centered`. With
  `eps_in_sqrt=True` (optax's default) the update is the one written in recipe A's paper,
  v = rho*v + (1-rho)*g^2; w -= lr*g/sqrt(v + eps). Keras' RMSprop divides by sqrt(v) + eps
  instead (`eps_in_sqrt=False`) with rho 0.9 and eps 1e-7; the two differ most while v is small.
  Both start v at 0, so the first step is about lr/sqrt(1 - rho), 3.2 lr with rho 0.9.
- adam/adamw: `b1`, `b2`, `eps` (optax's adam has eps outside the square root, as Keras does).
- sgd: `momentum` (0 = plain SGD), `nesterov`.
- `weight_decay`: for 'adamw' the decoupled decay of optax (w -= lr * weight_decay * w, so it
  follows the schedule and the group multipliers). For every other name it is the L2 penalty of
  PyTorch's `weight_decay` argument, g += weight_decay * w before the optimizer; that is what
  "Adam with weight decay" meant before AdamW, so recipe B reads `name='adam',
  weight_decay=1e-4`. (Keras 3's `Adam(weight_decay=...)` is decoupled: use 'adamw' for it.)
  Optimizers with their own decoupled decay ('lion', 'lamb') take it through `kwargs`.
- `weight_decay_mask`: 'kernels' decays only parameters of rank >= 2 (conv and dense kernels),
  leaving biases and BatchNorm scales and offsets alone; 'all' decays everything.
- `grad_clip_norm`: clip the global norm of the gradients that train (0 = off). While the
  backbone is frozen its gradients do not count, so they cannot shrink the head's steps.
- `freeze_backbone_steps`: for the first N steps the backbone's updates are exactly zero and its
  optimizer state (moments, step count) is not touched, so after unfreezing it starts as a fresh
  optimizer would (no stale or inflated moments), at the schedule's value for the global step.
  Adam's bias correction then also counts from the unfreezing step. -1 freezes it for the whole
  run (recipe C's frozen base): the backbone then has no optimizer state at all.
- `backbone_lr_multiplier`, `head_lr_multiplier`: each group's learning rate is the schedule
  times its multiplier (0 keeps a group fixed, weight decay included).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

GROUPS = ("backbone", "head")
NAMED_OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_constant", "warmup_cosine", "step")
WEIGHT_DECAY_MASKS = ("kernels", "all")


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int | jax.Array) -> optax.GradientTransformation:
    """The optimizer for a Classifier's params from `c` = `config.optimizer` (every field of configs/default.py).

    `total_steps` is the length of the run, which the cosine schedules decay over. It may be a
    traced value: the train step builds its optimizer from the state's copy, so that runs of
    different lengths (recipe B's folds) share one compiled step. The optimizer's state does not
    depend on it.
    """
    parts = []
    if c.grad_clip_norm:
        if c.freeze_backbone_steps:  # a frozen backbone's gradients must not count in the norm
            parts.append(_by_group(c, lambda group: optax.identity()))
        parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
    parts.append(_by_group(c, lambda group: _group_optimizer(c, total_steps, group)))
    return optax.chain(*parts)


def param_labels(params: Any) -> Any:
    """The tree of `params` with each leaf replaced by its group, 'backbone' or 'head'."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _group_of(path), params)


def learning_rate_at(c: ml_collections.ConfigDict, total_steps: int, step: int, group: str = "head") -> float:
    """The learning rate `group` trains with at `step` (0 while frozen), for logging; `c` = `config.optimizer`."""
    if group not in GROUPS:
        raise ValueError(f"unknown parameter group {group!r}; choose one of {GROUPS}")
    if frozen_at(c, step, group):
        return 0.0
    return float(_multiplier(c, group) * _base_schedule(c)(step, total_steps))


def frozen_at(c: ml_collections.ConfigDict, step: int, group: str = "backbone") -> bool:
    """Whether `group` is frozen at `step` (its batch-norm statistics too, in the trainer)."""
    steps = _frozen_steps(c, group)
    return steps < 0 or step < steps


def _group_of(path: tuple) -> str:
    key = path[0]
    name = getattr(key, "key", getattr(key, "name", key))
    if name not in GROUPS:
        raise ValueError(
            f"parameter {jax.tree_util.keystr(path)} is under {name!r}; the optimizer expects "
            f"the top-level groups {GROUPS} of a bcjax.models.Classifier's params"
        )
    return name


def _by_group(c: ml_collections.ConfigDict, make: Callable[[str], optax.GradientTransformation]):
    """`make(group)` for each group, the backbone's held at zero while it is frozen."""
    return optax.partition({group: _frozen_for(make(group), _frozen_steps(c, group)) for group in GROUPS}, param_labels)


def _frozen_for(tx: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    # conditionally_mask zeroes the updates and leaves the inner state untouched until `steps`.
    if not steps:
        return tx
    if steps < 0:  # frozen for good: no state to keep
        return optax.set_to_zero()
    return optax.transforms.conditionally_mask(tx, lambda step: step >= steps)


def _frozen_steps(c: ml_collections.ConfigDict, group: str) -> int:
    return c.freeze_backbone_steps if group == "backbone" else 0


def _multiplier(c: ml_collections.ConfigDict, group: str) -> float:
    return c.backbone_lr_multiplier if group == "backbone" else c.head_lr_multiplier


def _group_optimizer(
    c: ml_collections.ConfigDict, total_steps: int | jax.Array, group: str
) -> optax.GradientTransformation:
    base = _base_schedule(c)
    scale, offset = _multiplier(c, group), _frozen_steps(c, group)
    # A frozen group's own step count starts when it unfreezes; the offset keeps it on the
    # global schedule.
    schedule = lambda count: scale * base(count + offset, total_steps)  # noqa: E731
    optimizer = optax_function(c.name)(learning_rate=schedule, **_optimizer_kwargs(c))
    if c.weight_decay and c.name != "adamw":
        return optax.chain(optax.add_decayed_weights(c.weight_decay, _decay_mask(c)), optimizer)
    return optimizer


def _optimizer_kwargs(c: ml_collections.ConfigDict) -> dict:
    momentum = c.momentum or None  # optax: None skips the momentum state
    named = {
        "rmsprop": dict(
            decay=c.decay,
            eps=c.eps,
            eps_in_sqrt=c.eps_in_sqrt,
            momentum=momentum,
            nesterov=c.nesterov,
            centered=c.centered,
        ),
        "adam": dict(b1=c.b1, b2=c.b2, eps=c.eps),
        "adamw": dict(b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=_decay_mask(c)),
        "sgd": dict(momentum=momentum, nesterov=c.nesterov),
    }
    return {**named.get(c.name, {}), **dict(c.kwargs)}


def optax_function(name: str) -> Callable[..., optax.GradientTransformation]:
    fn = getattr(optax, name, None)
    if not callable(fn) or "learning_rate" not in inspect.signature(fn).parameters:
        raise ValueError(
            f"unknown config.optimizer.name {name!r}: use one of {NAMED_OPTIMIZERS} (configured by "
            "their own fields) or the name of any optax optimizer function that takes "
            "learning_rate, optax.<name> (e.g. 'lamb', 'lion', 'adafactor'; arguments in "
            "config.optimizer.kwargs)"
        )
    return fn


def _decay_mask(c: ml_collections.ConfigDict) -> Callable[[Any], Any] | None:
    if c.weight_decay_mask not in WEIGHT_DECAY_MASKS:
        raise ValueError(
            f"unknown config.optimizer.weight_decay_mask {c.weight_decay_mask!r}; choose one of {WEIGHT_DECAY_MASKS}"
        )
    if c.weight_decay_mask == "all":
        return None
    return lambda params: jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _base_schedule(c: ml_collections.ConfigDict) -> Callable[[Any, Any], Any]:
    """(step, total_steps) -> the base learning rate; either may be traced (optax's own schedules
    take the length as a Python number, so the cosines are written out here, as optax computes them)."""
    lr, end_lr = c.learning_rate, c.learning_rate * c.end_learning_rate_factor
    if c.schedule not in SCHEDULES:
        raise ValueError(f"unknown config.optimizer.schedule {c.schedule!r}; choose one of {SCHEDULES}")
    if c.warmup_steps and not c.schedule.startswith("warmup_"):
        raise ValueError(
            f"config.optimizer.warmup_steps={c.warmup_steps} but schedule {c.schedule!r} does not "
            "warm up; use 'warmup_constant' or 'warmup_cosine', or set warmup_steps=0"
        )
    if c.schedule == "step" and c.decay_steps <= 0:
        raise ValueError("schedule 'step' needs config.optimizer.decay_steps > 0")
    if c.schedule == "cosine":
        return lambda step, total: _cosine(lr, c.end_learning_rate_factor, step, total)
    if c.schedule == "warmup_cosine":
        warmup = optax.linear_schedule(0.0, lr, c.warmup_steps)
        alpha = end_lr / lr if lr else 0.0
        return lambda step, total: jnp.where(
            step < c.warmup_steps, warmup(step), _cosine(lr, alpha, step - c.warmup_steps, total - c.warmup_steps)
        )
    if c.schedule == "constant":
        fixed = optax.constant_schedule(lr)
    elif c.schedule == "warmup_constant":
        fixed = optax.warmup_constant_schedule(0.0, lr, c.warmup_steps)
    else:
        fixed = optax.exponential_decay(lr, c.decay_steps, c.decay_rate, staircase=True)
    return lambda step, total: fixed(step)


def _cosine(peak: float, alpha: float, step, length):
    """optax.cosine_decay_schedule(peak, length, alpha)(step), with `length` possibly traced."""
    step, length = jnp.asarray(step, jnp.float32), jnp.asarray(length, jnp.float32)
    decay = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step, length) / length))
    return peak * ((1 - alpha) * decay + alpha)
