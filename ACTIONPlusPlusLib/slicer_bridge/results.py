"""A finished job's result files -> NEW segmentation nodes (and confidence volumes) on their volumes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Sequence

import numpy as np

from ..errors import DataError
from .geometry import geometry_lps
from .job_folder import NODES_FILE
from .prediction_nodes import add_prediction_to_scene, confidence_node_of

logger = logging.getLogger(__name__)


@dataclass
class PredictionImport:
    """One prediction file and what became of it."""

    case_id: str
    label_file: Path
    volume_node: Any = None
    segmentation_node: Any = None
    confidence_node: Any = None
    message: str | None = None  # why it was skipped (volume removed from the scene, unreadable file...)
    updated: bool = False  # an earlier prediction node was updated in place (not a new node)


def _read_on_volume_grid(path: Path, volume_node: Any, interpolator: str) -> np.ndarray:
    """A file's voxels on the volume's grid: as is when the geometry matches, else resampled."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"cannot read {path}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: expected a scalar 3D image")
    spacing, origin, direction = geometry_lps(volume_node)
    dims = volume_node.GetImageData().GetDimensions()
    same = (
        tuple(image.GetSize()) == tuple(dims)
        and np.allclose(image.GetSpacing(), spacing, rtol=1e-5, atol=1e-6)
        and np.allclose(image.GetDirection(), direction, atol=1e-5)
        and np.allclose(image.GetOrigin(), origin, atol=1e-3 * min(spacing) + 1e-6)
    )
    if not same:
        reference = sitk.Image([int(d) for d in dims], image.GetPixelID())
        reference.SetSpacing(spacing)
        reference.SetOrigin(origin)
        reference.SetDirection(direction)
        interp = sitk.sitkNearestNeighbor if interpolator == "nearest" else sitk.sitkLinear
        logger.warning("%s: geometry differs from volume %s; resampled", path, volume_node.GetName())
        image = sitk.Resample(image, reference, sitk.Transform(), interp, 0, image.GetPixelID())
    return sitk.GetArrayFromImage(image)


def _find_volume(scene: Any, node_id: str | None, node_name: str | None) -> Any:
    """The volume a job entry came from: by node ID (a volume renamed during training is still found),
    else by name (a scene saved and reloaded in between)."""
    node = scene.GetNodeByID(node_id) if node_id else None
    if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
        return node
    if node_name:
        nodes = scene.GetNodesByClassByName("vtkMRMLScalarVolumeNode", node_name)
        for i in range(nodes.GetNumberOfItems()):
            candidate = nodes.GetItemAsObject(i)
            if not candidate.IsA("vtkMRMLLabelMapVolumeNode"):
                return candidate
    return None


def load_predictions(
    scene: Any,
    job_dir: str | Path,
    events: Iterable[dict[str, Any]] | None = None,
    *,
    with_confidence: bool = True,
    only_roles: Sequence[str] = ("unlabeled", "predict"),
    previous: Callable[[Any, Any, str], Any] | None = None,
) -> list[PredictionImport]:
    """:func:`iter_predictions` in one go (same arguments): every prediction of a finished job as a node."""
    from .job_folder import run_steps

    return run_steps(iter_predictions(scene, job_dir, events, with_confidence=with_confidence, only_roles=only_roles,
                                      previous=previous))


def iter_predictions(
    scene: Any,
    job_dir: str | Path,
    events: Iterable[dict[str, Any]] | None = None,
    *,
    with_confidence: bool = True,
    only_roles: Sequence[str] = ("unlabeled", "predict"),
    previous: Callable[[Any, Any, str], Any] | None = None,
    on_import: Callable[[PredictionImport], None] | None = None,
) -> Generator[tuple[int, int, str], None, list[PredictionImport]]:
    """Add every prediction of a finished job as a new segmentation node on its input volume, one per
    step: yields ``(done, total, name)`` before each and returns the list of imports (the panel loads one
    per timer tick; ``on_import`` is told of each as it is made).

    Predictions come from the worker's ``prediction`` events when given (``output``, optional
    ``confidence``), otherwise from ``<output_dir>/predictions/<case id>.*``.  Volumes are found through
    ``nodes.json`` (node ID, then name: a volume renamed meanwhile keeps its prediction).  A prediction
    whose volume is gone is skipped with a message.  ``previous(scene, volume, preset)`` may name an
    earlier prediction node of that volume to update in place instead (the panel's: predictions of the
    same volume do not pile up unless the user kept them).
    """
    job_dir = Path(job_dir)
    mapping_path = job_dir / NODES_FILE
    if not mapping_path.is_file():
        raise DataError(f"{mapping_path} not found: {job_dir} is not a job folder written by the scene bridge")
    mapping = json.loads(mapping_path.read_text())
    preset = mapping["preset"]
    entries = {e["case_id"]: e for e in mapping["entries"] if e["role"] in only_roles}
    by_image = {str((job_dir / e["image"]).resolve()): e for e in entries.values()}

    found: list[tuple[dict[str, Any], Path, Path | None]] = []
    if events is not None:
        for event in events:
            if event.get("event") != "prediction":
                continue
            entry = None
            if event.get("input"):
                entry = by_image.get(str(Path(event["input"]).resolve()))
            if entry is None:
                entry = entries.get(str(event.get("case")))
            if entry is None:
                continue
            conf = event.get("confidence")
            found.append((entry, Path(event["output"]), Path(conf) if conf else None))
    else:
        job = json.loads((job_dir / "job.json").read_text())
        output = Path(job["output_dir"])
        output = output if output.is_absolute() else job_dir / output
        folder = output / "predictions"
        from ..data.imageio import split_suffix

        files = {}
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                stem, suffix = split_suffix(path)
                if suffix:
                    files[stem] = path
        for case_id, entry in entries.items():
            if case_id in files:
                conf = files.get(f"{case_id}_confidence")
                found.append((entry, files[case_id], conf))

    results: list[PredictionImport] = []
    for entry, label_file, conf_file in found:
        yield len(results), len(found), str(entry.get("volume_node_name") or entry["case_id"])
        result = _import_one(scene, preset, entry, label_file, conf_file, with_confidence, previous)
        results.append(result)
        if on_import is not None:
            on_import(result)
    return results


def _import_one(scene: Any, preset: str, entry: dict[str, Any], label_file: Path, conf_file: Path | None,
                with_confidence: bool, previous: Callable[[Any, Any, str], Any] | None) -> PredictionImport:
    """One prediction file as a node on its volume (or a message saying why not)."""
    result = PredictionImport(entry["case_id"], label_file)
    volume = _find_volume(scene, entry.get("volume_node_id"), entry.get("volume_node_name"))
    if volume is None:
        result.message = f"volume '{entry.get('volume_node_name')}' is no longer in the scene; prediction {label_file} not loaded"
        logger.warning(result.message)
        return result
    result.volume_node = volume
    try:
        labels = _read_on_volume_grid(label_file, volume, "nearest")
        confidence = None
        if with_confidence and conf_file is not None and conf_file.is_file():
            confidence = _read_on_volume_grid(conf_file, volume, "linear").astype(np.float32)
        replace = previous(scene, volume, preset) if previous is not None else None
        result.segmentation_node = add_prediction_to_scene(scene, labels, volume, preset, confidence=confidence,
                                                           replace=replace)
        result.updated = replace is not None
        result.confidence_node = confidence_node_of(result.segmentation_node)
    except DataError as exc:
        result.message = str(exc)
        logger.warning(result.message)
    return result
