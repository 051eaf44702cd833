"""validate_training_cases / validate_labeled_count: each bad input raises a DataError naming the case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data import Case, cardiac_phantom_case, validate_labeled_count, validate_training_cases
from ACTIONPlusPlusLib.errors import DataError

ACDC = preset("acdc", patch_size=[32, 32])
LA = preset("la", patch_size=[32, 32, 16])


def _cases(n: int, seed: int, with_label: bool, prefix: str) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [cardiac_phantom_case(rng, f"{prefix}{i}", num_slices=2, size=(32, 32), with_label=with_label)
            for i in range(n)]


@pytest.fixture()
def sets() -> tuple[list[Case], list[Case]]:
    return _cases(2, 0, True, "lab"), _cases(2, 1, False, "unl")


def test_good_data_passes(sets) -> None:
    labeled, unlabeled = sets
    assert validate_training_cases(labeled, unlabeled, ACDC) == []


def test_shape_mismatch(sets) -> None:
    labeled, unlabeled = sets
    labeled[1].label = labeled[1].label[:, :16]
    with pytest.raises(DataError, match="lab1.*shape"):
        validate_training_cases(labeled, unlabeled, ACDC)


def test_label_values_outside_classes(sets) -> None:
    labeled, unlabeled = sets
    labeled[0].label[0, 0, :2] = (7, 9)
    with pytest.raises(DataError, match=r"lab0.*\[7, 9\]"):
        validate_training_cases(labeled, unlabeled, ACDC)
    labeled[0].label[0, 0, :2] = 0
    with pytest.raises(DataError, match=r"lab0.*\[2, 3\]"):  # LA has 2 classes: 0 and 1
        validate_training_cases(labeled, unlabeled, LA)


def test_no_foreground(sets) -> None:
    labeled, unlabeled = sets
    for case in labeled:
        case.label[:] = 0
    with pytest.raises(DataError, match="no foreground.*lab0"):
        validate_training_cases(labeled, unlabeled, ACDC)


def test_missing_class_is_a_warning(sets) -> None:
    labeled, unlabeled = sets
    for case in labeled:
        case.label[case.label == 1] = 0
    warnings = validate_training_cases(labeled, unlabeled, ACDC)
    assert any("RV" in w for w in warnings)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_images(sets, value: float) -> None:
    labeled, unlabeled = sets
    unlabeled[1].image[0, 3, 3] = value
    unlabeled[1].path = Path("/data/imagesUnlabeled/unl1.nii.gz")
    with pytest.raises(DataError, match=r"unl1.*unl1\.nii\.gz.*NaN/Inf"):
        validate_training_cases(labeled, unlabeled, ACDC)


def test_no_labeled_and_no_unlabeled(sets) -> None:
    labeled, unlabeled = sets
    with pytest.raises(DataError, match="no labeled"):
        validate_training_cases([], unlabeled, ACDC)
    with pytest.raises(DataError, match="ACTION\\+\\+ needs unlabeled images.*supervised-only"):
        validate_training_cases(labeled, [], ACDC)
    assert validate_training_cases(labeled, [], ACDC, require_unlabeled=False) == []


def test_labeled_case_without_label(sets) -> None:
    labeled, unlabeled = sets
    labeled[1].label = None
    with pytest.raises(DataError, match="lab1.*no label"):
        validate_training_cases(labeled, unlabeled, ACDC)


def test_same_image_labeled_and_unlabeled(sets) -> None:
    labeled, unlabeled = sets
    copy = Case(id="dup", image=labeled[1].image.copy())
    with pytest.raises(DataError, match="dup.*lab1"):
        validate_training_cases(labeled, unlabeled + [copy], ACDC)
    same_file = Case(id="other", image=unlabeled[0].image, path=Path("/x/a.nii.gz"))
    labeled[0].path = Path("/x/a.nii.gz")
    with pytest.raises(DataError, match="a.nii.gz.*both labeled"):
        validate_training_cases(labeled, [same_file], ACDC)


def test_constant_images_are_not_duplicates(sets) -> None:
    """Two blank images (no content) in both sets pass without a warning, while the same pair with
    content is refused: it is the image's constancy that exempts it, not a duplicate check switched off."""
    labeled, unlabeled = sets
    blank = np.zeros((2, 32, 32), dtype=np.float32)
    label = np.zeros((2, 32, 32), np.uint8)
    label[:, 10:20, 5:9] = 3
    labeled.append(Case(id="blank_l", image=blank.copy(), label=label))
    unlabeled.append(Case(id="blank_u", image=blank.copy()))
    warnings = validate_training_cases(labeled, unlabeled, ACDC)
    assert not any("blank" in w for w in warnings), warnings
    textured = blank.copy()
    textured[:, 10:20, 5:9] = 0.5
    labeled[-1].image = textured.copy()
    unlabeled[-1].image = textured.copy()
    with pytest.raises(DataError, match="blank_u.*blank_l"):
        validate_training_cases(labeled, unlabeled, ACDC)


def test_tiny_images_and_patch_warning(sets) -> None:
    labeled, unlabeled = sets
    unlabeled.append(Case(id="tiny", image=np.zeros((1, 8, 40), np.float32)))
    with pytest.raises(DataError, match="tiny.*8x40"):
        validate_training_cases(labeled, unlabeled, ACDC)
    big_patch = preset("acdc", patch_size=[64, 48])
    warnings = validate_training_cases(labeled, unlabeled[:2], big_patch)
    assert len(warnings) == 1 and "patch size [64, 48]" in warnings[0] and "4 of 4" in warnings[0]


def test_3d_preset_refuses_single_slices() -> None:
    one = Case(id="flat", image=np.zeros((1, 32, 32), np.float32), label=np.ones((1, 32, 32), np.uint8))
    with pytest.raises(DataError, match="flat.*single 2D slice"):
        validate_training_cases([one], [], LA, require_unlabeled=False)


def test_image_must_be_3d() -> None:
    bad = Case(id="flat2d", image=np.zeros((32, 32), np.float32), label=np.ones((32, 32), np.uint8))
    with pytest.raises(DataError, match="flat2d.*\\(z, y, x\\)"):
        validate_training_cases([bad], [], ACDC, require_unlabeled=False)


def test_validate_labeled_count() -> None:
    assert validate_labeled_count(70, 7, "patients") == 7
    assert validate_labeled_count(70, None, "patients") == 70
    with pytest.raises(DataError, match="asked for 80 labeled patients but only 70"):
        validate_labeled_count(70, 80, "patients")
    with pytest.raises(DataError, match=">= 0"):
        validate_labeled_count(70, -1, "patients")
