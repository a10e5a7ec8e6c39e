"""Split protocols on a synthetic table shaped like BreakHis: 82 patients, its per-type counts and quirks."""

import csv
import json
import re

import numpy as np
import pytest

from bcjax.datasets import splits
from bcjax.datasets.breakhis import MAGNIFICATIONS, TUMOR_TYPE_CODES, TUMOR_TYPE_NAMES

# Per type: the patient count of the real archive and its quirky slide ids (YY-SLIDE); the rest
# get unique accessions. 14-13412 is both a DC and an LC folder; 22549AB/CD/G share one accession,
# 21998 spans PT and F, 29960 spans F and A.
PATIENTS = {
    "A": (4, ["14-22549AB", "14-22549CD", "14-22549G", "14-29960CD"]),
    "F": (10, ["14-21998CD", "14-29960AB"]),
    "PT": (3, ["14-21998AB", "15-190EF"]),
    "TA": (7, []),
    "DC": (38, ["14-13412"]),
    "LC": (5, ["14-13412"]),
    "MC": (9, []),
    "PC": (6, []),
}


DIGITS = re.compile(r"\d+")


def make_records():
    """One record per image: 1-3 images per patient and magnification."""
    records, serial = [], 10000
    for tumor_type, code in enumerate(TUMOR_TYPE_CODES):
        count, quirky = PATIENTS[code]
        slides = quirky + [f"14-{serial + i}" for i in range(count - len(quirky))]
        serial += count
        for p, slide in enumerate(slides):
            year, slide_id = slide.split("-")
            b_m, cls = ("B", "benign") if tumor_type < 4 else ("M", "malignant")
            patient = f"SOB_{b_m}_{code}_{slide}"
            accession = f"{year}-{DIGITS.match(slide_id).group()}"
            for m, mag in enumerate(MAGNIFICATIONS):
                for seq in range(1, 2 + (p + m) % 3):
                    records.append(
                        {
                            "filename": f"BreaKHis_v1/histology_slides/breast/{cls}/SOB/{TUMOR_TYPE_NAMES[tumor_type]}/"
                            f"{patient}/{mag}/SOB_{b_m}_{code}-{year}-{slide_id}-{mag[:-1]}-{seq:03d}.png",
                            "patient_id": patient,
                            "accession": accession,
                            "label": int(tumor_type >= 4),
                            "tumor_type": tumor_type,
                            "magnification": mag,
                            "image": None,  # ignored by from_records
                        }
                    )
    return records


@pytest.fixture(scope="module")
def table():
    return splits.ImageTable.from_records(make_records())


def sets(table, rows):
    return set(table.patient_id[rows]), set(table.accession[rows])


def assert_grouped(split):
    """No patient and no accession on two sides."""
    table = split.table
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        patients_a, accessions_a = sets(table, getattr(split, a))
        patients_b, accessions_b = sets(table, getattr(split, b))
        assert not patients_a & patients_b and not accessions_a & accessions_b, (a, b)
    assert split.leakage.n_shared_accessions == split.validation_leakage.n_shared_accessions == 0
    assert split.leakage.summary().startswith("leakage: none (0 of ")


def test_synthetic_table_has_the_archive_shape(table):
    assert len(set(table.patient_id)) == 82
    assert len(set(table.accession)) == 82 - 2 - 1 - 1 - 1  # 13412, 22549 x3, 21998, 29960
    benign = set(table.patient_id[table.label == 0])
    assert len(benign) == 24


def test_from_records_decodes_bytes_and_checks_columns():
    record = make_records()[0]
    table = splits.ImageTable.from_records([{**record, "patient_id": record["patient_id"].encode()}])
    assert len(table) == 1 and table.patient_id[0] == record["patient_id"]
    with pytest.raises(ValueError, match=r"lacks"):
        splits.ImageTable.from_records([{k: v for k, v in record.items() if k != "accession"}])
    with pytest.raises(ValueError, match=r"label disagrees with tumor_type"):
        splits.ImageTable.from_records([{**record, "label": 1}])
    with pytest.raises(ValueError, match=r"magnifications"):
        splits.ImageTable.from_records([{**record, "magnification": "40x"}])


def test_patient_kfold_folds_are_grouped_stratified_and_partition_the_images(table):
    k = 5
    folds = [splits.patient_kfold(table, k=k, fold=f, seed=3) for f in range(k)]
    tests = np.concatenate([s.test for s in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(len(table)))
    units = splits._Units.of(table, table.accession)
    groups_per_type = units.types.sum(0)
    folds_per_type = np.zeros(len(TUMOR_TYPE_CODES), dtype=int)
    for split in folds:
        assert_grouped(split)
        assert set(table.label[split.test]) == {0, 1}
        assert set(table.label[split.validation]) == {0, 1}
        assert np.intersect1d(split.test, split.train).size == 0
        assert len(split.train) + len(split.validation) + len(split.test) == len(table)
        np.testing.assert_array_equal(split.test, np.sort(split.test))
        folds_per_type += np.isin(np.arange(8), table.tumor_type[split.test])
        assert 0.1 < len(split.validation) / (len(split.train) + len(split.validation)) < 0.3
    np.testing.assert_array_equal(folds_per_type, np.minimum(k, groups_per_type))
    sizes = [len(s.test) for s in folds]
    assert max(sizes) < 1.5 * min(sizes)


def test_patient_kfold_is_deterministic_seeded_and_row_order_free(table):
    a = splits.patient_kfold(table, seed=1)
    b = splits.patient_kfold(table, seed=1)
    for side in splits.SIDES:
        np.testing.assert_array_equal(getattr(a, side), getattr(b, side))
    assert not np.array_equal(a.test, splits.patient_kfold(table, seed=2).test)
    order = np.random.default_rng(0).permutation(len(table))
    shuffled = splits.ImageTable(**{f: getattr(table, f)[order] for f in splits.ImageTable.__dataclass_fields__})
    c = splits.patient_kfold(shuffled, seed=1)
    for side in splits.SIDES:
        assert set(shuffled.filename[getattr(c, side)]) == set(table.filename[getattr(a, side)])
    assert a.params == {"k": 5, "fold": 0, "val_fraction": 0.2, "seed": 1, "magnification": None}


def test_patient_holdout_is_grouped_and_near_70_30(table):
    split = splits.patient_holdout(table, seed=4)
    assert_grouped(split)
    assert 0.2 < len(split.test) / len(table) < 0.4
    for side in splits.SIDES:
        assert set(table.label[getattr(split, side)]) == {0, 1}
    assert not np.array_equal(split.test, splits.patient_holdout(table, seed=5).test)


def test_recipe_a_shares_every_patient(table):
    split = splits.recipe_a(table)
    assert set(table.magnification[split.test]) == {"40X"}
    assert "40X" not in set(table.magnification[split.train])
    assert len(split.validation) == 0 and len(split.train) + len(split.test) == len(table)
    report = split.leakage
    assert report.n_shared_patients == report.held_out_patients == 82
    n = len(split.test)
    assert report.summary() == f"leakage: 82/82 test patients seen in training ({n}/{n} test images, 100.0%)"
    assert split.validation_leakage.summary() == "leakage: none (no validation images)"
    with_val = splits.recipe_a(table, val_fraction=0.1)
    assert len(with_val.validation) > 0 and "40X" not in set(table.magnification[with_val.validation])
    with pytest.raises(ValueError, match=r"recipe_a splits by magnification itself"):
        splits.recipe_a(table, magnification="40X")


def test_image_random_leaks_and_stratifies_by_type(table):
    split = splits.image_random(table, seed=0)
    report = split.leakage
    assert report.n_shared_patients > 0.9 * report.held_out_patients
    assert report.fraction_with_seen_accession > 0.9
    for tumor_type in range(8):
        share = np.mean(table.tumor_type[split.test] == tumor_type) / np.mean(table.tumor_type == tumor_type)
        assert 0.7 < share < 1.3
    trainval = len(split.train) + len(split.validation)
    assert abs(len(split.test) / len(table) - 0.3) < 0.03
    assert abs(len(split.validation) / trainval - 0.25) < 0.03
    unstratified = splits.image_random(table, stratify=False)
    assert abs(len(unstratified.test) / len(table) - 0.3) < 0.01


def test_image_kfold_shares_one_test_set_and_partitions_the_rest(table):
    folds = [splits.image_kfold(table, fold=f, seed=3) for f in range(5)]
    for split in folds:
        np.testing.assert_array_equal(split.test, folds[0].test)
        assert not np.intersect1d(split.train, split.validation).size
        np.testing.assert_array_equal(
            np.union1d(split.train, split.validation), np.union1d(folds[0].train, folds[0].validation)
        )
        assert split.leakage.n_shared_patients > 0.9 * split.leakage.held_out_patients  # images, not patients
    assert abs(len(folds[0].test) / len(table) - 0.3) < 0.03
    validations = np.concatenate([split.validation for split in folds])
    assert len(validations) == len(np.unique(validations)) == len(table) - len(folds[0].test)
    for split in folds:  # every tumour type in every validation fold, about a fifth of the rest each
        assert len(set(table.tumor_type[split.validation])) == 8
        assert abs(len(split.validation) / len(validations) - 0.2) < 0.02
    assert not np.array_equal(splits.image_kfold(table, seed=4).test, folds[0].test)


def write_folds_csv(path, table, test_of_fold, prefix):
    """A Folds.csv in the original layout: fold,mag,grp,filename with folds numbered from 1."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["fold", "mag", "grp", "filename"])
        for fold, test in test_of_fold.items():
            for row in range(len(table)):
                name = table.filename[row].removeprefix("BreaKHis_v1/")
                writer.writerow(
                    [fold, table.magnification[row][:-1], "test" if row in test else "train", prefix + name]
                )


@pytest.mark.parametrize("prefix", ["BreaKHis_v1/", ""])
def test_official_folds_round_trip(table, tmp_path, prefix):
    kfold = {f + 1: splits.patient_kfold(table, fold=f, val_fraction=0.0) for f in range(5)}
    path = tmp_path / "Folds.csv"
    write_folds_csv(path, table, {f: set(s.test.tolist()) for f, s in kfold.items()}, prefix)
    for fold, expected in kfold.items():
        split = splits.official_folds(table, folds_csv=path, fold=fold)
        np.testing.assert_array_equal(split.test, expected.test)
        np.testing.assert_array_equal(split.train, expected.train)
        assert len(split.validation) == 0
    at_200 = splits.official_folds(table, folds_csv=path, fold=2, magnification="200X")
    np.testing.assert_array_equal(at_200.test, kfold[2].test[table.magnification[kfold[2].test] == "200X"])
    assert at_200.params == {"folds_csv": str(path), "fold": 2, "magnification": "200X"}


def test_official_folds_reports_the_13412_accession_shared_across_folders(table, tmp_path):
    path = tmp_path / "Folds.csv"
    lobular = set(np.flatnonzero(table.tumor_type == TUMOR_TYPE_CODES.index("LC")).tolist())
    write_folds_csv(path, table, {1: lobular}, "BreaKHis_v1/")
    report = splits.official_folds(table, folds_csv=path, fold=1).leakage
    assert report.shared_patients == () and report.shared_accessions == ("14-13412",)
    assert report.summary().startswith("leakage: 0/5 test patients seen in training (0/")
    assert "; by accession 1/5 (" in report.summary()


def test_official_folds_missing_and_unknown_rows(table, tmp_path):
    path = tmp_path / "Folds.csv"
    write_folds_csv(path, table, {1: set()}, "")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(ValueError, match=r"table images missing from fold 1 of .*: 3 \("):
        splits.official_folds(table, folds_csv=path, fold=1)
    path.write_text("\n".join([*lines, "1,40,test,histology_slides/breast/x/SOB_B_A-14-1-40-001.png"]) + "\n")
    with pytest.raises(ValueError, match=r"lists images missing from the table: 1"):
        splits.official_folds(table, folds_csv=path, fold=1)
    path.write_text("\n".join([*lines, lines[1].replace(",train,", ",test,")]) + "\n")
    with pytest.raises(ValueError, match="lists images more than once: 1"):
        splits.official_folds(table, folds_csv=path, fold=1)
    with pytest.raises(ValueError, match=r"has no fold 7; its folds: \[1\]"):
        splits.official_folds(table, folds_csv=path, fold=7)


@pytest.mark.parametrize("protocol", ["patient_kfold", "patient_holdout", "image_random", "image_kfold"])
def test_magnification_filter_keeps_one_magnification_on_every_side(table, protocol):
    full = splits.make_split(table, protocol)
    split = splits.make_split(table, protocol, magnification="100X")
    at_100 = table.magnification == "100X"
    for side in splits.SIDES:
        rows = getattr(split, side)
        assert set(table.magnification[rows]) <= {"100X"}
        np.testing.assert_array_equal(rows, getattr(full, side)[at_100[getattr(full, side)]])
    assert split.params["magnification"] == "100X"


def test_to_json_dict_is_serialisable_and_consistent(table):
    split = splits.patient_kfold(table, fold=1)
    record = json.loads(json.dumps(split.to_json_dict()))
    assert record["name"] == "patient_kfold" and record["params"]["fold"] == 1
    test = record["sides"]["test"]
    assert test["images"] == len(split.test) == sum(test["classes"].values())
    assert test["patients"] == sorted(set(table.patient_id[split.test]))
    assert record["leakage"]["test"]["summary"] == split.leakage.summary()
    assert record["leakage"]["validation"]["test_images"] == len(split.validation)


def test_clear_errors(table):
    with pytest.raises(ValueError, match=r"unknown split protocol 'kfold'; valid protocols: patient_kfold, "):
        splits.make_split(table, "kfold")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'folds'.*valid arguments: k, fold, "):
        splits.make_split(table, "patient_kfold", folds=5)
    with pytest.raises(TypeError, match=r"missing a required argument: 'folds_csv'"):
        splits.make_split(table, "official_folds", fold=1)
    with pytest.raises(ValueError, match=r"at least 30 accession groups of each class.*benign has 20"):
        splits.patient_kfold(table, k=30)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.2"):
        splits.patient_holdout(table, test_fraction=1.2)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        splits.make_split(table, "image_random", val_fraction=-0.1)
    with pytest.raises(ValueError, match=r"fold must be in 0\.\.4"):
        splits.patient_kfold(table, fold=5)
    with pytest.raises(ValueError, match=r"magnification must be None or one of"):
        splits.patient_kfold(table, magnification="50X")
