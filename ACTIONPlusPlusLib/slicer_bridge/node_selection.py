"""The panel's view of the scene: which volumes can be picked, the segments of a segmentation, the
problems of a selection of nodes, and which volume a prediction belongs to.

Takes the scene or nodes as arguments and imports nothing from Slicer (node methods only): the module
file calls it before the dependencies are installed, and the tests run it against slicer-core.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .panel.selection_checks import segments_problem, selection_problems

SOURCE_VOLUME_ATTRIBUTE = "ACTIONPlusPlus.SourceVolumeID"  # set on the nodes a prediction added


def candidate_volumes(scene: Any) -> list[Any]:
    """The scene's scalar volumes that can be training data (no labelmaps, no ACTION++ outputs)."""
    nodes = []
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for index in range(collection.GetNumberOfItems()):
        node = collection.GetItemAsObject(index)
        if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetHideFromEditors():
            continue
        if node.GetAttribute(SOURCE_VOLUME_ATTRIBUTE):  # a confidence volume we added
            continue
        nodes.append(node)
    return nodes


def segment_entries(segmentation_node: Any) -> list[tuple[str, str]]:
    """(name, terminology entry) of each segment."""
    segmentation = segmentation_node.GetSegmentation()
    return [
        (segmentation.GetNthSegment(i).GetName() or "", segmentation.GetNthSegment(i).GetTerminology() or "")
        for i in range(segmentation.GetNumberOfSegments())
    ]


def node_selection_problems(pairs: Sequence[tuple[Any, Any]], unlabeled: Sequence[Any], preset: str) -> list[str]:
    """:func:`.panel.selection_checks.selection_problems` on nodes, plus a message for each labeled
    segmentation that holds none of the preset's classes."""
    names = {n.GetID(): n.GetName() for pair in pairs for n in pair if n is not None}
    names.update({n.GetID(): n.GetName() for n in unlabeled})
    problems = selection_problems(
        [(v.GetID() if v else None, s.GetID() if s else None) for v, s in pairs], [n.GetID() for n in unlabeled], names
    )
    for volume, segmentation in pairs:
        if volume is not None and segmentation is not None and segmentation.IsA("vtkMRMLSegmentationNode"):
            problem = segments_problem(segmentation.GetName(), segment_entries(segmentation), preset)
            if problem:
                problems.append(problem)
    return problems


def voxel_count(nodes: Iterable[Any]) -> int:
    """Voxels of the volumes' images (None entries and volumes without an image count 0)."""
    return sum(n.GetImageData().GetNumberOfPoints() for n in nodes if n is not None and n.GetImageData() is not None)


def mark_sources(imports: Iterable[Any]) -> None:
    """Record on each new segmentation (and confidence volume) the volume it was predicted on."""
    for item in imports:
        if item.segmentation_node is not None and item.volume_node is not None:
            item.segmentation_node.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, item.volume_node.GetID())
        confidence = getattr(item, "confidence_node", None)
        if confidence is not None and item.volume_node is not None:
            confidence.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, item.volume_node.GetID())


def source_volume(scene: Any, segmentation_node: Any) -> Any:
    """The volume a prediction was made on (recorded by :func:`mark_sources`), or None."""
    node_id = segmentation_node.GetAttribute(SOURCE_VOLUME_ATTRIBUTE)
    return scene.GetNodeByID(node_id) if node_id else None
