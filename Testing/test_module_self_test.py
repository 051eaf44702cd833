"""The module's self-test does something real without torch (issue 34): ``ACTIONPlusPlusTest.runTest``
runs the panel's path with the stub worker (ticked volumes -> a predict job written a volume per step
-> the stub's event stream -> prediction nodes, updated in place the second time) before it finds
torch missing and stops.

The self-test file is loaded and run for real under plain Python against slicer-core, in a fresh
interpreter where ``import torch`` and ``import psutil`` fail, with stand-ins only for what the
application alone has (qt, the scripted-module base classes, ``slicer.app``); the scene is slicer-core's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "ACTIONPlusPlus" / "ACTIONPlusPlus.py"

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

SCRIPT = textwrap.dedent(r'''
    import importlib.util, json, sys, types, unittest
    from unittest import mock

    sys.modules["torch"] = None  # import torch -> ImportError: this machine "has no torch"
    sys.modules["psutil"] = None

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            value = mock.MagicMock(name=f"{self.__name__}.{name}")
            setattr(self, name, value)
            return value

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            print("delayDisplay:", message, file=sys.stderr)

    import slicer, slicer.util
    sys.modules["qt"] = Stub("qt")
    slicer.app = mock.MagicMock(name="slicer.app")
    slicer.mrmlScene = slicer.vtkMRMLScene()
    slm = Stub("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = type("ScriptedLoadableModule", (Base,), {})
    slm.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (Base,), {})
    slm.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (Base,), {})
    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    slicer.util.VTKObservationMixin = type("VTKObservationMixin", (Base,), {})
    i18n = Stub("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    pnw = Stub("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    for name, module in (("ScriptedLoadableModule", slm), ("i18n", i18n), ("parameterNodeWrapper", pnw)):
        sys.modules["slicer." + name] = module
        setattr(slicer, name, module)

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
    script = tmp_path / "self_test.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "ACTIONPlusPlus")]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script), str(MODULE_FILE)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"ran": ["panel path"], "torch": False, "segmentations": 3}, result
    assert "Panel path test passed" in done.stderr
