"""Dataset folder detection and the single entry point :func:`load_dataset`.

Three layouts are recognised:

- ``"acdc"``: the SSL4MIS ACDC release: ``train_slices.list`` / ``train.list`` / ``val.list`` /
  ``test.list`` at the root and h5 files under ``data/`` (slices possibly under ``data/slices/``);
- ``"la"``: the UA-MT LA release: ``train.list`` / ``test.list`` at the root and
  ``<root>/2018LA_Seg_Training Set/<id>/mri_norm2.h5`` (or ``<root>/<id>/mri_norm2.h5``);
- ``"generic"``: ``imagesTr/`` + ``labelsTr/`` (+ optional ``imagesUnlabeled/``, ``imagesTs/`` +
  ``labelsTs/``) holding NIfTI / NRRD files read through SimpleITK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..config import Config, preset as make_preset
from ..errors import DataError
from .benchmarks import LA_FILE, LA_FOLDER, load_acdc, load_la
from .generic import load_generic
from .types import Dataset

LAYOUTS = ("acdc", "la", "generic")
SPLITS = ("train", "val", "test")

_EXPECTED = (
    "expected one of: an ACDC (SSL4MIS) folder with train_slices.list/train.list/val.list/test.list and "
    "h5 files under data/; an LA (UA-MT) folder with train.list/test.list and "
    f"'{LA_FOLDER}/<id>/{LA_FILE}'; or a generic folder with imagesTr/ + labelsTr/ "
    "(optional imagesUnlabeled/, imagesTs/ + labelsTs/) holding .nii/.nii.gz/.nrrd/.seg.nrrd/.mha files"
)


def _listing(root: Path, limit: int = 12) -> str:
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    except OSError as exc:
        return f"(cannot list: {exc.strerror or exc})"
    if not entries:
        return "an empty folder"
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _is_acdc(root: Path) -> bool:
    has_list = any((root / name).is_file() for name in ("train_slices.list", "val.list"))
    return has_list and (root / "data").is_dir()


def _is_la(root: Path) -> bool:
    if not any((root / name).is_file() for name in ("train.list", "test.list")):
        return False
    if (root / LA_FOLDER).is_dir():
        return True
    return any(True for _ in root.glob(f"*/{LA_FILE}"))


def _is_generic(root: Path) -> bool:
    return (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir()


def detect_layout(root: str | Path) -> str:
    """``"acdc"``, ``"la"`` or ``"generic"``; a DataError says what was expected and what was found."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; {_EXPECTED}")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is a file, not a folder; {_EXPECTED}")
    found = [name for name, test in (("acdc", _is_acdc), ("la", _is_la), ("generic", _is_generic)) if test(root)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(
            f"dataset folder {root} mixes layouts ({' and '.join(found)}); keep one layout per folder. "
            f"Found: {_listing(root)}"
        )
    raise DataError(f"dataset folder {root} has no recognisable layout; {_EXPECTED}. Found: {_listing(root)}")


def _resolve_config(preset: str | Config) -> Config:
    if isinstance(preset, Config):
        return preset
    try:
        return make_preset(preset)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def _check_splits(splits: Iterable[str]) -> tuple[str, ...]:
    if isinstance(splits, str):
        splits = (splits,)
    out = tuple(splits)
    bad = [s for s in out if s not in SPLITS]
    if bad:
        raise DataError(f"unknown split(s) {bad}; choose from {', '.join(SPLITS)}")
    return out


def load_dataset(
    root: str | Path,
    preset: str | Config,
    labeled: int | None = None,
    splits: Iterable[str] = ("train",),
    *,
    layout: str | None = None,
) -> Dataset:
    """Load the splits a command needs from a dataset folder.

    ``preset`` is a preset name or a resolved :class:`Config` (its ``normalization`` is applied to
    generic images; the h5 benchmark data is stored pre-normalised and is used as is).

    ``labeled``: ACDC counts patients (first patients of ``train_slices.list``: 3 -> 68 slices, 7 -> 136),
    LA counts volumes (first ids of ``train.list``), generic counts image/label pairs (first N by sorted
    name; the other pairs become unlabeled images).  ``None`` labels every training case.

    ``splits``: any of "train" (fills labeled + unlabeled), "val", "test"; only those are read.
    ``layout`` skips detection when the caller already knows it.
    """
    root = Path(root)
    cfg = _resolve_config(preset)
    wanted = _check_splits(splits)
    kind = layout or detect_layout(root)
    if kind not in LAYOUTS:
        raise DataError(f"unknown layout {kind!r}; choose from {', '.join(LAYOUTS)}")
    if kind in ("acdc", "la") and cfg.preset != kind:
        raise DataError(
            f"{root} holds the {kind.upper()} benchmark, which needs the {kind!r} preset "
            f"(got preset {cfg.preset!r})"
        )
    if labeled is not None and labeled < 0:
        raise DataError(f"the number of labeled cases must be >= 0, got {labeled}")
    if kind == "acdc":
        return load_acdc(root, labeled, wanted)
    if kind == "la":
        return load_la(root, labeled, wanted)
    return load_generic(root, labeled, wanted, cfg.normalization)
