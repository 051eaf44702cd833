"""Scene bridge: MRML nodes <-> Cases, training jobs from nodes, predictions back as new nodes.

The only Lib file that imports ``slicer``, and it uses MRML only (no Qt, no ``slicer.app``, no global
``slicer.mrmlScene``): every function takes its scene or nodes as arguments, so the same code runs in
the Slicer application and against the ``slicer-core`` wheel in the tests.  ``slicer.util`` functions
are called as ``slicer.util.*`` (slicer-core also exposes them as ``slicer.*``; real Slicer does not).

Geometry rules (``shared/spec/SLICER.md``): MRML arrays are (k, j, i) = SimpleITK (z, y, x); spacing is
the same; ``origin_lps = diag(-1,-1,1) @ origin_ras`` and ``D_lps = diag(-1,-1,1) @ D_ras`` (the columns
of D are the axis directions; SimpleITK stores D row-major).  These sign flips are exact, so a volume ->
Case -> volume round trip is bit-exact, left-handed directions included.

Never modifies a node it did not create: labels are exported from a private copy of the segmentation
in a private scratch scene, predictions always become NEW segmentation nodes.

Decisions:

- Segments are matched to classes BY NAME (:mod:`.terminology`: case-insensitive, synonyms), then by
  the SNOMED code of their terminology; never by order.  Segments matching no class are ignored; two
  segments matching the same class are an error (which one is the truth is the user's call).
- A predicted segmentation holds one segment for EVERY class of the preset, even when the class is
  empty: the user can paint a missed structure in Segment Editor and feed the corrected node back as a
  labeled case, and the node always has the same segments in the same order.
- Segmentation or labelmap nodes under a parent transform different from their volume's are refused
  (harden the transform first); a prediction is placed under its volume's transform.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import slicer
import slicer.util
import vtk

from .data.types import Case
from .errors import DataError
from .jobs import TrainingJob, write_job
from . import terminology

logger = logging.getLogger(__name__)

NODES_FILE = "nodes.json"
DATASET_FOLDER = "dataset"
PREDICT_FOLDER = "predict"
RUN_FOLDER = "run"
PREDICTION_SUFFIX = " ACTION++"
CONFIDENCE_SUFFIX = " ACTION++ confidence"

_RAS_LPS = np.diag([-1.0, -1.0, 1.0])
_LOGIC = slicer.vtkSlicerSegmentationsModuleLogic


# --------------------------------------------------------------------------------------------------
# geometry


def _node_label(node: Any) -> str:
    if node is None:
        return "<none>"
    return f"'{node.GetName()}' ({node.GetID() or node.GetClassName()})"


def _directions_ras(node: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)], dtype=float)


def _set_directions_ras(node: Any, directions: np.ndarray) -> None:
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(directions[r, c]))
    node.SetIJKToRASDirectionMatrix(matrix)


def geometry_lps(node: Any) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(spacing (x,y,z), origin LPS (x,y,z), direction LPS row-major 9)`` of a volume node."""
    spacing = tuple(float(v) for v in node.GetSpacing())
    origin = tuple(float(v) for v in _RAS_LPS @ np.asarray(node.GetOrigin(), dtype=float))
    direction = tuple(float(v) for v in (_RAS_LPS @ _directions_ras(node)).ravel())
    return spacing, origin, direction


def set_geometry_from_case(node: Any, case: Case) -> None:
    """Give ``node`` the Case's geometry (None parts: unit spacing, zero origin, identity)."""
    spacing = case.spacing if case.spacing is not None else (1.0, 1.0, 1.0)
    origin = np.asarray(case.origin if case.origin is not None else (0.0, 0.0, 0.0), dtype=float)
    direction = np.asarray(case.direction if case.direction is not None else np.eye(3).ravel(), dtype=float)
    node.SetSpacing(*[float(v) for v in spacing])
    node.SetOrigin(*[float(v) for v in _RAS_LPS @ origin])
    _set_directions_ras(node, _RAS_LPS @ direction.reshape(3, 3))


def _same_grid(a: Any, b: Any, atol: float = 1e-6) -> bool:
    ia, ib = a.GetImageData(), b.GetImageData()
    if ia is None or ib is None or ia.GetDimensions() != ib.GetDimensions():
        return False
    ma, mb = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetIJKToRASMatrix(ma)
    b.GetIJKToRASMatrix(mb)
    for r in range(3):
        for c in range(4):
            x, y = ma.GetElement(r, c), mb.GetElement(r, c)
            if abs(x - y) > atol * max(1.0, abs(x), abs(y)):
                return False
    return True


def _ras_bounds(node: Any) -> np.ndarray:
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return np.asarray(bounds, dtype=float)


def _bounds_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    if a[0] > a[1] or b[0] > b[1]:  # invalid (empty) bounds
        return False
    return all(a[2 * k] < b[2 * k + 1] and b[2 * k] < a[2 * k + 1] for k in range(3))


# --------------------------------------------------------------------------------------------------
# volumes <-> Cases


def _safe_id(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text or "").strip("._-")
    return cleaned or "volume"


def _check_scalar_volume(volume_node: Any, allow_single_slice: bool = False, role: str = "volume") -> Any:
    if volume_node is None:
        raise DataError(f"no {role} node given")
    if not volume_node.IsA("vtkMRMLVolumeNode"):
        raise DataError(f"node {_node_label(volume_node)} is a {volume_node.GetClassName()}, not a volume")
    kind = volume_node.GetClassName()
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or kind in ("vtkMRMLMultiVolumeNode",):
        raise DataError(
            f"volume {_node_label(volume_node)} is a {kind} (vector, tensor or 4D); pick a scalar "
            "(grayscale) 3D volume"
        )
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise DataError(f"volume {_node_label(volume_node)} holds no image data")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise DataError(
            f"volume {_node_label(volume_node)} has {components} components per voxel (a 4D, vector or "
            "colour volume); pick a scalar 3D volume or extract one frame first"
        )
    dims = image.GetDimensions()
    if not allow_single_slice and min(dims) < 2:
        raise DataError(
            f"volume {_node_label(volume_node)} is 2D (dimensions {dims[0]}x{dims[1]}x{dims[2]}); "
            "a 3D volume with at least 2 voxels along every axis is needed"
        )
    return image


def case_from_volume_node(volume_node: Any, case_id: str | None = None, *, allow_single_slice: bool = False) -> Case:
    """A Case (float32 image (z, y, x), LPS geometry) from a scalar volume node; the node is unchanged.

    2D (single-slice) and 4D/vector volumes raise DataError naming the node (``allow_single_slice``
    accepts one-slice volumes, e.g. one ACDC slice).
    """
    _check_scalar_volume(volume_node, allow_single_slice)
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise DataError(f"node {_node_label(volume_node)} is a labelmap; pick the image volume instead")
    array = np.array(slicer.util.arrayFromVolume(volume_node), dtype=np.float32, copy=True)
    if not np.isfinite(array).all():
        raise DataError(f"volume {_node_label(volume_node)} contains NaN or infinite voxel values")
    spacing, origin, direction = geometry_lps(volume_node)
    return Case(
        id=case_id or _safe_id(volume_node.GetName()),
        image=np.ascontiguousarray(array),
        spacing=spacing,
        origin=origin,
        direction=direction,
    )


def volume_node_from_case(
    scene: Any, case: Case, name: str | None = None, *, labelmap: bool = False, array: np.ndarray | None = None
) -> Any:
    """A NEW scalar (or labelmap) volume node holding ``array`` (default: ``case.image``) with the Case's geometry."""
    data = case.image if array is None else array
    data = np.asarray(data)
    if data.ndim != 3:
        raise DataError(f"case {case.id}: expected a (z, y, x) array, got shape {data.shape}")
    if labelmap and data.dtype not in (np.uint8, np.int16, np.uint16, np.int32):
        data = data.astype(np.uint8)
    if data.dtype == np.int64:  # updateVolumeFromArray rejects int64 (SLICER.md)
        data = data.astype(np.int32)
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(name or case.id))
    set_geometry_from_case(node, case)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data))
    node.CreateDefaultDisplayNodes()
    return node


# --------------------------------------------------------------------------------------------------
# labels from segmentation / labelmap nodes


def _scratch_scene() -> Any:
    return slicer.vtkMRMLScene()



def _preset_color_table(scene: Any, preset: str) -> Any:
    """A colour table whose entry names are the canonical class names at the class values."""
    infos = terminology.classes(preset)
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "ACTIONPlusPlus classes")
    table.SetTypeToUser()
    table.SetNumberOfColors(max(info.value for info in infos) + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for info in infos:
        table.SetColor(info.value, info.name, *info.color, 1.0)
    return table


def segment_class_map(segmentation_node: Any, preset: str) -> dict[int, str]:
    """``{class value: segment ID}`` of the segments that name (or code) a class of ``preset``.

    Raises DataError when two segments claim the same class.
    """
    segmentation = segmentation_node.GetSegmentation()
    found: dict[int, tuple[str, str]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetNthSegment(index)
        name = segment.GetName() or ""
        value = terminology.class_value_for_segment_name(preset, name)
        if value is None:
            value = terminology.class_value_for_terminology(preset, segment.GetTerminology() or "")
        if value is None:
            continue
        if value in found:
            other = found[value][1]
            cls = terminology.class_info(preset, value).name
            raise DataError(
                f"segmentation {_node_label(segmentation_node)}: segments '{other}' and '{name}' both stand "
                f"for {cls}; rename or merge one of them"
            )
        found[value] = (segment_id, name)
    return {value: sid for value, (sid, _name) in sorted(found.items())}


def _no_class_error(node: Any, preset: str, what: str) -> DataError:
    return DataError(
        f"{what} {_node_label(node)} has none of the {preset.upper()} preset's classes; accepted segment "
        f"names: {'; '.join(terminology.accepted_names(preset))}"
    )


def _check_transforms(label_node: Any, volume_node: Any) -> None:
    if (label_node.GetTransformNodeID() or "") != (volume_node.GetTransformNodeID() or ""):
        raise DataError(
            f"{_node_label(label_node)} and volume {_node_label(volume_node)} are under different parent "
            "transforms; harden the transforms (Data module) first"
        )


def _segment_mask(layer: Any, label_value: int) -> Any:
    """A NEW uint8 vtkOrientedImageData, same extent and geometry, 1 where ``layer == label_value``."""
    from vtk.util import numpy_support

    mask = slicer.vtkOrientedImageData()
    mask.SetExtent(layer.GetExtent())
    mask.SetSpacing(layer.GetSpacing())
    mask.SetOrigin(layer.GetOrigin())
    directions = vtk.vtkMatrix4x4()
    layer.GetDirectionMatrix(directions)
    mask.SetDirectionMatrix(directions)
    mask.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    target = numpy_support.vtk_to_numpy(mask.GetPointData().GetScalars())
    scalars = layer.GetPointData().GetScalars()
    if scalars is None or target.size == 0:
        target[:] = 0
        return mask
    values = numpy_support.vtk_to_numpy(scalars)
    if values.ndim > 1:
        values = values[:, 0]
    target[:] = values == label_value
    return mask


def _export_segments(segmentation_node: Any, class_map: dict[int, str], volume_node: Any, preset: str) -> np.ndarray:
    """Export the matched segments onto the volume's grid with values set by a colour table."""
    scratch = _scratch_scene()
    copy = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode", "copy")
    copy.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    # A private segmentation of NEW vtkSegment objects holding copies of the user's labelmaps: renaming,
    # relabelling and any conversion happen in the copy, never in the user's node.  (vtkSegmentation's
    # DeepCopy would be simpler but cannot instantiate vtkOrientedImageData in slicer-core.)
    source = segmentation_node.GetSegmentation()
    # A surface-only segmentation is converted in the copy by Slicer's conversion rules (registered by
    # the application's Segmentations module; bare slicer-core cannot convert, so it is not tested here).
    source_rep = source.GetSourceRepresentationName()
    segmentation = copy.GetSegmentation()
    segmentation.SetSourceRepresentationName(source_rep)
    ids = []
    for value, segment_id in class_map.items():
        original = source.GetSegment(segment_id)
        data = original.GetRepresentation(source_rep)
        if data is None:
            raise DataError(
                f"segment '{original.GetName()}' of {_node_label(segmentation_node)} has no {source_rep} data"
            )
        segment = slicer.vtkSegment()
        segment.SetName(terminology.class_info(preset, value).name)
        if source_rep == slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName():
            # The export writes into the layers it is given (it relabels shared layers in place):
            # hand it a private copy holding only this segment's voxels, never the user's layer.
            data = _segment_mask(data, original.GetLabelValue())
            segment.SetLabelValue(1)
        else:
            segment.SetLabelValue(original.GetLabelValue())
        segment.AddRepresentation(source_rep, data)
        segmentation.AddSegment(segment, segment_id)
        ids.append(segment_id)
    table = _preset_color_table(scratch, preset)
    out = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    ok = _LOGIC.ExportSegmentsToLabelmapNode(copy, ids, out, volume_node, 0, table)
    if not ok or out.GetImageData() is None:
        hint = ""
        if source_rep != slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName():
            hint = f" (its segments are stored as {source_rep}: convert them to a binary labelmap in Segmentations)"
        raise DataError(
            f"segmentation {_node_label(segmentation_node)} could not be exported onto the grid of volume "
            f"{_node_label(volume_node)}{hint}"
        )
    array = np.array(slicer.util.arrayFromVolume(out), copy=True)
    expected = volume_node.GetImageData().GetDimensions()[::-1]
    if array.shape != tuple(expected):
        raise DataError(
            f"segmentation {_node_label(segmentation_node)} exported with shape {array.shape}, volume "
            f"{_node_label(volume_node)} has {tuple(expected)}"
        )
    return array


def _resample_labelmap(label_node: Any, volume_node: Any, values: Sequence[int], preset: str) -> np.ndarray:
    """Nearest-neighbour resampling of a labelmap onto the volume grid (through a scratch segmentation)."""
    scratch = _scratch_scene()
    source = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "source")
    source.CopyOrientation(label_node)
    slicer.util.updateVolumeFromArray(source, np.array(slicer.util.arrayFromVolume(label_node), copy=True))
    seg = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode", "resample")
    if not _LOGIC.ImportLabelmapToSegmentationNode(source, seg):
        raise DataError(f"labelmap {_node_label(label_node)} could not be converted for resampling")
    segmentation = seg.GetSegmentation()
    class_map = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = int(segment.GetLabelValue())
        if value in values:
            class_map[value] = segmentation.GetNthSegmentID(index)
    return _export_segments(seg, class_map, volume_node, preset)


def label_from_node(label_node: Any, reference_volume_node: Any, preset: str) -> np.ndarray:
    """The label map (z, y, x) uint8 of a segmentation or labelmap node on the volume's grid.

    Segmentation nodes: segments mapped to the preset's class values by name (then terminology code),
    exported with a colour table so a missing class never shifts the others; a segmentation on another
    grid is resampled onto the volume.  Labelmap (or integer scalar) volume nodes are taken as values,
    which must be class values of the preset; resampled when their grid differs.  DataError, naming the
    node, when it has none of the preset's classes, has no labeled voxel inside the volume, or lies
    under another transform than the volume.
    """
    preset = preset.lower()
    terminology.classes(preset)
    _check_scalar_volume(reference_volume_node, allow_single_slice=True, role="reference volume")
    if label_node is None:
        raise DataError("no segmentation or labelmap node given")
    _check_transforms(label_node, reference_volume_node)
    valid = set(terminology.class_values(preset))
    if label_node.IsA("vtkMRMLSegmentationNode"):
        class_map = segment_class_map(label_node, preset)
        if not class_map:
            raise _no_class_error(label_node, preset, "segmentation")
        labels = _export_segments(label_node, class_map, reference_volume_node, preset)
        what = "segmentation"
    elif label_node.IsA("vtkMRMLScalarVolumeNode"):
        image = label_node.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise DataError(f"labelmap {_node_label(label_node)} holds no image data")
        if image.GetNumberOfScalarComponents() != 1:
            raise DataError(f"labelmap {_node_label(label_node)} has several components per voxel")
        raw = slicer.util.arrayFromVolume(label_node)
        if not np.issubdtype(raw.dtype, np.integer):
            if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
                raise DataError(f"labelmap {_node_label(label_node)} has non-integer values")
        present = {int(v) for v in np.unique(raw)}
        unknown = sorted(present - valid - {0})
        if unknown:
            names = ", ".join(f"{i.value}={i.name}" for i in terminology.classes(preset))
            raise DataError(
                f"labelmap {_node_label(label_node)} has values {unknown} that are not classes of the "
                f"{preset.upper()} preset (0=background, {names})"
            )
        if not present & valid:
            raise _no_class_error(label_node, preset, "labelmap")
        if _same_grid(label_node, reference_volume_node):
            labels = np.array(raw, copy=True)
        else:
            labels = _resample_labelmap(label_node, reference_volume_node, sorted(present & valid), preset)
        what = "labelmap"
    else:
        raise DataError(
            f"node {_node_label(label_node)} is a {label_node.GetClassName()}; pick a segmentation or a "
            "labelmap volume"
        )
    bad = sorted({int(v) for v in np.unique(labels)} - valid - {0})
    if bad:  # cannot happen with the colour table, checked anyway before the uint8 cast
        raise DataError(f"{what} {_node_label(label_node)} exported unexpected values {bad}")
    if not np.any(labels):
        raise DataError(
            f"{what} {_node_label(label_node)} has no labeled voxel of the {preset.upper()} classes inside "
            f"volume {_node_label(reference_volume_node)}"
        )
    return np.ascontiguousarray(labels.astype(np.uint8))


def labeled_case_from_nodes(volume_node: Any, label_node: Any, preset: str, case_id: str | None = None) -> Case:
    """A labeled Case; DataError naming both nodes when their physical extents do not overlap."""
    case = case_from_volume_node(volume_node, case_id, allow_single_slice=preset.lower() == "acdc")
    _check_transforms(label_node, volume_node)
    label_bounds = _ras_bounds(label_node)
    empty = label_bounds[0] > label_bounds[1]  # nothing painted: label_from_node says so below
    if not empty and not _bounds_overlap(_ras_bounds(volume_node), label_bounds):
        raise DataError(
            f"{_node_label(label_node)} and volume {_node_label(volume_node)} do not overlap in space "
            "(their physical extents are disjoint): is this the segmentation of another volume?"
        )
    case.label = label_from_node(label_node, volume_node, preset)
    return case


# --------------------------------------------------------------------------------------------------
# predictions into the scene


def _labelmap_oriented_image(labels: np.ndarray, volume_node: Any) -> Any:
    """A vtkOrientedImageData (uint8) holding ``labels`` on the volume's grid, in RAS."""
    image = slicer.vtkOrientedImageData()
    z, y, x = labels.shape
    image.SetDimensions(x, y, z)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    from vtk.util import numpy_support

    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = labels.ravel()
    image.SetSpacing(volume_node.GetSpacing())
    image.SetOrigin(volume_node.GetOrigin())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    image.SetDirectionMatrix(matrix)
    return image


def _place_next_to(scene: Any, node: Any, volume_node: Any) -> None:
    """Same parent transform and subject-hierarchy folder as the volume (best effort)."""
    if volume_node.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    try:
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if sh is None:
            return
        volume_item = sh.GetItemByDataNode(volume_node)
        item = sh.GetItemByDataNode(node)
        invalid = sh.GetInvalidItemID()
        if volume_item != invalid and item != invalid:
            sh.SetItemParent(item, sh.GetItemParent(volume_item))
    except Exception as exc:  # subject hierarchy is cosmetic here
        logger.debug("subject hierarchy placement skipped: %s", exc)


def add_prediction_to_scene(
    scene: Any,
    labels: np.ndarray,
    reference_volume_node: Any,
    preset: str,
    name: str | None = None,
    confidence: np.ndarray | None = None,
) -> Any:
    """Add a NEW segmentation node holding ``labels`` (z, y, x) on ``reference_volume_node``'s grid.

    Named ``"<volume> ACTION++"`` (made unique); one shared labelmap layer with one segment per class of
    the preset (empty classes included), each with its canonical name, colour and SNOMED terminology,
    name/colour marked as not auto-generated.  ``confidence`` (z, y, x) becomes a new scalar volume
    ``"<volume> ACTION++ confidence"``, referenced from the segmentation as ``"confidence"``.
    Existing nodes are not modified.
    """
    preset = preset.lower()
    infos = terminology.classes(preset)
    _check_scalar_volume(reference_volume_node, allow_single_slice=True, role="reference volume")
    dims = reference_volume_node.GetImageData().GetDimensions()
    labels = np.asarray(labels)
    if labels.shape != tuple(dims[::-1]):
        raise DataError(
            f"prediction of shape {labels.shape} does not match volume {_node_label(reference_volume_node)} "
            f"of shape {tuple(dims[::-1])} (z, y, x)"
        )
    valid = {0, *terminology.class_values(preset)}
    bad = sorted({int(v) for v in np.unique(labels)} - valid)
    if bad:
        raise DataError(f"prediction for {_node_label(reference_volume_node)} has values {bad} outside the {preset.upper()} classes")
    labels = np.ascontiguousarray(labels.astype(np.uint8))

    base = name or f"{reference_volume_node.GetName()}{PREDICTION_SUFFIX}"
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(base))
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    layer = _labelmap_oriented_image(labels, reference_volume_node)
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = seg_node.GetSegmentation()
    for info in infos:
        segment = slicer.vtkSegment()
        segment.SetName(info.name)
        segment.SetColor(*info.color)
        segment.SetLabelValue(info.value)
        segment.SetTerminology(info.terminology_entry)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        segment.AddRepresentation(representation, layer)  # the same object: one shared layer
        segmentation.AddSegment(segment, info.name)
    seg_node.CreateDefaultDisplayNodes()
    _place_next_to(scene, seg_node, reference_volume_node)

    if confidence is not None:
        confidence = np.asarray(confidence, dtype=np.float32)
        if confidence.shape != labels.shape:
            raise DataError(f"confidence map of shape {confidence.shape} does not match labels {labels.shape}")
        conf_node = scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode",
            scene.GenerateUniqueName(f"{reference_volume_node.GetName()}{CONFIDENCE_SUFFIX}"),
        )
        conf_node.CopyOrientation(reference_volume_node)
        slicer.util.updateVolumeFromArray(conf_node, np.ascontiguousarray(confidence))
        conf_node.CreateDefaultDisplayNodes()
        _place_next_to(scene, conf_node, reference_volume_node)
        seg_node.SetNodeReferenceID("confidence", conf_node.GetID())
    return seg_node


def confidence_node_of(segmentation_node: Any) -> Any:
    """The confidence volume added with a prediction, or None."""
    return segmentation_node.GetNodeReference("confidence")


# --------------------------------------------------------------------------------------------------
# file IO through MRML storage nodes


def _storage_messages(storage: Any) -> str:
    messages = storage.GetUserMessages() if hasattr(storage, "GetUserMessages") else None
    text = messages.GetAllMessagesAsString() if messages is not None else ""
    return text.strip() or "no details were reported"


def load_volume_file(scene: Any, path: str | Path, name: str | None = None, *, labelmap: bool = False) -> Any:
    """Read an image file (.nrrd, .nii, .nii.gz, .mha) into a NEW volume node through a storage node.

    Slicer's reader flips the slice axis of left-handed files (same physical place): always go through
    the geometry.  DataError with the reader's messages when the file cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    from .data.imageio import split_suffix

    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(name or split_suffix(path)[0]))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    ok = storage.ReadData(node)
    if not ok or node.GetImageData() is None:
        message = _storage_messages(storage)
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise DataError(f"cannot read volume {path}: {message}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def load_segmentation_file(scene: Any, path: str | Path, name: str | None = None) -> Any:
    """Read a ``.seg.nrrd`` into a NEW segmentation node through a vtkMRMLSegmentationStorageNode."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    from .data.imageio import split_suffix

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name or split_suffix(path)[0]))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    ok = storage.ReadData(node)
    if not ok:
        message = _storage_messages(storage)
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise DataError(f"cannot read segmentation {path}: {message}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def load_label_file(scene: Any, path: str | Path, name: str | None = None) -> Any:
    """``.seg.nrrd`` -> segmentation node; any other image file -> labelmap volume node."""
    if str(path).lower().endswith(".seg.nrrd"):
        return load_segmentation_file(scene, path, name)
    return load_volume_file(scene, path, name, labelmap=True)


def save_node(node: Any, path: str | Path) -> Path:
    """Write a segmentation (.seg.nrrd) or volume node through a storage node attached to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = node.GetScene()
    if node.IsA("vtkMRMLSegmentationNode"):
        if not path.name.lower().endswith(".seg.nrrd"):
            raise DataError(f"segmentations are saved as .seg.nrrd, not {path.name}")
        cls = "vtkMRMLSegmentationStorageNode"
    else:
        cls = "vtkMRMLVolumeArchetypeStorageNode"
    storage = node.GetStorageNode()
    if storage is None or not storage.IsA(cls):
        storage = scene.AddNewNodeByClass(cls)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    ok = storage.WriteData(node)
    if not ok or not path.is_file():
        raise DataError(f"cannot write {_node_label(node)} to {path}: {_storage_messages(storage)}")
    return path


# --------------------------------------------------------------------------------------------------
# training jobs


@dataclass
class _Entry:
    role: str
    case_id: str
    image: str
    volume_node_id: str
    volume_node_name: str
    label: str | None = None
    label_node_id: str | None = None
    label_node_name: str | None = None


def _previous_files(job_dir: Path) -> list[Path]:
    mapping = job_dir / NODES_FILE
    if not mapping.is_file():
        return []
    try:
        data = json.loads(mapping.read_text())
        out = []
        for entry in data.get("entries", []):
            for key in ("image", "label"):
                if entry.get(key):
                    out.append(job_dir / entry[key])
        return out
    except (OSError, ValueError, AttributeError):
        return []


def write_training_job(
    scene: Any,
    labeled_pairs: Sequence[tuple[Any, Any]],
    unlabeled_volume_nodes: Iterable[Any],
    predict_volume_nodes: Iterable[Any],
    job_dir: str | Path,
    preset: str,
    *,
    mode: str = "train",
    output_dir: str | Path | None = None,
    model: str | Path | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    seed: int = 1337,
    write_confidence: bool = False,
    predict_unlabeled: bool = True,
    file_suffix: str = ".nrrd",
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Export nodes as a generic dataset + job.json + nodes.json in ``job_dir``; return job.json's path.

    Layout: ``dataset/imagesTr/<id><suffix>`` with ``dataset/labelsTr/<id><suffix>`` (same file names),
    ``dataset/imagesUnlabeled/``, ``predict/`` for the extra volumes to predict, output in ``run/``
    unless ``output_dir`` is given.  ``nodes.json`` records which file came from which node (ID and
    name) so :func:`load_predictions` puts each result on the right volume.  Files are written with
    SimpleITK (geometry kept, atomic renames).  Nothing in the scene is modified.

    ``predict_unlabeled`` (default True): the worker also predicts every unlabeled volume after training.
    A volume listed both as unlabeled and for prediction is written (and predicted) once; a labeled
    volume may also be listed for prediction.

    ``progress(done, total, name)`` is called before each volume is written (the panel shows it and
    keeps its window responsive between files).

    DataError: no labeled pair (train/continue), a volume listed twice, an unlabeled volume that is
    also labeled, a pair whose extents do not overlap (naming both nodes), a label without the
    preset's classes, 2D/4D volumes, a job folder that is not writable.
    """
    from .data.imageio import write_image, write_label
    from .io_utils import atomic_write_text, check_writable_dir

    preset = preset.lower()
    terminology.classes(preset)
    if file_suffix not in (".nrrd", ".nii.gz", ".nii", ".mha"):
        raise DataError(f"unsupported file suffix {file_suffix!r}; use .nrrd or .nii.gz")
    labeled_pairs = list(labeled_pairs)
    unlabeled = [n for n in unlabeled_volume_nodes if n is not None]
    predict = []
    for node in predict_volume_nodes:
        if node is None or any(node.GetID() == p.GetID() for p in predict):
            continue
        if predict_unlabeled and any(node.GetID() == u.GetID() for u in unlabeled):
            continue  # predicted as an unlabeled volume anyway
        predict.append(node)
    if mode in ("train", "continue") and not labeled_pairs:
        raise DataError("no labeled case: add at least one (volume, segmentation) pair")
    if mode == "predict" and not predict and not unlabeled:
        raise DataError("nothing to predict: pick at least one volume")

    labeled_ids: dict[str, Any] = {}
    for volume, label in labeled_pairs:
        if volume is None or label is None:
            raise DataError("a labeled pair is missing its volume or its segmentation")
        if volume.GetID() in labeled_ids:
            raise DataError(f"volume {_node_label(volume)} is listed twice as a labeled case")
        labeled_ids[volume.GetID()] = volume
    seen_unlabeled: set[str] = set()
    for volume in unlabeled:
        if volume.GetID() in labeled_ids:
            raise DataError(
                f"volume {_node_label(volume)} is both labeled and unlabeled; remove it from the unlabeled list"
            )
        if volume.GetID() in seen_unlabeled:
            raise DataError(f"volume {_node_label(volume)} is listed twice as unlabeled")
        seen_unlabeled.add(volume.GetID())

    job_dir = Path(job_dir)
    try:
        check_writable_dir(job_dir)
    except PermissionError as exc:
        raise DataError(str(exc)) from exc
    allow_single = preset == "acdc"

    # build every Case first: a bad node fails before any file is written
    used: set[str] = set()

    def unique_id(node: Any) -> str:
        base = _safe_id(node.GetName())
        candidate, n = base, 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{base}_{n}"
        used.add(candidate.lower())
        return candidate

    labeled_cases = [(labeled_case_from_nodes(v, l, preset, unique_id(v)), v, l) for v, l in labeled_pairs]
    unlabeled_cases = [(case_from_volume_node(v, unique_id(v), allow_single_slice=allow_single), v) for v in unlabeled]
    predict_cases = [(case_from_volume_node(v, unique_id(v), allow_single_slice=allow_single), v) for v in predict]

    for stale in _previous_files(job_dir):
        stale.unlink(missing_ok=True)
    dataset = job_dir / DATASET_FOLDER
    entries: list[_Entry] = []
    total_files = len(labeled_cases) + len(unlabeled_cases) + len(predict_cases)

    def report(node: Any) -> None:
        if progress is not None:
            progress(len(entries), total_files, node.GetName())

    try:
        for case, volume, label in labeled_cases:
            report(volume)
            image_rel = f"{DATASET_FOLDER}/imagesTr/{case.id}{file_suffix}"
            label_rel = f"{DATASET_FOLDER}/labelsTr/{case.id}{file_suffix}"
            write_image(job_dir / image_rel, case.image, case)
            write_label(job_dir / label_rel, case.label, case)
            entries.append(_Entry("labeled", case.id, image_rel, volume.GetID(), volume.GetName(),
                                  label_rel, label.GetID(), label.GetName()))
        for case, volume in unlabeled_cases:
            report(volume)
            image_rel = f"{DATASET_FOLDER}/imagesUnlabeled/{case.id}{file_suffix}"
            write_image(job_dir / image_rel, case.image, case)
            entries.append(_Entry("unlabeled", case.id, image_rel, volume.GetID(), volume.GetName()))
        for case, volume in predict_cases:
            report(volume)
            image_rel = f"{PREDICT_FOLDER}/{case.id}{file_suffix}"
            write_image(job_dir / image_rel, case.image, case)
            entries.append(_Entry("predict", case.id, image_rel, volume.GetID(), volume.GetName()))
    except OSError as exc:
        raise DataError(f"cannot write the training data into {job_dir}: {exc.strerror or exc}") from exc
    if progress is not None:
        progress(total_files, total_files, "")

    has_dataset = bool(labeled_cases)
    # without labeled cases (a predict-only job) the unlabeled volumes are just more volumes to predict
    predict_files = [job_dir / e.image for e in entries
                     if e.role == "predict" or (not has_dataset and predict_unlabeled and e.role == "unlabeled")]
    job = TrainingJob(
        mode=mode,
        preset=preset,
        output_dir=Path(output_dir) if output_dir is not None else job_dir / RUN_FOLDER,
        dataset_dir=dataset if has_dataset else None,
        predict_dir=predict_files or None,
        model=Path(model) if model is not None else None,
        resume=bool(resume),
        overrides=dict(overrides or {}),
        device=device,
        seed=int(seed),
        write_confidence=bool(write_confidence),
        predict_unlabeled=bool(predict_unlabeled),
        overwrite=bool(overwrite),
    )
    mapping = {
        "version": 1,
        "preset": preset,
        "entries": [entry.__dict__ for entry in entries],
    }
    atomic_write_text(job_dir / NODES_FILE, json.dumps(mapping, indent=2) + "\n")
    job_path = write_job(job, job_dir / "job.json")
    # validate what was written with the reader the worker uses: a bad option fails here, in the GUI
    from .jobs import read_job

    try:
        read_job(job_path)
    except DataError:
        job_path.unlink(missing_ok=True)  # never leave a job behind that the worker would reject
        raise
    return job_path


# --------------------------------------------------------------------------------------------------
# predictions back


@dataclass
class PredictionImport:
    """One prediction file and what became of it."""

    case_id: str
    label_file: Path
    volume_node: Any = None
    segmentation_node: Any = None
    confidence_node: Any = None
    message: str | None = None  # why it was skipped (volume removed from the scene, unreadable file...)


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
) -> list[PredictionImport]:
    """Add every prediction of a finished job as a new segmentation node on its input volume.

    Predictions come from the worker's ``prediction`` events when given (``output``, optional
    ``confidence``), otherwise from ``<output_dir>/predictions/<case id>.*``.  Volumes are found through
    ``nodes.json`` (node ID, then name: a volume renamed meanwhile keeps its prediction).  A prediction
    whose volume is gone is skipped with a message.
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
        from .data.imageio import split_suffix

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

    results = []
    for entry, label_file, conf_file in found:
        result = PredictionImport(entry["case_id"], label_file)
        volume = _find_volume(scene, entry.get("volume_node_id"), entry.get("volume_node_name"))
        if volume is None:
            result.message = f"volume '{entry.get('volume_node_name')}' is no longer in the scene; prediction {label_file} not loaded"
            logger.warning(result.message)
            results.append(result)
            continue
        result.volume_node = volume
        try:
            labels = _read_on_volume_grid(label_file, volume, "nearest")
            confidence = None
            if with_confidence and conf_file is not None and conf_file.is_file():
                confidence = _read_on_volume_grid(conf_file, volume, "linear").astype(np.float32)
            result.segmentation_node = add_prediction_to_scene(scene, labels, volume, preset, confidence=confidence)
            result.confidence_node = confidence_node_of(result.segmentation_node)
        except DataError as exc:
            result.message = str(exc)
            logger.warning(result.message)
        results.append(result)
    return results


# --------------------------------------------------------------------------------------------------
# sample data


def add_phantom_sample(scene: Any, preset: str, num_labeled: int = 3, num_unlabeled: int = 4,
                       seed: int = 0) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """Add synthetic cases of ``preset`` to the scene, for trying the whole loop without data.

    Returns the labeled (volume, segmentation) pairs (segments named, coloured and coded like
    predictions) and the unlabeled volumes; every node is new.  ACDC: short-axis stacks with RV, Myo
    and LV; LA: a 3D atrium with a pulmonary vein (``data.phantoms``).
    """
    from .data import phantoms

    preset = preset.lower()
    terminology.classes(preset)
    rng = np.random.default_rng(seed)
    pairs, unlabeled = [], []
    for index in range(num_labeled + num_unlabeled):
        name = f"ACTION++ {preset.upper()} phantom {index + 1}"
        if preset == "acdc":
            case = phantoms.cardiac_phantom_case(rng, name, num_slices=8, size=(128, 128))
            case.spacing = (1.5, 1.5, 8.0)
        else:
            case = phantoms.atrium_phantom_case(rng, name, shape=(40, 96, 96))
            case.spacing = (0.625, 0.625, 1.25)
        volume = volume_node_from_case(scene, case, name)
        if index < num_labeled:
            segmentation = add_prediction_to_scene(scene, case.label, volume, preset, name=f"{name} segmentation")
            pairs.append((volume, segmentation))
        else:
            unlabeled.append(volume)
    return pairs, unlabeled
