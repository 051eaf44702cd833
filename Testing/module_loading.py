"""Loading the module's GUI files under plain Python against slicer-core: stand-ins for what only the
Slicer application has (qt, the scripted-module base classes, ``slicer.i18n``, ``slicer.parameterNodeWrapper``,
``slicer.app``), and running a script that loads ``ACTIONPlusPlus.py`` in a fresh interpreter.

Used in the test process (test_module_model_list.py) and by the scripts that test_module_panel_open.py and
test_module_self_test.py run (this folder is on their PYTHONPATH), so it imports only the standard library:
those scripts check what the module file imports (torch must stay out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "ACTIONPlusPlus" / "ACTIONPlusPlus.py"


class Stub(types.ModuleType):
    """A module whose every missing attribute is a MagicMock (qt, the scripted-module bases)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class Base:
    """An application base class (ScriptedLoadableModule...): takes any arguments, does nothing."""

    def __init__(self, *args, **kwargs):
        pass


def i18n_stub() -> Stub:
    """``slicer.i18n`` whose ``tr`` and ``translate`` return the text."""
    i18n = Stub("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    return i18n


def install_application_stand_ins(slicer: Any) -> Stub:
    """Put the application's parts into ``slicer`` and ``sys.modules`` (for a fresh interpreter): qt,
    ``slicer.app``, ``slicer.util.VTKObservationMixin`` and the ``slicer.ScriptedLoadableModule``,
    ``slicer.i18n`` and ``slicer.parameterNodeWrapper`` modules.  Returns the qt stand-in."""
    qt = Stub("qt")
    sys.modules["qt"] = qt
    slicer.app = mock.MagicMock(name="slicer.app")
    slm = Stub("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = type("ScriptedLoadableModule", (Base,), {})
    slm.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (Base,), {})
    slm.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (Base,), {})
    slicer.util.VTKObservationMixin = type("VTKObservationMixin", (Base,), {})
    pnw = Stub("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    for name, module in (("ScriptedLoadableModule", slm), ("i18n", i18n_stub()), ("parameterNodeWrapper", pnw)):
        sys.modules["slicer." + name] = module
        setattr(slicer, name, module)
    return qt


def run_module_script(tmp_path: Path, name: str, script: str) -> subprocess.CompletedProcess:
    """Write ``script`` to ``tmp_path / name`` and run it in a fresh interpreter with ``ACTIONPlusPlus.py``
    as its argument (the repository, the module folder and this folder importable; one thread)."""
    path = tmp_path / name
    path.write_text(script)
    python_path = os.pathsep.join([str(REPO), str(REPO / "ACTIONPlusPlus"), str(Path(__file__).resolve().parent)])
    env = dict(os.environ, PYTHONPATH=python_path, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(path), str(MODULE_FILE)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)


def last_json(done: subprocess.CompletedProcess) -> Any:
    """The JSON object a script printed last."""
    return json.loads(done.stdout.strip().splitlines()[-1])
