"""The module's self-test does something real without torch (issue 34): ``ACTIONPlusPlusTest.runTest``
runs the panel's path with the stub worker (ticked volumes -> a predict job written a volume per step
-> the stub's event stream -> prediction nodes, updated in place the second time) before it finds
torch missing and stops.

The self-test file is loaded and run for real under plain Python against slicer-core, in a fresh
interpreter where ``import torch`` and ``import psutil`` fail, with stand-ins only for what the
application alone has (qt, the scripted-module base classes, ``slicer.app``); the scene is slicer-core's.
"""

from __future__ import annotations

import textwrap

import pytest

from module_loading import last_json, run_module_script

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

SCRIPT = textwrap.dedent(r'''
    import importlib.util, json, sys, unittest

    sys.modules["torch"] = None  # import torch -> ImportError: this machine "has no torch"
    sys.modules["psutil"] = None

    from module_loading import install_application_stand_ins

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            print("delayDisplay:", message, file=sys.stderr)

    import slicer, slicer.util
    install_application_stand_ins(slicer)  # qt, slicer.app, the scripted-module bases, slicer.i18n...
    slicer.mrmlScene = slicer.vtkMRMLScene()
    slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest

    spec = importlib.util.spec_from_file_location("ACTIONPlusPlus", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    sys.modules["ACTIONPlusPlus"] = module
    spec.loader.exec_module(module)
    testClass = module.selfTestClass()
    ran = []
    panelPath = testClass.test_PanelPathWithStubWorker
    testClass.test_PanelPathWithStubWorker = lambda self: ran.append("panel path") or panelPath(self)
    testClass.test_TrainAndPredictPhantom = lambda self: ran.append("training")
    testClass._missingDependencies = staticmethod(lambda: "torch is not installed")
    testClass().runTest()
    print(json.dumps({"ran": ran, "torch": sys.modules.get("torch") is not None,
                      "segmentations": slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")}))
''')


def test_the_self_test_runs_the_panel_path_without_torch(tmp_path):
    done = run_module_script(tmp_path, "self_test.py", SCRIPT)
    assert done.returncode == 0, done.stderr[-4000:]
    result = last_json(done)
    assert result == {"ran": ["panel path"], "torch": False, "segmentations": 3}, result
    assert "Panel path test passed" in done.stderr
