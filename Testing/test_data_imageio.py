"""SimpleITK I/O of Cases: geometry round trips, label resampling / refusal, refused inputs, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ACTIONPlusPlusLib.data import (
    IMAGE_SUFFIXES,
    Case,
    cardiac_phantom_case,
    read_case,
    split_suffix,
    write_image,
    write_label,
)
from ACTIONPlusPlusLib.errors import DataError

# A left-handed, non-identity direction: a 90 degree rotation about z followed by a z flip (det -1).
LEFT_HANDED = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
SPACING = (0.75, 1.25, 3.5)
ORIGIN = (-12.5, 30.25, 7.0)


def _case(direction: np.ndarray = LEFT_HANDED) -> Case:
    case = cardiac_phantom_case(np.random.default_rng(3), "c1", num_slices=5, size=(40, 48))
    case.spacing, case.origin, case.direction = SPACING, ORIGIN, tuple(float(v) for v in direction.ravel())
    return case


def test_left_handed_direction_fixture() -> None:
    assert np.linalg.det(LEFT_HANDED) == pytest.approx(-1.0)


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_round_trip_exact_geometry(tmp_path: Path, suffix: str) -> None:
    case = _case()
    write_image(tmp_path / f"img{suffix}", case.image, case)
    write_label(tmp_path / f"lab{suffix}", case.label, case)
    back = read_case(tmp_path / f"img{suffix}", label_path=tmp_path / f"lab{suffix}")
    assert back.id == "img"
    assert back.image.dtype == np.float32 and back.label.dtype == np.uint8
    assert np.array_equal(back.image, case.image)
    assert np.array_equal(back.label, case.label)
    assert back.spacing == case.spacing
    assert back.origin == case.origin
    assert back.direction == case.direction
    assert back.path == tmp_path / f"img{suffix}"
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"img{suffix}", f"lab{suffix}"])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_round_trip_oblique_left_handed(tmp_path: Path, suffix: str) -> None:
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]) @ np.diag([1, 1, -1.0])
    case = _case(rot)
    write_image(tmp_path / f"img{suffix}", case.image, case)
    back = read_case(tmp_path / f"img{suffix}")
    assert np.array_equal(back.image, case.image)
    assert np.allclose(back.direction, case.direction, atol=1e-6)  # NIfTI stores float32 quaternions
    assert np.allclose(back.origin, case.origin, atol=1e-5)
    assert np.allclose(back.spacing, case.spacing, atol=1e-6)


def test_overwrite_and_bad_suffix(tmp_path: Path) -> None:
    case = _case()
    path = tmp_path / "sub" / "lab.seg.nrrd"
    write_label(path, case.label, case)
    write_label(path, np.zeros_like(case.label), case)
    assert read_case(path).image.max() == 0
    with pytest.raises(DataError, match="lab.png"):
        write_label(tmp_path / "lab.png", case.label, case)
    with pytest.raises(DataError, match="c1"):
        write_label(tmp_path / "x.nrrd", case.label[:2], case)
    assert split_suffix("a.b.seg.nrrd") == ("a.b", ".seg.nrrd")
    assert split_suffix("case1.nii.gz") == ("case1", ".nii.gz")


def test_2d_image_becomes_one_slice(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.arange(12, dtype=np.float32).reshape(3, 4))
    img.SetSpacing((0.5, 0.7))
    sitk.WriteImage(img, str(tmp_path / "s.nrrd"))
    case = read_case(tmp_path / "s.nrrd", case_id="slice")
    assert case.id == "slice" and case.image.shape == (1, 3, 4)
    assert case.spacing[:2] == (0.5, 0.7)


def test_refuses_4d_and_channels(tmp_path: Path) -> None:
    four = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), dtype=np.float32), isVector=False)
    sitk.WriteImage(four, str(tmp_path / "cine.nii.gz"))
    with pytest.raises(DataError, match=r"cine\.nii\.gz.*4D"):
        read_case(tmp_path / "cine.nii.gz")
    rgb = sitk.GetImageFromArray(np.zeros((6, 7, 3), dtype=np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "photo.nrrd"))
    with pytest.raises(DataError, match=r"photo\.nrrd.*channels"):
        read_case(tmp_path / "photo.nrrd")
    with pytest.raises(DataError, match="missing.nii"):
        read_case(tmp_path / "missing.nii")
    (tmp_path / "garbage.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DataError, match="garbage"):
        read_case(tmp_path / "garbage.nii.gz")


def _label_image(array: np.ndarray, spacing, origin, direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_label_resampled_when_extents_match(tmp_path: Path) -> None:
    # image: 10 x 20 x 20 voxels of (1, 1, 2) mm; label: twice as fine in-plane over the same extent
    image = np.random.default_rng(0).random((10, 20, 20)).astype(np.float32)
    sitk.WriteImage(_label_image(image, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), str(tmp_path / "img.nii.gz"))
    fine = np.zeros((10, 40, 40), dtype=np.uint8)
    fine[2:6, 10:30, 8:24] = 2  # image voxels y 5..14, x 4..11
    sitk.WriteImage(_label_image(fine, (0.5, 0.5, 2.0), (-0.25, -0.25, 0.0)), str(tmp_path / "lab.nrrd"))
    case = read_case(tmp_path / "img.nii.gz", label_path=tmp_path / "lab.nrrd")
    expected = np.zeros((10, 20, 20), dtype=np.uint8)
    expected[2:6, 5:15, 4:12] = 2
    assert case.label.shape == case.image.shape
    assert np.array_equal(case.label, expected)


def test_label_same_grid_other_direction_is_resampled(tmp_path: Path) -> None:
    # the same voxels described with a flipped x axis: identical physical extent
    image = np.zeros((3, 4, 5), dtype=np.float32)
    sitk.WriteImage(_label_image(image, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), str(tmp_path / "img.nrrd"))
    label = np.zeros((3, 4, 5), dtype=np.uint8)
    label[:, :, 0] = 1  # first x index of the flipped grid = physical x 4 = last image column
    flipped = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    sitk.WriteImage(_label_image(label, (1.0, 1.0, 1.0), (4.0, 0.0, 0.0), flipped), str(tmp_path / "lab.nrrd"))
    case = read_case(tmp_path / "img.nrrd", label_path=tmp_path / "lab.nrrd")
    assert np.array_equal(case.label[:, :, 4], np.ones((3, 4))) and case.label[:, :, :4].sum() == 0


def test_label_tiny_float_difference_accepted(tmp_path: Path) -> None:
    image = np.zeros((3, 4, 5), dtype=np.float32)
    sitk.WriteImage(_label_image(image, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), str(tmp_path / "img.nrrd"))
    label = np.ones((3, 4, 5), dtype=np.uint8)
    sitk.WriteImage(_label_image(label, (1.0000001, 1.0, 1.0), (1e-7, 0.0, 0.0)), str(tmp_path / "lab.nrrd"))
    assert read_case(tmp_path / "img.nrrd", label_path=tmp_path / "lab.nrrd").label.sum() == 60


def test_label_refused_when_extents_differ(tmp_path: Path) -> None:
    image = np.zeros((10, 20, 20), dtype=np.float32)
    sitk.WriteImage(_label_image(image, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), str(tmp_path / "img.nii.gz"))
    # cropped label (Slicer-style effective extent): same spacing, smaller grid
    sitk.WriteImage(_label_image(np.ones((10, 10, 10), dtype=np.uint8), (1.0, 1.0, 2.0), (5.0, 5.0, 0.0)),
                    str(tmp_path / "crop.seg.nrrd"))
    with pytest.raises(DataError, match=r"crop\.seg\.nrrd.*img\.nii\.gz"):
        read_case(tmp_path / "img.nii.gz", label_path=tmp_path / "crop.seg.nrrd")
    # shifted by one voxel: more than half a voxel off
    sitk.WriteImage(_label_image(np.ones((10, 20, 20), dtype=np.uint8), (1.0, 1.0, 2.0), (1.0, 0.0, 0.0)),
                    str(tmp_path / "shift.nrrd"))
    with pytest.raises(DataError, match=r"shift\.nrrd.*img\.nii\.gz"):
        read_case(tmp_path / "img.nii.gz", label_path=tmp_path / "shift.nrrd")


def test_label_values_must_be_integers(tmp_path: Path) -> None:
    image = np.zeros((2, 3, 4), dtype=np.float32)
    sitk.WriteImage(_label_image(image, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), str(tmp_path / "img.nrrd"))
    frac = np.full((2, 3, 4), 0.5, dtype=np.float32)
    sitk.WriteImage(_label_image(frac, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), str(tmp_path / "prob.nrrd"))
    with pytest.raises(DataError, match=r"prob\.nrrd.*non-integer"):
        read_case(tmp_path / "img.nrrd", label_path=tmp_path / "prob.nrrd")
    big = np.full((2, 3, 4), 300, dtype=np.int16)
    sitk.WriteImage(_label_image(big, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), str(tmp_path / "big.nrrd"))
    with pytest.raises(DataError, match=r"big\.nrrd"):
        read_case(tmp_path / "img.nrrd", label_path=tmp_path / "big.nrrd")
    ints = np.full((2, 3, 4), 3.0, dtype=np.float32)
    sitk.WriteImage(_label_image(ints, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), str(tmp_path / "ok.nrrd"))
    case = read_case(tmp_path / "img.nrrd", label_path=tmp_path / "ok.nrrd")
    assert case.label.dtype == np.uint8 and int(case.label.max()) == 3
