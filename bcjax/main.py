"""Train and evaluate: `python -m bcjax.main --config=configs/binary.py --workdir=DIR`.

The same command on an existing workdir resumes. Override any field with
`--config.optimizer.name=adam`; choose a config variant with
`--config=configs/binary.py:patient`.

Multi-host: every process runs the same command, plus either
`--distributed=auto` (SLURM, Open MPI, Kubernetes... detected by JAX) or the
explicit `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.

Compiled steps are kept in JAX's persistent compilation cache (`--compilation_cache_dir`),
so a rerun or a resume does not compile them again.
"""

from __future__ import annotations

import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from bcjax import runtime

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "An ml_collections config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and reports go.", required=True)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "off", ["off", "auto"], "'auto': jax.distributed.initialize() with cluster auto-detection."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (explicit multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host).")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "JAX's persistent compilation cache; '' turns it off. Default: $JAX_COMPILATION_CACHE_DIR, else "
    "$XDG_CACHE_HOME/bcjax/jax_compilation_cache (~/.cache when XDG_CACHE_HOME is unset).",
)
_PLATFORM_XLA_FLAGS = flags.DEFINE_bool(
    "platform_xla_flags", True, "Add bcjax's per-platform XLA flags (bcjax/runtime.py) to XLA_FLAGS."
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, where a bad flag ends in one line naming it instead of a traceback.

    ml_collections raises a misspelt config field as chained AttributeErrors and a config variant
    its file refuses as the text of a traceback, and defers a missing config file's error to the
    config's first use; `config_checks.flag_error_message` says each in one line.
    """
    try:
        remaining = flags.FLAGS(argv)
        if _CONFIG.value is not None and not isinstance(_CONFIG.value, ml_collections.ConfigDict):
            _CONFIG.value.lock()  # raises the deferred error of loading the config file
        return remaining
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as error:
        from bcjax import config_checks  # imports the modules owning the config's names: only when needed

        sys.exit(f"error: {config_checks.flag_error_message(error, argv)}")


def initialize_distributed() -> None:
    """Joins the multi-host run described by the flags; a no-op for a single process."""
    if _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value
        )
    elif _DISTRIBUTED.value == "auto":
        jax.distributed.initialize()


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user can cause; they end in their message, without a traceback."""
    from bcjax import image_cache, input_pipeline, train, workdir_guard
    from bcjax.config_checks import ConfigError
    from bcjax.datasets.breakhis import BreakHisBuildError
    from bcjax.pretrained import ConversionError

    return (
        ConfigError,
        input_pipeline.DataNotFoundError,
        image_cache.ImageCacheError,
        workdir_guard.WorkdirMismatchError,
        train.TrainingError,
        BreakHisBuildError,
        ConversionError,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
    if not flags.FLAGS["verbosity"].present:  # orbax and TFDS log every step at INFO
        logging.set_verbosity(logging.WARNING)
    if _PLATFORM_XLA_FLAGS.value:
        runtime.set_platform_xla_flags()
    cache_dir = runtime.default_cache_dir() if _CACHE_DIR.value is None else _CACHE_DIR.value
    try:
        cache = runtime.enable_compilation_cache(cache_dir) if cache_dir else None
    except OSError as error:
        sys.exit(
            f"error: cannot keep the compilation cache in {cache_dir!r} ({error}); pass another "
            "--compilation_cache_dir, or --compilation_cache_dir='' to run without it"
        )
    initialize_distributed()
    from bcjax import train
    from bcjax.lead_process import LeadProcessError, failures_stop_every_process

    try:
        # With several processes, an error on any one ends them all within seconds, with its message
        # (not a shutdown barrier's timeout 5 minutes later).
        with failures_stop_every_process():
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (*user_errors(), LeadProcessError) as error:
        sys.exit(f"error: {error}")
    if cache and jax.process_index() == 0:
        print(cache.summary())


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
