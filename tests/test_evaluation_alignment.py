"""predictions.csv holds, on each row, the probabilities of that row's own image; z-score statistics
agree across real processes.

A probe model gives every image its own probabilities (from its mean normalised colour), so a row
that carried another image's probabilities shows. The evaluation runs the real path (eval batches
padded and masked, the jitted eval step on a device mesh, `evaluation.predict`'s gathering and
sorting, `evaluation_files.write_evaluation`), once in this process over 8 devices with the test
rows deliberately out of order, and once as 2 processes x 4 devices (jax.distributed on localhost),
where each global batch interleaves the two processes' shards.
"""

import csv
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
import trainer_runs
from etils import epath
from flax import nnx

from bcjax import components, evaluation, input_pipeline, normalization, parallel, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Logits = mean normalised colour @ PROBE_WEIGHTS: [3 channels, 2 classes].
PROBE_WEIGHTS = np.array([[3.0, -3.0], [-4.0, 4.0], [2.0, 1.0]], np.float32)
EVAL_BATCH = 24  # 80 test images: the last global batch is padded (and, over 2 processes, each one's)


class _MeanColour(nnx.Module):
    def __init__(self):
        self.gain = nnx.Param(jnp.ones(3))

    def __call__(self, images):
        return images.mean((1, 2)) * self.gain


class _Head(nnx.Module):
    def __init__(self):
        self.weights = nnx.Param(jnp.asarray(PROBE_WEIGHTS))

    def __call__(self, features):
        return features @ self.weights


class Probe(nnx.Module):
    """A stand-in Classifier (the optimizer wants its `backbone` and `head`) whose probabilities depend on the image."""

    def __init__(self):
        self.backbone, self.head = _MeanColour(), _Head()

    def __call__(self, images):
        return self.head(self.backbone(images))


def config_of(data_dir):
    config = tiny_config.get_config(str(data_dir))
    config.data.normalization = "zscore"
    config.eval_batch_size = EVAL_BATCH
    config.evaluation.bootstrap_samples = 10
    return config


def expected_probabilities(normalizer, image):
    """The probe's probabilities for one image, computed here in NumPy (float64)."""
    logits = normalizer(image[None]).astype(np.float64).mean((1, 2)) @ PROBE_WEIGHTS
    exp = np.exp(logits - logits.max())
    return (exp / exp.sum())[0]


def check_predictions_csv(path, data, normalizer):
    """Every test image once, and each row's probabilities are those of its own file's image."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    table = data.table
    row_of = {name: i for i, name in enumerate(table.filename)}
    assert len(row_of) == len(table.filename)  # file names identify images
    assert sorted(row_of[r["filename"]] for r in rows) == sorted(data.split.test.tolist())
    spread = []
    for r in rows:
        row = row_of[r["filename"]]
        expected = expected_probabilities(normalizer, data.cache.image(row))
        got = np.array([float(r["prob_benign"]), float(r["prob_malignant"])])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=r["filename"])
        assert int(r["label_id"]) == table.label[row] and r["patient_id"] == table.patient_id[row]
        assert int(r["prediction_id"]) == int(np.argmax(expected))
        spread.append(expected[1])
    # The probe tells images apart: a row holding another image's probabilities would not match.
    assert len(np.unique(np.round(spread, 4))) > 0.9 * len(rows)


@pytest.fixture(scope="module")
def data(prepared_data_dir):
    return input_pipeline.load(train.input_config(config_of(prepared_data_dir), None, None), progress=False)


def test_each_row_holds_its_own_images_probabilities(data, prepared_data_dir, tmp_path):
    """8 devices, test rows fed in a shuffled order: `predict` must sort probabilities with their rows."""
    shuffled = np.random.default_rng(0).permutation(data.split.test)
    assert len(shuffled) % EVAL_BATCH and not np.array_equal(shuffled, np.sort(shuffled))
    data = dataclasses.replace(data, split=dataclasses.replace(data.split, test=shuffled))
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8
    config = config_of(prepared_data_dir)
    steps, state = components.build_steps(config, mesh, normalizer=data.normalizer, total_steps=1, model=Probe())
    evaluator = evaluation.EvaluationReport(
        "test", data, steps, mesh, EVAL_BATCH, directory=epath.Path(tmp_path), bootstrap_samples=10, seed=0
    )
    report = evaluator.run(state)
    assert report["images"] == len(shuffled)
    check_predictions_csv(tmp_path / "predictions.csv", data, data.normalizer)


_TWO_PROCESS_SCRIPT = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.distributed.initialize(coordinator_address={address!r}, num_processes=2, process_id={process})
sys.path.insert(0, "tests")
from etils import epath
from test_evaluation_alignment import EVAL_BATCH, Probe, config_of
from bcjax import components, evaluation, parallel, train
config = config_of({data_dir!r})
mesh = parallel.make_mesh()
assert mesh.devices.size == 8 and jax.process_count() == 2
workdir = epath.Path({out!r}) / "process_{process}"
workdir.mkdir()
data, resident = train.load_data(config, train.input_config(config, None, None), mesh, workdir)
steps, state = components.build_steps(config, mesh, normalizer=data.normalizer, total_steps=1, model=Probe())
evaluator = evaluation.EvaluationReport(
    "test", data, steps, mesh, EVAL_BATCH, directory=epath.Path({out!r}), bootstrap_samples=10, seed=0
)
report = evaluator.run(state)
print("RESULT " + json.dumps({{"mean": data.normalizer.mean, "std": data.normalizer.std, "resident": resident,
                               "images": report["images"], "local_rows": len(data.cache.rows),
                               "held_train": data.held_train.tolist()}}))
"""


def test_two_processes_z_score_and_predictions_csv(data, prepared_data_dir, tmp_path):
    """2 processes x 4 devices on the device path: each process decodes only its own devices' half of
    the training images; `train.load_data` pools the processes' z-score sums, which must give the
    statistics of all training images (and nothing else); predictions.csv, written by process 0 from
    both processes' padded shards, holds each image's own probabilities."""
    address = f"127.0.0.1:{trainer_runs.free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(
                    _TWO_PROCESS_SCRIPT.format(
                        address=address, process=p, data_dir=str(prepared_data_dir), out=str(tmp_path)
                    )
                ),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in range(2)
    ]
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=300)
            assert process.returncode == 0, output[-3000:]
            results.append(json.loads(output.split("RESULT ")[1].splitlines()[0]))
    finally:  # one failed: the other would wait for it
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert results[0]["mean"] == results[1]["mean"] and results[0]["std"] == results[1]["std"]
    assert all(r["images"] == len(data.split.test) for r in results)
    # Each process decoded its half of the training images and of the evaluation images, no more.
    halves = [set(r["held_train"]) for r in results]
    assert all(r["resident"] for r in results) and not halves[0] & halves[1]
    assert halves[0] | halves[1] == set(np.unique(data.split.train).tolist())
    for p, result in enumerate(results):
        shards = [input_pipeline.host_shard(getattr(data.split, side), p, 2) for side in ("validation", "test")]
        assert result["local_rows"] == len(halves[p]) + sum(map(len, shards))
    train_pixels = data.cache.images[np.searchsorted(data.cache.rows, np.unique(data.split.train))]
    pixels = train_pixels.reshape(-1, 3) / 255.0
    # The pooled sums went through two float32 parts each (train.load_data's allgather), and the std
    # subtracts two of them: 1e-10 (measured 3e-12; a float32 allgather would miss by ~1e-7).
    np.testing.assert_allclose(results[0]["mean"], pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(results[0]["std"], pixels.std(0), rtol=1e-10)
    normalizer = normalization.Normalizer("zscore", tuple(results[0]["mean"]), tuple(results[0]["std"]), scale=1 / 255)
    check_predictions_csv(tmp_path / "predictions.csv", data, normalizer)
