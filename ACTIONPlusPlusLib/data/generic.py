"""The generic NIfTI / NRRD layout, read through SimpleITK with full geometry.

::

    root/imagesTr/<name>.nii.gz        labeled images            (required for the "train" split)
    root/labelsTr/<name>.nii.gz        their label maps          (same name stem; any supported suffix,
                                                                  e.g. <name>.seg.nrrd)
    root/imagesUnlabeled/<name>.nrrd   unlabeled images          (optional)
    root/imagesTs/, root/labelsTs/     evaluation images/labels  (optional; labelsTs optional)

Supported suffixes: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.seg.nrrd``, ``.mha``.  An nnU-Net style
``<name>_0000`` image stem also matches a ``<name>`` label.  Images are normalised with the preset's
mode (min-max or z-score) because, unlike the h5 benchmarks, they come raw.  This is also the layout
the Slicer bridge writes into a job folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import DataError
from .imageio import IMAGE_SUFFIXES, read_case, split_suffix
from .types import Case, Dataset, normalize
from .validation import validate_labeled_count

_MAX_NAMED = 5
_CHANNEL0 = "_0000"


def _named(items: list[str]) -> str:
    return ", ".join(items[:_MAX_NAMED]) + (", ..." if len(items) > _MAX_NAMED else "")


def list_images(folder: Path, notes: list[str] | None = None) -> dict[str, Path]:
    """``{stem: path}`` of the image files in ``folder``, sorted by stem; hidden files are ignored,
    other unrecognised files are skipped with a note; two files with one stem are a DataError."""
    found: dict[str, Path] = {}
    skipped: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        stem, suffix = split_suffix(path)
        if not suffix:
            skipped.append(path.name)
            continue
        if stem in found:
            raise DataError(f"{folder}: {found[stem].name} and {path.name} have the same name stem {stem!r}")
        found[stem] = path
    if skipped and notes is not None:
        notes.append(
            f"{folder}: skipped {len(skipped)} file(s) that are not {'/'.join(IMAGE_SUFFIXES)} ({_named(skipped)})"
        )
    return dict(sorted(found.items()))


def match_pairs(images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path,
                require_all: bool = True) -> list[tuple[str, Path, Path | None]]:
    """(case id, image path, label path) per image, matched by name stem (``<name>_0000`` -> ``<name>``)."""
    pairs: list[tuple[str, Path, Path | None]] = []
    used: set[str] = set()
    unmatched: list[str] = []
    for stem, image_path in images.items():
        key = stem if stem in labels else None
        if key is None and stem.endswith(_CHANNEL0) and stem[: -len(_CHANNEL0)] in labels:
            key = stem[: -len(_CHANNEL0)]
        if key is None:
            unmatched.append(image_path.name)
            pairs.append((stem, image_path, None))
            continue
        used.add(key)
        pairs.append((key, image_path, labels[key]))
    if require_all and unmatched:
        raise DataError(
            f"{len(unmatched)} image(s) in {image_dir} have no label with the same name in {label_dir} "
            f"({_named(unmatched)}); put images without labels in imagesUnlabeled/"
        )
    orphans = [labels[k].name for k in labels if k not in used]
    if orphans:
        raise DataError(
            f"{len(orphans)} label(s) in {label_dir} have no image with the same name in {image_dir} "
            f"({_named(orphans)})"
        )
    return pairs


def _read(case_id: str, image_path: Path, label_path: Path | None, normalization: str) -> Case:
    case = read_case(image_path, case_id=case_id, label_path=label_path)
    case.image = normalize(case.image, normalization)
    return case


def load_generic(root: str | Path, labeled: int | None, splits: Iterable[str], normalization: str) -> Dataset:
    """The requested splits of a generic folder (see the module docstring).

    ``labeled=N`` keeps the first N pairs (sorted by name) labeled and uses the other pairs' images as
    unlabeled (their labels are not read), with a note; ``None`` labels every pair.
    """
    root = Path(root)
    splits = tuple(splits)
    dataset = Dataset(layout="generic", root=root)
    if "train" in splits:
        image_dir, label_dir = root / "imagesTr", root / "labelsTr"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DataError(
                    f"{root}: folder {folder.name}/ is missing (the generic layout needs imagesTr/ and labelsTr/)"
                )
        pairs = match_pairs(list_images(image_dir, dataset.notes), list_images(label_dir, dataset.notes),
                            image_dir, label_dir)
        count = validate_labeled_count(len(pairs), labeled, "image/label pairs", image_dir)
        dataset.labeled = [_read(cid, ip, lp, normalization) for cid, ip, lp in pairs[:count]]
        dataset.unlabeled = [_read(cid, ip, None, normalization) for cid, ip, _ in pairs[count:]]
        if count < len(pairs):
            dataset.notes.append(
                f"{len(pairs) - count} labeled pair(s) beyond the first {count} are used as unlabeled images"
            )
        unlabeled_dir = root / "imagesUnlabeled"
        if unlabeled_dir.is_dir():
            for stem, path in list_images(unlabeled_dir, dataset.notes).items():
                dataset.unlabeled.append(_read(stem, path, None, normalization))
    if "test" in splits:
        image_dir, label_dir = root / "imagesTs", root / "labelsTs"
        if not image_dir.is_dir():
            dataset.notes.append(f"{root}: no imagesTs/ folder, the test split is empty")
        else:
            images = list_images(image_dir, dataset.notes)
            if label_dir.is_dir():
                pairs = match_pairs(images, list_images(label_dir, dataset.notes), image_dir, label_dir)
            else:
                pairs = [(stem, path, None) for stem, path in images.items()]
                dataset.notes.append(f"{root}: no labelsTs/ folder, test images have no labels")
            dataset.test = [_read(cid, ip, lp, normalization) for cid, ip, lp in pairs]
    if "val" in splits:
        dataset.notes.append("the generic layout has no validation split: val is empty")
    return dataset
