"""The Models section's wiring (ACTIONPlusPlusPanel/model_list.py), run under plain Python with stand-ins
for Qt's widgets and Slicer's dialogs (issue 34, "models a user can manage"): the table lists the output
folder's models, Delete asks first and removes nothing when the user says no nor while a run uses the
folder, Rename keeps the name, and "Use for prediction" / "Warm start" set the parameters the Predict and
Train buttons read.  The listing, cards and delete rules themselves are tested in test_panel_model_list.py.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path
from unittest import mock

import pytest

from module_loading import REPO, Stub, i18n_stub

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")


@pytest.fixture
def mixin(monkeypatch):
    """ACTIONPlusPlusPanel.model_list imported with qt and slicer.i18n stood in for."""
    monkeypatch.setitem(sys.modules, "qt", Stub("qt"))
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n_stub())
    monkeypatch.syspath_prepend(str(REPO / "ACTIONPlusPlus"))
    monkeypatch.delitem(sys.modules, "ACTIONPlusPlusPanel.model_list", raising=False)
    module = importlib.import_module("ACTIONPlusPlusPanel.model_list")
    yield module
    sys.modules.pop("ACTIONPlusPlusPanel.model_list", None)


def _run(root, name, preset="acdc"):
    run = root / name / "run"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"w")
    (run / "config.json").write_text(json.dumps({"preset": preset, "budget_iterations": 600}))
    return run / "model.pt"


class Panel:
    """The widget's side the mixin uses: ui, parameter node, run, messages."""

    def __init__(self, module, root):
        self.ui = mock.MagicMock(name="ui")
        self._parameterNode = types.SimpleNamespace(outputFolder=root, modelPath=Path("."), warmStartModel=Path("."),
                                                    continueTraining=False)
        self._run = None
        self.errors, self.statuses, self.log = [], [], []
        self.showError = lambda error: self.errors.append(str(error))
        self.showStatus = self.statuses.append
        self.appendLog = self.log.append
        for name in dir(module.ModelListMixin):
            if not name.startswith("__"):
                attribute = getattr(module.ModelListMixin, name)
                setattr(self, name, attribute.__get__(self) if callable(attribute) else attribute)

    def select(self, row):
        self.ui.modelsTableWidget.selectionModel.return_value.selectedRows.return_value = [types.SimpleNamespace(row=lambda: row)]


def test_the_models_section_lists_picks_renames_and_deletes_with_a_confirmation(mixin, tmp_path, monkeypatch):
    older, newer = _run(tmp_path, "run-1"), _run(tmp_path, "run-2", "la")
    import os

    os.utime(older, (1_700_000_000, 1_700_000_000))
    panel = Panel(mixin, tmp_path)
    panel.updateModelList()
    assert [c.path for c in panel._modelCards] == [newer, older]
    panel.ui.modelsTableWidget.setRowCount.assert_called_with(2)

    panel.select(1)
    panel.onUseModelForPrediction()
    panel.onWarmStartFromModel()
    assert panel._parameterNode.modelPath == older and panel._parameterNode.warmStartModel == older
    assert panel._parameterNode.continueTraining is True

    monkeypatch.setattr(mixin.slicer.util, "mainWindow", lambda: None)  # the application's window: none here
    monkeypatch.setattr(mixin.qt.QInputDialog, "getText", lambda *args: "ACDC, 7 patients")
    panel.onRenameModel()
    assert panel._modelCards[1].name == "ACDC, 7 patients" and (older.parent / "model_card.json").is_file()

    answers = []
    monkeypatch.setattr(mixin.slicer.util, "confirmYesNoDisplay", lambda text, **kw: answers.append(text) or False)
    panel.onDeleteModel()
    assert older.is_file() and "ACDC, 7 patients" in answers[-1]  # asked, declined: nothing removed

    panel._run = types.SimpleNamespace(run_folder=older.parent.parent)
    monkeypatch.setattr(mixin.slicer.util, "confirmYesNoDisplay", lambda text, **kw: True)
    panel.onDeleteModel()
    assert older.is_file() and "using" in panel.errors[-1]  # a run of this panel uses it: refused, not asked

    panel._run = None
    panel.onDeleteModel()
    assert not older.parent.parent.exists() and newer.is_file()
    assert [c.path for c in panel._modelCards] == [newer] and "Deleted" in panel.log[-1]

    panel.select(5)
    panel.onDeleteModel()
    assert newer.is_file() and "Select one model" in panel.errors[-1]
