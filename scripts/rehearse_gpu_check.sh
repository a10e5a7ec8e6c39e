#!/usr/bin/env bash
# Rehearses the GPU check on this machine's CPU, as it will run on the H200 image:
#   1. a Python 3.12 venv holding only what that image has (the same JAX, torch and torchvision
#      releases, CPU-usable; the rest at PyPI's newest that fits them),
#   2. the wheelhouse (scripts/make_wheelhouse.py) installed offline beside it with --target,
#   3. scripts/gpu_check.py --quick, every part running or skipped with its reason.
#
#   [BUDGET=minutes] scripts/rehearse_gpu_check.sh [VENV_DIR] [OUT_DIR]   (defaults 30, /tmp/bcjax-h200-venv,
#                                                                        /tmp/bcjax-gpu-check)
#
# The venv is reused when it exists (its first build downloads torch's CUDA build from PyPI,
# several GB: PyPI has no CPU build of torch 2.11 for Linux x86_64; it runs on the CPU all the same).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/bcjax-h200-venv}
OUT=${2:-/tmp/bcjax-gpu-check}
PYTHON312=${PYTHON312:-$(command -v python3.12 || ls -d /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)}
# What the H200 image holds that bcjax and the check use (KINDS.md of the device tool, 2026-11):
# pinned where its version is known, else PyPI's newest that fits.
IMAGE_PACKAGES=(
  jax==0.11.2 jaxlib==0.11.2 numpy==2.5.2 torch==2.11.0 torchvision==0.26.0
  flax optax orbax-checkpoint chex timm safetensors pillow matplotlib h5py pyarrow pandas scikit-learn
  absl-py etils fsspec protobuf psutil pyyaml requests tqdm wrapt pytest packaging typing-extensions zipp
)

if [ ! -x "$VENV/bin/python" ]; then
  echo "== building $VENV with $PYTHON312"
  "$PYTHON312" -m venv "$VENV"
fi
[ -f .whl/from_image.txt ] || { echo "no .whl/: run scripts/make_wheelhouse.py first (it needs PyPI)"; exit 1; }
"$VENV/bin/python" -m pip install -q --upgrade pip
# The image's packages, and those of them that the wheels need (.whl/from_image.txt).
"$VENV/bin/python" -m pip install -q "${IMAGE_PACKAGES[@]}" -r .whl/from_image.txt
"$VENV/bin/python" -m pip list --format=freeze > "$VENV/image-like-packages.txt"

echo "== the wheelhouse, offline"
SITE=$(mktemp -d /tmp/bcjax-wheelhouse-site.XXXX)
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl

echo "== scripts/gpu_check.py --quick"
rm -rf "$OUT"
# Two shared CPU cores compile far slower than the GPU machine: the rehearsal's budget is larger.
time PYTHONPATH="$SITE:$PWD" "$VENV/bin/python" scripts/gpu_check.py --quick --budget "${BUDGET:-30}" --out "$OUT"
