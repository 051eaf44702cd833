"""The panel's case lists: the labeled (volume, segmentation or labelmap) table, the unlabeled volume
list (opt-in: only the volumes the user checks), the volumes to predict (one job for all the ticked
ones), and "Add prediction as labeled". A mixin of ``ACTIONPlusPlusWidget`` (it uses the widget's ``ui``,
``_parameterNode``, ``logic``, ``showStatus`` and ``showError``); the checks are the bridge's."""

from __future__ import annotations

from typing import Any

import qt

import slicer
from slicer.i18n import tr as _

from ACTIONPlusPlusLib.slicer_bridge import node_selection
from ACTIONPlusPlusLib.slicer_bridge.panel import selection_checks
from ACTIONPlusPlusPanel.segment_mapping import editSegmentMapping


class CaseListsMixin:
    """Labeled pairs and unlabeled volumes, kept in the parameter node (saved with the scene)."""

    def _labeledPairs(self) -> list[tuple[Any, Any]]:
        """The labeled pairs whose nodes still exist (a removed node drops its pair)."""
        if self._parameterNode is None:
            return []
        return [(v, s) for v, s in self._parameterNode.labeledPairs
                if v is not None and s is not None and v.GetScene() and s.GetScene()]

    def _unlabeledVolumes(self) -> list[Any]:
        """Checked items of the unlabeled list, as nodes."""
        return self._checkedNodes(self.ui.unlabeledListWidget)

    def _predictVolumes(self) -> list[Any]:
        """Checked items of the Prediction section's volume list, as nodes."""
        return self._checkedNodes(self.ui.predictListWidget)

    @staticmethod
    def _checkedNodes(listWidget) -> list[Any]:
        items = [listWidget.item(row) for row in range(listWidget.count)]
        nodes = [slicer.mrmlScene.GetNodeByID(i.data(qt.Qt.UserRole)) for i in items if i.checkState() == qt.Qt.Checked]
        return [node for node in nodes if node is not None]

    def updateCaseLists(self) -> None:
        """Refill the labeled table and the unlabeled list from the parameter node and the scene."""
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            pairs = self._labeledPairs()
            self._fillLabeledTable(pairs)
            scene = [n.GetID() for n in node_selection.candidate_volumes(slicer.mrmlScene)]
            chosen = [n.GetID() for n in self._parameterNode.unlabeledVolumes if n is not None]
            self._fillCheckList(self.ui.unlabeledListWidget, selection_checks.unlabeled_rows(scene, [v.GetID() for v, _s in pairs], chosen))
            toPredict = [n.GetID() for n in self._parameterNode.predictVolumes if n is not None]
            self._fillCheckList(self.ui.predictListWidget, selection_checks.predict_rows(scene, toPredict))
        finally:
            self._updatingGUI = False

    def _fillLabeledTable(self, pairs: list[tuple[Any, Any]]) -> None:
        table = self.ui.labeledTableWidget
        table.setRowCount(len(pairs))
        for row, (volume, segmentation) in enumerate(pairs):
            table.setItem(row, 0, qt.QTableWidgetItem(volume.GetName()))
            table.setItem(row, 1, qt.QTableWidgetItem(segmentation.GetName()))

    @staticmethod
    def _fillCheckList(listWidget, rows: list[tuple[str, bool]]) -> None:
        scroll = listWidget.verticalScrollBar().value  # refilled on each change: stay where the user was
        listWidget.clear()
        for nodeID, checked in rows:
            item = qt.QListWidgetItem(slicer.mrmlScene.GetNodeByID(nodeID).GetName())
            item.setData(qt.Qt.UserRole, nodeID)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)
            listWidget.addItem(item)
        listWidget.verticalScrollBar().value = scroll

    def onAddPair(self) -> None:
        volume = self.ui.labeledVolumeSelector.currentNode()
        segmentation = self.ui.labeledSegmentationSelector.currentNode()
        if volume is None or segmentation is None:
            return self.showError(_("Pick a volume and its labels (segmentation or labelmap), then click Add labeled case."))
        if any(v is volume for v, _s in self._labeledPairs()):
            return self.showError(_("Volume '{name}' is already a labeled case.").format(name=volume.GetName()))
        problem, mapping = node_selection.label_summary(segmentation, self._preset(), self._panelSettings().label_mapping)
        if problem:
            return self.showError(problem)
        node_selection.keep_prediction(segmentation)  # a corrected prediction: never updated by the next one
        self._parameterNode.labeledPairs = self._labeledPairs() + [(volume, segmentation)]
        text = _("Added labeled case {volume} + {segmentation}: {mapping}.").format(
            volume=volume.GetName(), segmentation=segmentation.GetName(), mapping=mapping)
        self.showStatus(text)
        self.appendLog(text)

    def onCorrectMapping(self) -> None:
        """The mapping dialog for the segmentation of the selected labeled case (else the one picked above)."""
        rows = sorted({index.row() for index in self.ui.labeledTableWidget.selectionModel().selectedRows()})
        pairs = self._labeledPairs()
        node = pairs[rows[0]][1] if rows and rows[0] < len(pairs) else self.ui.labeledSegmentationSelector.currentNode()
        if node is None or not node.IsA("vtkMRMLSegmentationNode"):
            return self.showError(_("Select a labeled case whose labels are a segmentation (a labelmap's values are its classes)."))
        mapping = self._panelSettings().label_mapping
        if not editSegmentMapping(node, self._preset(), mapping):
            return
        problem, text = node_selection.label_summary(node, self._preset(), mapping)
        if problem:
            return self.showError(problem)
        self.showStatus(_("{name}: {mapping}.").format(name=node.GetName(), mapping=text))
        self.appendLog(_("Segment mapping of {name}: {mapping}.").format(name=node.GetName(), mapping=text))

    def onRemovePairs(self) -> None:
        rows = {index.row() for index in self.ui.labeledTableWidget.selectionModel().selectedRows()}
        if not rows:
            return self.showError(_("Select the labeled cases to remove in the table."))
        self._parameterNode.labeledPairs = [pair for row, pair in enumerate(self._labeledPairs()) if row not in rows]

    def onUnlabeledItemChanged(self, item) -> None:
        self._checkListChanged(item, "unlabeledVolumes")

    def onPredictItemChanged(self, item) -> None:
        self._checkListChanged(item, "predictVolumes")

    def _checkListChanged(self, item, parameter: str) -> None:
        """A tick in a volume list: the parameter node's list of chosen volumes follows it."""
        if self._updatingGUI or self._parameterNode is None:
            return
        node = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole))
        if node is None:
            return
        chosen = [n for n in getattr(self._parameterNode, parameter) if n is not None and n is not node]
        if item.checkState() == qt.Qt.Checked:
            chosen.append(node)
        setattr(self._parameterNode, parameter, chosen)

    def onAddAsLabeled(self) -> None:
        segmentation = self.ui.resultSegmentationSelector.currentNode()
        if segmentation is None:
            return self.showError(_("Pick a prediction (segmentation) first."))
        volume = node_selection.source_volume(slicer.mrmlScene, segmentation)
        if volume is None:
            return self.showError(_("No volume is known for '{name}': add it with Labeled cases > Volume / Segmentation instead.").format(
                name=segmentation.GetName()))
        pairs = [pair for pair in self._labeledPairs() if pair[0] is not volume]
        node_selection.keep_prediction(segmentation)  # a later prediction never overwrites the user's labels
        self._parameterNode.labeledPairs = pairs + [(volume, segmentation)]
        self.showStatus(_("'{segmentation}' is now the labeled case of '{volume}'. Train again to use it.").format(
            segmentation=segmentation.GetName(), volume=volume.GetName()))
