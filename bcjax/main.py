"""Train and evaluate: `python -m bcjax.main --config=configs/binary.py --workdir=DIR`.

The same command on an existing workdir resumes. Override any field with
`--config.optimizer.name=adam`; choose a config variant with
`--config=configs/binary.py:patient`.

Multi-host: every process runs the same command, plus either
`--distributed=auto` (SLURM, Open MPI, Kubernetes... detected by JAX) or the
explicit `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "An ml_collections config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and reports go.", required=True)
_DISTRIBUTED = flags.DEFINE_enum("distributed", "off", ["off", "auto"],
                                 "'auto': jax.distributed.initialize() with cluster auto-detection.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (explicit multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host).")


def initialize_distributed() -> None:
    """Joins the multi-host run described by the flags; a no-op for a single process."""
    if _COORDINATOR.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif _DISTRIBUTED.value == "auto":
        jax.distributed.initialize()


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user can cause; they end in their message, without a traceback."""
    from bcjax import input_pipeline, reports, train
    from bcjax.convert import ConversionError
    from bcjax.datasets.breakhis import BreakHisBuildError

    return (input_pipeline.DataNotFoundError, reports.WorkdirMismatchError, train.TrainingError,
            BreakHisBuildError, ConversionError)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
    if not flags.FLAGS["verbosity"].present:  # orbax and TFDS log every step at INFO
        logging.set_verbosity(logging.WARNING)
    initialize_distributed()
    from bcjax import train

    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except user_errors() as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
