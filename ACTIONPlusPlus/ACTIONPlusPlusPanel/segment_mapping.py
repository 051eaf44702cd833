"""The mapping dialog: for each segment of a labeled segmentation, the class it stands for (automatic:
by name or label value; not used; or a class the user picks). The choices are kept on the node
(``segment_classes.set_segment_class``), so the job, the checks and a reloaded scene all see them.
GUI layer: imports qt and slicer; the rows and choices come from ``slicer_bridge.segment_classes``."""

from __future__ import annotations

from typing import Any

import qt

import slicer
from slicer.i18n import tr as _

from ACTIONPlusPlusLib.slicer_bridge import segment_classes


def _comboBox(choices: list, automatic: Any, chosen: Any):
    box = qt.QComboBox()
    for label, value in choices:
        if value is None:  # "automatic": say what the name (or label value) gives
            label = _("automatic ({name})").format(name=dict((v, n) for n, v in choices).get(automatic, _("not used")))
        box.addItem(label)
    box.setCurrentIndex([value for _label, value in choices].index(chosen))
    return box


def editSegmentMapping(segmentationNode: Any, preset: str, mapping: str) -> bool:
    """Ask the user which class each segment is; True when they accepted (the node then holds the choices)."""
    dialog = qt.QDialog(slicer.util.mainWindow())
    dialog.setWindowTitle(_("ACTION++: segments of {name}").format(name=segmentationNode.GetName()))
    form = qt.QFormLayout(dialog)
    choices = segment_classes.mapping_choices(preset)
    rows = segment_classes.segment_mapping_rows(segmentationNode, preset, mapping)
    boxes = []
    for segmentID, name, automatic, chosen in rows:
        boxes.append((segmentID, _comboBox(choices, automatic, chosen)))
        form.addRow(name or segmentID, boxes[-1][1])
    buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
    buttons.connect("accepted()", dialog.accept)
    buttons.connect("rejected()", dialog.reject)
    form.addRow(buttons)
    if not dialog.exec_():
        return False
    for segmentID, box in boxes:
        segment_classes.set_segment_class(segmentationNode, preset, segmentID, choices[box.currentIndex][1])
    return True
