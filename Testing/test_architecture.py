"""The three layers, checked on the source (docs/ARCHITECTURE.md).

What is checked, on every ``.py`` file of ``ACTIONPlusPlusLib/`` parsed with :mod:`ast` (nothing is
imported, so the checks run without Slicer, Qt or torch):

- **slicer only in the bridge**: ``slicer``, ``vtk``, ``mrml``, ``MRMLCorePython``, ``MRMLLogicPython``
  and ``vtkSlicer*`` modules are imported only by modules under ``slicer_bridge/``;
- **no Qt anywhere in the Lib**: no ``qt``, ``ctk``, ``PythonQt``, ``PySide*``, ``PyQt*``,
  ``qSlicer*``/``qMRML*`` module, and no ``slicer`` GUI name (``slicer.app``, ``slicer.util``'s dialogs
  and main window, ``ScriptedLoadableModule``, ``parameterNodeWrapper``, ...), bridge included;
- **imports run one way**: no module outside ``slicer_bridge/`` imports ``slicer_bridge`` (the trainer,
  the worker and the CLI never depend on the scene side), and ``slicer_bridge/panel/`` imports no
  ``slicer``/``vtk`` (the panel's helpers are tested without Slicer);
- **no import cycle** among Lib modules.

For the first three rules every import counts: at module level, inside a function, under ``if
TYPE_CHECKING:`` or a ``try``.  For cycles, too, every import counts, function-level (lazy) and
``TYPE_CHECKING`` imports included: a lazy import hides a cycle from the interpreter but not from the
reader, and the two cycles this test was written against (``data/layout.py`` <-> its loaders,
``training/loop.py`` <-> ``training/distributed_setup.py``) were both closed by such imports.  An
edge goes from a module to each Lib module it names: ``from .x import y`` is an edge to ``x.y`` when
that is a module, else to ``x``; importing a submodule is not counted as importing its package's
``__init__`` (Python runs it, but that is not a dependency the author wrote).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "ACTIONPlusPlusLib"
PACKAGE = LIB.name
BRIDGE = f"{PACKAGE}.slicer_bridge"
PANEL = f"{BRIDGE}.panel"

SLICER_MODULES = ("slicer", "vtk", "mrml", "MRMLCorePython", "MRMLLogicPython", "vtkSlicer", "vtkITK")
QT_MODULES = ("qt", "ctk", "PythonQt", "PySide", "PyQt", "qSlicer", "qMRML", "shiboken")
# slicer names that exist only in the GUI application (Qt); the bridge must not use them
SLICER_GUI_NAMES = {
    "app", "ScriptedLoadableModule", "parameterNodeWrapper", "i18n", "qSlicerApplication",
    "modules", "moduleNames", "mrmlScene", "packaging",
}
SLICER_UTIL_GUI_NAMES = {
    "mainWindow", "confirmOkCancelDisplay", "confirmYesNoDisplay", "errorDisplay", "infoDisplay",
    "warningDisplay", "delayDisplay", "findChild", "findChildren", "setSliceViewerLayers", "selectModule",
    "VTKObservationMixin", "pip_install", "loadVolume", "loadSegmentation", "saveNode", "getNode",
    "getNodesByClass", "addVolumeFromArray", "tempDirectory", "showStatusMessage", "messageBox",
}


# ------------------------------------------------------------------------------------------ the parser


def module_name(path: Path, root: Path = LIB) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def lib_modules(root: Path = LIB) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path) -> list[tuple[str, set[str]]]:
    """Every import of a file, anywhere in it: (absolute module, names taken from it)."""
    found: list[tuple[str, set[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, set()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((_absolute(module, path, node), {alias.name for alias in node.names}))
    return found


def attribute_uses(path: Path, name: str) -> set[str]:
    """``x`` of every ``name.x`` and ``name.util.x`` in a file (``slicer.app``, ``slicer.util.mainWindow``)."""
    uses = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id == name:
                uses.add(node.attr)
            elif (isinstance(value, ast.Attribute) and value.attr == "util" and isinstance(value.value, ast.Name)
                  and value.value.id == name):
                uses.add(f"util.{node.attr}")
    return uses


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the Lib modules it imports} (see the module docstring for what counts)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = set()
        for target, names in imports_of(module, path):
            hits = {f"{target}.{name}" for name in names if f"{target}.{name}" in modules}
            if hits:
                edges |= hits
            if target in modules and (not hits or len(hits) < len(names)):
                edges.add(target)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-loop), each as a sorted
    list: every module of one is reachable from every other (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    cycles.append(sorted(component))
    return cycles


def _is(module: str, prefixes: tuple[str, ...]) -> bool:
    top = module.split(".")[0]
    return any(top == p or top.startswith(p) for p in prefixes)


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# ------------------------------------------------------------------------------------------ the rules


def slicer_outside_the_bridge(modules: dict[str, Path]) -> list[str]:
    return [
        f"{module}: {target}"
        for module, path in modules.items()
        if not _inside(module, BRIDGE) or _inside(module, PANEL)
        for target, _names in imports_of(module, path)
        if _is(target, SLICER_MODULES)
    ]


def qt_in_the_lib(modules: dict[str, Path]) -> list[str]:
    offenders = []
    for module, path in modules.items():
        for target, names in imports_of(module, path):
            if _is(target, QT_MODULES):
                offenders.append(f"{module}: import {target}")
            elif target == "slicer" and names & SLICER_GUI_NAMES:
                offenders.append(f"{module}: from slicer import {sorted(names & SLICER_GUI_NAMES)}")
            elif target == "slicer.util" and names & SLICER_UTIL_GUI_NAMES:
                offenders.append(f"{module}: from slicer.util import {sorted(names & SLICER_UTIL_GUI_NAMES)}")
            elif target.startswith("slicer.") and target.split(".")[1] in SLICER_GUI_NAMES:
                offenders.append(f"{module}: import {target}")
        gui = sorted(use for use in attribute_uses(path, "slicer")
                     if use in SLICER_GUI_NAMES or (use.startswith("util.") and use[5:] in SLICER_UTIL_GUI_NAMES))
        offenders += [f"{module}: slicer.{use}" for use in gui]
    return offenders


def trainer_imports_of_the_bridge(modules: dict[str, Path]) -> list[str]:
    return [
        f"{module}: {target}"
        for module, path in modules.items()
        if not _inside(module, BRIDGE)
        for target, names in imports_of(module, path)
        if _inside(target, BRIDGE) or (target == PACKAGE and "slicer_bridge" in names)
    ]


MODULES = lib_modules()


def test_the_lib_is_found():
    assert f"{PACKAGE}.worker" in MODULES and f"{BRIDGE}.volumes" in MODULES and f"{PANEL}.run_progress" in MODULES


def test_slicer_and_vtk_only_in_the_bridge():
    offenders = slicer_outside_the_bridge(MODULES)
    assert not offenders, "only slicer_bridge/ (not its panel/) may import slicer or vtk: " + "; ".join(offenders)


def test_no_qt_anywhere_in_the_lib():
    offenders = qt_in_the_lib(MODULES)
    assert not offenders, "the Lib is MRML only, no Qt and no GUI application: " + "; ".join(offenders)


def test_the_trainer_does_not_import_the_bridge():
    offenders = trainer_imports_of_the_bridge(MODULES)
    assert not offenders, "imports run one way (bridge -> trainer): " + "; ".join(offenders)


def test_no_import_cycle_in_the_lib():
    cycles = find_cycles(import_graph(MODULES))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# ------------------------------------------------------------------------- the checks can fail


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return lib_modules(root)


def test_cycle_finder_finds_a_constructed_cycle(tmp_path):
    modules = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .sub.c import g  # a lazy import still closes the cycle\n",
        "sub/__init__.py": "",
        "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n",
        "d.py": "from .a import b\n",  # imports into the cycle, not part of it
    })
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert find_cycles({"x": {"x"}}) == [["x"]]
    assert find_cycles({"x": {"y"}, "y": set()}) == []


def test_rules_catch_constructed_offenders(tmp_path):
    modules = _write(tmp_path / PACKAGE, {
        "__init__.py": "",
        "worker.py": "def run():\n    import slicer\n    from .slicer_bridge import volumes\n",
        "cli.py": "from . import slicer_bridge\n",
        "slicer_bridge/__init__.py": "",
        "slicer_bridge/volumes.py": "import slicer\nimport slicer.util\n\ndef f():\n    return slicer.app, slicer.util.mainWindow()\n",
        "slicer_bridge/charts.py": "def f():\n    import ctk\n    from slicer.util import confirmYesNoDisplay\n",
        "slicer_bridge/panel/__init__.py": "",
        "slicer_bridge/panel/texts.py": "from PythonQt import QtGui\nimport vtk\n",
    })
    assert slicer_outside_the_bridge(modules) == [f"{PACKAGE}.slicer_bridge.panel.texts: vtk", f"{PACKAGE}.worker: slicer"]
    assert sorted(qt_in_the_lib(modules)) == [
        f"{PACKAGE}.slicer_bridge.charts: from slicer.util import ['confirmYesNoDisplay']",
        f"{PACKAGE}.slicer_bridge.charts: import ctk",
        f"{PACKAGE}.slicer_bridge.panel.texts: import PythonQt",
        f"{PACKAGE}.slicer_bridge.volumes: slicer.app",
        f"{PACKAGE}.slicer_bridge.volumes: slicer.util.mainWindow",
    ]
    assert sorted(trainer_imports_of_the_bridge(modules)) == [f"{PACKAGE}.cli: {PACKAGE}", f"{PACKAGE}.worker: {PACKAGE}.slicer_bridge"]
    assert import_graph(modules)[f"{PACKAGE}.worker"] == {f"{PACKAGE}.slicer_bridge.volumes"}
    assert import_graph(modules)[f"{PACKAGE}.cli"] == {f"{PACKAGE}.slicer_bridge"}


@pytest.mark.parametrize("name", ["qt", "ctk", "PythonQt.QtGui", "PySide6.QtWidgets", "PyQt5", "qSlicerBaseQTGUI"])
def test_qt_names_are_recognised(name):
    assert _is(name, QT_MODULES) and not _is(name, SLICER_MODULES)
