"""The output folder: a persistent per-user default, the checks of a folder the user typed, free disk.

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .formatting import format_bytes


OUTPUT_FOLDER_SETTING = "ACTIONPlusPlus/OutputFolder"  # QSettings key of the last output folder chosen


def default_output_root(home: str | os.PathLike[str] | None = None) -> str:
    """The default output folder: ``ACTIONPlusPlus`` in the user's home folder.

    Persistent on purpose: a model is hours of training, and the OS may wipe Slicer's temporary folder
    (MONAIAuto3DSeg also keeps its files under the home folder).
    """
    return str(Path(home if home is not None else Path.home()) / "ACTIONPlusPlus")


def output_root_problem(text: str | os.PathLike[str] | None) -> str | None:
    """Why ``text`` cannot be the output folder (None when it can): empty, ".", a relative path (it would
    land wherever Slicer was started from), or an existing file."""
    raw = "" if text is None else str(text).strip()
    if not raw:
        return "Choose an output folder."
    path = Path(os.path.expanduser(raw))
    if raw in (".", "..") or not path.is_absolute():
        return (f"Output folder '{raw}' is a relative path; it would depend on where Slicer was started. "
                f"Choose a full path, for example {default_output_root()}.")
    if path.exists() and not path.is_dir():
        return f"Output folder '{raw}' is a file, not a folder: choose a folder."
    return None


def output_root_warning(text: str | os.PathLike[str], temporary_dir: str | os.PathLike[str] | None) -> str | None:
    """A warning when the output folder lies in a temporary folder, which the OS may empty."""
    if not text or not temporary_dir:
        return None
    try:
        Path(text).resolve().relative_to(Path(temporary_dir).resolve())
    except (ValueError, OSError):
        return None
    return (f"Output folder {text} is inside the temporary folder {temporary_dir}, which the system may empty: "
            "trained models could be lost. Choose a folder of your own.")


def initial_output_root(current: str | None, remembered: str | None, home: str | os.PathLike[str] | None = None) -> str:
    """The folder the panel starts with: the scene's own (parameter node), else the last one chosen
    (settings), else the default; a value that fails :func:`output_root_problem` is skipped."""
    for candidate in (current, remembered):
        if candidate and output_root_problem(candidate) is None:
            return str(candidate)
    return default_output_root(home)


def new_run_folder(
    root: str | os.PathLike[str], now: float | None = None, exists: Callable[[Path], bool] | None = None, prefix: str = "run"
) -> Path:
    """A fresh ``<prefix>-YYYYmmdd-HHMMSS`` folder path under ``root`` (not created; suffixed if taken)."""
    exists = exists or (lambda p: p.exists())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    candidate = Path(root) / f"{prefix}-{stamp}"
    n = 2
    while exists(candidate):
        candidate = Path(root) / f"{prefix}-{stamp}-{n}"
        n += 1
    return candidate


GiB = 1024**3

MiB = 1024**2


def required_disk_bytes(total_voxels: int, num_predictions_voxels: int = 0, num_classes: int = 4, confidence: bool = False) -> int:
    """A generous estimate of what a run writes: float32 inputs, labels, checkpoints, predictions."""
    inputs = 5 * int(total_voxels)  # float32 image + uint8 label
    predictions = int(num_predictions_voxels) * (1 + (4 if confidence else 0))
    checkpoints = 300 * MiB  # checkpoint.pt, checkpoint_pretrain.pt, model.pt with optimizer state
    return inputs + predictions + checkpoints + 200 * MiB


def free_disk_message(path: str | os.PathLike[str], required: int, disk_usage: Callable[[str], Any] | None = None) -> str | None:
    """None when ``path`` (or its nearest existing parent) has ``required`` bytes free, else a message.

    ``disk_usage`` defaults to ``shutil.disk_usage`` looked up at call time (tests replace it).
    """
    disk_usage = disk_usage or shutil.disk_usage
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = disk_usage(str(probe)).free
    except OSError as exc:
        return f"Cannot check free disk space in {probe}: {exc}"
    if free < required:
        return (
            f"Not enough free disk space in {probe}: {format_bytes(free)} free, about {format_bytes(required)} needed. "
            "Free some space or choose another output folder."
        )
    return None
