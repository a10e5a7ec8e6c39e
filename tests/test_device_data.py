"""The device-resident training path: batches drawn on the devices, the trainer's wiring, resume."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config
from etils import epath

from bcjax import components, device_data, input_pipeline, parallel, train, workdir_guard
from bcjax.augment import AugmentConfig

batch_of = jax.jit(device_data.device_batch)


@pytest.fixture(scope="module")
def data(prepared_data_dir):
    config = tiny_config.get_config(str(prepared_data_dir))
    config.data.balance = True
    config.data.augment.update(rotate90=True, crop_scale=(0.5, 1.0), hed_sigma=0.05, rotation=30.0, fill_mode="nearest")
    return input_pipeline.load(train.input_config(config, None, None), progress=False)


def _batches(data, devices, steps, shard=True):
    resident = data.on_devices(8, parallel.make_mesh(devices), shard=shard)
    return [jax.device_get(batch_of(resident, jnp.int32(step))) for step in range(steps)]


def test_batches_do_not_depend_on_the_devices(data):
    """Same rows on 1 device and 8 (sharded or replicated); the augmented pixels agree to 1 level.

    XLA compiles the float augmentation differently for 1 and 8 images per device,
    which moves a rounding tie now and then (measured: 1 value in 24,576).
    """
    one = _batches(data, jax.devices()[:1], 3)
    for other in (_batches(data, jax.devices(), 3), _batches(data, jax.devices(), 3, shard=False)):
        for a, b in zip(one, other):
            for key in ("index", "label", "tumor_type", "magnification"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            difference = np.abs(a["image"].astype(int) - b["image"])
            assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


@pytest.mark.parametrize("padding", [0, 13])
def test_an_epoch_draws_every_training_row_once_with_its_labels(data, padding):
    """Also with the arrays padded past the training set (as for the largest of several folds):
    the padding is never drawn."""
    rows = data.train_rows
    assert len(np.unique(rows)) < len(rows)  # balancing repeats rows
    own = input_pipeline.train_capacity([rows])
    data = dataclasses.replace(
        data, capacity=input_pipeline.TrainCapacity(own.images + padding, own.rows + padding, own.rows - padding)
    )
    batches = _batches(data, jax.devices(), len(rows) // 8 + 2)  # the last batches run into the next epoch
    index = np.concatenate([b["index"] for b in batches])
    assert sorted(index[: len(rows)]) == sorted(rows)
    assert sorted(index[len(rows) :]) != sorted(index[: len(index) - len(rows)])  # reshuffled
    for batch in batches:
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
        np.testing.assert_array_equal(batch["label"], data.table.label[batch["index"]])
        np.testing.assert_array_equal(batch["tumor_type"], data.table.tumor_type[batch["index"]])


def test_without_augmentation_the_images_are_the_cached_ones(data):
    resident = dataclasses.replace(data.on_devices(8, parallel.make_mesh()), augment=AugmentConfig())
    batch = jax.device_get(batch_of(resident, jnp.int32(1)))
    np.testing.assert_array_equal(batch["image"], np.stack([data.cache.image(r) for r in batch["index"]]))


def test_fits_on_device_bounds_cpu_copies():
    cpus = jax.devices()  # no memory statistics: all copies share host RAM
    assert device_data.fits_on_device(device_data.CPU_DEVICE_BYTES // len(cpus), cpus)
    assert not device_data.fits_on_device(device_data.CPU_DEVICE_BYTES // len(cpus) + 1, cpus)


def _records(workdir):
    """metrics.jsonl without the timings."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    timings = ("train/images_per_second", "train/input_wait_fraction")
    return [{k: v for k, v in r.items() if k not in timings} for r in records]


@pytest.mark.slow
@pytest.mark.parametrize("resident", [True, False])
def test_both_paths_train_and_resume_exactly(resident, prepared_data_dir, tmp_path, capsys):
    """Resuming from the checkpoint at step 2 repeats steps 3 and 4 exactly; the host path as before."""
    config = tiny_config.get_config(str(prepared_data_dir))
    config.data.device_resident = resident
    config.total_steps, config.steps_per_epoch = 4, 2  # validation and checkpoints at steps 2 and 4
    config.evaluation.splits = ("test",)
    straight = train.train_and_evaluate(config, str(tmp_path))
    assert ("Training images on the devices" in capsys.readouterr().out) == resident
    records = _records(tmp_path)
    assert np.isfinite([r["train/loss"] for r in records]).all() and len(records) == 4
    shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if killed after step 2's checkpoint
    resumed = train.train_and_evaluate(config, str(tmp_path))
    assert "Resumed from step 2" in capsys.readouterr().out
    assert _records(tmp_path) == records
    assert resumed["test"]["overall"] == straight["test"]["overall"]


def test_auto_keeps_the_path_the_workdir_chose(data, prepared_data_dir, tmp_path):
    """A resume keeps the first run's path even where 'auto' would now choose the other one."""
    config = tiny_config.get_config(str(prepared_data_dir))
    assert config.data.device_resident == "auto"
    mesh = parallel.make_mesh()
    workdir = epath.Path(tmp_path)
    assert train.choose_device_path(config, data.capacity, data.config, mesh, workdir)  # room on the devices
    record = workdir / workdir_guard.DATA_PATH_CHOICE_FILE
    assert json.loads(record.read_text())["device_resident"] is True
    record.write_text(json.dumps({"device_resident": False}))  # as if chosen on a machine without room
    assert not train.choose_device_path(config, data.capacity, data.config, mesh, workdir)


def test_device_path_steps_never_touch_the_host_and_donate_the_state(data, prepared_data_dir):
    """No implicit host<->device transfer inside the training loop's steps; the old state is donated."""
    config = tiny_config.get_config(str(prepared_data_dir))
    mesh = parallel.make_mesh()
    resident = data.on_devices(config.batch_size, mesh)
    steps, state = components.build_steps(
        config, mesh, normalizer=data.normalizer, total_steps=10, device_data=resident
    )
    state, _ = steps.train(state, resident)  # compiles outside the guard
    with jax.transfer_guard("disallow"):
        for _ in range(3):
            old = state
            state, metrics = steps.train(state, resident)
            assert jax.tree.leaves(old["params"])[0].is_deleted()
    assert int(jax.device_get(state["step"])) == 4 and np.isfinite(jax.device_get(metrics["loss"]))
