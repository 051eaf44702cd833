"""Segmentation and labelmap nodes -> label maps (z, y, x) uint8 of a preset's classes.

Never modifies a node it did not create: labels are exported from a private copy of the segmentation
in a private scratch scene.

Decisions:

- Segments are matched to classes BY NAME (:mod:`.terminology`: case-insensitive, synonyms, or a name
  that is a class value, "1" / "Label_1"), then by the SNOMED code of their terminology; or, when the
  user picks it (``mapping="value"``), BY LABEL VALUE (a segmentation imported from a label file whose
  colour table names its values "tissue", "bone", ...); never by order.  The user's correction of one
  segment (the panel's mapping dialog: :func:`.segment_classes.set_segment_class`, kept on the node)
  wins over both.  Segments matching no class are
  ignored; two segments matching the same class are an error (which one is the truth is the user's call).
- Labelmap volume nodes are taken as values (as label files are).
- :func:`missing_class_warning`: a labeled case without some of the classes is allowed (partial
  annotations), but said: those voxels train as background.
- Segmentation or labelmap nodes under a parent transform different from their volume's are refused
  (harden the transform first).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import slicer
import slicer.util
import vtk

from ..data.types import Case
from ..errors import DataError
from . import terminology
from .geometry import bounds_overlap, node_label, ras_bounds, same_grid
from .segment_classes import NOT_USED, automatic_class, segment_corrections
from .volumes import case_from_volume_node, check_scalar_volume

_LOGIC = slicer.vtkSlicerSegmentationsModuleLogic


def scratch_scene() -> Any:
    return slicer.vtkMRMLScene()


def preset_color_table(scene: Any, preset: str) -> Any:
    """A colour table whose entry names are the canonical class names at the class values."""
    infos = terminology.classes(preset)
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "ACTIONPlusPlus classes")
    table.SetTypeToUser()
    table.SetNumberOfColors(max(info.value for info in infos) + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for info in infos:
        table.SetColor(info.value, info.name, *info.color, 1.0)
    return table


LABEL_MAPPINGS = ("name", "value")  # how segments are matched to classes: by name (default) or label value


def check_mapping(mapping: str) -> str:
    if mapping not in LABEL_MAPPINGS:
        raise ValueError(f"unknown label mapping {mapping!r}; choose one of {', '.join(LABEL_MAPPINGS)}")
    return mapping


def _segment_class_value(segment: Any, preset: str, mapping: str, corrected: int | None = None) -> int | None:
    if corrected is not None:  # the user's choice for this segment
        return None if corrected == NOT_USED else corrected
    return automatic_class(segment, preset, mapping)


def segment_class_map(segmentation_node: Any, preset: str, mapping: str = "name") -> dict[int, str]:
    """``{class value: segment ID}`` of the segments that name (or code) a class of ``preset``; with
    ``mapping="value"``, of the segments whose label value is a class value; a segment the user mapped by
    hand (:func:`.segment_classes.segment_corrections`) to the class chosen, or left out.

    Raises DataError when two segments claim the same class.
    """
    check_mapping(mapping)
    segmentation = segmentation_node.GetSegmentation()
    corrections = segment_corrections(segmentation_node, preset)
    found: dict[int, tuple[str, str]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetNthSegment(index)
        name = segment.GetName() or ""
        value = _segment_class_value(segment, preset, mapping, corrections.get(segment_id))
        if value is None:
            continue
        if value in found:
            other = found[value][1]
            cls = terminology.class_info(preset, value).name
            raise DataError(
                f"segmentation {node_label(segmentation_node)}: segments '{other}' and '{name}' both stand "
                f"for {cls}; rename or merge one of them"
            )
        found[value] = (segment_id, name)
    return {value: sid for value, (sid, _name) in sorted(found.items())}


def _no_class_error(node: Any, preset: str, what: str, mapping: str = "name") -> DataError:
    values = ", ".join(f"{i.value}={i.name}" for i in terminology.classes(preset))
    if mapping == "value":
        return DataError(f"{what} {node_label(node)} has no segment with a label value of the {preset.upper()} "
                         f"preset's classes ({values})")
    return DataError(
        f"{what} {node_label(node)} has none of the {preset.upper()} preset's classes; accepted segment "
        f"names: {'; '.join(terminology.accepted_names(preset))}, or the class values ({values}); or "
        "map the segments by label value"
    )


def class_mapping_text(segmentation_node: Any, preset: str, mapping: str = "name") -> str:
    """How the segments map to the classes, for the panel: "RV <- '1', LV <- 'Label_3'" (DataError as
    :func:`segment_class_map`)."""
    segmentation = segmentation_node.GetSegmentation()
    class_map = segment_class_map(segmentation_node, preset, mapping)
    corrected = segment_corrections(segmentation_node, preset)
    return ", ".join(f"{terminology.class_info(preset, value).name} <- '{segmentation.GetSegment(sid).GetName()}'"
                     + (" (your choice)" if sid in corrected else "")
                     for value, sid in class_map.items()) or "no class"


def missing_class_warning(labels: np.ndarray, preset: str, volume_node: Any, label_node: Any) -> str | None:
    """A message when a labeled case lacks some of the preset's classes (None when it has them all):
    partial annotations are allowed, but the unpainted classes train as background in this case."""
    present = {int(v) for v in np.unique(labels)}
    absent = [info.name for info in terminology.classes(preset) if info.value not in present]
    if not absent:
        return None
    return (f"labeled case {node_label(volume_node)} ({node_label(label_node)}) has no {', '.join(absent)}: "
            "in this case those structures are trained as background. Paint them, or leave the case out if "
            "they are visible in it.")


def check_transforms(label_node: Any, volume_node: Any) -> None:
    if (label_node.GetTransformNodeID() or "") != (volume_node.GetTransformNodeID() or ""):
        raise DataError(
            f"{node_label(label_node)} and volume {node_label(volume_node)} are under different parent "
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
    scratch = scratch_scene()
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
                f"segment '{original.GetName()}' of {node_label(segmentation_node)} has no {source_rep} data"
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
    table = preset_color_table(scratch, preset)
    out = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    ok = _LOGIC.ExportSegmentsToLabelmapNode(copy, ids, out, volume_node, 0, table)
    if not ok or out.GetImageData() is None:
        hint = ""
        if source_rep != slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName():
            hint = f" (its segments are stored as {source_rep}: convert them to a binary labelmap in Segmentations)"
        raise DataError(
            f"segmentation {node_label(segmentation_node)} could not be exported onto the grid of volume "
            f"{node_label(volume_node)}{hint}"
        )
    array = np.array(slicer.util.arrayFromVolume(out), copy=True)
    expected = volume_node.GetImageData().GetDimensions()[::-1]
    if array.shape != tuple(expected):
        raise DataError(
            f"segmentation {node_label(segmentation_node)} exported with shape {array.shape}, volume "
            f"{node_label(volume_node)} has {tuple(expected)}"
        )
    return array


def _resample_labelmap(label_node: Any, volume_node: Any, values: Sequence[int], preset: str) -> np.ndarray:
    """Nearest-neighbour resampling of a labelmap onto the volume grid (through a scratch segmentation)."""
    scratch = scratch_scene()
    source = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "source")
    source.CopyOrientation(label_node)
    slicer.util.updateVolumeFromArray(source, np.array(slicer.util.arrayFromVolume(label_node), copy=True))
    seg = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode", "resample")
    if not _LOGIC.ImportLabelmapToSegmentationNode(source, seg):
        raise DataError(f"labelmap {node_label(label_node)} could not be converted for resampling")
    segmentation = seg.GetSegmentation()
    class_map = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = int(segment.GetLabelValue())
        if value in values:
            class_map[value] = segmentation.GetNthSegmentID(index)
    return _export_segments(seg, class_map, volume_node, preset)


def label_from_node(label_node: Any, reference_volume_node: Any, preset: str, mapping: str = "name") -> np.ndarray:
    """The label map (z, y, x) uint8 of a segmentation or labelmap node on the volume's grid.

    Segmentation nodes: segments mapped to the preset's class values by name (then terminology code;
    by label value with ``mapping="value"``),
    exported with a colour table so a missing class never shifts the others; a segmentation on another
    grid is resampled onto the volume.  Labelmap (or integer scalar) volume nodes are taken as values,
    which must be class values of the preset; resampled when their grid differs.  DataError, naming the
    node, when it has none of the preset's classes, has no labeled voxel inside the volume, or lies
    under another transform than the volume.
    """
    preset = preset.lower()
    terminology.classes(preset)
    check_scalar_volume(reference_volume_node, allow_single_slice=True, role="reference volume")
    if label_node is None:
        raise DataError("no segmentation or labelmap node given")
    check_transforms(label_node, reference_volume_node)
    valid = set(terminology.class_values(preset))
    if label_node.IsA("vtkMRMLSegmentationNode"):
        class_map = segment_class_map(label_node, preset, mapping)
        if not class_map:
            raise _no_class_error(label_node, preset, "segmentation", mapping)
        labels = _export_segments(label_node, class_map, reference_volume_node, preset)
        what = "segmentation"
    elif label_node.IsA("vtkMRMLScalarVolumeNode"):
        image = label_node.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise DataError(f"labelmap {node_label(label_node)} holds no image data")
        if image.GetNumberOfScalarComponents() != 1:
            raise DataError(f"labelmap {node_label(label_node)} has several components per voxel")
        raw = slicer.util.arrayFromVolume(label_node)
        if not np.issubdtype(raw.dtype, np.integer):
            if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
                raise DataError(f"labelmap {node_label(label_node)} has non-integer values")
        present = {int(v) for v in np.unique(raw)}
        unknown = sorted(present - valid - {0})
        if unknown:
            names = ", ".join(f"{i.value}={i.name}" for i in terminology.classes(preset))
            raise DataError(
                f"labelmap {node_label(label_node)} has values {unknown} that are not classes of the "
                f"{preset.upper()} preset (0=background, {names})"
            )
        if not present & valid:
            raise _no_class_error(label_node, preset, "labelmap")
        if same_grid(label_node, reference_volume_node):
            labels = np.array(raw, copy=True)
        else:
            labels = _resample_labelmap(label_node, reference_volume_node, sorted(present & valid), preset)
        what = "labelmap"
    else:
        raise DataError(
            f"node {node_label(label_node)} is a {label_node.GetClassName()}; pick a segmentation or a "
            "labelmap volume"
        )
    bad = sorted({int(v) for v in np.unique(labels)} - valid - {0})
    if bad:  # cannot happen with the colour table, checked anyway before the uint8 cast
        raise DataError(f"{what} {node_label(label_node)} exported unexpected values {bad}")
    if not np.any(labels):
        raise DataError(
            f"{what} {node_label(label_node)} has no labeled voxel of the {preset.upper()} classes inside "
            f"volume {node_label(reference_volume_node)}"
        )
    return np.ascontiguousarray(labels.astype(np.uint8))


def labeled_case_from_nodes(volume_node: Any, label_node: Any, preset: str, case_id: str | None = None,
                            mapping: str = "name") -> Case:
    """A labeled Case; DataError naming both nodes when their physical extents do not overlap."""
    case = case_from_volume_node(volume_node, case_id, allow_single_slice=preset.lower() == "acdc")
    check_transforms(label_node, volume_node)
    label_bounds = ras_bounds(label_node)
    empty = label_bounds[0] > label_bounds[1]  # nothing painted: label_from_node says so below
    if not empty and not bounds_overlap(ras_bounds(volume_node), label_bounds):
        raise DataError(
            f"{node_label(label_node)} and volume {node_label(volume_node)} do not overlap in space "
            "(their physical extents are disjoint): is this the segmentation of another volume?"
        )
    case.label = label_from_node(label_node, volume_node, preset, mapping)
    return case
