"""The user's corrections of how a segmentation's segments map to a preset's classes (the panel's
"Segments..." dialog): kept on the segmentation node as metadata, JSON ``{preset: {segment ID: class
value, 0 = not used}}`` in :data:`SEGMENT_CLASSES_ATTRIBUTE` (saved with the scene, shown in the Data
module; the segments themselves are never touched), and read by ``segmentations.segment_class_map``
before the automatic match (by name, terminology code or label value).

Node methods only, nothing imported from Slicer: the panel calls it before the dependencies are
installed, and the tests run it against slicer-core.
"""

from __future__ import annotations

import json
from typing import Any, Optional

SEGMENT_CLASSES_ATTRIBUTE = "ACTIONPlusPlus.SegmentClasses"
NOT_USED = 0


def segment_corrections(segmentation_node: Any, preset: str) -> dict[str, int]:
    """``{segment ID: class value}`` the user set for ``preset`` (0: the segment is not used); a damaged
    attribute counts as none."""
    try:
        data = json.loads(segmentation_node.GetAttribute(SEGMENT_CLASSES_ATTRIBUTE) or "{}")
        chosen = data.get(preset.lower(), {})
        return {str(k): int(v) for k, v in chosen.items() if isinstance(v, int) and not isinstance(v, bool)}
    except (ValueError, AttributeError, TypeError):
        return {}


def set_segment_class(segmentation_node: Any, preset: str, segment_id: str, value: Optional[int]) -> None:
    """The user's choice for one segment: a class value, :data:`NOT_USED`, or None (automatic again)."""
    from .terminology import class_values

    if value is not None and value != NOT_USED and value not in class_values(preset):
        raise ValueError(f"{value} is not a class of the {preset.upper()} preset")
    try:
        data = json.loads(segmentation_node.GetAttribute(SEGMENT_CLASSES_ATTRIBUTE) or "{}")
    except ValueError:
        data = {}
    chosen = {k: v for k, v in segment_corrections(segmentation_node, preset).items() if k != segment_id}
    if value is not None:
        chosen[segment_id] = int(value)
    data = {k: v for k, v in data.items() if isinstance(v, dict) and k != preset.lower()}
    if chosen:
        data[preset.lower()] = chosen
    segmentation_node.SetAttribute(SEGMENT_CLASSES_ATTRIBUTE, json.dumps(data, sort_keys=True) if data else None)


def automatic_class(segment: Any, preset: str, mapping: str = "name") -> Optional[int]:
    """The class value a segment maps to without a correction: by name, then terminology code; or by
    its label value (``mapping="value"``); None when it names no class."""
    from . import terminology

    if mapping == "value":
        value = int(segment.GetLabelValue())
        return value if value in terminology.class_values(preset) else None
    value = terminology.class_value_for_segment_name(preset, segment.GetName() or "")
    if value is None:
        value = terminology.class_value_for_terminology(preset, segment.GetTerminology() or "")
    return value


def segment_mapping_rows(segmentation_node: Any, preset: str, mapping: str = "name") -> list[tuple[str, str, Optional[int], Optional[int]]]:
    """(segment ID, name, automatic class value or None, the user's correction or None) per segment, for
    the panel's mapping dialog."""
    segmentation = segmentation_node.GetSegmentation()
    corrections = segment_corrections(segmentation_node, preset)
    rows = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id, segment = segmentation.GetNthSegmentID(index), segmentation.GetNthSegment(index)
        rows.append((segment_id, segment.GetName() or "", automatic_class(segment, preset, mapping), corrections.get(segment_id)))
    return rows


def mapping_choices(preset: str) -> list[tuple[str, Optional[int]]]:
    """The mapping dialog's choices per segment: automatic, not used, then each class."""
    from .terminology import classes

    return [("automatic", None), ("not used", NOT_USED), *((info.name, info.value) for info in classes(preset))]
