"""Training never imports TensorFlow: a whole run (`python -m bcjax.main` on a prepared dataset: data,
training on both data paths, checkpoints, evaluation, reports and plots) in a fresh process.

Only building a TFDS dataset needs TensorFlow (the builder); `prepared_data_dir` is built before.
"""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import os, runpy, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
# As a user runs it: python -m bcjax.main (data on the devices, the default 'auto' on CPUs) ...
sys.argv = ["bcjax.main", "--config=tests/tiny_config.py:{data_dir}", "--workdir={workdir}/device",
            "--config.total_steps=2"]
try:
    runpy.run_module("bcjax.main", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert not exit.code, exit.code
# ... then train_and_evaluate itself on the host data path (grain batches, iterator checkpoints).
sys.path.insert(0, "tests")
import tiny_config
from bcjax import train
config = tiny_config.get_config("{data_dir}")
config.total_steps, config.data.device_resident = 2, False
assert train.train_and_evaluate(config, "{workdir}/host")["test"]["images"] > 0
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print("TENSORFLOW", loaded)
"""


@pytest.mark.slow
def test_training_never_imports_tensorflow(prepared_data_dir, tmp_path):
    script = textwrap.dedent(_SCRIPT.format(data_dir=prepared_data_dir, workdir=tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert '"device_resident": true' in (tmp_path / "device" / "data_path.json").read_text()
    assert '"device_resident": false' in (tmp_path / "host" / "data_path.json").read_text()
    assert "TENSORFLOW []" in result.stdout, result.stdout[-2000:]
