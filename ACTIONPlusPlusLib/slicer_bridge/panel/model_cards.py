"""What the panel knows about a trained model without loading it (no torch in Slicer's process): the
preset it was trained for, read from the files beside ``model.pt`` (the run folder's ``config.json``,
else the job folder's ``job.json``).

Pure Python for the Slicer panel: no Qt, no slicer, no torch, so it is tested without Slicer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_NAME = "config.json"  # training.run_folder.CONFIG_NAME (the trainer writes it beside model.pt)
JOB_NAME = "job.json"  # the job folder's job.json, one level above the run folder


def _preset_in(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    preset = data.get("preset") if isinstance(data, dict) else None
    return preset.lower() if isinstance(preset, str) and preset else None


def model_preset(model_path: str | os.PathLike[str]) -> str | None:
    """The preset ("la" | "acdc") a ``model.pt`` was trained for, from its run folder's ``config.json``
    or its job's ``job.json``; None when neither says (the worker then checks the model itself)."""
    run = Path(model_path).parent
    for candidate in (run / CONFIG_NAME, run.parent / JOB_NAME):
        preset = _preset_in(candidate)
        if preset:
            return preset
    return None


def preset_mismatch(model_path: str | os.PathLike[str], preset: str) -> str | None:
    """A message when ``model_path`` was trained for another preset than ``preset`` (None when it was
    trained for it, or when that is unknown)."""
    trained = model_preset(model_path)
    if trained is None or trained == preset.lower():
        return None
    return (f"{model_path} was trained for the {trained.upper()} preset, not {preset.upper()}: its network and "
            f"classes differ. Pick the {trained.upper()} preset, or turn off \"Continue from last model\" to "
            "start a new run (nothing was written).")
