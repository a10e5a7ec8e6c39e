"""The BreakHis TFDS builder on synthetic trees: features, tar input, and every failure mode."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

import bcjax.datasets.breakhis  # noqa: F401  (registers `breakhis`)
from bcjax.datasets import synthetic
from bcjax.datasets.breakhis import (
    ARCHIVE_NAME,
    FILE_RE,
    PUBLISHED_IMAGES,
    PUBLISHED_PATIENTS,
    TUMOR_TYPES_BY_CODE,
    BreakHisBuildError,
    is_source_image,
)

README = os.path.join(os.path.dirname(bcjax.datasets.breakhis.__file__), "README.md")


def _build(manual_dir, data_dir, config="custom"):
    builder = tfds.builder(f"breakhis/{config}", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _sob_files(root):
    return sorted(str(p.relative_to(root.parent)) for p in root.rglob("SOB*.png") if is_source_image(p.name))


def _records(data_dir, config="custom"):
    source = tfds.data_source(
        f"breakhis/{config}", data_dir=str(data_dir), decoders={"image": tfds.decode.SkipDecoding()}
    )["train"]
    return [source[i] for i in range(len(source))]


def _small_tree(tmp_path, **kwargs):
    out = tmp_path / "manual"
    kwargs = {"patients": 1, "images_per_magnification": 1, "image_size": (70, 46), "progress": False, **kwargs}
    return synthetic.write_breakhis_tree(out, **kwargs)


def test_folder_build_parses_every_feature(synthetic_tree, prepared_data_dir):
    files = _sob_files(synthetic_tree.root)
    records = _records(prepared_data_dir)
    assert len(records) == len(files) == synthetic_tree.num_images
    assert [r["filename"].decode() for r in records] == files  # sorted, deterministic order
    info = tfds.builder("breakhis/custom", data_dir=str(prepared_data_dir)).info
    names = {k: info.features[k].names for k in ("label", "tumor_type", "magnification")}
    for record in records:
        filename = record["filename"].decode()
        bm, code, year, slide, mag, _ = FILE_RE.match(filename.rsplit("/", 1)[1]).groups()
        folder, _, cls = TUMOR_TYPES_BY_CODE[code]
        assert names["label"][record["label"]] == cls == ("benign" if bm == "B" else "malignant")
        assert names["tumor_type"][record["tumor_type"]] == folder
        assert names["magnification"][record["magnification"]] == f"{mag}X"
        assert record["patient_id"].decode() == f"SOB_{bm}_{code}_{year}-{slide}"
        digits = re.match(r"\d+", slide).group()
        assert record["accession"].decode() == f"{year}-{digits}"
        assert filename.startswith("BreaKHis_v1/histology_slides/breast/")
    # The DC and LC folders of slide 14-13412 stay two patients sharing one accession.
    patients = {r["patient_id"].decode() for r in records if r["accession"] == b"14-13412"}
    assert patients == {"SOB_M_DC_14-13412", "SOB_M_LC_14-13412"}


def test_images_decode_to_their_source_pixels(synthetic_tree, prepared_data_dir):
    source = tfds.data_source("breakhis/custom", data_dir=str(prepared_data_dir))["train"]
    from PIL import Image

    for i in (0, len(source) // 2, len(source) - 1):
        record = source[i]
        with Image.open(synthetic_tree.root.parent / record["filename"].decode()) as original:
            np.testing.assert_array_equal(record["image"], np.asarray(original.convert("RGB")))


def test_summary_counts_duplicates_and_sizes(prepared_data_dir, synthetic_tree):
    summary_file = next(prepared_data_dir.rglob("build_summary.json"))
    summary = json.loads(summary_file.read_text())
    assert summary["images"] == synthetic_tree.num_images
    assert summary["patients"] == sum(synthetic_tree.patients.values())
    assert summary["byte_identical_groups"] >= 1  # the DC/LC twin folders of slide 14-13412
    assert any("SOB_M_DC_14-13412" in f for group in summary["byte_identical_examples"] for f in group)
    assert summary["accession_groups"] < summary["patients"]  # suffix siblings share accessions


def test_tar_build_equals_folder_build(synthetic_tree, prepared_data_dir, tmp_path):
    manual = tmp_path / "tar_only"
    manual.mkdir()
    shutil.copy(synthetic_tree.tar_path, manual / ARCHIVE_NAME)
    _build(manual, tmp_path / "data")
    from_tar = _records(tmp_path / "data")
    from_folder = _records(prepared_data_dir)
    assert len(from_tar) == len(from_folder)
    for a, b in zip(from_tar, from_folder):
        assert a == b


def test_bad_files_are_all_listed_and_nothing_is_written(tmp_path):
    tree = _small_tree(tmp_path)
    pngs = sorted(p for p in tree.root.rglob("SOB_*.png"))
    truncated = pngs[:2]
    for path in truncated:
        path.write_bytes(path.read_bytes()[:200])
    misnamed = pngs[5].with_name("SOB_X_bad-name.png")
    pngs[5].rename(misnamed)
    with pytest.raises(BreakHisBuildError) as error:
        _build(tree.root.parent, tmp_path / "data")
    message = str(error.value)
    assert "3 bad file(s)" in message
    for path in truncated + [misnamed]:
        assert path.name in message
    assert not tfds.builder("breakhis/custom", data_dir=str(tmp_path / "data")).is_prepared()
    assert not list((tmp_path / "data").rglob("*.array_record*"))


def test_misplaced_file_is_reported(tmp_path):
    tree = _small_tree(tmp_path)
    png = next(tree.root.rglob("40X/SOB_*.png"))
    png.rename(png.parent.parent / "100X" / png.name)
    with pytest.raises(BreakHisBuildError, match="contradict the name"):
        _build(tree.root.parent, tmp_path / "data")


def test_missing_data_says_how_to_get_it(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "notes.txt").write_text("not breakhis")
    with pytest.raises(BreakHisBuildError) as error:
        _build(tmp_path / "manual", tmp_path / "data")
    assert "BreaKHis_v1.tar.gz" in str(error.value) and "notes.txt" in str(error.value)
    with pytest.raises(BreakHisBuildError, match="manual"):
        _build(tmp_path / "nowhere", tmp_path / "data")


def test_archive_config_reports_every_count_that_differs(synthetic_tree, tmp_path):
    with pytest.raises(BreakHisBuildError) as error:
        _build(synthetic_tree.root.parent, tmp_path / "data", config="archive")
    message = str(error.value)
    assert "partial download" in message and "breakhis/custom" in message
    assert "DC 40X:" in message and "published 864" in message
    assert len(re.findall(r"^  \w+ \d+X: ", message, flags=re.M)) == 32  # every type x magnification


def test_published_counts_match_reference_totals():
    totals = np.array(list(PUBLISHED_IMAGES.values()))
    assert totals.sum() == 7909
    assert list(totals.sum(0)) == [1995, 2081, 2013, 1820]
    assert sum(PUBLISHED_PATIENTS.values()) == 82


def test_truncated_archive_is_a_clear_error(synthetic_tree, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    data = synthetic_tree.tar_path.read_bytes()
    (manual / ARCHIVE_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(BreakHisBuildError, match="truncated or corrupt"):
        _build(manual, tmp_path / "data")


def test_unsafe_archive_members_are_refused(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / ARCHIVE_NAME, "w:gz") as tar:
        for name in ("BreaKHis_v1/ok.txt", "../escape.png", "/abs/SOB_x.png"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("BreaKHis_v1/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(BreakHisBuildError) as error:
        _build(manual, tmp_path / "data")
    message = str(error.value)
    assert "3 member(s)" in message and "../escape.png" in message and "BreaKHis_v1/link" in message
    assert not (tmp_path / "escape.png").exists()
    assert not list(tmp_path.rglob("SOB_x.png"))


def test_building_and_reading_do_not_import_tensorflow(synthetic_tree, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import tensorflow_datasets as tfds
        import bcjax.datasets.breakhis
        b = tfds.builder("breakhis/custom", data_dir={str(tmp_path)!r})
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir={str(synthetic_tree.root.parent)!r}))
        source = tfds.data_source("breakhis/custom", data_dir={str(tmp_path)!r})["train"]
        assert source[0]["image"].ndim == 3
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        assert "jax" not in sys.modules, "the builder pulled in JAX"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)


# The README's placeholders, pointed at a small synthetic tree and the 'custom' config (the
# 'archive' config insists on the published counts); '~' is a fresh HOME for each block.
_README_PLACEHOLDERS = {
    "/data/breakhis": "{manual_dir}",
    "breakhis/archive": "breakhis/custom",
    "--config=archive": "--config=custom",
}


def test_every_readme_command_runs(tmp_path):
    """Each code block of the builder's README, run as a user would (python -c, bash), builds and reads."""
    text = open(README).read()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)
    assert blocks and {language for language, _ in blocks} <= {"bash", "python"}
    assert all(placeholder in text for placeholder in _README_PLACEHOLDERS)
    tree = _small_tree(tmp_path, magnifications=[40])
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # `python` is this one
    for i, (language, code) in enumerate(blocks):
        home = tmp_path / f"home{i}"
        for placeholder, value in _README_PLACEHOLDERS.items():
            code = code.replace(placeholder, value.format(manual_dir=tree.root.parent))
        command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
        env = {**os.environ, "HOME": str(home), "PATH": path}
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"README {language} block failed:\n{code}\n{result.stderr[-3000:]}"
        assert len(_records(home / "tensorflow_datasets")) == tree.num_images
    assert not (tmp_path / "~").exists()  # a '~' that nothing expanded
