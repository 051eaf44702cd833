"""Opening the panel never imports torch into Slicer's process (issue 34, item 1).

The module file is loaded for real under plain Python, with stand-ins for what only the application
has (qt, Slicer's scripted-module base classes, ``slicer.app``) and a PyTorch extension stand-in whose
``torchInstalled()`` imports torch, as the real one does.  The panel's opening path (``setup`` schedules
``refreshDeviceInfo`` -> ``logic.startDeviceProbe`` -> the dependency check) then runs in a fresh
interpreter, and ``torch`` must not be in ``sys.modules`` afterwards.
"""

from __future__ import annotations

import ast
import importlib.util
import textwrap

import pytest

from module_loading import MODULE_FILE, REPO, last_json, run_module_script

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")
if importlib.util.find_spec("torch") is None:  # pragma: no cover - the check needs an importable torch
    pytest.skip("torch is not installed: nothing could import it", allow_module_level=True)

SCRIPT = textwrap.dedent(r'''
    import importlib.util, json, sys, types
    from unittest import mock

    from module_loading import install_application_stand_ins  # standard library only: no torch

    import slicer, slicer.util
    install_application_stand_ins(slicer)  # qt, slicer.app, the scripted-module bases, slicer.i18n...

    imported = []

    class PyTorchUtilsLogic:  # the PyTorch extension's logic: torchInstalled() imports torch
        def torchInstalled(self):
            imported.append("torchInstalled")
            import torch  # noqa: F401
            return True

    sys.modules["PyTorchUtils"] = types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic)

    spec = importlib.util.spec_from_file_location("ACTIONPlusPlus", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from ACTIONPlusPlusLib.slicer_bridge import device_probe
    started = []
    device_probe.DeviceProbe.start = lambda self: started.append(True) or self  # no child process here

    widget = module.ACTIONPlusPlusWidget()
    widget.ui = mock.MagicMock(name="ui")
    widget.logic = module.ACTIONPlusPlusLogic()
    widget._probeTimer = mock.MagicMock(name="probeTimer")
    widget.refreshDeviceInfo()  # what setup() schedules once the panel is shown
    print(json.dumps({"torch": "torch" in sys.modules, "torchInstalled": imported, "probe": started}))
''')


def test_opening_the_panel_does_not_import_torch(tmp_path):
    done = run_module_script(tmp_path, "open_panel.py", SCRIPT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = last_json(done)
    assert result["torchInstalled"] == [], "the PyTorch extension's torchInstalled() imports torch"
    assert result["torch"] is False, "torch was imported into Slicer's process when the panel opened"
    assert result["probe"] == [True], "the device probe (a child process) was not started"


def test_setup_schedules_the_device_probe():
    """The path checked above is the one ``setup`` takes: it schedules refreshDeviceInfo."""
    tree = ast.parse(MODULE_FILE.read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ACTIONPlusPlusWidget")
    setup = next(f for f in widget.body if isinstance(f, ast.FunctionDef) and f.name == "setup")
    assert "self.refreshDeviceInfo" in ast.unparse(setup)
    assert "torchInstalled" not in MODULE_FILE.read_text()


def test_train_and_predict_clicks_go_through_the_run_gate():
    """Both clicks are refused while anything is under way (panel.run_gate, tested in test_panel_run_gate)."""
    tree = ast.parse(MODULE_FILE.read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ACTIONPlusPlusWidget")
    methods = {f.name: ast.unparse(f) for f in widget.body if isinstance(f, ast.FunctionDef)}
    assert "self._runGuarded('train'" in methods["onTrainButton"]
    assert "self._runGuarded('predict'" in methods["onPredictButton"]
    assert "self._gate.controls_enabled" in methods["updateButtons"] and "self._gate.cancellable" in methods["updateButtons"]
    watch = (REPO / "ACTIONPlusPlus" / "ACTIONPlusPlusPanel" / "run_watch.py").read_text()
    # the job is written a volume per tick; sliced_task.tick_preparation starts the worker or frees the panel
    assert "run_gate.begin_guarded(" in watch and "self._gate.started()" in watch and "sliced_task.tick_preparation(" in watch
    assert watch.count("self._gate.finished()") == 3  # a failing slice, a watching error, the run's end
