"""The panel's view of the scene: which volumes can be picked, the segments of a segmentation, the
problems of a selection of nodes, and which volume a prediction belongs to.

Takes the scene or nodes as arguments and imports nothing from Slicer (node methods only): the module
file calls it before the dependencies are installed, and the tests run it against slicer-core.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .panel.selection_checks import segments_problem, selection_problems
from .segment_classes import NOT_USED, segment_corrections

SOURCE_VOLUME_ATTRIBUTE = "ACTIONPlusPlus.SourceVolumeID"  # set on the nodes a prediction added
PRESET_ATTRIBUTE = "ACTIONPlusPlus.Preset"  # the preset of the model that made a prediction
MODEL_ATTRIBUTE = "ACTIONPlusPlus.Model"  # the model file that made it (shown in the Data module)
NAME_ATTRIBUTE = "ACTIONPlusPlus.GeneratedName"  # the name we gave it: another name means the user renamed it
KEPT_ATTRIBUTE = "ACTIONPlusPlus.Kept"  # "1": the user kept it (used as a labeled case): never updated


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


def node_selection_problems(pairs: Sequence[tuple[Any, Any]], unlabeled: Sequence[Any], preset: str,
                            mapping: str = "name") -> list[str]:
    """:func:`.panel.selection_checks.selection_problems` on nodes, plus a message for each labeled
    segmentation that holds none of the preset's classes by name (with ``mapping="value"`` the label
    values are checked when the cases are built).  Labelmap volumes are checked there too (values)."""
    names = {n.GetID(): n.GetName() for pair in pairs for n in pair if n is not None}
    names.update({n.GetID(): n.GetName() for n in unlabeled})
    problems = selection_problems(
        [(v.GetID() if v else None, s.GetID() if s else None) for v, s in pairs], [n.GetID() for n in unlabeled], names
    )
    for volume, segmentation in pairs:
        if mapping == "name" and volume is not None and segmentation is not None and segmentation.IsA("vtkMRMLSegmentationNode"):
            if any(v != NOT_USED for v in segment_corrections(segmentation, preset).values()):
                continue  # the user mapped segments by hand: checked when the case is built
            problem = segments_problem(segmentation.GetName(), segment_entries(segmentation), preset)
            if problem:
                problems.append(problem)
    return problems


def label_summary(label_node: Any, preset: str, mapping: str = "name") -> tuple[str | None, str]:
    """(problem or None, how the node's labels become the preset's classes) for the panel when a
    labeled case is added: a segmentation's segment -> class mapping, or a labelmap's values."""
    from . import terminology

    values = ", ".join(f"{i.value}={i.name}" for i in terminology.classes(preset))
    if not label_node.IsA("vtkMRMLSegmentationNode"):
        return None, f"voxel values are the classes ({values})"
    corrected = any(v != NOT_USED for v in segment_corrections(label_node, preset).values())
    if mapping == "name" and not corrected:
        problem = segments_problem(label_node.GetName(), segment_entries(label_node), preset)
        if problem:
            return problem + " Or match its segments by label value, or pick each segment's class (Segments...).", ""
    from .segmentations import class_mapping_text  # imports slicer: only once a node is there

    try:
        return None, class_mapping_text(label_node, preset, mapping)
    except ValueError as exc:  # DataError: two segments for one class
        return str(exc), ""


def voxel_count(nodes: Iterable[Any]) -> int:
    """Voxels of the volumes' images (None entries and volumes without an image count 0)."""
    return sum(n.GetImageData().GetNumberOfPoints() for n in nodes if n is not None and n.GetImageData() is not None)


def mark_sources(imports: Iterable[Any], preset: str | None = None, model: str | None = None) -> None:
    """Record on each new segmentation (and confidence volume) the volume it was predicted on, the
    preset and model that made it and the name it was given (see :func:`previous_prediction`)."""
    for item in imports:
        if item.segmentation_node is not None and item.volume_node is not None:
            node = item.segmentation_node
            node.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, item.volume_node.GetID())
            node.SetAttribute(NAME_ATTRIBUTE, node.GetName())
            for attribute, value in ((PRESET_ATTRIBUTE, preset), (MODEL_ATTRIBUTE, model)):
                if value:
                    node.SetAttribute(attribute, str(value))
        confidence = getattr(item, "confidence_node", None)
        if confidence is not None and item.volume_node is not None:
            confidence.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, item.volume_node.GetID())


def keep_prediction(segmentation_node: Any) -> None:
    """The user keeps this prediction (made it a labeled case): a later prediction never updates it.
    Nodes that are not our predictions are left untouched (nothing would update them anyway)."""
    if segmentation_node is not None and segmentation_node.GetAttribute(SOURCE_VOLUME_ATTRIBUTE):
        segmentation_node.SetAttribute(KEPT_ATTRIBUTE, "1")


def previous_prediction(scene: Any, volume_node: Any, preset: str) -> Any:
    """The earlier ACTION++ prediction of ``volume_node`` (same preset) that a new one updates in place,
    or None: only a node we made and the user neither renamed nor kept (nor uses as a labeled case,
    which keeps it); the most recent when several qualify."""
    found = None
    collection = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    for index in range(collection.GetNumberOfItems()):
        node = collection.GetItemAsObject(index)
        if (node.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) == volume_node.GetID()
                and (node.GetAttribute(PRESET_ATTRIBUTE) or "").lower() == preset.lower()
                and node.GetAttribute(NAME_ATTRIBUTE) == node.GetName()
                and node.GetAttribute(KEPT_ATTRIBUTE) != "1"):
            found = node
    return found


def source_volume(scene: Any, segmentation_node: Any) -> Any:
    """The volume a prediction was made on (recorded by :func:`mark_sources`), or None."""
    node_id = segmentation_node.GetAttribute(SOURCE_VOLUME_ATTRIBUTE)
    return scene.GetNodeByID(node_id) if node_id else None
