"""The grain input pipeline on a prepared synthetic BreakHis: cache, batches, sharding, state."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tiny_config

from bcjax import decoding, input_pipeline
from bcjax.augment import AugmentConfig


@pytest.fixture(scope="module")
def data(prepared_data_dir):
    config = tiny_config.input_config(
        data_dir=str(prepared_data_dir),
        dataset="breakhis/custom",
        height=32,
        width=48,
        split="patient_kfold",
        split_kwargs={"k": 3, "fold": 1},
        seed=3,
    )
    return input_pipeline.load(config, progress=False)


def test_load_splits_and_caches_every_needed_image(data):
    split = data.split
    assert split.leakage.n_shared_accessions == 0
    needed = np.concatenate([split.train, split.validation, split.test])
    assert set(data.cache.rows) == set(needed)
    assert data.cache.images.shape == (len(data.cache.rows), 32, 48, 3)
    assert data.cache.images.dtype == np.uint8
    assert data.cache.images.std() > 5  # real pixels, not zeros


def test_cache_holds_the_decoded_resized_image(data, prepared_data_dir):
    source = input_pipeline.open_source(str(prepared_data_dir), "breakhis/custom")
    row = int(data.split.test[0])
    expected = decoding.decode_image(source[row]["image"], 32, 48)
    np.testing.assert_array_equal(data.cache.image(row), expected)


def test_train_batches_have_labels_of_their_rows(data):
    iterator = iter(data.train(global_batch=8))
    for _ in range(3):
        batch = next(iterator)
        assert batch["image"].shape == (8, 32, 48, 3) and batch["image"].dtype == np.uint8
        rows = batch["index"]
        assert set(rows) <= set(data.split.train)
        np.testing.assert_array_equal(batch["label"], data.table.label[rows])
        np.testing.assert_array_equal(batch["tumor_type"], data.table.tumor_type[rows])


def test_train_iterator_state_restores_exactly(data):
    dataset = data.train(global_batch=4)
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator)["index"] for _ in range(3)]
    restored = iter(dataset)
    restored.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(restored)["index"], want)


def test_global_batches_do_not_depend_on_the_number_of_processes(data):
    augment = AugmentConfig(flip_horizontal=True, hed_sigma=0.05)
    single = iter(
        input_pipeline.train_dataset(data.cache, data.table, data.train_rows, global_batch=6, seed=1, augment=augment)
    )
    parts = [
        iter(
            input_pipeline.train_dataset(
                data.cache,
                data.table,
                data.train_rows,
                global_batch=6,
                seed=1,
                augment=augment,
                process_index=p,
                process_count=3,
            )
        )
        for p in range(3)
    ]
    for _ in range(4):
        whole = next(single)
        pieces = [next(part) for part in parts]
        for key in ("index", "image"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), whole[key])


def test_an_epoch_visits_every_training_row_once(data):
    n = len(data.train_rows)
    iterator = iter(data.train(global_batch=1))
    seen = [int(next(iterator)["index"][0]) for _ in range(n)]
    assert sorted(seen) == sorted(data.train_rows.tolist())


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_evaluation_counts_every_image_exactly_once(data, process_count):
    rows = data.split.test
    counted = []
    batches_per_process = set()
    for p in range(process_count):
        batches = list(
            input_pipeline.eval_batches(
                data.cache, data.table, rows, local_batch=4, process_index=p, process_count=process_count
            )
        )
        batches_per_process.add(len(batches))
        for batch in batches:
            assert batch["image"].shape[0] == 4
            counted.extend(batch["index"][batch["mask"]].tolist())
    assert sorted(counted) == sorted(rows.tolist())
    assert len(batches_per_process) == 1  # every process runs the same number of steps


def test_balancing_equalises_class_counts():
    classes = np.array([0] * 10 + [1] * 3 + [2] * 1)
    rows = np.arange(14)
    balanced = input_pipeline.balanced_rows(rows, classes, seed=0)
    assert np.bincount(classes[balanced]).tolist() == [10, 10, 10]
    assert set(rows) <= set(balanced)


def test_augmented_training_keeps_shapes(prepared_data_dir):
    config = tiny_config.input_config(
        data_dir=str(prepared_data_dir),
        dataset="breakhis/custom",
        height=32,
        width=32,
        split="patient_holdout",
        augment=AugmentConfig(
            flip_horizontal=True,
            rotate90=True,
            crop_scale=(0.5, 1.0),
            hed_sigma=0.05,
            rotation=45.0,
            zoom=0.1,
            translation=0.1,
            fill_mode="constant",
        ),
        normalization="zscore",
        balance=True,
        target="tumor_type",
    )
    data = input_pipeline.load(config, progress=False)
    batch = next(iter(data.train(global_batch=6)))
    assert batch["image"].shape == (6, 32, 32, 3)
    assert data.num_classes == 8
    normalized = data.normalizer(data.cache.images)
    assert abs(float(normalized.mean())) < 0.5 and 0.5 < float(normalized.std()) < 2.0


def test_missing_dataset_says_what_to_do(tmp_path):
    with pytest.raises(input_pipeline.DataNotFoundError) as error:
        input_pipeline.open_source(str(tmp_path), "breakhis/archive")
    message = str(error.value)
    assert "BreaKHis_v1.tar.gz" in message and "manual_dir" in message and "configs/demo.py" in message


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="data.target"):
        tiny_config.input_config(target="patient")
    with pytest.raises(ValueError, match="data.normalization"):
        tiny_config.input_config(normalization="minmax")


def test_batches_on_eight_devices_without_tensorflow(prepared_data_dir):
    """Global sharded batches on 8 forced CPU devices; a fresh process never imports TensorFlow."""
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        os.environ["JAX_PLATFORMS"] = "cpu"
        import jax
        from bcjax import input_pipeline, parallel
        from configs import default
        config = input_pipeline.InputConfig.from_config(default.get_config(), data_dir={str(prepared_data_dir)!r},
                                            dataset="breakhis/custom", height=16, width=24, split="patient_holdout",
                                            split_kwargs={{}}, normalization="imagenet")
        data = input_pipeline.load(config, progress=False)
        mesh = parallel.make_mesh()
        assert mesh.devices.size == 8
        iterator = iter(data.train(16))
        for _ in range(2):
            batch = parallel.to_global(next(iterator), mesh)
            assert batch["image"].shape == (16, 16, 24, 3)
            assert len(batch["image"].sharding.device_set) == 8
            assert batch["image"].addressable_shards[0].data.shape == (2, 16, 24, 3)
        images = data.normalizer(batch["image"])  # the normaliser runs on jax.Arrays too
        assert images.dtype == jax.numpy.float32
        assert "tensorflow" not in sys.modules, "reading imported TensorFlow"
        print("ok")
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


# ----------------------------------------------------------------------------- z-score statistics


def _zscore_config(data_dir):
    return tiny_config.input_config(
        data_dir=str(data_dir),
        dataset="breakhis/custom",
        height=16,
        width=24,
        split="patient_kfold",
        split_kwargs={"k": 3, "fold": 0},
        normalization="zscore",
    )


@pytest.fixture(scope="module")
def zscore_loads(prepared_data_dir):
    """One z-score config loaded as a single process, and as process 0 and 1 of two: {(index, count): data}."""
    config = _zscore_config(prepared_data_dir)
    return {
        (p, count): input_pipeline.load(config, process_index=p, process_count=count, progress=False)
        for p, count in [(0, 1), (0, 2), (1, 2)]
    }


def _pixel_statistics(data, rows):
    """Per-channel mean and std in [0, 1] units of the cached images of `rows` (each once), in float64."""
    rows = np.unique(rows)
    pixels = data.cache.images[np.searchsorted(data.cache.rows, rows)].reshape(-1, 3) / 255.0
    return pixels.mean(0), pixels.std(0)


def test_zscore_statistics_come_from_the_training_images_only(zscore_loads):
    data = zscore_loads[0, 1]
    split = data.split
    mean, std = _pixel_statistics(data, split.train)
    np.testing.assert_allclose(data.normalizer.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(data.normalizer.std, std, rtol=1e-9)
    # The check can see a leak: adding the validation or the test images moves the statistics
    # by 0.005-0.027 here (their patients' stains differ), far beyond the tolerance above.
    for side in ("validation", "test"):
        leaky_mean, leaky_std = _pixel_statistics(data, np.concatenate([split.train, getattr(split, side)]))
        moved = max(np.abs(leaky_mean - mean).max(), np.abs(leaky_std - std).max())
        assert moved > 2e-3, (side, moved)


def test_zscore_statistics_are_the_same_in_every_process(zscore_loads):
    """Without a training share (the host path) every process holds every training image, so each
    computes the statistics of all of them, and its evaluation shard alone. Check both."""
    one = zscore_loads[0, 1]
    train = np.unique(one.split.train)
    shards = []
    for p in range(2):
        part = zscore_loads[p, 2]
        np.testing.assert_array_equal(part.split.train, one.split.train)
        assert set(train) <= set(part.cache.rows)  # every process holds every training image
        assert part.normalizer == one.normalizer  # exactly: same images, same order
        shards.append(set(part.cache.rows) - set(train))
    assert not shards[0] & shards[1]  # evaluation images are sharded, not duplicated
    assert shards[0] | shards[1] == set(one.split.validation) | set(one.split.test)
