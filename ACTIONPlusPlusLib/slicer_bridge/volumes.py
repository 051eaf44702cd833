"""Scalar volume nodes <-> :class:`~ACTIONPlusPlusLib.data.types.Case` (float32 image, LPS geometry)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import slicer
import slicer.util

from ..data.types import Case
from ..errors import DataError
from .geometry import geometry_lps, node_label, set_geometry_from_case


def safe_id(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text or "").strip("._-")
    return cleaned or "volume"


def check_scalar_volume(volume_node: Any, allow_single_slice: bool = False, role: str = "volume") -> Any:
    if volume_node is None:
        raise DataError(f"no {role} node given")
    if not volume_node.IsA("vtkMRMLVolumeNode"):
        raise DataError(f"node {node_label(volume_node)} is a {volume_node.GetClassName()}, not a volume")
    kind = volume_node.GetClassName()
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or kind in ("vtkMRMLMultiVolumeNode",):
        raise DataError(
            f"volume {node_label(volume_node)} is a {kind} (vector, tensor or 4D); pick a scalar "
            "(grayscale) 3D volume"
        )
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise DataError(f"volume {node_label(volume_node)} holds no image data")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise DataError(
            f"volume {node_label(volume_node)} has {components} components per voxel (a 4D, vector or "
            "colour volume); pick a scalar 3D volume or extract one frame first"
        )
    dims = image.GetDimensions()
    if not allow_single_slice and min(dims) < 2:
        raise DataError(
            f"volume {node_label(volume_node)} is 2D (dimensions {dims[0]}x{dims[1]}x{dims[2]}); "
            "a 3D volume with at least 2 voxels along every axis is needed"
        )
    return image


def case_from_volume_node(volume_node: Any, case_id: str | None = None, *, allow_single_slice: bool = False) -> Case:
    """A Case (float32 image (z, y, x), LPS geometry) from a scalar volume node; the node is unchanged.

    2D (single-slice) and 4D/vector volumes raise DataError naming the node (``allow_single_slice``
    accepts one-slice volumes, e.g. one ACDC slice).
    """
    check_scalar_volume(volume_node, allow_single_slice)
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise DataError(f"node {node_label(volume_node)} is a labelmap; pick the image volume instead")
    array = np.array(slicer.util.arrayFromVolume(volume_node), dtype=np.float32, copy=True)
    if not np.isfinite(array).all():
        raise DataError(f"volume {node_label(volume_node)} contains NaN or infinite voxel values")
    spacing, origin, direction = geometry_lps(volume_node)
    return Case(
        id=case_id or safe_id(volume_node.GetName()),
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
