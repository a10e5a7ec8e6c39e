"""bcjax.metrics against scikit-learn, hand-made patient cases, the patient bootstrap; the log text, CSV and plots."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from bcjax import evaluation_files, metrics, plots, report_text

BINARY = ["benign", "malignant"]
TYPES = [
    "adenosis",
    "fibroadenoma",
    "phyllodes_tumor",
    "tubular_adenoma",
    "ductal_carcinoma",
    "lobular_carcinoma",
    "mucinous_carcinoma",
    "papillary_carcinoma",
]
MAGNIFICATIONS = np.array(["40X", "100X", "200X", "400X"])


def make_split(num_classes, patients=24, images=400, seed=0, signal=1.5):
    """Random but learnable predictions: each patient has one class and its own difficulty.

    Probabilities are rounded to 0.05 so scores tie, within and across classes.
    """
    rng = np.random.default_rng(seed)
    patient = rng.integers(patients, size=images)
    patient_class = np.arange(patients) % num_classes
    labels = patient_class[patient]
    logits = rng.normal(size=(images, num_classes)) + rng.normal(size=patients)[patient, None]
    logits[np.arange(images), labels] += signal
    probabilities = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True) * 20) / 20
    return {
        "probabilities": probabilities,
        "labels": labels,
        "patient_ids": np.array([f"SOB_{p:03d}" for p in patient]),
        "magnifications": MAGNIFICATIONS[rng.integers(4, size=images)],
    }


# ----------------------------------------------------------------------------- image level vs sklearn


def sklearn_reference(probabilities, labels):
    num_classes = probabilities.shape[1]
    predictions = probabilities.argmax(1)
    every_class = list(range(num_classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=every_class, zero_division=0
    )
    macro = skm.precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)
    auc = [skm.roc_auc_score(labels == k, probabilities[:, k]) for k in every_class if np.any(labels == k)]
    return {
        "accuracy": skm.accuracy_score(labels, predictions),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, predictions),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "macro": macro[:3],
        "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=every_class),
        "roc_auc": skm.roc_auc_score(labels, probabilities[:, 1]) if num_classes == 2 else np.mean(auc),
        "class_auc": auc,
    }


@pytest.mark.parametrize("num_classes", [2, 8])
@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn: y_pred has classes absent from y_true
def test_classification_metrics_match_sklearn(num_classes):
    split = make_split(num_classes, signal=0.8)
    probabilities, labels = split["probabilities"], split["labels"]
    if num_classes == 8:
        labels[labels == 3] = 2  # class 3: predicted sometimes, never true (precision 0, in the macro)
        probabilities[:, 5] = 0.0  # class 5: never predicted ...
        labels[labels == 5] = 4  # ... nor true (left out of the macro, like sklearn's default labels)
    names = BINARY if num_classes == 2 else TYPES
    got = metrics.classification_metrics(probabilities, labels, names)
    want = sklearn_reference(probabilities, labels)

    assert got["images"] == len(labels)
    for key in ("accuracy", "balanced_accuracy", "roc_auc"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    for key, value in zip(("precision", "recall", "f1"), want["macro"]):
        assert got[f"macro_{key}"] == pytest.approx(value, abs=1e-12), key
        assert [got["per_class"][n][key] for n in names] == pytest.approx(want[key], abs=1e-12), key
    assert [got["per_class"][n]["support"] for n in names] == want["support"].tolist()
    assert got["confusion_matrix"] == want["confusion_matrix"].tolist()
    defined_auc = [got["per_class"][n]["roc_auc"] for n in names if got["per_class"][n]["roc_auc"] is not None]
    assert defined_auc == pytest.approx(want["class_auc"], abs=1e-12)
    if num_classes == 2:
        predictions = probabilities.argmax(1)
        assert got["sensitivity"] == pytest.approx(skm.recall_score(labels, predictions, pos_label=1))
        assert got["specificity"] == pytest.approx(skm.recall_score(labels, predictions, pos_label=0))
    else:
        assert "sensitivity" not in got
        assert got["per_class"]["tubular_adenoma"]["roc_auc"] is None
        assert got["per_class"]["tubular_adenoma"]["precision"] == 0.0


def test_multiclass_auc_with_every_class_matches_sklearn_ovr():
    split = make_split(8)
    probabilities = split["probabilities"] + 1e-3  # rows must sum to 1 for sklearn
    probabilities /= probabilities.sum(1, keepdims=True)
    got = metrics.classification_metrics(probabilities, split["labels"], TYPES)["roc_auc"]
    want = skm.roc_auc_score(split["labels"], probabilities, multi_class="ovr", average="macro")
    assert got == pytest.approx(want, abs=1e-12)


def test_undefined_metrics_are_none():
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4], [0.6, 0.4]])
    got = metrics.classification_metrics(probabilities, np.array([1, 1, 1]), BINARY)
    assert got["roc_auc"] is None and got["specificity"] is None
    assert got["sensitivity"] == pytest.approx(1 / 3)
    assert got["balanced_accuracy"] == pytest.approx(1 / 3)  # only the class with images counts
    json.dumps(got, allow_nan=False)


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="need probabilities"):
        metrics.classification_metrics(np.zeros((0, 2)), np.zeros(0, int), BINARY)
    with pytest.raises(ValueError, match="need probabilities"):
        metrics.classification_metrics(np.zeros((3, 2)), np.zeros(3, int), TYPES)
    with pytest.raises(ValueError, match="labels outside"):
        metrics.classification_metrics(np.zeros((3, 2)), np.array([0, 1, 2]), BINARY)


# ----------------------------------------------------------------------------- patient level


def test_patient_metrics_hand_made():
    rows = [  # patient, label, prediction
        ("A", 1, 1),
        ("A", 1, 1),
        ("A", 1, 1),
        ("A", 1, 0),  # 3/4, vote right
        ("B", 0, 0),
        ("B", 0, 1),  # 1/2, tied vote: wrong
        ("C", 0, 1),
        ("C", 0, 1),
        ("C", 0, 0),  # 1/3, vote wrong
        ("D", 1, 1),  # 1/1
        ("E", 2, 2),
        ("E", 2, 2),
        ("E", 2, 0),
        ("E", 2, 1),
        ("E", 2, 3),  # 2/5 but the plurality: right
    ]
    patient_ids, labels, predictions = map(np.array, zip(*rows))
    got = metrics.patient_metrics(predictions, labels, patient_ids)
    assert got["patients"] == 5
    assert got["patient_scores"] == pytest.approx({"A": 0.75, "B": 0.5, "C": 1 / 3, "D": 1.0, "E": 0.4})
    assert got["patient_recognition_rate"] == pytest.approx((0.75 + 0.5 + 1 / 3 + 1.0 + 0.4) / 5)
    assert got["patient_majority_vote_accuracy"] == pytest.approx(3 / 5)


def test_patient_recognition_rate_weighs_patients_not_images():
    predictions, labels = np.array([1] * 9 + [0]), np.ones(10, int)
    got = metrics.patient_metrics(predictions, labels, np.array(["big"] * 9 + ["small"]))
    assert got["patient_recognition_rate"] == pytest.approx(0.5)  # image accuracy would be 0.9


# ----------------------------------------------------------------------------- report and bootstrap


def report_of(split, names, **kwargs):
    return metrics.evaluation_report(
        split["probabilities"], split["labels"], split["patient_ids"], split["magnifications"], names, **kwargs
    )


@pytest.mark.parametrize("num_classes", [2, 8])
def test_report_structure_and_json(num_classes):
    names = BINARY if num_classes == 2 else TYPES
    split = make_split(num_classes, images=2000)  # full default bootstrap, as the trainer runs it
    report = report_of(split, names)
    json.dumps(report, allow_nan=False)
    assert report["images"] == 2000 and report["bootstrap_samples"] == 1000
    assert list(report["by_magnification"]) == ["40X", "100X", "200X", "400X"]
    assert sum(r["images"] for r in report["by_magnification"].values()) == 2000
    keep = split["magnifications"] == "200X"
    assert report["by_magnification"]["200X"]["accuracy"] == pytest.approx(
        skm.accuracy_score(split["labels"][keep], split["probabilities"][keep].argmax(1))
    )
    expected = {"accuracy", "balanced_accuracy", "roc_auc", "patient_recognition_rate"}
    expected |= {"sensitivity", "specificity"} if num_classes == 2 else set()
    assert set(report["confidence_intervals"]) == expected
    for name, (low, high) in report["confidence_intervals"].items():
        assert low <= report["overall"][name] <= high, name


def naive_intervals(split, samples, seed):
    """The patient bootstrap written out: replicate every drawn patient's images, then sklearn."""
    patients, index = np.unique(split["patient_ids"], return_inverse=True)
    draws = np.random.default_rng(seed).multinomial(len(patients), np.full(len(patients), 1 / len(patients)), samples)
    values = {"accuracy": [], "balanced_accuracy": [], "roc_auc": [], "sensitivity": [], "specificity": []}
    for draw in draws:
        rows = np.repeat(np.arange(len(index)), draw[index])
        labels, scores = split["labels"][rows], split["probabilities"][rows, 1]
        predictions = split["probabilities"][rows].argmax(1)
        values["accuracy"].append(skm.accuracy_score(labels, predictions))
        values["balanced_accuracy"].append(skm.balanced_accuracy_score(labels, predictions))
        values["roc_auc"].append(skm.roc_auc_score(labels, scores))
        values["sensitivity"].append(skm.recall_score(labels, predictions, pos_label=1))
        values["specificity"].append(skm.recall_score(labels, predictions, pos_label=0))
    return {name: np.percentile(v, [2.5, 97.5]) for name, v in values.items()}


def test_bootstrap_equals_resampling_patients_explicitly():
    split = make_split(2, patients=12, images=150, seed=3, signal=0.7)
    got = report_of(split, BINARY, bootstrap_samples=40, seed=5)["confidence_intervals"]
    for name, want in naive_intervals(split, 40, 5).items():
        assert got[name] == pytest.approx(want, abs=1e-12), name


def test_bootstrap_is_deterministic_in_the_seed():
    split = make_split(2)
    first = report_of(split, BINARY, bootstrap_samples=200, seed=1)["confidence_intervals"]
    assert report_of(split, BINARY, bootstrap_samples=200, seed=1)["confidence_intervals"] == first
    assert report_of(split, BINARY, bootstrap_samples=200, seed=2)["confidence_intervals"] != first


def test_bootstrap_intervals_shrink_with_more_patients():
    def widths(patients):
        split = make_split(2, patients=patients, images=20 * patients, seed=patients)
        intervals = report_of(split, BINARY, bootstrap_samples=300)["confidence_intervals"]
        return {name: high - low for name, (low, high) in intervals.items()}

    few, many = widths(10), widths(160)
    for name in few:
        assert many[name] < few[name] / 2, name


def test_single_patient_and_no_bootstrap():
    split = make_split(2, patients=1, images=30)
    report = report_of(split, BINARY, bootstrap_samples=100)
    intervals = report["confidence_intervals"]
    assert intervals["accuracy"] == pytest.approx([report["overall"]["accuracy"]] * 2)
    assert intervals["roc_auc"] is None and intervals["sensitivity"] is None  # one benign patient
    assert report["overall"]["sensitivity"] is None and report["overall"]["roc_auc"] is None
    assert report["overall"]["patients"] == 1
    json.dumps(report, allow_nan=False)
    assert report_of(split, BINARY, bootstrap_samples=0)["confidence_intervals"] == {}
    assert "n/a" in report_text.format_summary(report, "leakage: none")


def test_format_summary():
    report = report_of(make_split(2), BINARY, bootstrap_samples=100)
    leakage = "leakage: none (0 of 12 test accessions seen in training)"
    lines = report_text.format_summary(report, leakage).splitlines()
    assert 3 <= len(lines) <= 6
    accuracy_line = next(line for line in lines if line.startswith("accuracy "))
    assert leakage in accuracy_line and f"{report['overall']['accuracy']:.3f} [" in accuracy_line
    assert any("sensitivity" in line and "specificity" in line for line in lines)
    assert any("patient recognition rate" in line for line in lines)
    multiclass = report_text.format_summary(report_of(make_split(8), TYPES, bootstrap_samples=0), leakage)
    assert "sensitivity" not in multiclass and 3 <= len(multiclass.splitlines()) <= 6


def test_summarize_folds_on_known_numbers():
    def fold(accuracy, auc, magnifications):
        return {
            "overall": {"accuracy": accuracy, "roc_auc": auc, "per_class": {}, "confusion_matrix": [[1]]},
            "by_magnification": {m: {"accuracy": accuracy} for m in magnifications},
        }

    reports = [fold(0.8, 0.5, ["100X", "40X"]), fold(0.9, None, ["40X"]), fold(1.0, 0.7, ["40X", "100X"])]
    got = metrics.summarize_folds(reports)
    assert got["folds"] == 3 and set(got["overall"]) == {"accuracy", "roc_auc"}
    assert got["overall"]["accuracy"]["mean"] == pytest.approx(0.9)
    assert got["overall"]["accuracy"]["std"] == pytest.approx(0.1)  # ddof=1
    assert got["overall"]["accuracy"]["values"] == [0.8, 0.9, 1.0]
    assert got["overall"]["roc_auc"] == {
        "mean": pytest.approx(0.6),
        "std": pytest.approx(0.02**0.5),
        "values": [0.5, None, 0.7],
    }
    assert list(got["by_magnification"]) == ["40X", "100X"]
    assert got["by_magnification"]["100X"]["accuracy"]["values"] == [0.8, None, 1.0]
    assert metrics.summarize_folds(reports[:1])["overall"]["accuracy"]["std"] is None


def test_summarize_folds_of_real_reports():
    reports = [report_of(make_split(2, seed=s), BINARY, bootstrap_samples=0) for s in range(3)]
    got = metrics.summarize_folds(reports)
    json.dumps(got, allow_nan=False)
    accuracies = [r["overall"]["accuracy"] for r in reports]
    assert got["overall"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert {"patient_recognition_rate", "sensitivity", "macro_f1", "patients"} <= set(got["overall"])
    assert "patient_scores" not in got["overall"] and "per_class" not in got["overall"]


# ----------------------------------------------------------------------------- files


def test_predictions_csv(tmp_path):
    split = make_split(8, images=50)
    n, predictions = 50, split["probabilities"].argmax(1)
    path = tmp_path / "predictions.csv"
    evaluation_files.write_predictions_csv(
        path,
        filenames=[f"img{i}.png" for i in range(n)],
        patient_ids=split["patient_ids"],
        accessions=["14-1"] * n,
        magnifications=split["magnifications"],
        tumor_types=[TYPES[k] for k in split["labels"]],
        labels=split["labels"],
        predictions=predictions,
        probabilities=split["probabilities"],
        class_names=TYPES,
    )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert list(rows[0]) == [
        "filename",
        "patient_id",
        "accession",
        "magnification",
        "tumor_type",
        "label",
        "label_id",
        "prediction",
        "prediction_id",
        *(f"prob_{t}" for t in TYPES),
    ]
    assert [int(r["label_id"]) for r in rows] == split["labels"].tolist()
    assert [r["prediction"] for r in rows] == [TYPES[k] for k in predictions]
    assert np.array([[float(r[f"prob_{t}"]) for t in TYPES] for r in rows]) == pytest.approx(split["probabilities"])
    with pytest.raises(ValueError, match="differ in length"):
        evaluation_files.write_predictions_csv(
            path,
            filenames=["x"],
            patient_ids=split["patient_ids"],
            accessions=["14-1"] * n,
            magnifications=split["magnifications"],
            tumor_types=split["labels"],
            labels=split["labels"],
            predictions=predictions,
            probabilities=split["probabilities"],
            class_names=TYPES,
        )


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_plots_write_pngs(tmp_path):
    binary, multiclass = make_split(2), make_split(8)
    for name, split, names in (("binary", binary, BINARY), ("multiclass", multiclass, TYPES)):
        plots.plot_roc(
            split["probabilities"], split["labels"], split["magnifications"], names, tmp_path / f"roc_{name}.png"
        )
        assert_png(tmp_path / f"roc_{name}.png")
    confusion = metrics.classification_metrics(multiclass["probabilities"], multiclass["labels"], TYPES)
    plots.plot_confusion_matrix(confusion["confusion_matrix"], TYPES, tmp_path / "confusion.png", title="test")
    assert_png(tmp_path / "confusion.png")
    records = [{"step": s, "train/loss": 1 / (s + 1), "train/accuracy": s / 100} for s in range(100)]
    records += [{"step": s, "validation/loss": 2 / (s + 1), "validation/accuracy": s / 200} for s in range(0, 100, 20)]
    plots.plot_learning_curves(records, str(tmp_path / "curves.png"))  # str or path object
    assert_png(tmp_path / "curves.png")


def test_metrics_module_imports_neither_jax_nor_sklearn():
    code = "import sys, bcjax.metrics; print(sorted({'jax', 'sklearn', 'matplotlib'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
