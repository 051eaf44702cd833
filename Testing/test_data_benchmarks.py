"""The loaders on the real ACDC (SSL4MIS) and LA (UA-MT) data in ../shared/data (skipped when absent).

The ACDC training slices are read once per session (session fixture); other ACDC checks use the
name-only split or the small val split.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data import (
    Dataset,
    acdc_patient,
    acdc_split_names,
    detect_layout,
    load_dataset,
    validate_training_cases,
)

LA_FIRST_8 = [
    "06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "1GU15S0GJ6PFNARO469W",
    "1MHBF3G6DCPWHSKG7XCP", "23X6SY44VT9KFHR7S7OC", "2XL5HSFSE93RMOJDRGR4", "38CWS74285MFGZZXR09Z",
]


@pytest.fixture(scope="session")
def acdc_train(acdc_root: Path) -> Dataset:
    return load_dataset(acdc_root, "acdc", labeled=3, splits=("train",))


@pytest.fixture(scope="session")
def la_train(la_root: Path) -> Dataset:
    return load_dataset(la_root, "la", labeled=8, splits=("train", "test"))


def _list(root: Path, name: str) -> list[str]:
    return [line.strip() for line in (root / name).read_text().splitlines() if line.strip()]


def test_detect_real(acdc_root: Path, la_root: Path) -> None:
    assert detect_layout(acdc_root) == "acdc"
    assert detect_layout(la_root) == "la"


def test_acdc_three_patients(acdc_root: Path, acdc_train: Dataset) -> None:
    assert len(acdc_train.labeled) == 68 and len(acdc_train.unlabeled) == 1244
    names = _list(acdc_root, "train_slices.list")
    assert [c.id for c in acdc_train.labeled] == names[:68]
    assert [c.id for c in acdc_train.unlabeled] == names[68:]
    patients = []
    for case in acdc_train.labeled:
        if acdc_patient(case.id) not in patients:
            patients.append(acdc_patient(case.id))
    assert patients == ["patient099", "patient038", "patient050"]
    for case in acdc_train.labeled:
        assert case.image.ndim == 3 and case.image.shape[0] == 1 and case.image.dtype == np.float32
        assert case.label.shape == case.image.shape and case.label.dtype == np.uint8
        assert set(np.unique(case.label)) <= {0, 1, 2, 3}
        assert case.spacing is None and case.path is not None and case.path.suffix == ".h5"
    assert all(c.label is None for c in acdc_train.unlabeled)
    assert set(np.unique(np.concatenate([c.label.ravel() for c in acdc_train.labeled]))) == {0, 1, 2, 3}
    # stored pre-normalised, not re-normalised
    with h5py.File(acdc_train.labeled[0].path, "r") as handle:
        assert np.array_equal(acdc_train.labeled[0].image[0], handle["image"][()])


def test_acdc_seven_patients(acdc_root: Path) -> None:
    labeled, unlabeled = acdc_split_names(acdc_root, 7)
    names = _list(acdc_root, "train_slices.list")
    assert (len(labeled), len(unlabeled)) == (136, 1176)
    assert labeled == names[:136] and unlabeled == names[136:]
    assert [p for p in dict.fromkeys(acdc_patient(n) for n in labeled)] == [
        "patient099", "patient038", "patient050", "patient100", "patient058", "patient021", "patient049"]


def test_acdc_real_data_validates(acdc_train: Dataset) -> None:
    warnings = validate_training_cases(acdc_train.labeled, acdc_train.unlabeled, preset("acdc"))
    assert all("patch size" in w for w in warnings)


def test_acdc_val_volumes(acdc_root: Path) -> None:
    ds = load_dataset(acdc_root, "acdc", splits=("val",))
    assert not ds.labeled and not ds.unlabeled and not ds.test
    assert [c.id for c in ds.val] == _list(acdc_root, "val.list") and len(ds.val) == 20
    for case in ds.val:
        assert case.image.ndim == 3 and case.image.shape[0] > 1 and case.label.shape == case.image.shape
        assert set(np.unique(case.label)) <= {0, 1, 2, 3}
        assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    with h5py.File(ds.val[0].path, "r") as handle:
        assert np.array_equal(ds.val[0].image, handle["image"][()])


def test_la_eight_labeled(la_root: Path, la_train: Dataset) -> None:
    assert [c.id for c in la_train.labeled] == LA_FIRST_8
    assert len(la_train.unlabeled) == 16
    assert [c.id for c in la_train.unlabeled] == _list(la_root, "train.list")[8:24]
    assert la_train.test == []
    assert any("56 of 72" in n for n in la_train.notes) and any("test ids" in n for n in la_train.notes)
    for case in la_train.labeled[:2] + la_train.unlabeled[:1]:
        with h5py.File(case.path, "r") as handle:
            image = handle["image"][()]
            assert np.array_equal(case.image, image.transpose(2, 1, 0))  # h5 (X, Y, Z) -> (z, y, x)
            if case.label is not None:
                assert np.array_equal(case.label, handle["label"][()].transpose(2, 1, 0))
        assert case.spacing is None and case.image.dtype == np.float32
    assert all(set(np.unique(c.label)) == {0, 1} for c in la_train.labeled)
    assert all(c.label is None for c in la_train.unlabeled)
    assert validate_training_cases(la_train.labeled, la_train.unlabeled, preset("la")) is not None


def test_la_four_labeled(la_root: Path) -> None:
    ds = load_dataset(la_root, "la", labeled=4)
    assert [c.id for c in ds.labeled] == LA_FIRST_8[:4] and len(ds.unlabeled) == 20
