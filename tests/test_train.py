"""The trainer: sharded steps, the workdir's artifacts, resume, faults, recipes and multi-host."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
from flax import nnx

from bcjax import components, input_pipeline, parallel, train
from bcjax.models import create_model
from bcjax.workdir_guard import WorkdirMismatchError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _main(workdir, data_dir, *overrides, devices=8, config=None, wait=True, extra_env=None):
    """Runs `python -m bcjax.main` in a fresh process (as a user would)."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "bcjax.main",
        f"--config={config or f'tests/tiny_config.py:{data_dir}'}",
        f"--workdir={workdir}",
        *overrides,
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _report(workdir, side="test"):
    return json.loads((workdir / "eval" / side / "report.json").read_text())


@pytest.fixture(scope="module")
def finished_run(prepared_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config.get_config(str(prepared_data_dir))
    results = train.train_and_evaluate(config, str(workdir))
    return workdir, config, results


def test_run_writes_every_artifact(finished_run):
    workdir, config, results = finished_run
    for name in ("config.json", "split.json", "metrics.jsonl", "learning_curves.png"):
        assert (workdir / name).stat().st_size > 0, name
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints").is_dir()
    split = json.loads((workdir / "split.json").read_text())
    for side in ("validation", "test"):
        report = _report(workdir, side)
        for key in (
            "accuracy",
            "balanced_accuracy",
            "roc_auc",
            "sensitivity",
            "specificity",
            "macro_f1",
            "patient_recognition_rate",
            "patient_majority_vote_accuracy",
            "confusion_matrix",
        ):
            assert key in report["overall"], key
        assert set(report["by_magnification"]) == {"40X", "100X", "200X", "400X"}
        assert report["test_images_with_seen_accession"] == 0  # patient-disjoint by default
        assert "accuracy" in report["confidence_intervals"]
        lines = (workdir / "eval" / side / "predictions.csv").read_text().splitlines()
        header = lines[0].split(",")
        assert header[:6] == ["filename", "patient_id", "accession", "magnification", "tumor_type", "label"]
        assert "prediction" in header and {"prob_benign", "prob_malignant"} <= set(header)
        assert len(lines) - 1 == split["sides"][side]["images"] == report["images"]  # every image exactly once
        for plot in ("confusion_matrix.png", "roc.png"):
            assert (workdir / "eval" / side / plot).stat().st_size > 0
    assert not set(split["sides"]["test"]["accessions"]) & set(split["sides"]["train"]["accessions"])
    records = _records(workdir)
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, config.total_steps + 1))
    assert any("validation/accuracy" in r for r in records)


def test_same_command_resumes_and_another_config_is_refused(finished_run, prepared_data_dir):
    workdir, config, results = finished_run
    again = train.train_and_evaluate(config, str(workdir))  # finished: nothing to train, same evaluation
    assert again["test"]["overall"] == results["test"]["overall"]
    other = tiny_config.get_config(str(prepared_data_dir))
    other.optimizer.learning_rate = 0.5
    with pytest.raises(WorkdirMismatchError, match="optimizer.learning_rate: 0.001 -> 0.5"):
        train.train_and_evaluate(other, str(workdir))


def _step_outputs(data, config, devices, steps=4):
    mesh = parallel.make_mesh(devices)
    model = create_model(
        "resnet18", "v1.5", "mlp", 2, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0), hidden=(16,)
    )
    config.shard_params = len(devices) > 1
    fns, state = components.build_steps(config, mesh, normalizer=data.normalizer, total_steps=10, model=model)
    iterator = iter(data.train(config.batch_size))
    losses_seen = []
    for _ in range(steps):
        state, metrics = fns.train(state, parallel.to_global(next(iterator), mesh))
        losses_seen.append(float(metrics["loss"]))
    return np.array(losses_seen), jax.tree.map(np.asarray, jax.device_get(state["params"]))


def test_one_and_eight_devices_give_the_same_training(prepared_data_dir):
    """Same global batches on 1 device and on 8 (parameters sharded): same losses and parameters.

    Run in float64: in float32, batch-norm backward at this tiny scale is so
    ill-conditioned that the summation order alone (1 device vs 8) moves some
    gradients by percent, on 1 device as much as on 8 (both are equally far from
    the float64 gradient). float64 shows the sharded program computes the same thing.
    """
    config = tiny_config.get_config(str(prepared_data_dir))
    config.data.height = config.data.width = 64
    config.batch_size = 32
    data = input_pipeline.load(train.input_config(config, None, None), progress=False)
    with jax.enable_x64(True):
        one = _step_outputs(data, config, jax.devices()[:1])
        eight = _step_outputs(data, config, jax.devices()[:8])
    assert np.all(np.diff(one[0]) != 0)  # it trains
    np.testing.assert_allclose(one[0], eight[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(one[1]), jax.tree.leaves(eight[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_nan_loss_stops_with_the_step_named(prepared_data_dir, tmp_path):
    config = tiny_config.get_config(str(prepared_data_dir))
    config.optimizer.name, config.optimizer.learning_rate = "sgd", 1e12
    config.checkpoint_every_steps = 1
    with pytest.raises(train.TrainingError, match=r"at step \d+; training stopped") as error:
        train.train_and_evaluate(config, str(tmp_path))
    step = int(str(error.value).split("at step ")[1].split(";")[0])
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < step  # only good states were saved
    assert f"last good checkpoint (step {max(saved)})" in str(error.value)


def test_kill_9_then_resume_matches_an_uninterrupted_run(prepared_data_dir, tmp_path):
    overrides = [
        "--config.total_steps=12",
        "--config.checkpoint_every_steps=3",
        "--config.eval_every_steps=6",
        "--config.data.height=80",
        "--config.data.width=80",
    ]
    code, output = _main(tmp_path / "straight", prepared_data_dir, *overrides, devices=2)
    assert code == 0, output[-3000:]
    interrupted = tmp_path / "interrupted"
    process = _main(interrupted, prepared_data_dir, *overrides, devices=2, wait=False)
    _wait_for(lambda: (interrupted / "checkpoints" / "3" / "commit_success.txt").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "eval").exists(), "the run finished before it could be killed"
    code, output = _main(interrupted, prepared_data_dir, *overrides, devices=2)
    assert code == 0, output[-3000:]
    assert "Resumed from step" in output
    assert _report(interrupted) == _report(tmp_path / "straight")
    straight, resumed = _records(tmp_path / "straight"), _records(interrupted)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    for a, b in zip(straight, resumed):
        for key in ("train/loss", "train/accuracy", "validation/loss"):
            assert a.get(key) == b.get(key), (a["step"], key)


def _wait_for(condition, process, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_saves_and_exits_cleanly(prepared_data_dir, tmp_path):
    overrides = ["--config.total_steps=400", "--config.checkpoint_every_steps=200", "--config.eval_every_steps=200"]
    process = _main(tmp_path, prepared_data_dir, *overrides, devices=1, wait=False)
    _wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len(_records(tmp_path)) >= 2, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "SIGTERM: saved step" in output
    step = int(output.split("SIGTERM: saved step ")[1].split(";")[0])
    assert (tmp_path / "checkpoints" / str(step) / "commit_success.txt").exists()


def test_two_processes_match_one(prepared_data_dir, tmp_path):
    """2 processes x 4 devices (jax.distributed on localhost) train exactly like 1 x 8.

    Computed in float64 for the reason given in the 1-vs-8-devices test above.
    """
    overrides = [
        "--config.total_steps=4",
        "--config.evaluation.splits=('test',)",
        "--config.optimizer.name=sgd",
        "--config.optimizer.learning_rate=0.01",
        "--config.model.dtype=float64",
    ]
    x64 = {"JAX_ENABLE_X64": "1"}
    code, output = _main(tmp_path / "one", prepared_data_dir, *overrides, devices=8, extra_env=x64)
    assert code == 0, output[-3000:]
    port = 20000 + os.getpid() % 20000
    processes = [
        _main(
            tmp_path / "two",
            prepared_data_dir,
            *overrides,
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            devices=4,
            wait=False,
            extra_env=x64,
        )
        for i in range(2)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    np.testing.assert_allclose([r["train/loss"] for r in one], [r["train/loss"] for r in two], rtol=1e-5)
    a, b = _report(tmp_path / "one")["overall"], _report(tmp_path / "two")["overall"]
    assert a["images"] == b["images"]
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], atol=1e-6)


@pytest.mark.parametrize(
    "recipe, split_check",
    [
        ("configs/binary.py", lambda r: r["test_images_with_seen_accession"] == r["images"]),  # recipe A: all leak
        ("configs/multiclass.py", lambda r: r["test_images_with_seen_patient"] > 0),  # recipe B: images at random
    ],
)
def test_recipe_configs_run_and_report_their_leakage(recipe, split_check, prepared_data_dir, tmp_path):
    overrides = [
        "--config.data.dataset=breakhis/custom",
        f"--config.data.data_dir={prepared_data_dir}",
        "--config.model.arch=resnet18",
        "--config.data.height=32",
        "--config.data.width=48",
        "--config.total_steps=2",
        "--config.steps_per_epoch=2",
        "--config.batch_size=8",
        "--config.evaluation.bootstrap_samples=20",
    ]
    code, output = _main(tmp_path, prepared_data_dir, *overrides, config=recipe)
    assert code == 0, output[-3000:]
    report = _report(tmp_path)
    assert split_check(report), report["leakage_summary"]
    assert "leakage:" in output and "test images" in output


def test_missing_dataset_and_bad_keys_end_in_one_message(tmp_path):
    code, output = _main(tmp_path / "w", tmp_path / "nothing")
    assert code == 1
    assert "No prepared breakhis/custom dataset" in output and "configs/demo.py" in output
    assert "Traceback" not in output
    code, output = _main(tmp_path / "w2", tmp_path, "--config.optimizer.nme=adam")
    assert code != 0 and "nme" in output


def test_all_folds_report_mean_and_std(prepared_data_dir, tmp_path):
    config = tiny_config.get_config(str(prepared_data_dir))
    config.data.all_folds = True
    config.data.split_kwargs.k = 2
    config.total_steps, config.evaluation.splits = 2, ("test",)
    results = train.train_and_evaluate(config, str(tmp_path))
    summary = json.loads((tmp_path / "folds_summary.json").read_text())
    assert summary["folds"] == 2 and len(results["folds"]) == 2
    accuracies = [_report(tmp_path / f"fold_{i}")["overall"]["accuracy"] for i in range(2)]
    assert summary["overall"]["accuracy"]["values"] == accuracies
    assert summary["overall"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    tests = [
        set(json.loads((tmp_path / f"fold_{i}" / "split.json").read_text())["sides"]["test"]["patients"])
        for i in range(2)
    ]
    assert not tests[0] & tests[1]  # each patient tested in one fold only
