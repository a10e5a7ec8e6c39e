"""Shared test setup: 8 forced CPU devices, so multi-device code is exercised without GPUs."""

import atexit
import os
import shutil
import tempfile

# Must precede the first `import jax` of the session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# `python -m bcjax.main` in the tests' subprocesses keeps its compilation cache in a folder of
# this session (shared by those processes), not in the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bcjax-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import importlib.util  # noqa: E402

import pytest  # noqa: E402

# torchvision segfaults (in triton's import) when TensorFlow was imported first in
# the same process, as Keras' reference tests and TFDS's builder test do; torch
# first is fine. Import it up front so the suite's order cannot matter.
if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: E402, F401

# Small images keep the suite fast; the builder and pipeline never assume one shape.
SMALL_IMAGE = (70, 46)  # width x height, a tenth of BreakHis' 700x460


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory):
    """A BreakHis-shaped tree (2 patients per type plus the quirk folders) and its summary."""
    from bcjax.datasets import synthetic

    out = tmp_path_factory.mktemp("manual")
    summary = synthetic.write_breakhis_tree(
        out, patients=2, images_per_magnification=2, image_size=SMALL_IMAGE, seed=0, tar=True, progress=False
    )
    return summary


@pytest.fixture(scope="session")
def prepared_data_dir(synthetic_tree, tmp_path_factory):
    """`synthetic_tree` built as the TFDS dataset `breakhis/custom`; returns its data_dir."""
    from bcjax import input_pipeline

    data_dir = tmp_path_factory.mktemp("tfds")
    input_pipeline.prepare(
        data_dir=str(data_dir), dataset="breakhis/custom", manual_dir=str(synthetic_tree.root.parent)
    )
    return data_dir
