"""Layout detection, the generic NIfTI/NRRD layout, and the benchmark loaders on small fake folders."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data import (
    Dataset,
    acdc_split_names,
    cardiac_phantom_dataset,
    detect_layout,
    load_dataset,
    normalize,
    write_generic_layout,
    write_image,
    write_label,
)
from ACTIONPlusPlusLib.errors import DataError

LEFT_HANDED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


# --------------------------------------------------------------------------------------- detection


def test_detect_empty_missing_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        detect_layout(tmp_path)
    text = str(err.value)
    assert "imagesTr" in text and "labelsTr" in text and "train_slices.list" in text
    assert "mri_norm2.h5" in text and "empty folder" in text
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        detect_layout(tmp_path / "file.txt")
    with pytest.raises(DataError, match=r"Found: file\.txt"):
        load_dataset(tmp_path, "acdc")


def test_detect_mixed(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "train_slices.list").write_text("patient001_frame01_slice_1\n")
    with pytest.raises(DataError, match=r"mixes layouts \(acdc and generic\).*imagesTr/"):
        detect_layout(tmp_path)


# ------------------------------------------------------------------------------------------ generic


@pytest.fixture(scope="module")
def phantom() -> Dataset:
    ds = cardiac_phantom_dataset(3, 2, 2, seed=4, num_slices=3, size=(32, 40))
    for case in ds.labeled + ds.unlabeled + ds.test:  # non-identity, left-handed, anisotropic geometry
        case.direction, case.spacing, case.origin = LEFT_HANDED, (0.75, 1.25, 3.5), (10.5, -4.25, 2.0)
        case.image = (case.image * 800.0 + 20.0).astype(np.float32)  # raw scanner-like intensities
    return ds


def test_generic_round_trip(tmp_path: Path, phantom: Dataset) -> None:
    write_generic_layout(phantom, tmp_path)
    assert detect_layout(tmp_path) == "generic"
    ds = load_dataset(tmp_path, "acdc", splits=("train", "test"))
    assert ds.layout == "generic" and ds.root == tmp_path
    assert [c.id for c in ds.labeled] == [c.id for c in phantom.labeled]
    assert [c.id for c in ds.unlabeled] == [c.id for c in phantom.unlabeled]
    assert [c.id for c in ds.test] == [c.id for c in phantom.test]
    for src, got in zip(phantom.labeled + phantom.unlabeled + phantom.test, ds.labeled + ds.unlabeled + ds.test):
        assert np.array_equal(got.image, normalize(src.image, "minmax"))  # raw files are normalised on load
        assert (got.label is None) == (src.label is None)
        if src.label is not None:
            assert np.array_equal(got.label, src.label)
        assert got.spacing == src.spacing and got.origin == src.origin and got.direction == src.direction
    la = load_dataset(tmp_path, "la", splits=("train",))
    assert abs(float(la.labeled[0].image.mean())) < 1e-4  # the LA preset z-scores


def test_generic_labeled_subset_and_splits(tmp_path: Path, phantom: Dataset) -> None:
    write_generic_layout(phantom, tmp_path, suffix=".nrrd")
    ds = load_dataset(tmp_path, preset("acdc"), labeled=1)
    assert [c.id for c in ds.labeled] == [phantom.labeled[0].id]
    assert len(ds.unlabeled) == 4 and all(c.label is None for c in ds.unlabeled)
    assert any("used as unlabeled" in n for n in ds.notes)
    assert ds.test == [] and ds.val == []
    with pytest.raises(DataError, match="asked for 9 labeled image/label pairs but only 3"):
        load_dataset(tmp_path, "acdc", labeled=9)
    # evaluation reads only imagesTs: a broken training file does not matter
    (tmp_path / "imagesTr" / "zzz.nrrd").write_bytes(b"broken")
    ds = load_dataset(tmp_path, "acdc", splits=("test",))
    assert len(ds.test) == 2 and not ds.labeled and not ds.unlabeled


def test_generic_seg_nrrd_and_nnunet_names(tmp_path: Path, phantom: Dataset) -> None:
    a, b = phantom.labeled[:2]
    write_image(tmp_path / "imagesTr" / "a.nii.gz", a.image, a)
    write_label(tmp_path / "labelsTr" / "a.seg.nrrd", a.label, a)
    write_image(tmp_path / "imagesTr" / "b_0000.nii.gz", b.image, b)
    write_label(tmp_path / "labelsTr" / "b.nii.gz", b.label, b)
    (tmp_path / "imagesTr" / "dataset.json").write_text("{}")
    ds = load_dataset(tmp_path, "acdc", splits=("train",))
    assert [c.id for c in ds.labeled] == ["a", "b"]
    assert np.array_equal(ds.labeled[0].label, a.label) and np.array_equal(ds.labeled[1].label, b.label)
    assert any("dataset.json" in n for n in ds.notes)


def test_generic_errors(tmp_path: Path, phantom: Dataset) -> None:
    a, b = phantom.labeled[:2]
    write_image(tmp_path / "imagesTr" / "a.nii.gz", a.image, a)
    with pytest.raises(DataError, match="labelsTr/ is missing"):
        load_dataset(tmp_path, "acdc")
    write_label(tmp_path / "labelsTr" / "a.nii.gz", a.label, a)
    write_image(tmp_path / "imagesTr" / "lonely.nii.gz", b.image, b)
    with pytest.raises(DataError, match=r"lonely\.nii\.gz.*imagesUnlabeled"):
        load_dataset(tmp_path, "acdc")
    (tmp_path / "imagesTr" / "lonely.nii.gz").unlink()
    write_label(tmp_path / "labelsTr" / "orphan.nii.gz", b.label, b)
    with pytest.raises(DataError, match=r"orphan\.nii\.gz"):
        load_dataset(tmp_path, "acdc")
    (tmp_path / "labelsTr" / "orphan.nii.gz").unlink()
    write_image(tmp_path / "imagesTr" / "a.nrrd", a.image, a)
    with pytest.raises(DataError, match=r"a\.nii\.gz and a\.nrrd"):
        load_dataset(tmp_path, "acdc")
    (tmp_path / "imagesTr" / "a.nrrd").unlink()
    # a label on another grid with another extent
    small = sitk.GetImageFromArray(np.ones((2, 4, 4), np.uint8))
    sitk.WriteImage(small, str(tmp_path / "labelsTr" / "a.nii.gz"))
    with pytest.raises(DataError, match=r"labelsTr/a\.nii\.gz.*imagesTr/a\.nii\.gz"):
        load_dataset(tmp_path, "acdc")


# ------------------------------------------------------------------------------- fake benchmarks


def _h5(path: Path, image: np.ndarray | None, label: np.ndarray | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        if image is not None:
            handle["image"] = image
        if label is not None:
            handle["label"] = label


def _fake_acdc(root: Path, slices_dir: str = "data") -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for patient, count in (("patient009", 3), ("patient002", 2), ("patient005", 4)):
        for frame in ("01", "02"):
            for s in range(1, count + 1):
                names.append(f"{patient}_frame{frame}_slice_{s}")
    for name in names:
        _h5(root / slices_dir / f"{name}.h5", rng.random((20, 24), dtype=np.float32),
            rng.integers(0, 4, (20, 24), dtype=np.uint8))
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    (root / "val.list").write_text("patient001_frame01\n")
    _h5(root / "data" / "patient001_frame01.h5", rng.random((5, 20, 24), dtype=np.float32),
        rng.integers(0, 4, (5, 20, 24), dtype=np.uint8))
    return names


@pytest.mark.parametrize("slices_dir", ["data", "data/slices"])
def test_fake_acdc(tmp_path: Path, slices_dir: str) -> None:
    names = _fake_acdc(tmp_path, slices_dir)
    assert detect_layout(tmp_path) == "acdc"
    ds = load_dataset(tmp_path, "acdc", labeled=2, splits=("train", "val"))
    assert [c.id for c in ds.labeled] == names[:10]  # patient009 (6 slices) + patient002 (4)
    assert [c.id for c in ds.unlabeled] == names[10:]
    assert ds.labeled[0].image.shape == (1, 20, 24) and ds.labeled[0].spacing is None
    assert all(c.label is None for c in ds.unlabeled)
    assert ds.val[0].image.shape == (5, 20, 24) and ds.val[0].id == "patient001_frame01"
    assert acdc_split_names(tmp_path, 1) == (names[:6], names[6:])
    with pytest.raises(DataError, match="asked for 4 labeled patients but only 3"):
        load_dataset(tmp_path, "acdc", labeled=4)
    with pytest.raises(DataError, match="needs the 'acdc' preset"):
        load_dataset(tmp_path, "la", labeled=1)


def test_fake_acdc_errors(tmp_path: Path) -> None:
    names = _fake_acdc(tmp_path)
    with pytest.raises(DataError, match=r"test\.list is missing"):
        load_dataset(tmp_path, "acdc", splits=("test",))
    (tmp_path / "data" / f"{names[3]}.h5").unlink()
    (tmp_path / "data" / f"{names[7]}.h5").unlink()
    with pytest.raises(DataError, match=rf"2 of 18 training slices.*{names[3]}, {names[7]}"):
        load_dataset(tmp_path, "acdc", labeled=1)
    _h5(tmp_path / "data" / f"{names[3]}.h5", np.zeros((20, 24), np.float32), None)
    _h5(tmp_path / "data" / f"{names[7]}.h5", np.zeros((20, 24), np.float32), None)
    with pytest.raises(DataError, match=rf"{names[3]}\.h5.*'label'"):
        load_dataset(tmp_path, "acdc", labeled=1)
    # an unlabeled slice needs no label dataset
    assert len(load_dataset(tmp_path, "acdc", labeled=0).unlabeled) == 18
    (tmp_path / "data" / f"{names[0]}.h5").write_bytes(b"junk")
    with pytest.raises(DataError, match=rf"{names[0]}\.h5"):
        load_dataset(tmp_path, "acdc", labeled=1)
    (tmp_path / "train_slices.list").unlink()
    with pytest.raises(DataError, match=r"train_slices\.list is missing"):
        load_dataset(tmp_path, "acdc", labeled=1)


@pytest.mark.parametrize("nested", [True, False])
def test_fake_la(tmp_path: Path, nested: bool) -> None:
    rng = np.random.default_rng(1)
    ids = [f"ID{i}" for i in range(6)]
    (tmp_path / "train.list").write_text("\n".join(ids[:5]) + "\n")
    (tmp_path / "test.list").write_text("ID5\nABSENT\n")
    base = tmp_path / "2018LA_Seg_Training Set" if nested else tmp_path
    arrays = {}
    for i in ids[:3] + ids[4:]:  # ID3 is listed but absent
        image = rng.random((6, 5, 4), dtype=np.float32)  # (X, Y, Z)
        label = (image > 0.5).astype(np.uint8)
        arrays[i] = (image, label)
        _h5(base / i / "mri_norm2.h5", image, label)
    assert detect_layout(tmp_path) == "la"
    ds = load_dataset(tmp_path, "la", labeled=2, splits=("train", "test"))
    assert [c.id for c in ds.labeled] == ["ID0", "ID1"]
    assert [c.id for c in ds.unlabeled] == ["ID2", "ID4"]
    assert [c.id for c in ds.test] == ["ID5"]
    case = ds.labeled[1]
    assert case.image.shape == (4, 5, 6) and case.spacing is None
    assert np.array_equal(case.image, arrays["ID1"][0].transpose(2, 1, 0))
    assert np.array_equal(case.label, arrays["ID1"][1].transpose(2, 1, 0))
    assert any("ID3" in n for n in ds.notes) and any("ABSENT" in n for n in ds.notes)
    with pytest.raises(DataError, match=r"labeled volumes.*ID3"):
        load_dataset(tmp_path, "la", labeled=4)
    with pytest.raises(DataError, match="asked for 6 labeled volumes"):
        load_dataset(tmp_path, "la", labeled=6)
    every = load_dataset(tmp_path, "la")
    assert [c.id for c in every.labeled] == ["ID0", "ID1", "ID2", "ID4"] and not every.unlabeled


def test_unknown_split_and_preset(tmp_path: Path) -> None:
    _fake_acdc(tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset(tmp_path, "acdc", splits=("training",))
    with pytest.raises(DataError, match="unknown preset"):
        load_dataset(tmp_path, "brats")
