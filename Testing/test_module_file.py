"""The Slicer module file and its .ui, checked without Slicer (the files are parsed, never imported).

- ACTIONPlusPlus.py, its Qt parts (ACTIONPlusPlusPanel/) and its self-test (Testing/Python/) compile and
  import only what exists inside Slicer;
- the module file keeps the conventional classes (module, widget, logic; the Test class in
  Testing/Python, Slicer's layout, which the module's runTest loads), and every Lib name they use exists;
- the .ui is well-formed and holds every widget the module looks up, with parameter bindings that match
  the parameterNodeWrapper;
- optionally (PySide6 installed) the .ui is rendered offscreen; with ACTIONPP_SAVE_SCREENSHOT=1 the picture
  is written to ACTIONPlusPlus/Resources/Screenshots/panel.png (the README / EXTENSION_SCREENSHOTURLS image).
"""

from __future__ import annotations

import ast
import os
import py_compile
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "ACTIONPlusPlus" / "ACTIONPlusPlus.py"
PANEL_FILES = sorted((REPO / "ACTIONPlusPlus" / "ACTIONPlusPlusPanel").glob("*.py"))
TEST_FILE = REPO / "ACTIONPlusPlus" / "Testing" / "Python" / "ACTIONPlusPlusTest.py"
GUI_FILES = [MODULE_FILE, *PANEL_FILES, TEST_FILE]
MODULE_FILE_LIMIT = 600  # lines: the module file is wiring; Qt parts go to ACTIONPlusPlusPanel/, helpers to the Lib
UI_FILE = REPO / "ACTIONPlusPlus" / "Resources" / "UI" / "ACTIONPlusPlus.ui"
SCREENSHOT = REPO / "ACTIONPlusPlus" / "Resources" / "Screenshots" / "panel.png"
LIB = REPO / "ACTIONPlusPlusLib"

# what Slicer's Python offers besides the standard library
SLICER_TOP_LEVEL = {"qt", "ctk", "vtk", "slicer", "numpy", "packaging", "PyTorchUtils", "SampleData", "ACTIONPlusPlusLib",
                    "ACTIONPlusPlusPanel", "ACTIONPlusPlus"}
SLICER_SUBMODULES = {"slicer.ScriptedLoadableModule", "slicer.util", "slicer.parameterNodeWrapper", "slicer.i18n"}
# names a scripted module may import directly from ``slicer``
SLICER_NAMES = {"vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLScriptedModuleNode"}
QT_STANDARD = {
    "QWidget", "QLabel", "QComboBox", "QTableWidget", "QPushButton", "QListWidget", "QSpinBox", "QCheckBox",
    "QProgressBar", "QPlainTextEdit", "QGroupBox", "QLineEdit",
}


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))


@pytest.fixture(scope="module")
def test_tree() -> ast.Module:
    return ast.parse(TEST_FILE.read_text(), filename=str(TEST_FILE))


def _gui_trees() -> list[ast.Module]:
    return [ast.parse(path.read_text(), filename=str(path)) for path in GUI_FILES]


def _gui_source(files=None) -> str:
    return "\n".join(path.read_text() for path in (files or GUI_FILES))


@pytest.fixture(scope="module")
def ui() -> ET.ElementTree:
    return ET.parse(UI_FILE)


def _module_ast(module: str) -> ast.Module | None:
    parts = module.split(".")
    root = REPO / "ACTIONPlusPlus" if parts[0] == "ACTIONPlusPlusPanel" else REPO
    path = root.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return ast.parse(candidate.read_text())
    return None


def _top_level_names(module: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
    return names


# ----------------------------------------------------------------------------------------- module file


@pytest.mark.parametrize("path", GUI_FILES, ids=lambda p: p.name)
def test_module_files_compile(tmp_path, path):
    py_compile.compile(str(path), cfile=str(tmp_path / "m.pyc"), doraise=True)


def test_module_file_is_wiring_with_short_methods(tree):
    lines = len(MODULE_FILE.read_text().splitlines())
    assert lines < MODULE_FILE_LIMIT, f"{MODULE_FILE.name} has {lines} lines: move the work to the Lib or ACTIONPlusPlusPanel/"
    for path in [MODULE_FILE, *PANEL_FILES]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 30, f"{path.name}: {node.name} is {length} lines"


@pytest.mark.parametrize("path", GUI_FILES, ids=lambda p: p.name)
def test_imports_exist_inside_slicer(path):
    stdlib = set(sys.stdlib_module_names)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in a scripted module"
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top != "imp", "use importlib, not imp (gone in Python 3.12)"
            assert top in stdlib or top in SLICER_TOP_LEVEL, f"{module} is not available inside Slicer"
            if top == "slicer" and "." in module:
                assert module in SLICER_SUBMODULES, module
            if top in ("ACTIONPlusPlusLib", "ACTIONPlusPlusPanel") and module != top:
                assert _module_ast(module) is not None, f"{module} does not exist"
        if isinstance(node, ast.ImportFrom) and node.module == "slicer":
            for alias in node.names:
                assert alias.name in SLICER_NAMES, f"from slicer import {alias.name}"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("ACTIONPlusPlusLib", "ACTIONPlusPlusPanel")):
            if node.module == "ACTIONPlusPlusLib":
                for alias in node.names:
                    assert _module_ast(f"ACTIONPlusPlusLib.{alias.name}") is not None, alias.name
            else:
                defined = _top_level_names(_module_ast(node.module))
                for alias in node.names:
                    is_submodule = _module_ast(f"{node.module}.{alias.name}") is not None
                    assert alias.name in defined or is_submodule, f"{node.module} has no {alias.name}"


def test_torch_is_never_imported_by_the_module_files():
    for node in (n for gui in _gui_trees() for n in ast.walk(gui)):
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "torch" for a in node.names)
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "torch"


def test_no_torch_in_slicers_process_when_the_panel_opens(tree):
    """The device list comes from a child process (runner.DeviceProbe), never from describe_devices here."""
    source = _gui_source([MODULE_FILE, *PANEL_FILES])
    assert "describe_devices" not in source and "ACTIONPlusPlusLib.device" not in source
    assert "DeviceProbe" in MODULE_FILE.read_text()
    panel_nodes = [n for path in PANEL_FILES for n in ast.walk(ast.parse(path.read_text()))]
    for node in [*ast.walk(tree), *panel_nodes]:  # the Lib modules the panel imports never import torch at their top level
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ACTIONPlusPlusLib"):
            for alias in node.names:
                module = f"{node.module}.{alias.name}"
                if _module_ast(module) is None:
                    module = node.module
                top = _module_ast(module)
                imported = {n.names[0].name.split(".")[0] for n in top.body if isinstance(n, ast.Import)}
                imported |= {(n.module or "").split(".")[0] for n in top.body if isinstance(n, ast.ImportFrom)}
                assert "torch" not in imported, f"{module} imports torch at its top level"


def _function(tree, cls, name):
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(f for f in klass.body if isinstance(f, ast.FunctionDef) and f.name == name)


def test_train_button_never_cancels_a_prediction(tree):
    """Cancel has its own button; Train is disabled while anything runs."""
    source = MODULE_FILE.read_text()
    assert 'cancelButton.connect("clicked(bool)", self.onCancel)' in source
    train = ast.unparse(_function(tree, "ACTIONPlusPlusWidget", "onTrainButton"))
    assert "onCancel" not in train and "request_cancel" not in train
    buttons = ast.unparse(_function(tree, "ACTIONPlusPlusWidget", "updateButtons"))
    assert "self.ui.trainButton" in buttons and "cancelButton.visible" in buttons


def test_self_test_run_does_not_skip_with_an_error_dialog(test_tree):
    run = ast.unparse(_function(test_tree, "ACTIONPlusPlusTest", "runTest"))
    assert "skipTest" not in run and "return" in run and "_missingDependencies" in run


def test_reload_and_test_runs_the_self_test_from_testing_python(tree):
    """Slicer's default runTest looks for ACTIONPlusPlusTest in the module file: ours loads it from
    Testing/Python, and the ctest registers that file."""
    run = ast.unparse(_function(tree, "ACTIONPlusPlus", "runTest"))
    assert "selfTestClass()" in run and "messageDelay" in run
    source = MODULE_FILE.read_text()
    assert '"Testing", "Python", "ACTIONPlusPlusTest.py"' in source and TEST_FILE.is_file()
    cmake = (TEST_FILE.parent / "CMakeLists.txt").read_text()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}Test.py)" in cmake


def test_terminology_and_sample_data_at_startup(tree):
    init = ast.unparse(_function(tree, "ACTIONPlusPlus", "__init__"))
    assert "startupCompleted()" in init
    started = ast.unparse(_function(tree, "ACTIONPlusPlus", "onStartupCompleted"))
    assert "loadTerminology" in started and "registerSampleData" in started
    source = MODULE_FILE.read_text()
    assert '"Terminology", terminology.TERMINOLOGY_FILE_NAME' in source and "load_terminology_context" in source
    assert "LoadTerminologyFromFile" in (LIB / "slicer_bridge" / "terminology_context.py").read_text()


def test_conventional_classes(tree, test_tree):
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes["ACTIONPlusPlus"] == ["ScriptedLoadableModule"]
    assert classes["ACTIONPlusPlusWidget"][:2] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert set(classes["ACTIONPlusPlusWidget"][2:]) == {"CaseListsMixin", "RunWatchMixin", "ModelListMixin"}  # ACTIONPlusPlusPanel/
    assert classes["ACTIONPlusPlusLogic"] == ["ScriptedLoadableModuleLogic"]
    assert "ACTIONPlusPlusTest" not in classes, "the Test class lives in Testing/Python (Slicer's layout)"
    test_classes = {node.name: [ast.unparse(b) for b in node.bases] for node in test_tree.body if isinstance(node, ast.ClassDef)}
    assert test_classes["ACTIONPlusPlusTest"] == ["ScriptedLoadableModuleTest"]
    wrapped = [n for n in tree.body if isinstance(n, ast.ClassDef) and any(ast.unparse(d) == "parameterNodeWrapper" for d in n.decorator_list)]
    assert [n.name for n in wrapped] == ["ACTIONPlusPlusParameterNode"]
    test_class = next(n for n in test_tree.body if isinstance(n, ast.ClassDef) and n.name == "ACTIONPlusPlusTest")
    methods = {f.name for f in test_class.body if isinstance(f, ast.FunctionDef)}
    assert {"setUp", "runTest", "test_TrainAndPredictPhantom", "test_BadInputLeavesNodesUntouched"} <= methods


def test_no_custom_qt_signals():
    source = _gui_source()
    assert "qt.Signal" not in source and "Signal(" not in source, "use plain Python callbacks, not PythonQt signals"


def _attribute_uses(tree: ast.Module, name: str) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == name
    }


def _imported_lib_modules(tree: ast.Module) -> dict[str, str]:
    """{local name: Lib module} for every Lib module the module file imports as a name
    (``from ACTIONPlusPlusLib.slicer_bridge.panel import run_progress``)."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ACTIONPlusPlusLib"):
            for alias in node.names:
                module = f"{node.module}.{alias.name}"
                if _module_ast(module) is not None:
                    found[alias.asname or alias.name] = module
    return found


def test_lib_names_used_by_the_module_exist(tree):
    modules = _imported_lib_modules(tree)
    assert "dependencies" in modules and "job_options" in modules  # the panel helpers are found
    for gui in _gui_trees():
        for alias, module in _imported_lib_modules(gui).items():
            used = _attribute_uses(gui, alias)
            assert used, f"{alias} is imported but not used"
            defined = _top_level_names(_module_ast(module))
            missing = sorted(used - defined)
            assert not missing, f"{module} has no {missing}"


def test_bridge_and_runner_calls_match_their_signatures():
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    import inspect

    from ACTIONPlusPlusLib.slicer_bridge import job_folder, results, runner

    source = _gui_source()
    write = inspect.signature(job_folder.write_training_job).parameters
    for keyword in re.findall(r"\b(output_dir|predict_unlabeled|progress)=", source):
        assert keyword in write
    assert "progress" in write
    load = inspect.signature(results.load_predictions).parameters
    assert "with_confidence" in load
    worker = inspect.signature(runner.WorkerProcess).parameters
    assert "force_cpu" in worker
    for attribute in ("poll_events", "cancel", "is_running", "exit_code", "log_lines", "start"):
        assert attribute in source
        assert hasattr(runner.WorkerProcess, attribute) or attribute == "log_lines"
    imports = results.PredictionImport.__dataclass_fields__
    for field in ("segmentation_node", "volume_node", "message"):
        assert field in imports


# ------------------------------------------------------------------------------------------------- .ui


def _ui_widgets(ui: ET.ElementTree) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ui.iter("widget")}


def test_ui_is_well_formed(ui):
    root = ui.getroot()
    assert root.tag == "ui" and root.find("class").text == "ACTIONPlusPlus"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "ACTIONPlusPlus"
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"


def test_every_widget_the_module_uses_is_in_the_ui(ui):
    used = {
        node.attr
        for gui in _gui_trees()
        for node in ast.walk(gui)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used, "no self.ui.<name> found"
    missing = sorted(used - set(_ui_widgets(ui)))
    assert not missing, f"widgets missing from {UI_FILE.name}: {missing}"


def test_custom_widgets_are_declared(ui):
    declared = {c.find("class").text: c.find("extends").text for c in ui.getroot().iter("customwidget")}
    for cls in set(_ui_widgets(ui).values()):
        assert cls in QT_STANDARD or cls in declared, f"{cls} needs a <customwidget> entry"
    for base in declared.values():
        assert base in QT_STANDARD


def test_mrml_selectors_get_the_scene(ui):
    selectors = {name for name, cls in _ui_widgets(ui).items() if cls == "qMRMLNodeComboBox"}
    connected = {
        c.find("receiver").text
        for c in ui.getroot().iter("connection")
        if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)" and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"
    }
    assert selectors and selectors <= connected, selectors - connected


def _parameter_fields(tree: ast.Module) -> dict[str, ast.AST]:
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ACTIONPlusPlusParameterNode")
    return {n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign)}


def _bindings(ui: ET.ElementTree) -> dict[str, ET.Element]:
    out = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.find("string").text] = widget
    return out


def test_ui_bindings_match_the_parameter_node(tree, ui):
    fields = _parameter_fields(tree)
    bindings = _bindings(ui)
    unknown = sorted(set(bindings) - set(fields))
    assert not unknown, f"SlicerParameterName without a parameter: {unknown}"
    for name in ("preset", "budgetMode", "customBudget", "customBudgetUnit", "device", "outputFolder", "continueTraining",
                 "modelPath", "confidence", "showPseudoLabels"):
        assert name in bindings, f"{name} is not bound to a widget"
    # a QComboBox bound to a Choice lists exactly the choices, in order
    for name, widget in bindings.items():
        if widget.get("class") != "QComboBox":
            continue
        items = [item.find("property/string").text for item in widget.findall("item")]
        choice = next(
            n for n in ast.walk(fields[name].annotation) if isinstance(n, ast.Call) and ast.unparse(n.func) == "Choice"
        )
        assert items == ast.literal_eval(choice.args[0]), name


def test_parameter_defaults_are_consistent(tree):
    fields = _parameter_fields(tree)
    from ACTIONPlusPlusLib.slicer_bridge.panel import budget_choice

    defaults = {name: ast.literal_eval(node.value) for name, node in fields.items() if node.value is not None}
    preset = defaults["preset"].lower()
    for mode in budget_choice.BUDGET_MODES:
        for unit in budget_choice.BUDGET_UNITS:
            assert budget_choice.budget_for(preset, mode, defaults["customBudget"], unit).total > 0
    assert defaults["budgetMode"] in budget_choice.BUDGET_MODES and defaults["customBudgetUnit"] in budget_choice.BUDGET_UNITS
    assert defaults["device"].lower() in ("auto", "gpu", "cpu")


# --------------------------------------------------------------------------------- offscreen rendering


def render_panel(path: Path | None = None, sample: bool = True):
    """Load the .ui with PySide6 (Slicer's widgets replaced by their closest Qt look-alikes) and grab it."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

    standins = {
        "qMRMLNodeComboBox": QtWidgets.QComboBox,
        "ctkPathLineEdit": QtWidgets.QLineEdit,
        "ctkCollapsibleButton": QtWidgets.QGroupBox,
        "ctkCollapsibleGroupBox": QtWidgets.QGroupBox,
        "qMRMLWidget": QtWidgets.QWidget,
    }

    class Loader(QtUiTools.QUiLoader):
        def createWidget(self, class_name, parent=None, name=""):
            if class_name in standins:
                widget = standins[class_name](parent)
                widget.setObjectName(name)
                return widget
            return super().createWidget(class_name, parent, name)

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    ui_file = QtCore.QFile(str(UI_FILE))
    ui_file.open(QtCore.QIODevice.ReadOnly)
    QtCore.qInstallMessageHandler(lambda *args: None)  # the mrmlSceneChanged connections cannot exist here
    try:
        widget = Loader().load(ui_file)
    finally:
        QtCore.qInstallMessageHandler(None)
        ui_file.close()
    assert widget is not None
    for box in widget.findChildren(QtWidgets.QGroupBox):
        title = box.property("text")
        if title:
            box.setTitle(title)
    find = lambda cls, name: widget.findChild(cls, name)  # noqa: E731
    if sample:
        from ACTIONPlusPlusLib.slicer_bridge.panel import budget_choice, formatting, install_plan, run_progress

        table = find(QtWidgets.QTableWidget, "labeledTableWidget")
        table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.Stretch)
        for row, (volume, segmentation) in enumerate([("LA MRI 01", "LA MRI 01 segmentation"), ("LA MRI 02", "LA MRI 02 segmentation")]):
            table.insertRow(row)
            table.setItem(row, 0, QtWidgets.QTableWidgetItem(volume))
            table.setItem(row, 1, QtWidgets.QTableWidgetItem(segmentation))
        unlabeled = find(QtWidgets.QListWidget, "unlabeledListWidget")
        for index, name in enumerate(["LA MRI 03", "LA MRI 04", "LA MRI 05"]):
            item = QtWidgets.QListWidgetItem(name)
            item.setFlags(item.flags() | QtCore.Qt.ItemIsUserCheckable)
            item.setCheckState(QtCore.Qt.Unchecked if index == 2 else QtCore.Qt.Checked)
            unlabeled.addItem(item)
        find(QtWidgets.QComboBox, "labeledVolumeSelector").addItem("LA MRI 02")
        find(QtWidgets.QComboBox, "labeledSegmentationSelector").addItem("LA MRI 02 segmentation")
        find(QtWidgets.QListWidget, "predictListWidget").addItem("LA MRI 06")
        find(QtWidgets.QComboBox, "resultSegmentationSelector").addItem("LA MRI 03 ACTION++")
        find(QtWidgets.QComboBox, "budgetComboBox").setCurrentText("custom")
        find(QtWidgets.QSpinBox, "customBudgetSpinBox").setValue(60)
        find(QtWidgets.QComboBox, "customBudgetUnitComboBox").setCurrentText("minutes")
        budget = budget_choice.budget_for("la", "custom", 60, "minutes", seconds_per_iteration=0.27)
        find(QtWidgets.QLabel, "budgetEstimateLabel").setText(budget_choice.estimate_text(budget, "cuda", 0.27, "la"))
        find(QtWidgets.QLabel, "presetInfoLabel").setText(budget_choice.preset_summary("la"))
        info = {"torch": "2.13.0", "torch_cuda": "12.8", "cuda_available": True,
                "cuda_devices": [{"name": "NVIDIA H100", "memory_gib": 79.6, "precision": "bf16 mixed precision"}]}
        find(QtWidgets.QLabel, "deviceInfoLabel").setText(formatting.format_device_info(info))
        versions = {"torch": "2.13.0", "psutil": "7.2.2"}
        find(QtWidgets.QLabel, "packageInfoLabel").setText(
            install_plan.package_info_line(versions.__getitem__, "3.12.10", info))
        find(QtWidgets.QLineEdit, "outputFolderPathLineEdit").setText("/home/me/ACTIONPlusPlus")
        find(QtWidgets.QLineEdit, "modelPathLineEdit").setText("/home/me/ACTIONPlusPlus/run-20260301-101500/run/model.pt")
        event = {"stage": "finetune", "phase": "finetune", "iteration": 1200, "total": 15000, "overall_iteration": 6200,
                 "overall_total": 20000, "loss": 0.43, "seconds_per_iteration": 0.21, "eta_seconds": 2898}
        find(QtWidgets.QProgressBar, "progressBar").setValue(int(run_progress.overall_percent(event)))
        find(QtWidgets.QLabel, "statusLabel").setText(run_progress.format_progress(event))
        find(QtWidgets.QPushButton, "cancelButton").setVisible(True)  # while running, as the widget does:
        for name in ("inputsCollapsibleButton", "trainButton", "budgetComboBox", "deviceComboBox", "outputFolderPathLineEdit",
                     "continueCheckBox", "predictButton", "addAsLabeledButton", "modelPathLineEdit",
                     "predictListWidget", "confidenceCheckBox", "customBudgetSpinBox", "customBudgetUnitComboBox"):
            find(QtWidgets.QWidget, name).setEnabled(False)
        tracker = run_progress.ProgressTracker()
        for event in _sample_run():
            tracker.handle(event)
        chart = QtWidgets.QLabel()  # qMRMLPlotWidget, added by the module into its container, draws this with VTK
        find(QtWidgets.QWidget, "lossChartContainer").layout().addWidget(chart)
        _draw_chart(chart, tracker.history, QtCore, QtGui)
        log = find(QtWidgets.QPlainTextEdit, "logTextEdit")
        log.setPlainText("Worker started on cuda (torch 2.13.0)\nStage 1/2 pre-training (warm-up): 2500 iterations\n"
                         "Checkpoint saved: .../run/checkpoint_pretrain.pt\nStage 2/2 fine-tuning: 15000 iterations\n"
                         + (run_progress.format_pseudo_labels(tracker.last_progress.get("pseudo_labels")) or ""))
        log.setMaximumHeight(90)
        log.setMinimumHeight(90)
    widget.resize(440, widget.sizeHint().height())
    widget.show()
    app.processEvents()
    widget.resize(440, widget.sizeHint().height())  # every section at its natural height: nothing overlaps
    app.processEvents()
    image = widget.grab()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert image.save(str(path), "PNG")
    names = {w.objectName() for w in widget.findChildren(QtWidgets.QWidget)}
    return widget, image, names


def _sample_run():
    """A plausible event stream for the screenshot (losses falling, pseudo-labels reported)."""
    import math

    events = [{"event": "start", "device": "cuda"}, {"event": "stage", "stage": "pretrain", "phase": "warmup", "total": 5000}]
    for k in range(1, 41):
        it = k * 250
        loss = 0.35 + 2.2 * math.exp(-it / 2500)
        event = {"event": "progress", "stage": "pretrain" if it <= 5000 else "finetune", "phase": "joint",
                 "iteration": it, "total": 20000, "overall_iteration": it, "overall_total": 20000, "loss": loss,
                 "seconds_per_iteration": 0.27, "eta_seconds": (20000 - it) * 0.27}
        if it > 5000:
            event["pseudo_labels"] = {"labeled_fraction": {"background": 0.93, "LA": 0.07},
                                      "pseudo_fraction": {"background": 0.935, "LA": 0.065},
                                      "mask_fraction": min(0.95, 0.5 + it / 40000)}
        events.append(event)
    return events


def _draw_chart(label, history, QtCore, QtGui):
    """What qMRMLPlotWidget shows, drawn with QPainter for the offscreen picture."""
    width, height = 400, 150
    pixmap = QtGui.QPixmap(width, height)
    pixmap.fill(QtGui.QColor("white"))
    painter = QtGui.QPainter(pixmap)
    painter.setRenderHint(QtGui.QPainter.Antialiasing)
    xs, ys = history.column("iteration"), history.column("loss")
    left, right, top, bottom = 40, width - 10, 22, height - 22
    painter.drawText(left, 15, "Training losses")
    painter.drawLine(left, bottom, right, bottom)
    painter.drawLine(left, top, left, bottom)
    painter.drawText(right - 50, height - 6, "iteration")
    x_max, y_max = max(xs), max(ys)
    painter.setPen(QtGui.QPen(QtGui.QColor(31, 119, 180), 2))
    points = [QtCore.QPointF(left + (right - left) * x / x_max, bottom - (bottom - top) * y / y_max) for x, y in zip(xs, ys)]
    painter.drawPolyline(points)
    painter.end()
    label.setPixmap(pixmap)
    label.setAlignment(QtCore.Qt.AlignLeft | QtCore.Qt.AlignTop)
    label.setFixedHeight(height + 6)


def test_ui_renders_offscreen(tree, ui, tmp_path):
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is not installed (optional layout check)")
    save = os.environ.get("ACTIONPP_SAVE_SCREENSHOT") == "1"
    target = SCREENSHOT if save else tmp_path / "panel.png"
    widget, image, names = render_panel(target)
    assert set(_ui_widgets(ui)) - {"ACTIONPlusPlus"} <= names
    assert 380 <= image.width() <= 900 and 500 <= image.height() <= 2000
    assert target.stat().st_size < 200_000
    widget.close()
