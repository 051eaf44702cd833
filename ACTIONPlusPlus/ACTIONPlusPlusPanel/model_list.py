"""The panel's model list: the models under the output folder with their cards, to pick one for
prediction or as the warm start of the next training, rename, delete (after a confirmation) or open the
folder of. A mixin of ``ACTIONPlusPlusWidget`` (it uses the widget's ``ui``, ``_parameterNode``, ``_run``,
``logic`` and its message methods); listing, cards, rename and delete are ``panel.model_list``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import qt

import slicer
from slicer.i18n import tr as _

from ACTIONPlusPlusLib.slicer_bridge.panel import model_list


class ModelListMixin:
    """The "Models" section: ``self._modelCards`` holds the cards shown, in table order."""

    _modelCards: list = []
    _modelRoot: Optional[str] = None

    def _connectModelList(self) -> None:
        table = self.ui.modelsTableWidget
        table.setColumnCount(len(model_list.COLUMNS))
        table.setHorizontalHeaderLabels(list(model_list.COLUMNS))
        table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        for button, slot in ((self.ui.refreshModelsButton, lambda: self.updateModelList(force=True)),
                             (self.ui.useModelButton, self.onUseModelForPrediction),
                             (self.ui.warmStartModelButton, self.onWarmStartFromModel),
                             (self.ui.renameModelButton, self.onRenameModel),
                             (self.ui.deleteModelButton, self.onDeleteModel),
                             (self.ui.openModelFolderButton, self.onOpenModelFolder)):
            button.connect("clicked(bool)", slot)

    def updateModelList(self, force: bool = False) -> None:
        """Refill the table when the output folder changed (or ``force``: after a run, Refresh)."""
        root = str(self._parameterNode.outputFolder) if self._parameterNode is not None else ""
        if root == self._modelRoot and not force:
            return
        self._modelRoot = root
        self._modelCards = model_list.list_models(root) if root not in ("", ".") else []
        table = self.ui.modelsTableWidget
        table.setRowCount(len(self._modelCards))
        for row, card in enumerate(self._modelCards):
            for column, text in enumerate(card.row()):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(str(card.path))
                table.setItem(row, column, item)

    def _pickedModel(self) -> Optional[model_list.ModelCard]:
        rows = sorted({index.row() for index in self.ui.modelsTableWidget.selectionModel().selectedRows()})
        if len(rows) != 1 or rows[0] >= len(self._modelCards):
            self.showError(_("Select one model in the model list."))
            return None
        return self._modelCards[rows[0]]

    def onUseModelForPrediction(self) -> None:
        card = self._pickedModel()
        if card is not None:
            self._parameterNode.modelPath = card.path  # Predict takes the preset from the model
            self.showStatus(_("Predict uses '{name}' ({preset}).").format(name=card.name, preset=(card.preset or "?").upper()))

    def onWarmStartFromModel(self) -> None:
        card = self._pickedModel()
        if card is not None:
            self._parameterNode.warmStartModel = card.path
            self._parameterNode.continueTraining = True
            self.showStatus(_("The next training starts from '{name}'.").format(name=card.name))

    def onRenameModel(self) -> None:
        card = self._pickedModel()
        if card is None:
            return
        name = qt.QInputDialog.getText(slicer.util.mainWindow(), _("Rename model"), _("Name:"), qt.QLineEdit.Normal, card.name)
        if name and name != card.name:
            try:
                model_list.rename_model(card, name)
            except (ValueError, OSError) as exc:
                return self.showError(exc)
            self.updateModelList(force=True)

    def onDeleteModel(self) -> None:
        card = self._pickedModel()
        if card is None:
            return
        busy = [self._run.run_folder] if self._run is not None else []
        problem = model_list.delete_problem(card, busy)
        if problem:
            return self.showError(problem)
        if not slicer.util.confirmYesNoDisplay(model_list.delete_question(card), windowTitle=_("ACTION++: delete model")):
            return
        try:
            folder = model_list.delete_model(card, busy)
        except (ValueError, OSError) as exc:
            return self.showError(exc)
        self.appendLog(_("Deleted {folder}").format(folder=folder))
        self.updateModelList(force=True)

    def onOpenModelFolder(self) -> None:
        card = self._pickedModel()
        if card is not None:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(card.run_folder or Path(card.path).parent)))
