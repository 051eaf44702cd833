"""Checks on training data before any training starts, with errors that name the case and the problem.

Errors (DataError) are for data the trainer cannot use or that would silently train something wrong;
anything the trainer copes with (a patch larger than an image: it pads) comes back as a warning string.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import DataError
from .types import Case

MIN_INPLANE_2D = 16
_HASH_SAMPLES = 4096


def _name(case: Case) -> str:
    return f"case {case.id!r}" + (f" ({case.path})" if case.path is not None else "")


def validate_labeled_count(
    available: int, requested: int | None, what: str = "cases", source: str | Path | None = None
) -> int:
    """The number of labeled items to take: ``requested`` (all when None), or a DataError if too many.

    ``what`` names the items ("patients", "volumes"...), ``source`` where they were counted (a list file).
    """
    if requested is None:
        return available
    if requested < 0:
        raise DataError(f"the number of labeled {what} must be >= 0, got {requested}")
    if requested > available:
        where = f" in {source}" if source is not None else ""
        raise DataError(f"asked for {requested} labeled {what} but only {available} are available{where}")
    return requested


def _check_image(case: Case) -> None:
    image = np.asarray(case.image)
    if image.ndim != 3:
        raise DataError(f"{_name(case)}: image must be a (z, y, x) array, got shape {image.shape}")
    if image.size == 0:
        raise DataError(f"{_name(case)}: image is empty (shape {image.shape})")
    if not np.isfinite(image).all():
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise DataError(f"{_name(case)}: image has {bad} NaN/Inf voxel(s)")


def _label_counts(case: Case, num_classes: int) -> np.ndarray:
    image, label = np.asarray(case.image), case.label
    if label is None:
        raise DataError(f"{_name(case)}: is in the labeled set but has no label map")
    label = np.asarray(label)
    if label.shape != image.shape:
        raise DataError(f"{_name(case)}: label shape {label.shape} differs from image shape {image.shape}")
    if label.dtype == np.uint8:
        counts = np.bincount(label.ravel(), minlength=256)
        values = np.nonzero(counts)[0]
    else:
        if not np.issubdtype(label.dtype, np.integer):
            raise DataError(f"{_name(case)}: label map has non-integer dtype {label.dtype}")
        values, raw = np.unique(label, return_counts=True)
        counts = np.zeros(max(num_classes, 1), dtype=np.int64)
        for v, c in zip(values, raw):
            if 0 <= v < num_classes:
                counts[v] = c
    bad = [int(v) for v in values if v < 0 or v >= num_classes]
    if bad:
        raise DataError(
            f"{_name(case)}: label values {bad} are outside 0..{num_classes - 1} "
            f"(the preset has {num_classes} classes)"
        )
    return np.asarray(counts[:num_classes], dtype=np.int64)


def _content_key(image: np.ndarray) -> tuple | None:
    """A cheap fingerprint: shape, a strided sample and the sum.  None for constant images (no content)."""
    flat = np.asarray(image).ravel()
    step = max(1, flat.size // _HASH_SAMPLES)
    sample = np.ascontiguousarray(flat[::step])
    if sample.size and float(sample.min()) == float(sample.max()) and float(flat.min()) == float(flat.max()):
        return None
    digest = hashlib.blake2b(sample.tobytes(), digest_size=16).hexdigest()
    return (tuple(image.shape), str(image.dtype), digest, float(flat.sum(dtype=np.float64)))


def _check_overlap(labeled: list[Case], unlabeled: list[Case]) -> None:
    by_path: dict[Path, Case] = {}
    by_key: dict[tuple, list[Case]] = {}
    for case in labeled:
        if case.path is not None:
            by_path[Path(case.path).resolve()] = case
        key = _content_key(case.image)
        if key is not None:
            by_key.setdefault(key, []).append(case)
    for case in unlabeled:
        if case.path is not None:
            other = by_path.get(Path(case.path).resolve())
            if other is not None:
                raise DataError(
                    f"{_name(case)} is both labeled (as {other.id!r}) and unlabeled: the same file "
                    "cannot be in both sets"
                )
        key = _content_key(case.image)
        for other in by_key.get(key, []) if key is not None else []:
            if np.array_equal(other.image, case.image):
                raise DataError(
                    f"unlabeled {_name(case)} has the same image content as labeled {_name(other)}: "
                    "an image cannot be both labeled and unlabeled"
                )


def validate_training_cases(
    labeled: list[Case],
    unlabeled: list[Case],
    cfg: Config,
    require_unlabeled: bool = True,
) -> list[str]:
    """Raise DataError on unusable training data; return warnings for what the trainer copes with."""
    warnings: list[str] = []
    if not labeled:
        raise DataError("no labeled cases: training needs at least one image with a label map")
    if require_unlabeled and not unlabeled:
        raise DataError(
            "no unlabeled cases: ACTION++ needs unlabeled images; add some or train in supervised-only mode"
        )
    totals = np.zeros(cfg.num_classes, dtype=np.int64)
    background_only: list[Case] = []
    for case in labeled:
        _check_image(case)
        counts = _label_counts(case, cfg.num_classes)
        if counts[1:].sum() == 0 and np.asarray(case.image).shape[0] > 1:  # a whole volume, not one of
            background_only.append(case)  # a benchmark's 2D slices (apex and base slices have none)
        totals += counts
    for case in unlabeled:
        _check_image(case)
    if totals[1:].sum() == 0:
        raise DataError(
            f"the {len(labeled)} labeled case(s) contain no foreground at all (every label is 0), "
            f"e.g. {_name(labeled[0])}"
        )
    if background_only:  # legal (a scan without the structure) but more often a wrong or empty label file
        names = ", ".join(_name(c) for c in background_only[:5]) + (", ..." if len(background_only) > 5 else "")
        warnings.append(
            f"{len(background_only)} of {len(labeled)} labeled case(s) have an all-background label (no "
            f"{'/'.join(cfg.foreground_names)} voxel): {names}; check that the right label file is paired")
    missing = [cfg.class_names[c] if c < len(cfg.class_names) else str(c)
               for c in range(1, cfg.num_classes) if totals[c] == 0]
    if missing:
        warnings.append(f"class(es) {', '.join(missing)} never appear in the labeled data")
    _check_overlap(labeled, unlabeled)
    warnings.extend(_size_checks(labeled + unlabeled, cfg))
    return warnings


def _size_checks(cases: list[Case], cfg: Config) -> list[str]:
    warnings: list[str] = []
    patch = tuple(int(p) for p in cfg.patch_size)
    smaller: list[Case] = []
    for case in cases:
        z, y, x = case.image.shape
        if cfg.dim == 2:
            if y < MIN_INPLANE_2D or x < MIN_INPLANE_2D:
                raise DataError(
                    f"{_name(case)}: in-plane size {y}x{x} is too small for the 2D network "
                    f"(at least {MIN_INPLANE_2D}x{MIN_INPLANE_2D})"
                )
            network_shape = (y, x)
        else:
            if z == 1:
                raise DataError(
                    f"{_name(case)}: is a single 2D slice (shape {case.image.shape}); the {cfg.preset!r} "
                    "preset trains a 3D network on volumes, use a 2D preset for slices"
                )
            network_shape = (x, y, z)
        if any(s < p for s, p in zip(network_shape, patch)):
            smaller.append(case)
    if smaller:
        order = "(H, W)" if cfg.dim == 2 else "(X, Y, Z)"
        example = smaller[0]
        warnings.append(
            f"{len(smaller)} of {len(cases)} training case(s) are smaller than the patch size {list(patch)} "
            f"{order} along some axis (e.g. {example.id!r} with (z, y, x) shape {example.image.shape}); "
            "the trainer pads or resizes them to fit"
        )
    return warnings


def verify_image_file(path: str | Path) -> None:
    """Read an image file with the command line's reader (data/imageio.py) and drop the result: a
    truncated or damaged file, NaN/Inf voxels, several channels or an unreadable format raise the
    DataError the CLI gives, naming the file.  For entry points that load files another way (the batch
    script and the panel go through Slicer's reader, which fills a truncated ``.nii.gz`` with zeros and
    turns NaN into 0)."""
    from .imageio import read_case

    read_case(path)


def verify_label_file(image: str | Path, label: str | Path) -> None:
    """A labeled pair as the CLI reads it: the image as :func:`verify_image_file`; a label map must hold
    integer classes and lie on the image's grid (or span the same extent, then it is resampled), else
    the DataError names both files.  A Slicer segmentation (``.seg.nrrd``: segments, often cropped to
    their extent) is read for damage only; Slicer maps it onto the image by its geometry."""
    from .imageio import _read_sitk, read_case, split_suffix

    label = Path(label)
    if split_suffix(label)[1].lower() == ".seg.nrrd":
        read_case(image)
        _read_sitk(label)
        return
    read_case(image, label_path=label)
