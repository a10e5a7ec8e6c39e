"""The decoded-image cache on disk: reuse, invalidation, corruption, concurrent builders, listing."""

import dataclasses
import multiprocessing
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tiny_config
import trainer_runs

from bcjax import image_cache, input_pipeline, train


def _config(prepared_data_dir, cache_dir, **fields):
    """The tiny config's input, decoding in this process (where `_decodes` counts)."""
    config = input_pipeline.InputConfig.from_config(tiny_config.get_config(str(prepared_data_dir)))
    return dataclasses.replace(config, **{"image_cache_dir": str(cache_dir), "decode_workers": 1, **fields})


def _load(config):
    return input_pipeline.load(config, progress=False)


def _decodes(monkeypatch) -> list[int]:
    """Counts the images decoded from here on."""
    calls = []
    decode = input_pipeline.decoding.decode_image

    def counting(*args, **kwargs):
        calls.append(1)
        return decode(*args, **kwargs)

    monkeypatch.setattr(input_pipeline.decoding, "decode_image", counting)
    return calls


def test_a_second_run_decodes_nothing_and_reads_the_same_images(prepared_data_dir, tmp_path, monkeypatch):
    decoded = _decodes(monkeypatch)
    config = _config(prepared_data_dir, tmp_path)
    first = _load(config)
    assert len(decoded) == len(first.cache.rows) > 0
    second = _load(config)
    assert len(decoded) == len(first.cache.rows)  # nothing decoded again
    np.testing.assert_array_equal(second.cache.images, first.cache.images)
    in_memory = _load(dataclasses.replace(config, image_cache_dir="none"))
    np.testing.assert_array_equal(in_memory.cache.images, first.cache.images)


def _assert_same_table(a, b):
    for field in dataclasses.fields(a):
        np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name), err_msg=field.name)


def test_a_second_run_reads_the_table_from_the_cache_not_every_record(prepared_data_dir, tmp_path, monkeypatch, capsys):
    config = _config(prepared_data_dir, tmp_path)
    first = _load(config)
    reads = []
    metadata = input_pipeline._metadata
    monkeypatch.setattr(input_pipeline, "_metadata", lambda record: reads.append(1) or metadata(record))
    second = _load(config)
    assert not reads
    _assert_same_table(second.table, first.table)
    (folder,) = [e.folder for e in image_cache.list_caches(tmp_path)]
    (folder / image_cache.RECORDS_FILE).write_text("{ truncated")
    third = _load(config)
    assert "unreadable" in capsys.readouterr().err and len(reads) == len(first.table)
    _assert_same_table(third.table, first.table)
    reads.clear()
    _load(config)
    assert not reads  # kept again


def test_decoding_threads_give_the_images_of_one_in_order(prepared_data_dir):
    one = _load(_config(prepared_data_dir, "none"))
    np.testing.assert_array_equal(
        _load(_config(prepared_data_dir, "none", decode_workers=3)).cache.images, one.cache.images
    )


def test_another_fold_decodes_only_the_images_the_cache_lacks(prepared_data_dir, tmp_path, monkeypatch):
    decoded = _decodes(monkeypatch)
    config = _config(prepared_data_dir, tmp_path, magnification="40X")
    first = _load(config)
    _load(dataclasses.replace(config, split_kwargs={**config.split_kwargs, "fold": 1}))
    assert len(decoded) == len(first.cache.rows)  # fold 1 needs the same 40X images
    everything = _load(dataclasses.replace(config, magnification=None))
    assert len(decoded) == len(everything.cache.rows)  # the other magnifications, once
    assert len(image_cache.list_caches(tmp_path)) == 1


@pytest.mark.parametrize(
    "change", [dict(height=24), dict(width=40), dict(stain_normalization="macenko")], ids=lambda c: next(iter(c))
)
def test_a_changed_setting_gets_its_own_cache(prepared_data_dir, tmp_path, change):
    config = _config(prepared_data_dir, tmp_path)
    _load(config)
    changed = _load(dataclasses.replace(config, **change))
    ((name, value),) = change.items()
    keys = sorted(str(entry.key[name]) for entry in image_cache.list_caches(tmp_path))
    assert keys == sorted([str(getattr(config, name)), str(value)])
    assert changed.cache.images.shape[1:3] == (changed.config.height, changed.config.width)


def test_a_rebuilt_dataset_gets_a_new_cache(prepared_data_dir, tmp_path):
    config = _config(prepared_data_dir, tmp_path)
    dataset_dir = input_pipeline.tfds.builder(config.dataset, data_dir=str(prepared_data_dir)).data_dir
    before = input_pipeline.image_cache_key(config, dataset_dir)
    info = pathlib.Path(dataset_dir) / "dataset_info.json"
    text = info.read_text()
    info.write_text(text + " ")  # as if the dataset were rebuilt
    try:
        assert input_pipeline.image_cache_key(config, dataset_dir) != before
    finally:
        info.write_text(text)


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "delete_rows"])
def test_a_damaged_chunk_is_detected_removed_and_decoded_again(
    prepared_data_dir, tmp_path, monkeypatch, capsys, damage
):
    config = _config(prepared_data_dir, tmp_path)
    first = _load(config)
    (folder,) = [e.folder for e in image_cache.list_caches(tmp_path)]
    images = next(folder.glob("*.images.npy"))
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "flip_a_byte":
        data = bytearray(images.read_bytes())
        data[-1] ^= 0xFF
        images.write_bytes(bytes(data))
    else:
        next(folder.glob("*.rows.npy")).unlink()
    decoded = _decodes(monkeypatch)
    second = _load(config)
    assert "is unusable" in capsys.readouterr().err
    assert len(decoded) == len(first.cache.rows)  # decoded again, not read
    np.testing.assert_array_equal(second.cache.images, first.cache.images)
    assert len(list(folder.glob("*.images.npy"))) == 1  # the damaged chunk is gone, the new one is sound
    decoded.clear()
    _load(config)
    assert not decoded


def _build(data_dir, cache_dir, start=None):
    config = dataclasses.replace(
        input_pipeline.InputConfig.from_config(tiny_config.get_config(data_dir)),
        image_cache_dir=cache_dir,
    )
    if start is not None:
        start.wait()  # every builder past its imports: they decode and write at the same time
    return input_pipeline.load(config, progress=False).cache.images


def test_processes_building_the_same_cache_at_once_leave_it_sound(prepared_data_dir, tmp_path):
    """Four processes start together on an empty cache; each gets the right images, and so does a fifth."""
    expected = _load(_config(prepared_data_dir, tmp_path / "alone")).cache.images
    shared = (str(prepared_data_dir), str(tmp_path / "shared"))
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        start = manager.Barrier(4)
        results = pool.starmap(_build, [(*shared, start)] * 4)
    for images in results:
        np.testing.assert_array_equal(images, expected)
    (entry,) = image_cache.list_caches(tmp_path / "shared")
    assert not [p for p in entry.folder.iterdir() if p.name.startswith(".tmp-")]
    assert entry.images >= len(expected)  # whole chunks, maybe from several builders
    np.testing.assert_array_equal(_build(*shared), expected)


def test_the_command_lists_and_removes_caches_with_their_sizes(prepared_data_dir, tmp_path):
    config = _config(prepared_data_dir, tmp_path)
    _load(config)
    _load(dataclasses.replace(config, height=24))
    command = [sys.executable, "-m", "bcjax.manage_image_cache", f"--cache_dir={tmp_path}"]
    listing = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    entries = image_cache.list_caches(tmp_path)
    for entry in entries:
        assert entry.folder.name in listing and f"{entry.images} images" in listing
    assert "MiB" in listing
    subprocess.run([*command, f"--remove={entries[0].folder.name}"], capture_output=True, text=True, check=True)
    assert [e.folder for e in image_cache.list_caches(tmp_path)] == [entries[1].folder]
    subprocess.run([*command, "--remove_all"], capture_output=True, text=True, check=True)
    assert image_cache.list_caches(tmp_path) == []


def test_a_run_keeps_its_images_beside_the_dataset_by_default(prepared_data_dir):
    config = train.input_config(tiny_config.get_config(str(prepared_data_dir)), None, None)
    assert config.image_cache_dir == ""
    _load(config)
    assert image_cache.list_caches(prepared_data_dir / image_cache.DEFAULT_FOLDER)


def test_readme_cache_commands_run_as_written(tmp_path):
    """README 'The image cache': the listing shows a cache under ~/tensorflow_datasets, --remove_all removes it."""
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("**The image cache.**")[1].split("```bash\n")[1].split("```")[0]
    listing, remove_all = block.strip().splitlines()
    root = tmp_path / "tensorflow_datasets" / image_cache.DEFAULT_FOLDER
    key = {"dataset": "breakhis/custom:1.0.0", "height": 2, "width": 3, "stain_normalization": "none"}
    cache = image_cache.ImageCache(root, key)
    cache.add(np.arange(2), np.zeros((2, 2, 3, 3), np.uint8))
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"  # `python` is this one
    env = {**os.environ, "HOME": str(tmp_path), "PATH": path}
    run = dict(shell=True, env=env, capture_output=True, text=True, check=True)
    listed = subprocess.run(listing, **run).stdout
    assert f"{cache.folder.name}" in listed and "2 images  breakhis/custom:1.0.0 at 2x3" in listed
    assert "removed" in subprocess.run(remove_all, **run).stdout
    assert image_cache.list_caches(root) == [] and "0 caches" in subprocess.run(listing, **run).stdout


def test_an_unwritable_cache_folder_is_one_message_naming_the_setting(prepared_data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made under a file, whoever runs the test
    code, output = trainer_runs.main(
        tmp_path / "run", prepared_data_dir, f"--config.data.image_cache_dir={blocker / 'cache'}", devices=1
    )
    assert code != 0 and "Traceback" not in output
    assert "Cannot keep decoded images in" in output and "--config.data.image_cache_dir" in output
