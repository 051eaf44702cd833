"""``bench/confusion.py --fragments``: the per-class count of predicted voxels outside the class's
largest region of their slice, and of those the truly right ones."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import confusion  # noqa: E402


def test_fragments_counts_each_class_outside_its_largest_region_per_slice() -> None:
    pred = np.zeros((2, 10, 10), dtype=np.uint8)
    pred[0, 1:4, 1:4] = 1  # slice 0: class 1's region (9 voxels) and a fragment of 2
    pred[0, 8, 8:10] = 1
    pred[1, 6:8, 6:8] = 1  # slice 1: its own largest region, kept although smaller than slice 0's
    pred[1, 0:2, 0:3] = 2  # one region of class 2: nothing outside
    truth = np.zeros_like(pred)
    truth[0, 8, 8] = 1  # one of the two fragment voxels is truly class 1
    case = SimpleNamespace(id="a", label=truth)
    counts = confusion.fragments({"a": pred}, [case], num_classes=3)
    assert counts[1].tolist() == [9 + 2 + 4, 2, 1]
    assert counts[2].tolist() == [6, 0, 0]
