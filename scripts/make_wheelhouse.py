"""Downloads the wheels bcjax needs that the GPU machine's image lacks, for an offline install there.

    python scripts/make_wheelhouse.py [--out .whl]

The H200 image (Python 3.12, no network) has JAX, flax, optax, orbax, torch, numpy, Pillow, ... but
not grain, tensorflow-datasets, array_record, ml_collections or tensorboardX. This fetches those,
at the versions the tests run with, and every dependency of theirs that the image lacks (walked
from each wheel's metadata, one version of each, none the image has), for CPython 3.12 on
manylinux x86_64, into `--out` (ignored by git), and prints its size; `from_image.txt` there lists
what they need from the image (the rehearsal installs it). There, install the wheels with

    python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site

TensorFlow is not among them (hundreds of MB) and not needed: building a TFDS dataset (ArrayRecord),
reading it, grain and training never import it (seen in scripts/rehearse_gpu_check.sh's venv).
A dependency published only as a source archive is built here into a wheel (`pip wheel`), and must
then be pure Python (`py3-none-any`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # a bare Python: pip vendors packaging
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement

# What bcjax needs beyond the image, at the versions its tests run with (pyproject.toml's dependencies).
ROOTS = (
    "grain==0.2.18",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "ml-collections==1.1.0",
    "tensorboardX==2.6.5",
    "importlib-resources==7.1.0",  # tensorflow-datasets needs it but does not declare it
)
# The Python packages of the H200 image ('cuda'), as the device tool's KINDS.md lists them (2026-11-17).
IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# The GPU machine's Python, for evaluating the dependencies' environment markers.
TARGET_ENVIRONMENT = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
# What the wheels need from the image, as pip requirements: scripts/rehearse_gpu_check.sh installs them.
IMAGE_REQUIREMENTS = "from_image.txt"
LIMIT_MB = 40  # the tree that travels to the GPU machine may hold 64 MiB in all


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def download(requirement: str, out: str) -> str:
    """Fetches one wheel (no dependencies) for the GPU machine's Python into `out`; returns its file name."""
    before = set(os.listdir(out))
    platforms = [f"--platform={p}" for p in PLATFORMS]
    target = ["--python-version=3.12", "--implementation=cp", "--abi=cp312", "--abi=abi3", "--abi=none", *platforms]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *target]
    if subprocess.run([*command, "-d", out, requirement], capture_output=True, text=True).returncode != 0:
        _build_pure_wheel(requirement, out)
    (new,) = set(os.listdir(out)) - before
    return new


def _build_pure_wheel(requirement: str, out: str) -> None:
    """Builds a wheel of a source-only release here; refuses it unless it is pure Python."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, requirement]
        subprocess.run(command, check=True)
        (wheel,) = os.listdir(tmp)
        if not wheel.endswith("-py3-none-any.whl") and not wheel.endswith("-py2.py3-none-any.whl"):
            sys.exit(f"{requirement} has no wheel for Python 3.12 on manylinux x86_64, and builds as {wheel}")
        shutil.move(os.path.join(tmp, wheel), out)


def requirements_of(wheel_path: str, extras: set[str]) -> list[Requirement]:
    """The wheel's Requires-Dist that apply on the GPU machine's Python with `extras` asked for."""
    with zipfile.ZipFile(wheel_path) as wheel:
        metadata_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(metadata_name).decode()
    needed = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        marker: Marker | None = requirement.marker
        if marker is None or any(marker.evaluate({**TARGET_ENVIRONMENT, "extra": e}) for e in extras | {""}):
            needed.append(requirement)
    return needed


def build(out: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Every wheel of the closure of ROOTS less the image's packages: (wheel, why) pairs, and the
    requirements on the image's packages that the wheels rely on."""
    image = {canonical(n) for n in IMAGE_PACKAGES}
    queue = [(Requirement(r), "bcjax") for r in ROOTS]
    seen: dict[str, str] = {}
    fetched, from_image = [], []
    while queue:
        requirement, why = queue.pop(0)
        name = canonical(requirement.name)
        if name in image:
            from_image.append(f"{requirement.name}{requirement.specifier}  # for {why}")
        if name in image or name in seen:
            continue
        wheel = download(f"{requirement.name}{requirement.specifier}", out)
        seen[name] = wheel
        fetched.append((wheel, why))
        queue += [(r, requirement.name) for r in requirements_of(os.path.join(out, wheel), set(requirement.extras))]
    return fetched, sorted(set(from_image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".whl", help="The wheelhouse folder (emptied first; .gitignore'd).")
    out = parser.parse_args().out
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    fetched, from_image = build(out)
    with open(os.path.join(out, IMAGE_REQUIREMENTS), "w") as f:
        f.write("".join(f"{line}\n" for line in from_image))
    total = 0
    for wheel, why in fetched:
        size = os.path.getsize(os.path.join(out, wheel))
        total += size
        print(f"{size / 2**20:7.2f} MiB  {wheel}  (for {why})")
    print(f"{len(fetched)} wheels, {total / 2**20:.1f} MiB in {out}")
    if total > LIMIT_MB * 2**20:
        sys.exit(f"the wheelhouse is over {LIMIT_MB} MiB: too much of the 64 MiB that travels to the GPU machine")


if __name__ == "__main__":
    main()
