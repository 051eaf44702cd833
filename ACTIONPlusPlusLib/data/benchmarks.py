"""Loaders for the two benchmark releases in their HDF5 layouts (shared/spec/ACTION_PLUS_PLUS.md §2).

ACDC (SSL4MIS): 2D training slices ``data/<frame>_slice_<n>.h5`` (or ``data/slices/...``) holding
``image`` (H, W) float32 in [0, 1] and ``label`` (H, W) uint8, and volumes ``data/<frame>.h5`` holding
(Z, H, W).  Each slice becomes a (1, H, W) Case.  The labeled subset is every slice of the first N
patients of ``train_slices.list`` (patients are derived from the names, in list order); with the
SSL4MIS list these are the first 68 (3 patients) or 136 (7 patients) entries, as in ``patients_to_slices``.

LA (UA-MT): ``<root>/2018LA_Seg_Training Set/<id>/mri_norm2.h5`` (or ``<root>/<id>/mri_norm2.h5``)
holding ``image`` float32 and ``label`` uint8 in (X, Y, Z) order; they are transposed into the Case's
(z, y, x).  The labeled subset is the first N ids of ``train.list``.

Both releases are stored normalised (ACDC min-max per volume, LA z-score) and carry no geometry, so
the Cases have ``spacing=None`` (voxel units; ACDC is ~1.5 mm in plane with 5-10 mm slices, LA is
0.625 mm isotropic at the source), which also matches the benchmark protocol's voxel-unit metrics.
Unlabeled Cases carry ``label=None`` even though the files hold labels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DataError
from .types import Case, Dataset
from .validation import validate_labeled_count

LA_FOLDER = "2018LA_Seg_Training Set"
LA_FILE = "mri_norm2.h5"
_MAX_NAMED = 5
_FRAME = re.compile(r"^(.+?)_frame\d+")
_SLICE = re.compile(r"^(.+?)_slice_\d+$")


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a ``*.list`` file; a DataError naming it when it is missing."""
    if not path.is_file():
        raise DataError(f"list file {path} is missing")
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read list file {path}: {exc}") from exc


def _missing_error(what: str, list_path: Path, missing: list[str], total: int, hint: str) -> DataError:
    named = ", ".join(missing[:_MAX_NAMED]) + (", ..." if len(missing) > _MAX_NAMED else "")
    return DataError(f"{len(missing)} of {total} {what} named in {list_path} are missing ({named}); {hint}")


def read_h5(path: Path, need_label: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` as float32 and (when ``need_label``) ``label`` as uint8 from a benchmark h5 file."""
    try:
        import h5py  # imported here so the Slicer panel can import the Lib before h5py is installed

        with h5py.File(path, "r") as handle:
            keys = set(handle.keys())
            wanted = ("image", "label") if need_label else ("image",)
            absent = [k for k in wanted if k not in keys]
            if absent:
                raise DataError(
                    f"{path}: has no {' / '.join(repr(k) for k in absent)} dataset "
                    f"(found {sorted(keys) or 'nothing'})"
                )
            image = np.asarray(handle["image"][()])
            label = np.asarray(handle["label"][()]) if need_label else None
    except OSError as exc:
        raise DataError(f"cannot read h5 file {path}: {exc}") from exc
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise DataError(f"{path}: 'image' has unsupported dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if label is not None:
        if label.shape != image.shape:
            raise DataError(f"{path}: 'label' shape {label.shape} differs from 'image' shape {image.shape}")
        if label.dtype != np.uint8:
            if not np.issubdtype(label.dtype, np.integer) and not np.array_equal(label, np.round(label)):
                raise DataError(f"{path}: 'label' has non-integer values")
            if label.size and (label.min() < 0 or label.max() > 255):
                raise DataError(f"{path}: 'label' values must be within 0..255")
            label = label.astype(np.uint8)
    return image, label


# ---------------------------------------------------------------------------------------------------
# ACDC


def acdc_patient(name: str) -> str:
    """``patient099_frame01_slice_15`` -> ``patient099`` (the frame and slice parts stripped)."""
    for pattern in (_FRAME, _SLICE):
        match = pattern.match(name)
        if match:
            return match.group(1)
    return name


def acdc_split_names(root: str | Path, labeled: int | None) -> tuple[list[str], list[str]]:
    """(labeled slice names, unlabeled slice names) from ``train_slices.list`` without reading any h5.

    Labeled = every slice of the first ``labeled`` patients in list order (all when None).
    """
    root = Path(root)
    names = read_list(root / "train_slices.list")
    patients: list[str] = []
    for name in names:
        patient = acdc_patient(name)
        if patient not in patients:
            patients.append(patient)
    count = validate_labeled_count(len(patients), labeled, "patients", root / "train_slices.list")
    chosen = set(patients[:count])
    labeled_names = [n for n in names if acdc_patient(n) in chosen]
    unlabeled_names = [n for n in names if acdc_patient(n) not in chosen]
    return labeled_names, unlabeled_names


def _acdc_slice_path(root: Path, name: str) -> Path | None:
    for candidate in (root / "data" / f"{name}.h5", root / "data" / "slices" / f"{name}.h5"):
        if candidate.is_file():
            return candidate
    return None


def _acdc_paths(root: Path, names: list[str], list_path: Path, what: str, volumes: bool) -> list[Path]:
    paths: list[Path | None]
    if volumes:
        paths = [(root / "data" / f"{n}.h5") if (root / "data" / f"{n}.h5").is_file() else None for n in names]
    else:
        paths = [_acdc_slice_path(root, n) for n in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
        where = f"{root / 'data'}" + ("" if volumes else f" or {root / 'data' / 'slices'}")
        hint = f"expected <name>.h5 under {where}"
        if what == "test volumes":
            hint += " (the ACDC test split may be held out; evaluate on the val split instead)"
        raise _missing_error(what, list_path, missing, len(names), hint)
    return [p for p in paths if p is not None]


def _acdc_slice_case(name: str, path: Path, with_label: bool) -> Case:
    image, label = read_h5(path, with_label)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
        label = label[0] if label is not None else None
    if image.ndim != 2:
        raise DataError(f"{path}: an ACDC slice must hold a 2D (H, W) image, got shape {image.shape}")
    return Case(
        id=name,
        image=np.ascontiguousarray(image[None]),
        label=np.ascontiguousarray(label[None]) if label is not None else None,
        path=path,
    )


def _acdc_volume_case(name: str, path: Path) -> Case:
    image, label = read_h5(path, True)
    if image.ndim != 3:
        raise DataError(f"{path}: an ACDC volume must hold a 3D (Z, H, W) image, got shape {image.shape}")
    return Case(id=name, image=np.ascontiguousarray(image), label=np.ascontiguousarray(label), path=path)


def load_acdc(root: str | Path, labeled: int | None, splits: Iterable[str]) -> Dataset:
    """The requested splits of an SSL4MIS ACDC folder (see the module docstring)."""
    root = Path(root)
    splits = tuple(splits)
    dataset = Dataset(layout="acdc", root=root)
    if "train" in splits:
        list_path = root / "train_slices.list"
        labeled_names, unlabeled_names = acdc_split_names(root, labeled)
        names = labeled_names + unlabeled_names
        paths = dict(zip(names, _acdc_paths(root, names, list_path, "training slices", volumes=False)))
        dataset.labeled = [_acdc_slice_case(n, paths[n], True) for n in labeled_names]
        dataset.unlabeled = [_acdc_slice_case(n, paths[n], False) for n in unlabeled_names]
    for split in ("val", "test"):
        if split in splits:
            list_path = root / f"{split}.list"
            names = read_list(list_path)
            paths = _acdc_paths(root, names, list_path, f"{split} volumes", volumes=True)
            setattr(dataset, split, [_acdc_volume_case(n, p) for n, p in zip(names, paths)])
    return dataset


# ---------------------------------------------------------------------------------------------------
# LA


def la_case_path(root: str | Path, case_id: str) -> Path | None:
    """``<root>/2018LA_Seg_Training Set/<id>/mri_norm2.h5`` or ``<root>/<id>/mri_norm2.h5`` if present."""
    root = Path(root)
    for candidate in (root / LA_FOLDER / case_id / LA_FILE, root / case_id / LA_FILE):
        if candidate.is_file():
            return candidate
    return None


def _la_case(case_id: str, path: Path, with_label: bool) -> Case:
    image, label = read_h5(path, with_label)
    if image.ndim != 3:
        raise DataError(f"{path}: an LA volume must hold a 3D (X, Y, Z) image, got shape {image.shape}")
    # h5 (X, Y, Z) -> Case (z, y, x)
    return Case(
        id=case_id,
        image=np.ascontiguousarray(image.transpose(2, 1, 0)),
        label=np.ascontiguousarray(label.transpose(2, 1, 0)) if label is not None else None,
        path=path,
    )


def _absent_note(what: str, absent: list[str], total: int, root: Path) -> str:
    named = ", ".join(absent[:_MAX_NAMED]) + (", ..." if len(absent) > _MAX_NAMED else "")
    return f"{len(absent)} of {total} {what} are not under {root}: skipped ({named})"


def load_la(root: str | Path, labeled: int | None, splits: Iterable[str]) -> Dataset:
    """The requested splits of a UA-MT LA folder.

    Labeled ids must exist (DataError otherwise); listed unlabeled / test ids that are absent are
    skipped with a note (the shared copy holds 24 of the 80 training volumes and no test volume).
    ``labeled=None`` labels every training volume present.
    """
    root = Path(root)
    splits = tuple(splits)
    dataset = Dataset(layout="la", root=root)
    if "train" in splits:
        list_path = root / "train.list"
        ids = read_list(list_path)
        paths = {i: la_case_path(root, i) for i in ids}
        if labeled is None:
            labeled_ids = [i for i in ids if paths[i] is not None]
            rest: list[str] = []
            absent = [i for i in ids if paths[i] is None]
            if absent:
                dataset.notes.append(_absent_note(f"training ids of {list_path}", absent, len(ids), root))
        else:
            count = validate_labeled_count(len(ids), labeled, "volumes", list_path)
            labeled_ids, rest = ids[:count], ids[count:]
            missing = [i for i in labeled_ids if paths[i] is None]
            if missing:
                raise _missing_error(
                    "labeled volumes", list_path, missing, len(labeled_ids),
                    f"expected {LA_FOLDER}/<id>/{LA_FILE} or <id>/{LA_FILE} under {root}",
                )
            absent = [i for i in rest if paths[i] is None]
            if absent:
                dataset.notes.append(_absent_note(f"unlabeled ids of {list_path}", absent, len(rest), root))
        dataset.labeled = [_la_case(i, paths[i], True) for i in labeled_ids]
        dataset.unlabeled = [_la_case(i, paths[i], False) for i in rest if paths[i] is not None]
    if "test" in splits:
        list_path = root / "test.list"
        ids = read_list(list_path)
        paths = {i: la_case_path(root, i) for i in ids}
        absent = [i for i in ids if paths[i] is None]
        if absent:
            dataset.notes.append(_absent_note(f"test ids of {list_path}", absent, len(ids), root))
        dataset.test = [_la_case(i, paths[i], True) for i in ids if paths[i] is not None]
    if "val" in splits:
        dataset.notes.append("the LA (UA-MT) layout has no validation split: val is empty")
    return dataset
