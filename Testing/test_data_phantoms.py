"""Synthetic phantoms: deterministic, anatomically ordered labels, non-trivial images."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ACTIONPlusPlusLib.data import (
    atrium_phantom_case,
    atrium_phantom_dataset,
    cardiac_phantom_case,
    cardiac_phantom_dataset,
)


def test_cardiac_deterministic_and_varied() -> None:
    a = cardiac_phantom_case(np.random.default_rng(5), "a")
    b = cardiac_phantom_case(np.random.default_rng(5), "a")
    c = cardiac_phantom_case(np.random.default_rng(6), "a")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert a.image.shape == (8, 128, 128) and a.image.dtype == np.float32 and a.label.dtype == np.uint8
    assert a.image.min() == 0.0 and a.image.max() == 1.0
    assert a.spacing == (1.5, 1.5, 8.0) and len(a.direction) == 9


def test_cardiac_anatomy() -> None:
    case = cardiac_phantom_case(np.random.default_rng(11), "x", num_slices=6, size=(96, 112))
    assert set(np.unique(case.label)) == {0, 1, 2, 3}
    for z in range(case.label.shape[0]):
        lv, myo = case.label[z] == 3, case.label[z] == 2
        assert lv.any() and myo.any()
        # the myocardium encloses the blood pool: a dilated LV stays inside LV + Myo
        assert not (ndimage.binary_dilation(lv) & ~(lv | myo)).any()
    # the LV shrinks from base to apex and slices differ
    areas = (case.label == 3).sum(axis=(1, 2))
    assert areas[0] > areas[-1]
    # contrast: bright blood, dark muscle, but not a trivial threshold (noise, blobs)
    image, label = case.image, case.label
    assert image[label == 3].mean() > image[label == 2].mean() + 0.2
    assert image[label == 0].std() > 0.05
    assert (image[label == 0] > image[label == 2].mean()).mean() > 0.01


def test_cardiac_dataset_counts() -> None:
    ds = cardiac_phantom_dataset(2, 3, 1, seed=0, num_slices=3, size=(48, 48))
    assert (len(ds.labeled), len(ds.unlabeled), len(ds.test), len(ds.val)) == (2, 3, 1, 0)
    assert all(c.label is None for c in ds.unlabeled) and all(c.label is not None for c in ds.test)
    assert len({c.id for c in ds.labeled + ds.unlabeled + ds.test}) == 6
    again = cardiac_phantom_dataset(2, 3, 1, seed=0, num_slices=3, size=(48, 48))
    assert np.array_equal(ds.unlabeled[2].image, again.unlabeled[2].image)


def test_atrium() -> None:
    case = atrium_phantom_case(np.random.default_rng(2), "la1")
    assert case.image.shape == case.label.shape == (40, 64, 64)
    assert set(np.unique(case.label)) == {0, 1}
    assert abs(float(case.image.mean())) < 1e-3 and abs(float(case.image.std()) - 1.0) < 1e-3
    fg = case.label.mean()
    assert 0.01 < fg < 0.4
    assert ndimage.label(case.label)[1] == 1  # blob and vein are one connected structure
    ds = atrium_phantom_dataset(1, 2, 0, seed=1, shape=(24, 32, 40))
    assert ds.labeled[0].image.shape == (24, 32, 40) and ds.unlabeled[0].label is None
