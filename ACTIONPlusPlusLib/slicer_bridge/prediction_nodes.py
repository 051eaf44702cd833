"""A label map (z, y, x) as a NEW segmentation node on its volume, one segment per class of the preset.

A predicted segmentation holds one segment for EVERY class of the preset, even when the class is empty:
the user can paint a missed structure in Segment Editor and feed the corrected node back as a labeled
case, and the node always has the same segments in the same order.  It is placed under its volume's
parent transform and subject-hierarchy folder.  Existing nodes are never modified.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import slicer
import slicer.util
import vtk

from ..errors import DataError
from . import terminology
from .geometry import node_label
from .volumes import check_scalar_volume

logger = logging.getLogger(__name__)

PREDICTION_SUFFIX = " ACTION++"
CONFIDENCE_SUFFIX = " ACTION++ confidence"


def labelmap_oriented_image(labels: np.ndarray, volume_node: Any) -> Any:
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
    replace: Any = None,
) -> Any:
    """Add a NEW segmentation node holding ``labels`` (z, y, x) on ``reference_volume_node``'s grid.

    Named ``"<volume> ACTION++"`` (made unique); one shared labelmap layer with one segment per class of
    the preset (empty classes included), each with its canonical name, colour and SNOMED terminology,
    name/colour marked as not auto-generated.  ``confidence`` (z, y, x) becomes a new scalar volume
    ``"<volume> ACTION++ confidence"``, referenced from the segmentation as ``"confidence"``.
    Existing nodes are not modified, except ``replace``: an earlier prediction node (the caller decides
    which: :func:`.node_selection.previous_prediction`) whose segments (and confidence volume) are
    replaced by these, same node, same name, same place.
    """
    preset = preset.lower()
    infos = terminology.classes(preset)
    check_scalar_volume(reference_volume_node, allow_single_slice=True, role="reference volume")
    dims = reference_volume_node.GetImageData().GetDimensions()
    labels = np.asarray(labels)
    if labels.shape != tuple(dims[::-1]):
        raise DataError(
            f"prediction of shape {labels.shape} does not match volume {node_label(reference_volume_node)} "
            f"of shape {tuple(dims[::-1])} (z, y, x)"
        )
    valid = {0, *terminology.class_values(preset)}
    bad = sorted({int(v) for v in np.unique(labels)} - valid)
    if bad:
        raise DataError(f"prediction for {node_label(reference_volume_node)} has values {bad} outside the {preset.upper()} classes")
    labels = np.ascontiguousarray(labels.astype(np.uint8))

    if replace is not None:  # the previous prediction of this volume: updated in place (panel's choice)
        seg_node = replace
        seg_node.GetSegmentation().RemoveAllSegments()
    else:
        base = name or f"{reference_volume_node.GetName()}{PREDICTION_SUFFIX}"
        seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(base))
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    layer = labelmap_oriented_image(labels, reference_volume_node)
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
    if replace is None:
        _place_next_to(scene, seg_node, reference_volume_node)
    if confidence is not None:
        confidence = np.asarray(confidence, dtype=np.float32)
        if confidence.shape != labels.shape:
            raise DataError(f"confidence map of shape {confidence.shape} does not match labels {labels.shape}")
        conf_node = confidence_node_of(seg_node) if replace is not None else None
        if conf_node is None:
            conf_node = scene.AddNewNodeByClass(
                "vtkMRMLScalarVolumeNode",
                scene.GenerateUniqueName(f"{reference_volume_node.GetName()}{CONFIDENCE_SUFFIX}"),
            )
            _place_next_to(scene, conf_node, reference_volume_node)
        conf_node.CopyOrientation(reference_volume_node)
        slicer.util.updateVolumeFromArray(conf_node, np.ascontiguousarray(confidence))
        conf_node.CreateDefaultDisplayNodes()
        seg_node.SetNodeReferenceID("confidence", conf_node.GetID())
    return seg_node


def confidence_node_of(segmentation_node: Any) -> Any:
    """The confidence volume added with a prediction, or None."""
    return segmentation_node.GetNodeReference("confidence")
