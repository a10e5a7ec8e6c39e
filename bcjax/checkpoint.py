"""Orbax checkpoints of the train state and the grain iterator: the latest and the best, both kept.

Orbax's `max_to_keep` with a `best_fn` keeps only the best checkpoints and may
delete the newest, which breaks resuming. One preservation policy keeps the
latest `keep` checkpoints AND the best one instead.

Saves are asynchronous: `save` returns once the state is copied off the devices, and the files are
written while the next steps run (a save cost the loop ~2 s on a CPU when it waited). A checkpoint
counts only once orbax commits it, so a run killed mid-save resumes from the one before.
"""

from __future__ import annotations

import math
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies


class Checkpoints:
    """Saves and restores `{state, iterator}` under `<workdir>/checkpoints`.

    `best_metric` ranks checkpoints, higher is better (config.best_metric); a checkpoint whose
    metric is missing or not finite ranks last.
    """

    def __init__(self, directory: str | epath.Path, *, keep: int = 2, best_metric: str | None = None):
        self.best_metric = best_metric
        keep_policies: list = [policies.LatestN(n=keep)]
        options = dict(create=True, enable_async_checkpointing=True)
        if best_metric:
            keep_policies.append(
                policies.BestN(get_metric_fn=self._metric, reverse=False, n=1, keep_checkpoints_without_metrics=False)
            )
            options.update(best_fn=self._metric, best_mode="max")
        self.manager = ocp.CheckpointManager(
            epath.Path(directory),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policies.AnyPreservationPolicy(keep_policies), **options
            ),
        )

    def _metric(self, metrics: dict[str, float]) -> float:
        value = metrics.get(self.best_metric)
        return -math.inf if value is None or not math.isfinite(value) else float(value)

    def latest_step(self) -> int | None:
        self.wait()
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        self.wait()
        return self.manager.best_step() if self.best_metric else None

    def wait(self) -> None:
        """Returns once every save is on disk."""
        self.manager.wait_until_finished()

    def save(
        self, step: int, state: Any, iterator: grain.DatasetIterator | None, metrics: dict[str, float] | None = None
    ) -> None:
        """Saves `state` but its run constants, which the run recomputes (`bcjax.steps.run_constants`)."""
        items = {"state": ocp.args.StandardSave(_saved_part(state))}
        if iterator is not None:
            items["iterator"] = grain.checkpoint.CheckpointSave(iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(self, step: int, state: Any, iterator: grain.DatasetIterator | None = None) -> Any:
        """The state saved at `step` in place of `state` (laid out as it is, its run constants kept);
        restores `iterator` in place."""
        self.wait()
        items = {"state": ocp.args.StandardRestore(_abstract(_saved_part(state)))}
        if iterator is not None:
            items["iterator"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        return {**restored, "constants": state["constants"]}

    def close(self) -> None:
        self.manager.close()


def _saved_part(state: Any) -> Any:
    """A train state without its run constants (checkpoints keep the layout they had before those)."""
    return {k: v for k, v in state.items() if k != "constants"}


def _abstract(state: Any) -> Any:
    """Shape, dtype and sharding of every leaf: the restore target of `state`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
