"""Builds the BreakHis TFDS dataset once: `python -m bcjax.datasets.prepare --manual_dir=DIR`.

Does what `tfds build breakhis --imports=bcjax.datasets.breakhis` would, had TFDS's
command line not needed Apache Beam (tensorflow/datasets issue 5463), with bcjax's
error handling: a bad archive ends in one message, never a traceback.
"""

from __future__ import annotations

import sys

from absl import app, flags

_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder holding BreaKHis_v1.tar.gz or its extracted BreaKHis_v1/ folder.", required=True
)
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "Where TFDS datasets are written.")
_CONFIG = flags.DEFINE_enum(
    "config",
    "archive",
    ["archive", "custom"],
    "'archive': the published archive, counts checked against the paper; 'custom': any BreakHis-shaped tree.",
)


def main(argv: list[str]) -> None:
    del argv
    from bcjax import input_pipeline
    from bcjax.datasets.breakhis import BreakHisBuildError

    try:
        input_pipeline.prepare(
            data_dir=_DATA_DIR.value, dataset=f"breakhis/{_CONFIG.value}", manual_dir=_MANUAL_DIR.value
        )
    except BreakHisBuildError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
