"""Deterministic synthetic cardiac MRI for tests, the demo and the worker/bridge round trips.

Every generator takes a ``numpy.random.Generator`` so a seed reproduces the same cases bit for bit.

- :func:`cardiac_phantom_case`: short-axis cine-like slices with ACDC labels (0 bg, 1 RV, 2 Myo, 3 LV):
  a bright LV blood pool inside a dark myocardial ring, a bright RV crescent beside it, other tissue
  blobs in a body ellipse, a smooth multiplicative bias field and Rician noise; min-max scaled to [0, 1].
  Sizes, positions and intensities vary per case and a little from base to apex.
- :func:`atrium_phantom_case`: a 3D LGE-like volume with an atrium blob plus a pulmonary-vein tube
  (label 1), z-scored like the LA release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage

from .imageio import write_image, write_label
from .types import Case, Dataset, normalize


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    """A smooth multiplicative field around 1: a random low-order polynomial of the normalised coords."""
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    field = np.zeros(shape)
    for g in grids:
        field += rng.uniform(-1, 1) * g + 0.5 * rng.uniform(-1, 1) * g * g
    field /= max(1e-6, np.abs(field).max())
    return 1.0 + strength * field


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    real = signal + rng.normal(0.0, sigma, signal.shape)
    imag = rng.normal(0.0, sigma, signal.shape)
    return np.sqrt(real * real + imag * imag)


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0
) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return u * u + v * v <= 1.0


def cardiac_phantom_case(
    rng: np.random.Generator,
    case_id: str,
    num_slices: int = 8,
    size: tuple[int, int] = (128, 128),
    with_label: bool = True,
) -> Case:
    """One short-axis stack (num_slices, H, W): image float32 in [0, 1], label uint8 {0,1,2,3} or None."""
    h, w = int(size[0]), int(size[1])
    scale = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # per-case anatomy
    cy = h / 2 + rng.uniform(-0.08, 0.08) * h
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    lv_r = rng.uniform(0.08, 0.12) * scale
    myo_t = rng.uniform(0.035, 0.055) * scale
    rv_side = rng.choice([-1.0, 1.0]) if rng.uniform() < 0.2 else -1.0  # usually on the image left
    rv_angle = rng.uniform(-0.5, 0.5)
    body_ry, body_rx = rng.uniform(0.36, 0.44) * h, rng.uniform(0.40, 0.47) * w
    intens = {
        "air": rng.uniform(0.0, 0.04),
        "body": rng.uniform(0.25, 0.35),
        "myo": rng.uniform(0.15, 0.25),
        "blood": rng.uniform(0.75, 0.95),
        "rv": rng.uniform(0.65, 0.9),
    }
    blobs = [
        (rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.04, 0.1) * scale,
         rng.uniform(0.04, 0.1) * scale, rng.uniform(0, np.pi), rng.uniform(0.1, 0.7))
        for _ in range(int(rng.integers(4, 8)))
    ]
    drift = rng.normal(0.0, 0.01 * scale, size=(num_slices, 2)).cumsum(axis=0)
    image = np.empty((num_slices, h, w), dtype=np.float64)
    label = np.zeros((num_slices, h, w), dtype=np.uint8)
    for z in range(num_slices):
        # base (z=0) to apex: the ventricles shrink, the RV shrinks faster
        t = z / max(1, num_slices - 1)
        shrink = 1.0 - 0.45 * t
        scy, scx = cy + drift[z, 0], cx + drift[z, 1]
        r_lv = lv_r * shrink * rng.uniform(0.95, 1.05)
        r_epi = r_lv + myo_t * rng.uniform(0.9, 1.1)
        lv = _ellipse(yy, xx, scy, scx, r_lv, r_lv * rng.uniform(0.9, 1.1))
        epi = _ellipse(yy, xx, scy, scx, r_epi, r_epi * rng.uniform(0.95, 1.05))
        myo = epi & ~lv
        rv_r = r_epi * (1.15 - 0.5 * t)
        rv_cx = scx + rv_side * (r_epi + 0.55 * rv_r) * np.cos(rv_angle)
        rv_cy = scy + (r_epi + 0.55 * rv_r) * np.sin(rv_angle) * 0.5
        rv_blob = _ellipse(yy, xx, rv_cy, rv_cx, rv_r * 1.1, rv_r * 0.8, rv_angle)
        wall = ndimage.binary_dilation(epi, iterations=max(1, int(0.01 * scale)))
        rv = rv_blob & ~wall if t < 0.95 or num_slices == 1 else np.zeros_like(lv)
        body = _ellipse(yy, xx, h / 2, w / 2, body_ry, body_rx)
        signal = np.where(body, intens["body"], intens["air"])
        for by, bx, ry, rx, ang, val in blobs:
            signal = np.where(_ellipse(yy, xx, by, bx, ry, rx, ang) & body, val, signal)
        heart = ndimage.binary_dilation(epi | rv, iterations=max(1, int(0.02 * scale)))
        signal = np.where(heart, intens["body"] * 0.8, signal)  # pericardial fat/background around the heart
        signal = np.where(myo, intens["myo"], signal)
        signal = np.where(lv, intens["blood"], signal)
        signal = np.where(rv, intens["rv"], signal)
        image[z] = ndimage.gaussian_filter(signal, sigma=0.8)
        label[z][rv] = 1
        label[z][myo] = 2
        label[z][lv] = 3
    image *= _bias_field(rng, (h, w), rng.uniform(0.1, 0.3))[None]
    image = _rician(rng, image, rng.uniform(0.02, 0.05))
    return Case(
        id=case_id,
        image=normalize(image.astype(np.float32), "minmax"),
        label=label if with_label else None,
        spacing=(1.5, 1.5, 8.0),
        origin=(float(-w * 0.75), float(-h * 0.75), 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def atrium_phantom_case(
    rng: np.random.Generator,
    case_id: str,
    shape: tuple[int, int, int] = (40, 64, 64),
    with_label: bool = True,
) -> Case:
    """An LA-like (z, y, x) volume: atrium ellipsoid + pulmonary-vein tube = label 1; z-scored image."""
    d, h, w = (int(s) for s in shape)
    zz, yy, xx = np.mgrid[0:d, 0:h, 0:w].astype(np.float64)
    c = np.array([d, h, w], dtype=float) / 2 + rng.uniform(-0.1, 0.1, 3) * np.array([d, h, w])
    radii = rng.uniform(0.18, 0.28, 3) * np.array([d, h, w])
    blob = ((zz - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2 + ((xx - c[2]) / radii[2]) ** 2 <= 1.0
    # a vein: a straight tube from the centre outwards along a random direction
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    length = rng.uniform(0.35, 0.5) * min(d, h, w) + radii.max()
    tube_r = rng.uniform(0.04, 0.07) * min(h, w) + 1.0
    rel = np.stack([zz - c[0], yy - c[1], xx - c[2]], axis=-1)
    along = rel @ direction
    perp = np.linalg.norm(rel - along[..., None] * direction, axis=-1)
    tube = (along >= 0) & (along <= length) & (perp <= tube_r)
    mask = blob | tube
    signal = np.full((d, h, w), rng.uniform(0.2, 0.3))
    for _ in range(int(rng.integers(3, 6))):  # other enhancing tissue
        bc = rng.uniform(0.1, 0.9, 3) * np.array([d, h, w])
        br = rng.uniform(0.06, 0.15, 3) * np.array([d, h, w])
        other = ((zz - bc[0]) / br[0]) ** 2 + ((yy - bc[1]) / br[1]) ** 2 + ((xx - bc[2]) / br[2]) ** 2 <= 1
        signal[other] = rng.uniform(0.3, 0.8)
    wall = ndimage.binary_dilation(mask, iterations=1) & ~mask
    signal[wall] = rng.uniform(0.85, 1.0)  # enhanced wall
    signal[mask] = rng.uniform(0.55, 0.75)
    signal = ndimage.gaussian_filter(signal, sigma=0.7)
    signal *= _bias_field(rng, (d, h, w), rng.uniform(0.1, 0.25))
    signal = _rician(rng, signal, rng.uniform(0.03, 0.06))
    return Case(
        id=case_id,
        image=normalize(signal.astype(np.float32), "zscore"),
        label=mask.astype(np.uint8) if with_label else None,
        spacing=(0.625, 0.625, 0.625),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def _phantom_dataset(make, num_labeled: int, num_unlabeled: int, num_test: int, seed: int, prefix: str,
                     **kwargs) -> Dataset:
    rng = np.random.default_rng(seed)
    labeled = [make(rng, f"{prefix}_labeled_{i:03d}", with_label=True, **kwargs) for i in range(num_labeled)]
    unlabeled = [make(rng, f"{prefix}_unlabeled_{i:03d}", with_label=False, **kwargs) for i in range(num_unlabeled)]
    test = [make(rng, f"{prefix}_test_{i:03d}", with_label=True, **kwargs) for i in range(num_test)]
    return Dataset(layout="phantom", labeled=labeled, unlabeled=unlabeled, val=[], test=test, root=None)


def cardiac_phantom_dataset(
    num_labeled: int,
    num_unlabeled: int,
    num_test: int = 0,
    seed: int = 0,
    num_slices: int = 8,
    size: tuple[int, int] = (128, 128),
) -> Dataset:
    """Cardiac phantom cases (layout ``"phantom"``, ``root=None``); unlabeled cases have ``label=None``."""
    return _phantom_dataset(cardiac_phantom_case, num_labeled, num_unlabeled, num_test, seed, "cardiac",
                            num_slices=num_slices, size=size)


def atrium_phantom_dataset(
    num_labeled: int,
    num_unlabeled: int,
    num_test: int = 0,
    seed: int = 0,
    shape: tuple[int, int, int] = (40, 64, 64),
) -> Dataset:
    """Atrium phantom volumes (layout ``"phantom"``, ``root=None``); unlabeled cases have ``label=None``."""
    return _phantom_dataset(atrium_phantom_case, num_labeled, num_unlabeled, num_test, seed, "atrium",
                            shape=shape)


def write_generic_layout(
    dataset_or_cases: Dataset | Iterable[Case], root: str | Path, suffix: str = ".nii.gz"
) -> Path:
    """Write cases as a generic layout folder (imagesTr/labelsTr/imagesUnlabeled/imagesTs/labelsTs).

    From a Dataset: labeled -> Tr, unlabeled -> Unlabeled, val and test -> Ts (labels when present).
    From a list of cases: those with a label -> Tr, the others -> Unlabeled.  Files are named
    ``<case id><suffix>`` and keep each case's geometry.  Returns ``root``.
    """
    root = Path(root)
    if isinstance(dataset_or_cases, Dataset):
        groups = [
            (dataset_or_cases.labeled, "imagesTr", "labelsTr"),
            (dataset_or_cases.unlabeled, "imagesUnlabeled", None),
            (list(dataset_or_cases.val) + list(dataset_or_cases.test), "imagesTs", "labelsTs"),
        ]
    else:
        cases = list(dataset_or_cases)
        groups = [
            ([c for c in cases if c.label is not None], "imagesTr", "labelsTr"),
            ([c for c in cases if c.label is None], "imagesUnlabeled", None),
        ]
    for cases, image_dir, label_dir in groups:
        for case in cases:
            if not case.id or "/" in case.id or "\\" in case.id or case.id.startswith("."):
                raise ValueError(f"case id {case.id!r} cannot be used as a file name")
            write_image(root / image_dir / f"{case.id}{suffix}", case.image, case)
            if label_dir is not None and case.label is not None:
                write_label(root / label_dir / f"{case.id}{suffix}", case.label, case)
    return root
