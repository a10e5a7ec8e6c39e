"""The synthetic BreakHis tree: layout, names, counts, quirks, determinism, tar, learnability."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcjax.datasets import synthetic as S
from bcjax.datasets.breakhis import TUMOR_TYPES, TUMOR_TYPES_BY_CODE
from bcjax.datasets.synthetic.cli import main
from bcjax.datasets.synthetic.writer import encode_png

SIZE = (48, 32)  # small images keep the tests fast; one test checks the default size
FLAGS = dict(patients=1, images_per_magnification=2, image_size=SIZE, progress=False)
EXTRAS = {"README.txt", ".DS_Store", "Thumbs.db", "overview.png"}
NAME_RE = re.compile(r"^SOB_([BM])_([A-Z]+)-(\d+)-([0-9A-Za-z]+)-(\d+)-(\d+)\.png$")  # REFERENCE.md section 2


def write(out: Path, **overrides) -> S.SyntheticSummary:
    return S.write_breakhis_tree(out, **{**FLAGS, "seed": 7, "tar": True, **overrides})


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> S.SyntheticSummary:
    return write(tmp_path_factory.mktemp("synthetic"))


def sob_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every SOB image below `root`."""
    return {p.relative_to(root.parent).as_posix(): p.read_bytes() for p in root.rglob("SOB_*.png")}


def quirk_count(code: str) -> int:
    return sum(c == code for c, _, _ in S.QUIRK_FOLDERS)


def test_every_name_parses_and_matches_its_folders(tree):
    files = [p for p in tree.root.rglob("*") if p.is_file()]
    assert {p.name for p in files if not p.name.startswith("SOB_")} == EXTRAS
    for path in (p for p in files if p.name.startswith("SOB_")):
        letter, code, year, slide, mag, seq = NAME_RE.match(path.name).groups()
        mag_dir, patient_dir, type_dir, sob, class_dir = (p.name for p in path.parents[:5])
        tumor = TUMOR_TYPES_BY_CODE[code]
        assert (class_dir, sob, type_dir) == (tumor.class_name, "SOB", tumor.folder)
        assert letter == tumor.letter and patient_dir == f"SOB_{letter}_{code}_{year}-{slide}"
        assert mag_dir == f"{mag}X" and int(mag) in S.MAGNIFICATION_POWERS and re.fullmatch(r"\d{3}", seq)
        assert re.fullmatch(r"\d+[A-Z]*", slide)
        assert path.parents[5] == tree.root / "histology_slides" / "breast"


def test_counts_match_the_flags(tree):
    on_disk = {}
    for name in sob_files(tree.root):
        _, code, _, _, mag, _ = NAME_RE.match(name.rsplit("/", 1)[1]).groups()
        on_disk[code, int(mag)] = on_disk.get((code, int(mag)), 0) + 1
    for tumor in TUMOR_TYPES:
        patients = max(1, quirk_count(tumor.code))  # quirk folders are always written
        assert tree.patients[tumor.code] == patients
        for mag in S.MAGNIFICATION_POWERS:
            assert tree.counts[tumor.code][mag] == on_disk[tumor.code, mag] == 2 * patients
    assert tree.num_images == sum(on_disk.values())


def test_full_and_scaled_patient_plans():
    full = S.plan_patients("full", seed=0)
    assert {t.code: sum(p.tumor is t for p in full) for t in TUMOR_TYPES} == {
        "A": 4,
        "F": 10,
        "PT": 3,
        "TA": 7,
        "DC": 38,
        "LC": 5,
        "MC": 9,
        "PC": 6,
    }
    # like the real archive: 82 folders, 81 slide ids without the type, 70 accession cores
    assert len({p.dir_name for p in full}) == 82
    assert len({(p.year, p.slide) for p in full}) == 81
    assert len({(p.year, re.match(r"\d+", p.slide).group()) for p in full}) == 70
    assert [p.year for p in full].count(15) == 1
    assert all(re.fullmatch(r"\d+[A-Z]*", p.slide) and NAME_RE.match(p.file_name(400, 12)) for p in full)
    scaled = S.plan_patients(3, seed=0)
    for tumor in TUMOR_TYPES:
        assert sum(p.tumor is tumor for p in scaled) == max(3, quirk_count(tumor.code))


def test_quirks_are_present(tree):
    files = sob_files(tree.root)
    breast = "BreaKHis_v1/histology_slides/breast"
    dc = {n.rsplit("/", 1)[1]: b for n, b in files.items() if "/SOB_M_DC_14-13412/" in n}
    lc = {n.rsplit("/", 1)[1]: b for n, b in files.items() if "/SOB_M_LC_14-13412/" in n}
    assert len(dc) == len(lc) == 8
    assert all(lc[name.replace("SOB_M_DC-", "SOB_M_LC-")] == data for name, data in dc.items())
    folders = {n.split("/")[6] for n in files}
    assert {"SOB_B_A_14-22549AB", "SOB_B_A_14-22549CD", "SOB_B_A_14-22549G"} <= folders
    assert {"SOB_B_PT_14-21998AB", "SOB_B_F_14-21998CD", "SOB_B_F_14-29960AB", "SOB_B_A_14-29960CD"} <= folders
    assert f"{breast}/malignant/SOB/papillary_carcinoma/SOB_M_PC_15-190EF/40X/SOB_M_PC-15-190EF-40-001.png" in files
    heights = [Image.open(io.BytesIO(data)).size for data in files.values()]
    short = (SIZE[0], SIZE[1] - 1)  # 456/460 of 32 rounds to 32, so it is one less
    assert set(heights) == {SIZE, short}
    assert heights.count(short) == tree.short_images >= round(0.03 * (len(files) - len(lc)))  # twins agree
    assert (tree.root / "README.txt").is_file() and (tree.root / "histology_slides" / ".DS_Store").is_file()
    extras = list(tree.root.rglob("Thumbs.db")) + list(tree.root.rglob("overview.png"))
    assert len(extras) == 2 and Image.open(extras[1]).format == "PNG"


def test_default_size_has_700x460_and_700x456_rgb_images(tmp_path):
    summary = S.write_breakhis_tree(
        tmp_path, patients=1, images_per_magnification=1, magnifications=[400], progress=False
    )
    assert sorted(p.name for p in (tmp_path / "BreaKHis_v1").rglob("*X")) == ["400X"] * 23
    shapes = [np.asarray(Image.open(p)).shape for p in (tmp_path / "BreaKHis_v1").rglob("SOB_*.png")]
    assert shapes.count((456, 700, 3)) == summary.short_images == 1
    assert shapes.count((460, 700, 3)) == len(shapes) - 1


def test_same_seed_same_bytes_other_seed_other_bytes(tree, tmp_path):
    again = write(tmp_path / "again")
    assert sob_files(again.root) == sob_files(tree.root)
    assert again.tar_path.read_bytes() == tree.tar_path.read_bytes()
    other = sob_files(write(tmp_path / "other", seed=8, tar=False).root)
    assert other.keys() == sob_files(tree.root).keys()  # only quirk folders at patients=1
    assert all(other[name] != data for name, data in sob_files(tree.root).items())


def test_tar_holds_the_tree_under_its_top_folder(tree):
    with tarfile.open(tree.tar_path) as archive:
        members = archive.getmembers()
        assert all(m.name == "BreaKHis_v1" or m.name.startswith("BreaKHis_v1/") for m in members)
        assert all((m.mtime, m.uid, m.gid) == (0, 0, 0) for m in members)
        files = [m for m in members if m.isfile() and m.name.rsplit("/", 1)[-1].startswith("SOB_")]
        images = {m.name: archive.extractfile(m).read() for m in files}
    assert images == sob_files(tree.root)


def test_png_encoder_round_trips():
    image = S.render_image("PC", 100, size=(37, 23))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(image))).convert("RGB")), image)


def features(image: np.ndarray) -> np.ndarray:
    """Nine colour statistics: mean and spread per channel, dark, white and blue fractions."""
    f = image.astype(np.float32) / 255
    dark, white = (f[..., 0] < 0.45).mean(), (f.min(-1) > 0.85).mean()
    blue = ((f[..., 2] > f[..., 0] + 0.02) & (f[..., 0] > 0.6)).mean()
    return np.concatenate([f.mean((0, 1)), f.std((0, 1)), [dark, white, blue]])


def test_classes_are_learnable_across_patients():
    codes = [t.code for t in TUMOR_TYPES]
    x = np.array(
        [
            [
                [features(S.render_image(c, m, size=(96, 64), patient=str(p))) for m in S.MAGNIFICATION_POWERS]
                for p in range(6)
            ]
            for c in codes
        ]
    )  # (type, patient, magnification, feature)
    dark = x[..., 6].mean(axis=(1, 2))
    malignant = np.array([TUMOR_TYPES_BY_CODE[c].malignant for c in codes])
    assert dark[malignant].mean() > 1.5 * dark[~malignant].mean()
    # nearest type centroid, fitted on patients 0-2, tested on the unseen patients 3-5
    mu, sd = x[:, :3].reshape(-1, 9).mean(0), x[:, :3].reshape(-1, 9).std(0) + 1e-6
    z = (x - mu) / sd
    centroids = z[:, :3].mean(axis=(1, 2))
    predicted = np.argmin(((z[:, 3:, :, None, :] - centroids) ** 2).sum(-1), axis=-1)
    accuracy = (predicted == np.arange(len(codes))[:, None, None]).mean()
    assert accuracy > 0.5  # chance is 1/8


def test_cli_writes_a_tree_and_prints_a_summary(tmp_path, capsys):
    argv = [
        "--out",
        str(tmp_path),
        "--patients",
        "1",
        "--images-per-magnification",
        "1",
        "--magnifications",
        "40",
        "--image-size",
        "32x24",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "23 SOB images, 23 patient folders" in out and "all (23)" in out and "100%" in err
    with pytest.raises(SystemExit):  # refuses to mix with an existing tree
        main(argv)
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--quiet"]) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(patients=0),
        dict(patients="some"),
        dict(magnifications=[50]),
        dict(images_per_magnification=0),
        dict(image_size=(700, 4)),
        dict(seed=-1),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        S.write_breakhis_tree(tmp_path, progress=False, **kwargs)
