"""Metrics: agreement with medpy, hand-made cases, the empty-mask convention, voxel vs mm units."""

from __future__ import annotations

import numpy as np
import pytest
from medpy.metric import binary as mb
from scipy import ndimage

from ACTIONPlusPlusLib.errors import DataError
from ACTIONPlusPlusLib.metrics import EMPTY_CONVENTION, case_metrics, format_table, summarize

NAMES = ["background", "RV", "Myo", "LV"]


def _blobs(seed: int, shape=(12, 30, 26)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    for c in (1, 2, 3):
        noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
        labels[(noise > np.quantile(noise, 0.85)) & (labels == 0)] = c
    return labels


def test_agrees_with_medpy_called_directly():
    pred, gt = _blobs(0), _blobs(1)
    spacing = (1.25, 0.8, 5.0)  # (x, y, z)
    got = case_metrics(pred, gt, 4, spacing=spacing, class_names=NAMES)
    assert list(got) == ["RV", "Myo", "LV"]
    for c, name in enumerate(["RV", "Myo", "LV"], start=1):
        p, g = pred == c, gt == c
        assert p.any() and g.any()
        assert got[name]["dice"] == pytest.approx(mb.dc(p, g))
        assert got[name]["jaccard"] == pytest.approx(mb.jc(p, g))
        assert got[name]["hd95"] == pytest.approx(mb.hd95(p, g))
        assert got[name]["asd"] == pytest.approx(mb.asd(p, g))
        # arrays are (z, y, x): medpy's spacing must be (z, y, x) = reversed (x, y, z)
        assert got[name]["hd95_mm"] == pytest.approx(mb.hd95(p, g, voxelspacing=(5.0, 0.8, 1.25)))
        assert got[name]["asd_mm"] == pytest.approx(mb.asd(p, g, voxelspacing=(5.0, 0.8, 1.25)))


def test_two_cubes_dice_and_jaccard_by_hand():
    pred = np.zeros((12, 12, 12), dtype=np.uint8)
    gt = np.zeros_like(pred)
    pred[2:8, 2:8, 2:8] = 1  # 216 voxels
    gt[4:10, 4:10, 4:10] = 1  # 216 voxels, overlap [4:8]^3 = 64
    m = case_metrics(pred, gt, 2, class_names=["background", "LA"])["LA"]
    assert m["dice"] == pytest.approx(2 * 64 / (216 + 216))
    assert m["jaccard"] == pytest.approx(64 / (216 + 216 - 64))
    assert "hd95_mm" not in m
    # identical masks
    same = case_metrics(pred, pred, 2)["class_1"]
    assert (same["dice"], same["jaccard"], same["hd95"], same["asd"]) == (1.0, 1.0, 0.0, 0.0)


def test_distances_voxel_vs_mm_with_anisotropic_spacing():
    # two parallel plates 4 voxels apart along array axis 0 (z): every surface distance is 4 voxels
    pred = np.zeros((8, 6, 6), dtype=np.uint8)
    gt = np.zeros_like(pred)
    pred[1] = 1
    gt[5] = 1
    spacing = (0.5, 1.0, 2.5)  # (x, y, z) mm
    m = case_metrics(pred, gt, 2, spacing=spacing)["class_1"]
    assert m["hd95"] == pytest.approx(4.0) and m["asd"] == pytest.approx(4.0)
    assert m["hd95_mm"] == pytest.approx(4 * 2.5) and m["asd_mm"] == pytest.approx(4 * 2.5)
    assert m["dice"] == 0.0
    # the same along array axis 2 (x): the x spacing applies
    pred_x, gt_x = np.moveaxis(pred, 0, 2), np.moveaxis(gt, 0, 2)
    m = case_metrics(pred_x, gt_x, 2, spacing=spacing)["class_1"]
    assert m["hd95"] == pytest.approx(4.0)
    assert m["hd95_mm"] == pytest.approx(4 * 0.5) and m["asd_mm"] == pytest.approx(4 * 0.5)


def test_empty_mask_convention_spec_8_1():
    gt = np.zeros((4, 8, 8), dtype=np.uint8)
    gt[1:3, 2:6, 2:6] = 1
    pred_empty = np.zeros_like(gt)
    pred_only = np.zeros_like(gt)
    pred_only[0, 0, 0] = 1
    keys = ("dice", "jaccard", "hd95", "asd", "hd95_mm", "asd_mm")
    sp = (1.0, 1.0, 10.0)
    # pred non-empty, gt empty -> (1, 1, 0, 0)
    m = case_metrics(pred_only, np.zeros_like(gt), 2, spacing=sp)["class_1"]
    assert tuple(m[k] for k in keys) == (1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    assert m["gt_empty"] and not m["pred_empty"]
    # pred empty, gt non-empty -> zeros
    m = case_metrics(pred_empty, gt, 2, spacing=sp)["class_1"]
    assert tuple(m[k] for k in keys) == (0.0,) * 6
    # both empty -> zeros as well (the ACTION script's else branch)
    m = case_metrics(pred_empty, np.zeros_like(gt), 2, spacing=sp)["class_1"]
    assert tuple(m[k] for k in keys) == (0.0,) * 6
    assert "(1, 1" not in EMPTY_CONVENTION and "Dice 1, Jaccard 1, HD95 0, ASD 0" in EMPTY_CONVENTION


def test_shape_mismatch_and_bad_names():
    with pytest.raises(DataError):
        case_metrics(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), 2)
    with pytest.raises(ValueError):
        case_metrics(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), 4, class_names=["a", "b"])


def test_summarize_and_table():
    a = {"RV": {"dice": 0.8, "jaccard": 0.6, "hd95": 2.0, "asd": 1.0},
         "LV": {"dice": 0.6, "jaccard": 0.4, "hd95": 4.0, "asd": 3.0}}
    b = {"RV": {"dice": 0.4, "jaccard": 0.2, "hd95": 6.0, "asd": 2.0},
         "LV": {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}}
    s = summarize([a, b], ["background", "RV", "LV"])
    assert s["num_cases"] == 2 and s["classes"] == ["RV", "LV"]
    assert s["per_class"]["RV"]["dice"] == pytest.approx(0.6)
    assert s["per_class"]["LV"]["hd95"] == pytest.approx(2.0)
    assert s["mean"]["dice"] == pytest.approx((0.6 + 0.8) / 2)
    assert s["mean"]["asd"] == pytest.approx((1.5 + 1.5) / 2)
    assert "hd95_mm" not in s["metrics"]
    table = format_table(s, ["RV", "LV"], "ACDC test")
    lines = table.splitlines()
    assert lines[0] == "ACDC test"
    dsc = next(line for line in lines if line.startswith("DSC"))
    assert dsc.split()[-3:] == ["60.00", "80.00", "70.00"]
    asd = next(line for line in lines if line.startswith("ASD"))
    assert asd.split()[-3:] == ["1.50", "1.50", "1.50"]
    assert any(line.startswith("Jaccard") for line in lines)
    assert any(line.startswith("95HD") for line in lines)
    assert EMPTY_CONVENTION in table and "n = 2" in table


def test_summary_from_real_case_metrics_with_mm():
    cases = [case_metrics(_blobs(s), _blobs(s + 10), 4, spacing=(1, 1, 10), class_names=NAMES) for s in range(2)]
    s = summarize(cases, NAMES)
    assert "hd95_mm" in s["metrics"]
    expected = np.mean([c["Myo"]["dice"] for c in cases])
    assert s["per_class"]["Myo"]["dice"] == pytest.approx(expected)
    table = format_table(s, NAMES, "t")
    assert "95HD (mm)" in table and "Myo" in table
