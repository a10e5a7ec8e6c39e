"""The model, step and benchmark code need no data stack: the trainer's step on synthetic device-resident
arrays and the benchmark's schedules, in a fresh process that imports neither tensorflow_datasets nor grain.

So on a machine without those wheels (the GPU image) the step benchmarks still run (scripts/gpu_check.py).
"""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import sys
sys.path[:0] = ["scripts", "."]
import jax, numpy as np
from bcjax import components, parallel
from bcjax.augment import AugmentConfig
from bcjax.device_data import DeviceData
from bcjax.normalization import make_normalizer
from benchmarking import figures
from configs import default

config = default.get_config()
config.model.arch, config.model.dtype, config.batch_size = "resnet18", "float32", 4
mesh = parallel.make_mesh()
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
labels = rng.integers(0, 2, 8).astype(np.int32)
examples = {"label": labels, "tumor_type": labels, "magnification": labels, "index": np.arange(8, dtype=np.int32)}
data = DeviceData.put(images, examples, np.arange(8, dtype=np.int32), mesh=mesh, global_batch=4, seed=0,
                      augment=AugmentConfig.from_fields(config.data.augment))
steps, state = components.build_steps(
    config, mesh, normalizer=make_normalizer("imagenet"), total_steps=2, device_data=data)
state, metrics = steps.train(state, data)
assert np.isfinite(float(jax.device_get(metrics["loss"]))), metrics
assert figures.published_schedules()["a"][1] == 40000
print("LOADED", sorted(m for m in ("tensorflow_datasets", "grain", "tensorflow") if m in sys.modules))
"""


def test_a_train_step_on_synthetic_arrays_imports_neither_tfds_nor_grain():
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # about a minute alone; far more on a CPU shared with other work
        env={**os.environ, "XLA_FLAGS": ""},  # one CPU device: the imports are the point, not the mesh
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "LOADED []" in result.stdout, result.stdout[-2000:]
