"""ACTION++ semi-supervised cardiac MRI segmentation: the 3D Slicer module.

Wiring only: the module, the panel (widget), the logic and the parameter node. The work lives in
ACTIONPlusPlusLib: ``slicer_bridge`` (nodes <-> job folders and predictions, the background worker
process) with its ``panel`` helpers (progress text, settings -> job options, input checks, dependency
installation, remembered settings; tested without Slicer), and the trainer itself. The self-test is in
``Testing/Python/ACTIONPlusPlusTest.py`` (Slicer's layout; Reload & Test runs it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Union

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, Minimum, parameterNodeWrapper
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode


def _addLibraryToPath() -> str:
    """Put the folder that holds ACTIONPlusPlusLib on sys.path and return it: beside this file when
    installed (qt-scripted-modules), one level up in the source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # ACTIONPlusPlusPanel, this module's Qt parts
        sys.path.insert(0, here)
    for candidate in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(candidate, "ACTIONPlusPlusLib")):
            if candidate not in sys.path:
                sys.path.insert(0, candidate)
            return candidate
    raise ImportError(f"ACTIONPlusPlusLib not found beside {here} nor one level up: the extension is incomplete")


LIB_PARENT = _addLibraryToPath()

from ACTIONPlusPlusLib.slicer_bridge.panel import (  # noqa: E402  (needs the path set above)
    active_run,
    api_versions,
    budget_choice,
    dependencies,
    formatting,
    install_plan,
    job_options,
    output_folder,
    remembered,
    run_gate,
    sliced_task,
)
from ACTIONPlusPlusLib.slicer_bridge import blocking_run, module_jobs, samples, terminology_context  # noqa: E402
from ACTIONPlusPlusPanel.case_lists import CaseListsMixin  # noqa: E402
from ACTIONPlusPlusPanel.model_list import ModelListMixin  # noqa: E402
from ACTIONPlusPlusPanel.run_watch import CloseGuard, RunWatchMixin  # noqa: E402

POLL_INTERVAL_MS = 500
SAMPLE_CATEGORY = "ACTION++"
SELF_TEST_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Testing", "Python", "ACTIONPlusPlusTest.py")


@contextlib.contextmanager
def _waitCursor():
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        slicer.app.restoreOverrideCursor()


def _resourcePath(*parts: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", *parts)


# -------------------- ACTIONPlusPlus


class ACTIONPlusPlus(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ACTION++")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []  # torch comes from the PyTorch extension, checked on first use
        self.parent.contributors = ["ACTION++ Slicer extension developers"]
        self.parent.helpText = _(
            "Train ACTION++ semi-supervised segmentation from volumes and segmentations in the scene, "
            "then segment new volumes: the left atrium (LA preset, 3D V-Net) or the left ventricle, "
            "myocardium and right ventricle (ACDC preset, 2D U-Net). Training runs in a background "
            "process with progress and cancel. See the "
            '<a href="https://github.com/ACTIONPlusPlus/SlicerACTIONPlusPlus#readme">documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Implements ACTION++ (You et al., Improving semi-supervised medical image segmentation with "
            "adaptive anatomical contrast). Built on 3D Slicer and PyTorch."
        )
        # our terminology (SNOMED CT codes of every segment) and the sample data, once Slicer is up
        slicer.app.connect("startupCompleted()", self.onStartupCompleted)

    def onStartupCompleted(self) -> None:
        loadTerminology()
        registerSampleData()

    def runTest(self, msec=100, **kwargs) -> None:
        """Reload & Test: the test case class lives in Testing/Python (Slicer's layout), not in this file."""
        testCase = selfTestClass()()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


def selfTestClass() -> type:
    """ACTIONPlusPlusTest, loaded from Testing/Python/ACTIONPlusPlusTest.py beside this file."""
    spec = importlib.util.spec_from_file_location("ACTIONPlusPlusTest", SELF_TEST_FILE)
    if spec is None or not os.path.isfile(SELF_TEST_FILE):
        raise AssertionError(f"ACTION++ self-test not found: {SELF_TEST_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ACTIONPlusPlusTest


def loadTerminology() -> Optional[str]:
    """Load our terminology context (Resources/Terminology) into Slicer's terminology logic, once."""
    from ACTIONPlusPlusLib.slicer_bridge import terminology

    try:
        logic = slicer.modules.terminologies.logic()
    except AttributeError:  # no Terminologies module (a stripped-down application)
        return None
    return terminology_context.load_terminology_context(logic, _resourcePath("Terminology", terminology.TERMINOLOGY_FILE_NAME))


def registerSampleData() -> None:
    """Phantom cases for each preset in the Sample Data module: one click gives labeled and unlabeled
    volumes, already listed in the panel (real ACDC / LA data: see the README)."""
    try:
        import SampleData
    except ImportError:
        return
    for preset in ("ACDC", "LA"):
        api_versions.call_with_supported(
            SampleData.SampleDataLogic.registerCustomSampleDataSource, category=SAMPLE_CATEGORY,
            sampleName=f"ACTION++ {preset} phantoms", uris=[], fileNames=[], nodeNames=[], loadFileType="VolumeFile",
            thumbnailFileName=_resourcePath("Icons", "ACTIONPlusPlus.png"),
            customDownloader=lambda source, preset=preset: ACTIONPlusPlusLogic().loadSampleData(preset),
        )


# -------------------- Parameter node


@parameterNodeWrapper
class ACTIONPlusPlusParameterNode:
    """The panel's settings, saved with the scene.

    labeledPairs: (volume, segmentation or labelmap) used for supervision.
    unlabeledVolumes: the volumes the user checked in the unlabeled list (opt-in: a new volume is not used).
    """

    preset: Annotated[str, Choice(["LA", "ACDC"])] = "LA"
    budgetMode: Annotated[str, Choice(["quick", "paper", "custom"])] = "quick"
    customBudget: Annotated[int, Minimum(1)] = 2000
    customBudgetUnit: Annotated[str, Choice(["iterations", "minutes"])] = "iterations"
    device: Annotated[str, Choice(["auto", "GPU", "CPU"])] = "auto"
    outputFolder: Path
    continueTraining: bool = False
    modelPath: Path
    warmStartModel: Path  # picked in the model list: "continue" starts from it
    predictVolumes: list[vtkMRMLScalarVolumeNode]  # ticked in the Prediction list: one job predicts them all
    confidence: bool = False
    labeledPairs: list[tuple[vtkMRMLScalarVolumeNode, Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]]]
    labelMapping: Annotated[str, Choice(["by name", "by label value"])] = "by name"
    unlabeledVolumes: list[vtkMRMLScalarVolumeNode]
    showPseudoLabels: bool = False


# -------------------- ACTIONPlusPlusWidget


class ACTIONPlusPlusWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, CaseListsMixin, RunWatchMixin, ModelListMixin):
    """The panel: wiring between the .ui, the parameter node and the logic (the case lists, the run being
    watched and the model list are in ACTIONPlusPlusPanel/)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[ACTIONPlusPlusLogic] = None
        self._parameterNode: Optional[ACTIONPlusPlusParameterNode] = None
        self._parameterNodeGuiTag = None
        self._run: Optional[active_run.ActiveRun] = None
        self._gate = run_gate.RunGate()  # idle -> preparing (first click) -> running -> idle
        self._updatingGUI = False
        self._timer = self._refreshTimer = self._probeTimer = self._closeGuard = None

    # ---------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ACTIONPlusPlus.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ACTIONPlusPlusLogic()
        self._timer = self._newTimer(POLL_INTERVAL_MS, self.onPollWorker)
        self._refreshTimer = self._newTimer(200, self.updateCaseLists, singleShot=True)
        self._probeTimer = self._newTimer(POLL_INTERVAL_MS, self.onPollDeviceProbe)  # torch is asked in a child
        self._observeScene()
        self._connectButtons()
        self._connectModelList()
        # the live chart: Slicer's plot widget (the .ui holds its container) on a plot view node of our own
        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.lossChartContainer.layout().addWidget(self.plotWidget)
        loadTerminology()  # also when the module is (re)loaded after start-up
        self._installCloseGuard()
        self.initializeParameterNode()
        self.ui.packageInfoLabel.text = install_plan.package_info_line()
        qt.QTimer.singleShot(0, self.refreshDeviceInfo)

    @staticmethod
    def _newTimer(intervalMs: int, slot: Callable[[], None], singleShot: bool = False):
        timer = qt.QTimer()
        timer.setSingleShot(singleShot)
        timer.setInterval(intervalMs)
        timer.connect("timeout()", slot)
        return timer

    def _observeScene(self) -> None:
        scene = slicer.mrmlScene
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(scene, scene.NodeAddedEvent, self.onSceneNodesChanged)
        self.addObserver(scene, scene.NodeRemovedEvent, self.onSceneNodesChanged)

    def _connectButtons(self) -> None:
        self.ui.labeledTableWidget.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePairs)
        self.ui.correctMappingButton.connect("clicked(bool)", self.onCorrectMapping)
        self.ui.unlabeledListWidget.connect("itemChanged(QListWidgetItem*)", self.onUnlabeledItemChanged)
        self.ui.predictListWidget.connect("itemChanged(QListWidgetItem*)", self.onPredictItemChanged)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.predictButton.connect("clicked(bool)", self.onPredictButton)
        self.ui.addAsLabeledButton.connect("clicked(bool)", self.onAddAsLabeled)
        self.ui.openOutputFolderButton.connect("clicked(bool)", self.onOpenOutputFolder)
        self.ui.loadSampleDataButton.connect("clicked(bool)", self.onLoadSampleData)

    def _installCloseGuard(self) -> None:
        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:  # closing the application during a run asks first
            self._closeGuard = CloseGuard(self)
            mainWindow.installEventFilter(self._closeGuard)

    def cleanup(self) -> None:
        """Called when the application closes (the user already confirmed, see CloseGuard): stop the
        worker, which saves its checkpoint first; never leave it running without its panel."""
        if self._run is not None:
            self._run.worker.cancel()
        for timer in (self._timer, self._probeTimer, self._sliceTimer):
            if timer is not None:
                timer.stop()
        mainWindow = slicer.util.mainWindow()
        if self._closeGuard is not None and mainWindow is not None:
            mainWindow.removeEventFilter(self._closeGuard)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onReload(self) -> None:
        """Reload the Lib and ACTIONPlusPlusPanel too (not only this file), so code changes take effect
        without a restart."""
        if self._run is not None:
            self._run.worker.cancel()
        packages = ("ACTIONPlusPlusLib", "ACTIONPlusPlusPanel")
        for name in [n for n in sys.modules if n in packages or n.startswith(tuple(p + "." for p in packages))]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        if self._task is not None:  # writing the job from, or loading results into, the scene that goes away
            self._task.cancel()
        run = self._run if self._task is None else None  # (a run loading its results has no worker left)
        if run is not None:
            # the scene goes away under the run: ask whether to stop it; either way nothing is loaded into
            # the next scene (the volumes are gone), and the files stay in the run folder
            cancel = self.logic.isInteractive() and slicer.util.confirmYesNoDisplay(
                formatting.close_during_run_question(run.kind, "scene"), windowTitle=_("ACTION++"))
            run.scene_closed, run.chart = True, None
            if cancel:
                self.onCancel()
            else:
                self.appendLog(_("Scene closed: the run goes on; its results stay in {folder}.").format(folder=run.run_folder))
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneNodesChanged(self, caller, event) -> None:
        if self._refreshTimer is not None:
            self._refreshTimer.start()  # coalesce the burst of events of a scene load

    # ------------------------------------------------------------------------- parameter node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        current = str(self._parameterNode.outputFolder)
        folder = output_folder.initial_output_root(current, self.logic.memory.output_folder())
        if folder != current:
            self._parameterNode.outputFolder = Path(folder)

    def setParameterNode(self, inputParameterNode: Optional[ACTIONPlusPlusParameterNode]) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            self.ui.presetInfoLabel.text = budget_choice.preset_summary(self._preset())
            self.updateEstimate()
            self._checkOutputFolder(str(self._parameterNode.outputFolder))
            self.showChart()
        finally:
            self._updatingGUI = False
        self.updateCaseLists()
        self.updateModelList()  # rescanned when the output folder changed
        self.updateButtons()

    def _checkOutputFolder(self, folder: str) -> None:
        problem = output_folder.output_root_problem(folder)
        self.ui.outputFolderPathLineEdit.toolTip = problem or _(
            "Each run writes a run-YYYYmmdd-HHMMSS folder here (job, data, checkpoints, model.pt, predictions).")
        if problem is None:
            self.logic.memory.remember_output_folder(folder)  # the next scene starts with it

    def updateEstimate(self) -> None:
        """The budget in the user's terms: iterations per stage and the estimated time on the chosen device."""
        if self._parameterNode is None:
            return
        settings = self._panelSettings()
        device = job_options.effective_device(self._parameterNode.device, self.logic.deviceInfo)
        try:
            budget = job_options.settings_budget(settings)
            speed = self.logic.memory.measured_speed(settings.preset, device)
            text = "\n".join([budget_choice.estimate_text(budget, device, speed, settings.preset), *budget.notes])
        except ValueError as exc:
            text = str(exc)
        self.ui.budgetEstimateLabel.text = text

    def _preset(self) -> str:
        return (self._parameterNode.preset if self._parameterNode else "LA").lower()

    # ------------------------------------------------------------------------------- actions

    def _panelSettings(self) -> job_options.PanelSettings:
        p, info = self._parameterNode, self.logic.deviceInfo
        return job_options.PanelSettings(
            preset=self._preset(),
            budget_mode=p.budgetMode,
            budget_value=p.customBudget,
            budget_unit=p.customBudgetUnit,
            seconds_per_iteration=self.logic.memory.measured_speed(self._preset(), job_options.effective_device(p.device, info)),
            device=job_options.job_device(p.device, info),
            continue_training=p.continueTraining,
            output_root=str(p.outputFolder),
            confidence=p.confidence,
            label_mapping=job_options.label_mapping(p.labelMapping),
            warm_start_model="" if str(p.warmStartModel) in ("", ".") else str(p.warmStartModel),
        )

    def onTrainButton(self) -> None:
        # refused while anything is under way, from this click until the run ends (panel.run_gate)
        self._runGuarded("train", self._prepareTraining)

    def _prepareTraining(self) -> sliced_task.SlicedTask:
        """Dependencies and every check now; the job's volumes are written one per tick (run_watch)."""
        self.logic.ensureDependencies(log=self.appendLog)
        if self.logic.deviceInfo is None:
            self.refreshDeviceInfo()  # torch was just installed: ask what it sees (in the background)
        settings = self._panelSettings()
        warning = output_folder.output_root_warning(settings.output_root, slicer.app.temporaryPath)
        if warning:
            self.appendLog(_("Warning: {text}").format(text=warning))
        plan, steps = module_jobs.training_job_steps(slicer.mrmlScene, self._labeledPairs(), self._unlabeledVolumes(), settings)
        self.appendLog(plan.description)
        self.appendLog(_("Budget: {text}").format(text=self.ui.budgetEstimateLabel.text))
        return sliced_task.SlicedTask(steps, _("Writing the training cases"), notes=plan.warnings)

    def onPredictButton(self) -> None:
        self._runGuarded("predict", self._preparePrediction)

    def _preparePrediction(self) -> sliced_task.SlicedTask:
        self.logic.ensureDependencies(log=self.appendLog)
        steps = module_jobs.prediction_job_steps(slicer.mrmlScene, self._predictVolumes(), str(self._parameterNode.modelPath),
                                                 self._panelSettings())
        return sliced_task.SlicedTask(steps, _("Writing the volumes to segment"))

    def onOpenOutputFolder(self) -> None:
        folder = str(self._parameterNode.outputFolder) if self._parameterNode else ""
        problem = output_folder.output_root_problem(folder)
        if problem:
            return self.showError(problem)
        os.makedirs(folder, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))

    def onLoadSampleData(self) -> None:
        try:
            with _waitCursor():
                pairs, unlabeled = self.logic.loadSampleData(self._preset())
            self.showStatus(_("Added {labeled} labeled and {unlabeled} unlabeled phantom cases: press Train to try the loop.").format(
                labeled=len(pairs), unlabeled=len(unlabeled)))
        except Exception as exc:
            self.showError(exc)

    # ----------------------------------------------------------------------------- display

    def updateButtons(self) -> None:
        """Everything disabled from the first Train / Predict click until the run ends (panel.run_gate)."""
        running = not self._gate.controls_enabled
        self.ui.cancelButton.visible = self._gate.cancellable or self._task is not None  # the job's writing too
        self.ui.cancelButton.text = _("Cancel training") if self._gate.kind == "train" else _("Cancel prediction")
        for widget in (
            self.ui.inputsCollapsibleButton, self.ui.trainButton, self.ui.budgetComboBox, self.ui.deviceComboBox,
            self.ui.outputFolderPathLineEdit, self.ui.continueCheckBox, self.ui.predictButton, self.ui.addAsLabeledButton,
            self.ui.modelPathLineEdit, self.ui.predictListWidget, self.ui.confidenceCheckBox, self.ui.modelsCollapsibleButton,
        ):
            widget.enabled = not running
        custom = not running and self._parameterNode is not None and self._parameterNode.budgetMode == "custom"
        self.ui.customBudgetSpinBox.enabled = custom
        self.ui.customBudgetUnitComboBox.enabled = custom

    def refreshDeviceInfo(self) -> None:
        """Ask a child process what torch sees (no torch in Slicer's process); the label updates when it answers."""
        if self.logic.startDeviceProbe():
            self.ui.deviceInfoLabel.text = _("Asking torch which devices it sees\u2026")
            self._probeTimer.start()
        else:
            self.ui.deviceInfoLabel.text = formatting.format_device_info(self.logic.deviceInfo)

    def onPollDeviceProbe(self) -> None:
        if self.logic.pollDeviceProbe():
            self._probeTimer.stop()
            info = self.logic.deviceInfo
            self.ui.deviceInfoLabel.text = formatting.format_device_info(info)
            self.ui.packageInfoLabel.text = install_plan.package_info_line(info=info)
            self.updateEstimate()

    def showStatus(self, text: str) -> None:
        self.ui.statusLabel.setStyleSheet("")
        self.ui.statusLabel.text = str(text)

    def showError(self, error: Any) -> None:
        text = str(error) or error.__class__.__name__
        logging.error("ACTION++: %s", text)
        self.ui.statusLabel.setStyleSheet("color: #c0392b;")
        self.ui.statusLabel.text = text
        self.appendLog(_("Error: {text}").format(text=text))

    def clearMessages(self) -> None:
        self.showStatus("")

    def appendLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(str(line))


# -------------------- ACTIONPlusPlusLogic


class ACTIONPlusPlusLogic(ScriptedLoadableModuleLogic):
    """What the panel does beyond the bridge's functions, callable without it (Python console, the
    self-test): dependencies, the device probe, the worker, remembered settings, sample data. The scene
    work is ``slicer_bridge.module_jobs`` and ``node_selection``, called with ``slicer.mrmlScene``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.deviceInfo: Optional[dict] = None  # what torch sees, as the last probe answered (None: unknown)
        self._deviceProbe = None
        self.memory = remembered.PanelMemory(qt.QSettings())  # last output folder, measured speeds

    def getParameterNode(self) -> ACTIONPlusPlusParameterNode:
        return ACTIONPlusPlusParameterNode(super().getParameterNode())

    @staticmethod
    def isInteractive() -> bool:
        """False in --no-main-window runs and tests, where a dialog would block forever."""
        return api_versions.is_interactive(slicer.app, slicer.util.mainWindow())

    @staticmethod
    def _pyTorchUtilsLogic():
        try:
            import PyTorchUtils
        except ImportError:
            return None
        return PyTorchUtils.PyTorchUtilsLogic()

    def ensureDependencies(self, interactive: Optional[bool] = None, log: Optional[Callable[[str], None]] = None) -> None:
        """Install torch (through the PyTorch extension) and psutil after one confirmation, each step in
        ``log``; never asks when headless; never replaces an installed torch (panel.dependencies)."""
        host = dependencies.InstallHost(
            torch_logic=self._pyTorchUtilsLogic(),
            pip_ensure=install_plan.find_pip_ensure(slicer),
            pip_install=slicer.util.pip_install,
            confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle=_("ACTION++: install Python packages")),
            interactive=self.isInteractive() if interactive is None else interactive,
            busy=_waitCursor,
            process_events=slicer.app.processEvents,
        )
        if dependencies.ensure(host, log or (lambda line: logging.info("ACTION++: %s", line))):
            self.deviceInfo = None  # torch is new: ask again what it sees

    def startDeviceProbe(self) -> bool:
        """Ask a short-lived child process what torch sees (torch is never imported into Slicer).
        False when torch is not installed (nothing to ask; decided without importing torch)."""
        torchMissing, _extras = dependencies.missing()
        if torchMissing:
            self.deviceInfo = None
            return False
        from ACTIONPlusPlusLib.slicer_bridge.device_probe import DeviceProbe

        self._deviceProbe = DeviceProbe().start()
        return True

    def pollDeviceProbe(self) -> bool:
        """True once the probe has answered (its answer is then :attr:`deviceInfo`)."""
        if self._deviceProbe is None:
            return True
        result = self._deviceProbe.poll()
        if result is None:
            return False
        self.deviceInfo, self._deviceProbe = result, None
        if result.get("error"):
            logging.warning("ACTION++: %s", result["error"])
        return True

    def loadSampleData(self, preset: str) -> tuple[list, list]:
        """Phantom cases of ``preset`` (new nodes), registered in the panel as labeled and unlabeled."""
        pairs, unlabeled = samples.add_phantom_sample(slicer.mrmlScene, preset.lower())
        parameters = self.getParameterNode()
        parameters.preset = preset.upper()
        parameters.labeledPairs = list(parameters.labeledPairs) + pairs
        parameters.unlabeledVolumes = list(parameters.unlabeledVolumes) + list(unlabeled)  # opted in: the sample's
        if slicer.app.layoutManager() is not None:
            slicer.util.setSliceViewerLayers(background=pairs[0][0], fit=True)
        return pairs, unlabeled

    def startWorker(self, jobPath: Path, device: str = "auto"):
        """Start the worker process on a job (with Slicer's own Python); poll it with ``poll_events()``."""
        from ACTIONPlusPlusLib.slicer_bridge.runner import WorkerProcess

        worker = WorkerProcess(str(jobPath), force_cpu=(device or "").lower() == "cpu")
        worker.start()
        return worker

    def runWorkerBlocking(
        self, jobPath: Path, device: str = "auto", timeout: Optional[float] = None, callback: Optional[Callable[[dict], None]] = None
    ) -> blocking_run.WorkerOutcome:
        """Run a job to the end (the self-test, the Python console). ``callback`` gets every event."""
        worker = self.startWorker(jobPath, device)
        return blocking_run.run_to_end(worker, timeout, callback, idle=lambda: slicer.app is not None and slicer.app.processEvents())
