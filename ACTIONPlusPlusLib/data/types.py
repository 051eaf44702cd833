"""The in-memory types every loader returns (a :class:`Case`, a :class:`Dataset` of cases) and the
array-order conventions (docs/ARCHITECTURE.md).

``Dataset`` lives here rather than beside :func:`~.layout.load_dataset` so that the loaders
(``benchmarks``, ``generic``, ``phantoms``) and the dispatcher (``layout``) import it without importing
each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Case:
    """One image (and optional label map) in SimpleITK array order (z, y, x).

    ``spacing`` and ``origin`` are (x, y, z) in mm (LPS), ``direction`` is SimpleITK's row-major 3x3
    LPS direction as a tuple of 9 floats.  ``None`` means unknown (unit spacing, identity).
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None = None
    spacing: tuple[float, float, float] | None = None
    origin: tuple[float, float, float] | None = None
    direction: tuple[float, ...] | None = None
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)


def to_network_order(array: np.ndarray, dim: int) -> np.ndarray:
    """(z, y, x) -> the network's order: unchanged for 2D (slices on axis 0), (x, y, z) for 3D."""
    if dim == 2:
        return array
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def from_network_order(array: np.ndarray, dim: int) -> np.ndarray:
    """Inverse of :func:`to_network_order` (also works with a leading channel axis for 3D: (C, x, y, z))."""
    if dim == 2:
        return array
    if array.ndim == 4:
        return np.ascontiguousarray(np.transpose(array, (0, 3, 2, 1)))
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """Per-volume intensity normalisation: "minmax" to [0, 1] (ACDC) or "zscore" (LA)."""
    image = image.astype(np.float32, copy=False)
    if mode == "minmax":
        lo, hi = float(image.min()), float(image.max())
        return ((image - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(image)
    if mode == "zscore":
        std = float(image.std())
        return ((image - image.mean()) / std).astype(np.float32) if std > 0 else image - image.mean()
    raise ValueError(f"unknown normalization {mode!r}")


@dataclass
class Dataset:
    """Cases of one dataset folder, split the way a command needs them.

    ``labeled`` / ``unlabeled`` form the training set (unlabeled cases carry ``label=None`` even when the
    source has labels, so that no code path can use them by accident); ``val`` / ``test`` are labeled
    evaluation cases.  Splits that were not requested from :func:`.layout.load_dataset` are empty.  ``notes``
    records anything skipped or assumed (ids listed but absent, ...) for logs and the GUI.
    ``root`` is None for in-memory (phantom) datasets.
    """

    layout: str
    labeled: list[Case] = field(default_factory=list)
    unlabeled: list[Case] = field(default_factory=list)
    val: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)
    root: Path | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs: layout and the size of every split."""
        return (
            f"{self.layout} dataset at {self.root}: {len(self.labeled)} labeled, {len(self.unlabeled)} "
            f"unlabeled, {len(self.val)} val, {len(self.test)} test"
        )
