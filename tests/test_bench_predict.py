"""scripts/bench_predict.py runs end to end (--quick) and both sides compute the same probabilities."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def test_bench_predict_quick_prints_every_path_and_agrees_with_pytorch(tmp_path):
    pytest.importorskip("torchvision")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "bench_predict.py"), "--quick", f"--workdir={tmp_path}"],
        cwd=REPO,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for path in ("PyTorch per-file loop", "bcjax ", "bcjax --tta=flips", "bcjax --tta=d4", "bcjax --explain"):
        assert re.search(rf"^{re.escape(path)}\s+[\d.]+\s+[\d.]+$", done.stdout, flags=re.MULTILINE), done.stdout
    difference = float(re.search(r"bcjax vs PyTorch: (\S+)", done.stdout).group(1))
    assert difference < 1e-4  # the same converted weights on the same files
