"""`python -m bcjax.predict` and `bcjax.predictor` on one tiny trained run (z-score and Macenko, so the proof
covers the run's own statistics and stain normalisation): its test PNGs reproduce eval/test/predictions.csv,
test-time augmentation, explanations, bad inputs and workdirs, and the README's commands as written."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_config
from PIL import Image

from bcjax import predict, train
from bcjax.image_files import read_rgb
from bcjax.predictor import TTA, Predictor, tta_views

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[1]
SIZE = 40  # a 2x2 last feature map, and no larger than the synthetic tree's 70x46 images


@pytest.fixture(scope="module")
def run(prepared_data_dir, synthetic_tree, tmp_path_factory):
    """(workdir, the test images' PNG files, their rows of eval/test/predictions.csv)."""
    workdir = tmp_path_factory.mktemp("predict_run")
    config = tiny_config.get_config(str(prepared_data_dir))
    config.data.height = config.data.width = SIZE
    config.data.normalization, config.data.stain_normalization = "zscore", "macenko"
    train.train_and_evaluate(config, str(workdir))
    with open(workdir / "eval" / "test" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    paths = [str(synthetic_tree.root.parent / row["filename"]) for row in rows]
    return workdir, paths, rows


@pytest.fixture(scope="module")
def predictor(run):
    return Predictor.from_workdir(run[0])


def _expected(rows, class_names):
    return np.array([[float(row[f"prob_{name}"]) for name in class_names] for row in rows])


def test_the_runs_test_pngs_reproduce_its_predictions_csv(run, predictor):
    """The proof of 'exactly the run's preprocessing': the test images read from their PNG files, resized,
    Macenko-normalised and z-scored with the run's statistics (preprocessing.json), give the probabilities of
    eval/test/predictions.csv (written to 7 digits) to 1e-5, through the files API and the arrays API."""
    workdir, paths, rows = run
    recorded = json.loads((workdir / "preprocessing.json").read_text())
    assert recorded["normalizer"]["name"] == "zscore" and recorded["stain_normalization"] == "macenko"
    assert recorded["normalizer"]["mean"] != [0.485, 0.456, 0.406]  # the run's own statistics
    results = list(predictor.predict_files(paths))
    assert all(r.ok for r in results), [r.status for r in results if not r.ok]
    expected = _expected(rows, predictor.class_names)
    np.testing.assert_allclose(np.stack([r.probabilities for r in results]), expected, rtol=0, atol=1e-5)
    arrays = predictor.probabilities([read_rgb(p) for p in paths[:5]])
    np.testing.assert_allclose(arrays, expected[:5], rtol=0, atol=1e-5)


def test_the_runs_own_split_comes_from_the_image_cache_and_reproduces_its_predictions_csv(run, tmp_path, capsys):
    """`--split=test`: the run's own test images, read from the image cache its training filled (nothing
    decoded), give the rows of eval/test/predictions.csv, in its order; the summary scores them."""
    workdir, _, rows = run
    output = tmp_path / "split.csv"
    assert predict.main([f"--workdir={workdir}", "--split=test", f"--output={output}"]) == 0
    assert "Decoding" not in capsys.readouterr().err
    with open(output) as f:
        predicted = list(csv.DictReader(f))
    assert [r["path"] for r in predicted] == [row["filename"] for row in rows]
    names = Predictor.from_workdir(workdir).class_names
    np.testing.assert_allclose(_expected(predicted, names), _expected(rows, names), rtol=0, atol=1e-5)
    summary = json.loads(output.with_suffix(".json").read_text())
    report = json.loads((workdir / "eval" / "test" / "report.json").read_text())
    assert summary["breakhis_names"]["accuracy"] == pytest.approx(report["overall"]["accuracy"])


def test_a_split_the_run_did_not_train_on_and_bad_usage_end_in_one_message(run, tmp_path, capsys):
    changed = tmp_path / "changed"
    shutil.copytree(run[0], changed, ignore=shutil.ignore_patterns("predictions", "eval"))
    split = json.loads((changed / "split.json").read_text())
    split["sides"]["test"]["images"] += 1  # as if the dataset had been rebuilt with more images
    (changed / "split.json").write_text(json.dumps(split))
    assert predict.main([f"--workdir={changed}", "--split=test"]) == 2
    assert "is not the one" in capsys.readouterr().err
    for arguments in ([], ["--split=test", run[1][0]]):
        with pytest.raises(SystemExit) as stop:
            predict.main([f"--workdir={run[0]}", *arguments])
        assert stop.value.code == 2 and "one of the two" in capsys.readouterr().err


def test_tta_averages_the_eval_step_over_the_flips_and_the_eight_symmetries(run, predictor):
    """d4's views are the 8 rotations and flips of a square (flips: the first 4), and the TTA probability is
    the mean of the eval step's probabilities of each view."""
    pixels = np.stack([predictor.prepare(read_rgb(p)) for p in run[1][:3]])
    views = tta_views(pixels, "d4")
    square = pixels[0]
    symmetries = [np.rot90(square, k) for k in range(4)] + [np.rot90(square[:, ::-1], k) for k in range(4)]
    assert sorted(v.tobytes() for v in views[0]) == sorted(s.tobytes() for s in symmetries)
    np.testing.assert_array_equal(tta_views(pixels, "flips"), views[:, :4])
    for tta in ("flips", "d4"):
        each = np.stack([predictor._probabilities(views[:, v], "none") for v in range(TTA[tta])], 1)
        np.testing.assert_allclose(predictor._probabilities(pixels, tta), each.mean(1), rtol=0, atol=1e-6)


def _bad_inputs(folder: Path, good: list[str]) -> None:
    """Two good PNGs and one of every bad kind, in `folder`."""
    folder.mkdir()
    for path in good:
        shutil.copy(path, folder)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    (folder / "truncated.png").write_bytes(Path(good[0]).read_bytes()[:300])
    Image.new("RGB", (SIZE - 1, SIZE)).save(folder / "small.png")
    (folder / "locked").mkdir()


def test_bad_inputs_are_rows_with_their_reasons_and_the_rest_is_predicted(run, tmp_path, monkeypatch, capsys):
    workdir, paths, rows = run
    _bad_inputs(tmp_path / "in", paths[:2])
    real_scandir = os.scandir
    monkeypatch.setattr(  # an unreadable folder (as root every folder reads, so it is simulated)
        os, "scandir", lambda p=".": _refuse(p) if str(p).endswith("locked") else real_scandir(p)
    )
    output = tmp_path / "out.csv"
    code = predict.main([f"--workdir={workdir}", f"--output={output}", str(tmp_path / "in"), str(tmp_path / "gone")])
    captured = capsys.readouterr()
    assert code == 1
    with open(output) as f:
        table = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    reasons = {name: row["status"] for name, row in table.items() if row["status"] != "ok"}
    assert reasons == {
        "empty.png": "empty file",
        "notes.jpg": reasons["notes.jpg"],
        "truncated.png": reasons["truncated.png"],
        "small.png": f"image {SIZE - 1}x{SIZE} is smaller than the model input {SIZE}x{SIZE} (width x height)",
        "locked": "unreadable folder (Permission denied)",
        "gone": "missing: no such file or folder",
    }
    assert reasons["notes.jpg"].startswith("not an image") and reasons["truncated.png"].startswith("truncated")
    for name, reason in reasons.items():  # each failure once on stderr
        assert captured.err.count(f"{name}: {reason}") == 1, captured.err
    expected = _expected(rows[:2], ("benign", "malignant"))
    got = np.array([[float(table[Path(p).name][f"prob_{c}"]) for c in ("benign", "malignant")] for p in paths[:2]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    summary = json.loads(output.with_suffix(".json").read_text())
    assert (summary["predicted"], summary["failed"]) == (2, 6)
    assert sum(summary["counts"].values()) == 2 and summary["checkpoint"]["step"] > 0
    assert summary["preprocessing"]["normalizer"]["name"] == "zscore"
    named = summary["breakhis_names"]  # the two good files keep their BreakHis names: truth is known
    assert named["images"] == 2 and set(named["per_patient"]) <= {row["patient_id"] for row in rows}
    assert "2 predicted" in captured.out and "6 failed" in captured.out
    assert predict.main([f"--workdir={workdir}", f"--output={output}", paths[0]]) == 2  # never overwritten
    assert "already exist" in capsys.readouterr().err


def _refuse(path):
    raise PermissionError(13, "Permission denied", str(path))


def test_explain_writes_overlays_heatmaps_and_the_grid(run, tmp_path, capsys):
    """--explain: per image an overlay PNG (the file's size) and a heatmap .npy (the model's input size, in
    [0, 1]); the grid figure; numbered outputs under the workdir, the next number each time."""
    workdir, paths, _ = run
    arguments = [f"--workdir={workdir}", "--explain", "--explain_class=malignant", "--grid=2", *paths[:3]]
    assert predict.main(arguments) == 0
    first = workdir / "predictions" / "predictions-001.csv"
    with open(first) as f:
        rows = list(csv.DictReader(f))
    assert [r["explained_class"] for r in rows] == ["malignant"] * 3
    for row in rows:
        heatmap = np.load(first.parent / row["heatmap"])
        assert heatmap.shape == (SIZE, SIZE) and 0 <= heatmap.min() and heatmap.max() <= 1
        overlay = Image.open(first.parent / row["overlay"])
        assert overlay.size == Image.open(row["path"]).size
    assert (workdir / "predictions" / "predictions-001_explained" / "grid.png").stat().st_size > 0
    assert predict.main([f"--workdir={workdir}", paths[0]]) == 0
    assert (workdir / "predictions" / "predictions-002.csv").exists()  # a new number: 001 is kept
    capsys.readouterr()


def test_workdirs_that_cannot_predict_end_in_one_message(run, tmp_path, capsys):
    workdir = run[0]
    empty = tmp_path / "untrained"
    empty.mkdir()
    for name in ("config.json", "preprocessing.json"):
        shutil.copy(workdir / name, empty)
    assert predict.main([f"--workdir={empty}", run[1][0]]) == 2
    assert "holds no checkpoint yet: train it first" in capsys.readouterr().err
    other = tmp_path / "other_config"
    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("predictions", "eval"))
    config = json.loads((other / "config.json").read_text())
    config["data"]["target"] = "tumor_type"  # an 8-class head: not the checkpoint's 2
    (other / "config.json").write_text(json.dumps(config))
    assert predict.main([f"--workdir={other}", run[1][0]]) == 2
    error = capsys.readouterr().err
    assert (
        "does not fit the model" in error and "params/head/dense/kernel" in error and "must come from one run" in error
    )
    (other / "preprocessing.json").unlink()
    assert predict.main([f"--workdir={other}", run[1][0]]) == 2
    assert "Run its training command once more" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the README


def _readme_lines() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Predict and explain", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_predict_block_runs_as_written(run, tmp_path):
    """The README's block, line by line in bash, on a copy of this module's trained run in place of the demo's
    workdir (its first line is the Quickstart's training command, which .ci/run runs as written)."""
    lines = _readme_lines()
    quickstart = re.search(
        r"python -m bcjax\.main --config=configs/demo\.py --workdir=\S+", (REPO / "README.md").read_text()
    )
    assert lines[0] == quickstart.group(0) and "--tta=d4 --explain" in " ".join(lines)
    demo = tmp_path / "demo"
    shutil.copytree(run[0], demo, ignore=shutil.ignore_patterns("predictions"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for line in lines[1:]:
        line = line.replace("/tmp/bcjax-demo", str(demo)).replace("/tmp/new-slides", str(tmp_path / "slides"))
        result = subprocess.run(["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    images = list((tmp_path / "slides").iterdir())
    assert {p.suffix for p in images} == {".png", ".jpg", ".gif"}
    with open(demo / "predictions" / "predictions-001.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(images) and {r["status"] for r in rows} == {"ok"}
    assert (demo / "predictions" / "predictions-001_explained" / "grid.png").exists()
    assert f"({SIZE}, {SIZE})" in outputs[-1]  # the last line opened a heatmap
