"""The GUI-side code under Python 3.9, the Python of Slicer 5.6 and 5.8 (issue 34, item 10).

Cheap and without torch: under a ``python3.9`` (``$ACTIONPP_PYTHON39``, else on PATH, else pyenv's), the
module file, its Qt parts, its self-test, the batch script and the Lib code the module imports while
Slicer loads it compile; every pure-Python panel helper imports with the standard library alone; and the
Qt-free panel tests pass there (Testing/py39_runner.py stands in for pytest, which that Python lacks).
This does not make Slicer 5.6/5.8 supported (the package and its trainer need 3.10: README); it keeps
the code Slicer loads from failing there with a SyntaxError before it can say so.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUI = REPO / "ACTIONPlusPlus"
LIB = REPO / "ACTIONPlusPlusLib"
# what Slicer's Python runs in its own process: the module and everything it imports at load or on a click
GUI_SIDE = [
    GUI / "ACTIONPlusPlus.py", GUI / "ACTIONPlusPlusBatch.py", *sorted((GUI / "ACTIONPlusPlusPanel").glob("*.py")),
    *sorted((GUI / "Testing" / "Python").glob("*.py")), *sorted((LIB / "slicer_bridge").rglob("*.py")),
    *(LIB / name for name in ("__init__.py", "errors.py", "io_utils.py", "jobs.py", "config_checks.py")),
    *sorted((LIB / "data").glob("*.py")),
]
# (test_panel_dependencies.py needs ``packaging``: Slicer ships it, a bare Python 3.9 does not)
QT_FREE_TESTS = ["test_panel_model_list.py", "test_panel_models.py", "test_panel_sliced_task.py", "test_panel_run_gate.py"]


def _is_python39(candidate: str | None) -> bool:
    """True for an interpreter that runs and is 3.9 (a pyenv shim of an inactive version is not)."""
    if not candidate or not os.access(candidate, os.X_OK):
        return False
    try:
        done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "True"


def _python39() -> str | None:
    candidates = [os.environ.get("ACTIONPP_PYTHON39"), shutil.which("python3.9"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))),
                  *sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9"))]
    return next((c for c in candidates if _is_python39(c)), None)


@pytest.fixture(scope="module")
def python39() -> str:
    found = _python39()
    if found is None:
        pytest.skip("python3.9 not found (set ACTIONPP_PYTHON39, or install 3.9 with pyenv): the Slicer 5.6/5.8 check did not run")
    return found


def _run(python: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -B`` with only the repository on its path (no .pyc of 3.9 left beside the sources)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONPYCACHEPREFIX"] = str(cwd / "pycache")
    return subprocess.run([python, "-B", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_the_gui_side_code_compiles_under_python39(python39, tmp_path):
    assert len(GUI_SIDE) > 30
    code = ("import py_compile, sys\nfor path in sys.argv[1:]:\n    py_compile.compile(path, doraise=True)\n"
            "print('compiled', len(sys.argv) - 1)")
    done = _run(python39, "-c", code, *map(str, GUI_SIDE), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"compiled {len(GUI_SIDE)}"


def test_the_panel_helpers_import_and_their_tests_pass_under_python39(python39, tmp_path):
    panel = sorted(p.stem for p in (LIB / "slicer_bridge" / "panel").glob("*.py") if p.stem != "__init__")
    imports = "import importlib\nfor name in %r:\n    importlib.import_module('ACTIONPlusPlusLib.slicer_bridge.panel.' + name)\n" % panel
    done = _run(python39, "-c", imports + "import sys; print(sorted(m for m in ('torch', 'numpy', 'qt', 'slicer') if m in sys.modules))",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"  # the standard library alone
    tests = [str(REPO / "Testing" / name) for name in QT_FREE_TESTS]
    done = _run(python39, str(REPO / "Testing" / "py39_runner.py"), *tests, cwd=tmp_path)
    report = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    assert done.returncode == 0 and not report.get("failed"), (report.get("failed"), done.stderr[-3000:])
    assert report["python"].startswith("3.9") and len(report["passed"]) >= 15, report
    assert not report["skipped"], report["skipped"]
