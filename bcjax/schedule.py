"""The one place that turns a config's epochs and steps into step counts (big_vision's `utils.steps`)."""

from __future__ import annotations

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long the run is, and at which steps it logs, evaluates and saves."""

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    def due(self, step: int, every: int) -> bool:
        """Whether an action repeated `every` steps (0: never) runs after `step`; all run after the last."""
        return step == self.total_steps or (every > 0 and step % every == 0)


def make_schedule(config: ml_collections.ConfigDict, train_images: int) -> Schedule:
    """Steps from `config`; fields left at 0 or None derive from an epoch of `train_images`."""
    steps_per_epoch = config.steps_per_epoch or max(1, train_images // config.batch_size)
    return Schedule(
        total_steps=config.total_steps or steps_per_epoch * config.num_epochs,
        steps_per_epoch=steps_per_epoch,
        log_every=config.log_every_steps or steps_per_epoch,
        eval_every=config.eval_every_steps or steps_per_epoch,
        checkpoint_every=config.checkpoint_every_steps or steps_per_epoch,
    )
