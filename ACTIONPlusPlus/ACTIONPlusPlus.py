"""ACTION++ semi-supervised cardiac MRI segmentation: the 3D Slicer module.

Wiring only. The work lives in ACTIONPlusPlusLib: ``slicer_bridge`` (nodes <-> job folders and
predictions, the background worker process) with its ``panel`` helpers (progress text, settings -> job
options, input checks, dependency plan; tested without Slicer), and the trainer itself.

Longer than the Lib's modules on purpose: Slicer's convention keeps the four classes (module, widget,
logic, self-test) in this one file, and the widget's signal handlers are its bulk.  Whatever is not
wiring is delegated to the Lib.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, Minimum, parameterNodeWrapper
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode


def _addLibraryToPath() -> str:
    """Put the folder that holds ACTIONPlusPlusLib on sys.path and return it.

    Installed (build or install tree) the package sits beside this file in qt-scripted-modules; in the
    source tree it sits one level up, at the repository root.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(candidate, "ACTIONPlusPlusLib")):
            if candidate not in sys.path:
                sys.path.insert(0, candidate)
            return candidate
    raise ImportError(f"ACTIONPlusPlusLib not found beside {here} nor one level up: the extension is incomplete")


LIB_PARENT = _addLibraryToPath()

from ACTIONPlusPlusLib.slicer_bridge.panel import (  # noqa: E402  (needs the path set above)
    api_versions,
    budget_choice,
    formatting,
    install_plan,
    job_options,
    output_folder,
    run_progress,
    selection_checks,
    self_test,
)
from ACTIONPlusPlusLib.slicer_bridge import blocking_run, node_selection  # noqa: E402

POLL_INTERVAL_MS = 500
SAMPLE_CATEGORY = "ACTION++"


@contextlib.contextmanager
def _waitCursor():
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        slicer.app.restoreOverrideCursor()


#
# ACTIONPlusPlus
#


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


def _resourcePath(*parts: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", *parts)


def loadTerminology() -> Optional[str]:
    """Load our terminology context (Resources/Terminology) into Slicer's terminology logic, once."""
    from ACTIONPlusPlusLib.slicer_bridge import terminology

    try:
        logic = slicer.modules.terminologies.logic()
    except AttributeError:  # no Terminologies module (a stripped-down application)
        return None
    if terminology.TERMINOLOGY_CONTEXT in _loadedTerminologyNames(logic):
        return terminology.TERMINOLOGY_CONTEXT
    name = logic.LoadTerminologyFromFile(_resourcePath("Terminology", terminology.TERMINOLOGY_FILE_NAME))
    if name != terminology.TERMINOLOGY_CONTEXT:
        logging.warning("ACTION++: could not load the terminology file (got %r)", name)
        return None
    return name


def _loadedTerminologyNames(logic) -> list[str]:
    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    return [names.GetValue(i) for i in range(names.GetNumberOfValues())]


def registerSampleData() -> None:
    """Phantom cases for each preset in the Sample Data module: one click gives labeled and unlabeled
    volumes, already listed in the panel (real ACDC / LA data: see the README)."""
    try:
        import SampleData
    except ImportError:
        return
    for preset in ("ACDC", "LA"):
        api_versions.call_with_supported(
            SampleData.SampleDataLogic.registerCustomSampleDataSource,
            category=SAMPLE_CATEGORY,
            sampleName=f"ACTION++ {preset} phantoms",
            uris=[],
            fileNames=[],
            nodeNames=[],
            thumbnailFileName=_resourcePath("Icons", "ACTIONPlusPlus.png"),
            loadFileType="VolumeFile",
            customDownloader=lambda source, preset=preset: ACTIONPlusPlusLogic().loadSampleData(preset),
        )


#
# Parameter node
#


@parameterNodeWrapper
class ACTIONPlusPlusParameterNode:
    """The panel's settings, saved with the scene.

    labeledPairs: (volume, segmentation) used for supervision.
    excludedVolumes: scene volumes the user unchecked in the unlabeled list (all others are used).
    """

    preset: Annotated[str, Choice(["LA", "ACDC"])] = "LA"
    budgetMode: Annotated[str, Choice(["quick", "paper", "custom"])] = "quick"
    customBudget: Annotated[int, Minimum(1)] = 2000
    customBudgetUnit: Annotated[str, Choice(["iterations", "minutes"])] = "iterations"
    device: Annotated[str, Choice(["auto", "GPU", "CPU"])] = "auto"
    outputFolder: Path
    continueTraining: bool = False
    modelPath: Path
    predictVolume: vtkMRMLScalarVolumeNode
    confidence: bool = False
    labeledPairs: list[tuple[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode]]
    excludedVolumes: list[vtkMRMLScalarVolumeNode]
    showPseudoLabels: bool = False


#
# ACTIONPlusPlusWidget
#


class _ActiveRun:
    """The worker the panel is watching, with what it reported so far."""

    def __init__(self, worker: Any, jobPath: Path, kind: str, confidence: bool, preset: str = "la") -> None:
        self.worker = worker
        self.preset = preset
        self.jobPath = Path(jobPath)
        self.kind = kind  # "train" | "predict"
        self.confidence = confidence
        self.tracker = run_progress.ProgressTracker()
        self.events: list[dict] = []
        self.cancelled = False
        self.sceneClosed = False  # the scene was closed meanwhile: results stay on disk, not loaded
        self.chart: Any = None  # charts.TrainingChart of a training run
        self.chartRows = 0


class _CloseGuard(qt.QObject):
    """Asks before the application closes during a run (the close is refused when the user says no)."""

    def __init__(self, widget: "ACTIONPlusPlusWidget") -> None:
        qt.QObject.__init__(self)
        self.widget = widget

    def eventFilter(self, obj, event) -> bool:
        run = self.widget._run
        if event.type() == qt.QEvent.Close and run is not None and self.widget.logic.isInteractive():
            if not slicer.util.confirmYesNoDisplay(formatting.close_during_run_question(run.kind, "application"),
                                                   windowTitle=_("ACTION++")):
                event.ignore()
                return True
        return False


class ACTIONPlusPlusWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wiring between the .ui, the parameter node and the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[ACTIONPlusPlusLogic] = None
        self._parameterNode: Optional[ACTIONPlusPlusParameterNode] = None
        self._parameterNodeGuiTag = None
        self._run: Optional[_ActiveRun] = None
        self._updatingGUI = False
        self._timer = None
        self._refreshTimer = None
        self._probeTimer = None
        self._closeGuard = None

    # ---------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ACTIONPlusPlus.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ACTIONPlusPlusLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollWorker)
        self._refreshTimer = qt.QTimer()
        self._refreshTimer.setSingleShot(True)
        self._refreshTimer.setInterval(200)
        self._refreshTimer.connect("timeout()", self.updateCaseLists)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)

        self.ui.labeledTableWidget.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePairs)
        self.ui.unlabeledListWidget.connect("itemChanged(QListWidgetItem*)", self.onUnlabeledItemChanged)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.predictButton.connect("clicked(bool)", self.onPredictButton)
        self.ui.addAsLabeledButton.connect("clicked(bool)", self.onAddAsLabeled)
        self.ui.openOutputFolderButton.connect("clicked(bool)", self.onOpenOutputFolder)
        self.ui.loadSampleDataButton.connect("clicked(bool)", self.onLoadSampleData)
        # the live chart: Slicer's plot widget (created here, the .ui holds its container) on a plot view
        # node of our own, pointed at the running job's chart nodes
        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.lossChartContainer.layout().addWidget(self.plotWidget)
        loadTerminology()  # also when the module is (re)loaded after start-up

        # the device list comes from a short-lived child process: torch is never imported into Slicer
        self._probeTimer = qt.QTimer()
        self._probeTimer.setInterval(POLL_INTERVAL_MS)
        self._probeTimer.connect("timeout()", self.onPollDeviceProbe)

        # closing the application during a run asks first
        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:
            self._closeGuard = _CloseGuard(self)
            mainWindow.installEventFilter(self._closeGuard)

        self.initializeParameterNode()
        self.ui.packageInfoLabel.text = install_plan.package_info_line()
        qt.QTimer.singleShot(0, self.refreshDeviceInfo)

    def cleanup(self) -> None:
        """Called when the application closes (the user already confirmed, see _CloseGuard): stop the
        worker, which saves its checkpoint first; never leave it running without its panel."""
        if self._run is not None:
            self._run.worker.cancel()
        for timer in (self._timer, self._probeTimer):
            if timer is not None:
                timer.stop()
        mainWindow = slicer.util.mainWindow()
        if self._closeGuard is not None and mainWindow is not None:
            mainWindow.removeEventFilter(self._closeGuard)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onReload(self) -> None:
        """Reload the Lib too (not only this file), so code changes take effect without a restart."""
        if self._run is not None:
            self._run.worker.cancel()
        for name in [n for n in sys.modules if n == "ACTIONPlusPlusLib" or n.startswith("ACTIONPlusPlusLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        run = self._run
        if run is not None:
            # the scene goes away under the run: ask whether to stop it; either way nothing is loaded into
            # the next scene (the volumes are gone), and the files stay in the run folder
            cancel = self.logic.isInteractive() and slicer.util.confirmYesNoDisplay(
                formatting.close_during_run_question(run.kind, "scene"), windowTitle=_("ACTION++"))
            run.sceneClosed = True
            run.chart = None
            if cancel:
                self.onCancel()
            else:
                self.appendLog(_("Scene closed: the run goes on; its results stay in {folder}.").format(folder=run.jobPath.parent))
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
        folder = output_folder.initial_output_root(current, self.logic.rememberedOutputFolder())
        if folder != current:
            self._parameterNode.outputFolder = Path(folder)

    def setParameterNode(self, inputParameterNode: Optional[ACTIONPlusPlusParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
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
            preset = self._preset()
            self.ui.presetInfoLabel.text = budget_choice.preset_summary(preset)
            self.updateEstimate()
            folder = str(self._parameterNode.outputFolder)
            problem = output_folder.output_root_problem(folder)
            self.ui.outputFolderPathLineEdit.toolTip = problem or _(
                "Each run writes a run-YYYYmmdd-HHMMSS folder here (job, data, checkpoints, model.pt, predictions).")
            if problem is None:
                self.logic.rememberOutputFolder(folder)  # the next scene starts with it
            self.showChart()
        finally:
            self._updatingGUI = False
        self.updateCaseLists()
        self.updateButtons()

    def updateEstimate(self) -> None:
        """The budget in the user's terms: iterations per stage and the estimated time on the chosen device."""
        if self._parameterNode is None:
            return
        settings = self._panelSettings()
        device = job_options.effective_device(self._parameterNode.device, self.logic.deviceInfo())
        try:
            budget = job_options.settings_budget(settings)
            text = budget_choice.estimate_text(budget, device, self.logic.measuredSpeed(settings.preset, device), settings.preset)
            if budget.notes:
                text += "\n" + "\n".join(budget.notes)
        except ValueError as exc:
            text = str(exc)
        self.ui.budgetEstimateLabel.text = text

    def _preset(self) -> str:
        return (self._parameterNode.preset if self._parameterNode else "LA").lower()

    # ------------------------------------------------------------------------------ case lists

    def _labeledPairs(self) -> list[tuple[Any, Any]]:
        """The labeled pairs whose nodes still exist (a removed node drops its pair)."""
        if self._parameterNode is None:
            return []
        pairs = []
        for pair in self._parameterNode.labeledPairs:
            volume, segmentation = pair
            if volume is not None and segmentation is not None and volume.GetScene() and segmentation.GetScene():
                pairs.append((volume, segmentation))
        return pairs

    def _unlabeledVolumes(self) -> list[Any]:
        """Checked items of the unlabeled list, as nodes."""
        volumes = []
        for row in range(self.ui.unlabeledListWidget.count):
            item = self.ui.unlabeledListWidget.item(row)
            if item.checkState() == qt.Qt.Checked:
                node = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole))
                if node is not None:
                    volumes.append(node)
        return volumes

    def updateCaseLists(self) -> None:
        """Refill the labeled table and the unlabeled list from the parameter node and the scene."""
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            pairs = self._labeledPairs()
            table = self.ui.labeledTableWidget
            table.setRowCount(len(pairs))
            for row, (volume, segmentation) in enumerate(pairs):
                table.setItem(row, 0, qt.QTableWidgetItem(volume.GetName()))
                table.setItem(row, 1, qt.QTableWidgetItem(segmentation.GetName()))

            excluded = {n.GetID() for n in self._parameterNode.excludedVolumes if n is not None}
            labeled = [v.GetID() for v, _s in pairs]
            candidates = selection_checks.unlabeled_candidates([n.GetID() for n in self.logic.candidateVolumes()], labeled)
            listWidget = self.ui.unlabeledListWidget
            listWidget.clear()
            for nodeID in candidates:
                node = slicer.mrmlScene.GetNodeByID(nodeID)
                item = qt.QListWidgetItem(node.GetName())
                item.setData(qt.Qt.UserRole, nodeID)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Unchecked if nodeID in excluded else qt.Qt.Checked)
                listWidget.addItem(item)
        finally:
            self._updatingGUI = False

    def onAddPair(self) -> None:
        volume = self.ui.labeledVolumeSelector.currentNode()
        segmentation = self.ui.labeledSegmentationSelector.currentNode()
        if volume is None or segmentation is None:
            self.showError(_("Pick a volume and its segmentation, then click Add labeled case."))
            return
        if any(v is volume for v, _s in self._labeledPairs()):
            self.showError(_("Volume '{name}' is already a labeled case.").format(name=volume.GetName()))
            return
        problem = selection_checks.segments_problem(segmentation.GetName(), self.logic.segmentEntries(segmentation), self._preset())
        if problem:
            self.showError(problem)
            return
        self._parameterNode.labeledPairs = self._labeledPairs() + [(volume, segmentation)]
        self.showStatus(_("Added labeled case {volume} + {segmentation}.").format(volume=volume.GetName(), segmentation=segmentation.GetName()))

    def onRemovePairs(self) -> None:
        rows = {index.row() for index in self.ui.labeledTableWidget.selectionModel().selectedRows()}
        if not rows:
            self.showError(_("Select the labeled cases to remove in the table."))
            return
        self._parameterNode.labeledPairs = [pair for row, pair in enumerate(self._labeledPairs()) if row not in rows]

    def onUnlabeledItemChanged(self, item) -> None:
        if self._updatingGUI or self._parameterNode is None:
            return
        node = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole))
        if node is None:
            return
        excluded = [n for n in self._parameterNode.excludedVolumes if n is not None and n is not node]
        if item.checkState() != qt.Qt.Checked:
            excluded.append(node)
        self._parameterNode.excludedVolumes = excluded

    # ------------------------------------------------------------------------------- actions

    def _panelSettings(self) -> job_options.PanelSettings:
        p = self._parameterNode
        info = self.logic.deviceInfo()
        device = job_options.job_device(p.device, info)
        return job_options.PanelSettings(
            preset=self._preset(),
            budget_mode=p.budgetMode,
            budget_value=p.customBudget,
            budget_unit=p.customBudgetUnit,
            seconds_per_iteration=self.logic.measuredSpeed(self._preset(), job_options.effective_device(p.device, info)),
            device=device,
            continue_training=p.continueTraining,
            output_root=str(p.outputFolder),
            confidence=p.confidence,
        )

    def onTrainButton(self) -> None:
        if self._run is not None:  # the button is disabled while running; Cancel has its own button
            return
        self.clearMessages()
        try:
            self.logic.ensureDependencies(log=self.appendLog)
            if self.logic.deviceInfo() is None:
                self.refreshDeviceInfo()  # torch was just installed: ask what it sees (in the background)
            settings = self._panelSettings()
            warning = output_folder.output_root_warning(settings.output_root, slicer.app.temporaryPath)
            if warning:
                self.appendLog(_("Warning: {text}").format(text=warning))
            jobPath, plan = self.logic.prepareTrainingJob(
                self._labeledPairs(), self._unlabeledVolumes(), settings, progress=self._writingProgress)
            self.appendLog(plan.description)
            self.appendLog(_("Budget: {text}").format(text=self.ui.budgetEstimateLabel.text))
            self._startRun(jobPath, "train")
        except Exception as exc:  # every failure ends in the panel, controls enabled
            self.showError(exc)

    def _writingProgress(self, done: int, total: int, name: str) -> None:
        """Writing the cases takes a while for large volumes: show which one, keep the window alive."""
        self.ui.progressBar.value = int(100 * done / max(total, 1))
        self.showStatus(_("Writing the training cases: {done}/{total} {name}").format(done=done, total=total, name=name))
        slicer.app.processEvents()

    def onPredictButton(self) -> None:
        self.clearMessages()
        p = self._parameterNode
        try:
            self.logic.ensureDependencies(log=self.appendLog)
            with _waitCursor():
                jobPath = self.logic.preparePredictionJob(
                    [p.predictVolume] if p.predictVolume else [], str(p.modelPath), self._panelSettings()
                )
            self._startRun(jobPath, "predict")
        except Exception as exc:
            self.showError(exc)

    def onCancel(self) -> None:
        if self._run is None:
            return
        self._run.cancelled = True
        self.showStatus(_("Cancelling\u2026 the worker saves its checkpoint first."))
        # non-blocking: the worker saves its checkpoint and exits; the polling timer picks up the end (and
        # kills whatever of the process tree is still alive 10 s later)
        self._run.worker.request_cancel(kill_after=10.0)

    def onOpenOutputFolder(self) -> None:
        folder = str(self._parameterNode.outputFolder) if self._parameterNode else ""
        problem = output_folder.output_root_problem(folder)
        if problem:
            self.showError(problem)
            return
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

    def onAddAsLabeled(self) -> None:
        segmentation = self.ui.resultSegmentationSelector.currentNode()
        if segmentation is None:
            self.showError(_("Pick a prediction (segmentation) first."))
            return
        volume = self.logic.sourceVolume(segmentation)
        if volume is None:
            self.showError(
                _("No volume is known for '{name}': add it with Labeled cases > Volume / Segmentation instead.").format(name=segmentation.GetName())
            )
            return
        pairs = [pair for pair in self._labeledPairs() if pair[0] is not volume]
        self._parameterNode.labeledPairs = pairs + [(volume, segmentation)]
        self.showStatus(_("'{segmentation}' is now the labeled case of '{volume}'. Train again to use it.").format(segmentation=segmentation.GetName(), volume=volume.GetName()))

    # ------------------------------------------------------------------------------ the worker

    def _startRun(self, jobPath: Path, kind: str) -> None:
        settings = self._panelSettings()
        worker = self.logic.startWorker(jobPath, settings.device)
        self._run = _ActiveRun(worker, jobPath, kind, settings.confidence, settings.preset)
        if kind == "train":
            from ACTIONPlusPlusLib.slicer_bridge import charts

            self._run.chart = charts.create_training_chart(slicer.mrmlScene, jobPath.parent.name)
            self.showChart()
        self.ui.progressBar.value = 0
        self.appendLog(_("Job: {path}").format(path=jobPath))
        self.showStatus(_("Starting the worker\u2026"))
        self.updateButtons()
        self._timer.start()

    def onPollWorker(self) -> None:
        run = self._run
        if run is None:
            self._timer.stop()
            return
        try:
            self._consume(run)
            if not run.worker.is_running:
                self._consume(run)  # what it printed last
                self._finishRun(run)
        except Exception as exc:
            logging.exception("ACTION++: while watching the worker")
            self._run = None
            self._timer.stop()
            self.showError(exc)
            self.updateButtons()

    def _consume(self, run: _ActiveRun) -> None:
        for event in run.worker.poll_events():
            run.events.append(event)
            line = run.tracker.handle(event)
            if line:
                self.appendLog(line)
        logLines = run.worker.log_lines  # stderr and stray output: moved into the panel's log
        while logLines:
            self.appendLog(logLines.popleft())
        if run.chart is not None and len(run.tracker.history.rows) != run.chartRows:
            from ACTIONPlusPlusLib.slicer_bridge import charts

            charts.update_training_chart(slicer.mrmlScene, run.chart, run.tracker.history)
            run.chartRows = len(run.tracker.history.rows)
        self.ui.progressBar.value = int(round(run.tracker.percent))
        if not run.cancelled:
            self.showStatus(run.tracker.status)

    def _finishRun(self, run: _ActiveRun) -> None:
        self._timer.stop()
        self._run = None
        code = run.worker.exit_code
        speed = run.tracker.seconds_per_iteration
        if run.kind == "train" and speed:
            device = (run.tracker.device or "cpu").split(":")[0]
            self.logic.rememberSpeed(run.preset, device, speed)  # the next estimate uses it
            self.updateEstimate()
        try:
            if code == 0 and run.sceneClosed:
                self.showStatus(_("Finished. The scene was closed meanwhile: the results are in {folder}.").format(
                    folder=run.jobPath.parent))
            elif code == 0:
                imports = self.logic.loadResults(run.jobPath.parent, run.events, withConfidence=run.confidence)
                self.logic.showResults(imports)
                added = [i.segmentation_node for i in imports if i.segmentation_node is not None]
                if added:
                    self.ui.resultSegmentationSelector.setCurrentNode(added[-1])
                if run.tracker.model_path and run.kind == "train" and self._parameterNode is not None:
                    self._parameterNode.modelPath = Path(run.tracker.model_path)
                skipped = [i.message for i in imports if i.message]
                message = _("Finished: {count} segmentation(s) added.").format(count=len(added))
                for text in skipped:
                    self.appendLog(text)
                if skipped:
                    self.showError(message + " " + " ".join(skipped))
                else:
                    self.showStatus(message)
                self.ui.progressBar.value = 100
            else:
                self.showError(run.tracker.outcome_message(code))
        finally:
            self.updateButtons()

    # ----------------------------------------------------------------------------- display

    def updateButtons(self) -> None:
        running = self._run is not None
        self.ui.cancelButton.visible = running
        self.ui.cancelButton.text = _("Cancel training") if running and self._run.kind == "train" else _("Cancel prediction")
        for widget in (
            self.ui.inputsCollapsibleButton,
            self.ui.trainButton,
            self.ui.budgetComboBox,
            self.ui.deviceComboBox,
            self.ui.outputFolderPathLineEdit,
            self.ui.continueCheckBox,
            self.ui.predictButton,
            self.ui.addAsLabeledButton,
            self.ui.modelPathLineEdit,
            self.ui.predictVolumeSelector,
            self.ui.confidenceCheckBox,
        ):
            widget.enabled = not running
        custom = not running and self._parameterNode is not None and self._parameterNode.budgetMode == "custom"
        self.ui.customBudgetSpinBox.enabled = custom
        self.ui.customBudgetUnitComboBox.enabled = custom

    def showChart(self) -> None:
        """The run's loss chart, or its pseudo-label chart when that box is ticked."""
        run = self._run
        if run is None or run.chart is None or self._parameterNode is None:
            return
        chart = run.chart.pseudo_labels if self._parameterNode.showPseudoLabels else run.chart.losses
        viewNode = self.plotWidget.mrmlPlotViewNode()
        if viewNode is None or viewNode.GetScene() is None:
            viewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "ACTION++ training plot view")
            self.plotWidget.setMRMLPlotViewNode(viewNode)
        viewNode.SetPlotChartNodeID(chart.GetID())

    def refreshDeviceInfo(self) -> None:
        """Ask a child process what torch sees (no torch in Slicer's process); the label updates when it answers."""
        if self.logic.startDeviceProbe():
            self.ui.deviceInfoLabel.text = _("Asking torch which devices it sees\u2026")
            self._probeTimer.start()
        else:
            self.ui.deviceInfoLabel.text = formatting.format_device_info(self.logic.deviceInfo())

    def onPollDeviceProbe(self) -> None:
        if self.logic.pollDeviceProbe():
            self._probeTimer.stop()
            info = self.logic.deviceInfo()
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


#
# ACTIONPlusPlusLogic
#


class ACTIONPlusPlusLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable without it (Python console, batch scripts, the self-test)."""

    SETTINGS_OUTPUT_FOLDER = output_folder.OUTPUT_FOLDER_SETTING

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._deviceInfo: Optional[dict] = None
        self._deviceProbe = None

    def getParameterNode(self) -> ACTIONPlusPlusParameterNode:
        return ACTIONPlusPlusParameterNode(super().getParameterNode())

    # -------------------------------------------------------------------------- dependencies

    @staticmethod
    def isInteractive() -> bool:
        """False in --no-main-window runs and tests, where a dialog would block forever."""
        app = slicer.app
        if app.testingEnabled():
            return False
        try:
            if app.commandOptions().noMainWindow:
                return False
        except AttributeError:
            pass
        return slicer.util.mainWindow() is not None

    @staticmethod
    def _pyTorchUtilsLogic():
        try:
            import PyTorchUtils
        except ImportError:
            return None
        return PyTorchUtils.PyTorchUtilsLogic()

    def missingDependencies(self) -> tuple[bool, list[str]]:
        """(torch missing, other missing requirements): checked without importing anything."""
        torchLogic = self._pyTorchUtilsLogic()
        torchMissing = not (torchLogic.torchInstalled() if torchLogic is not None else install_plan.torch_available())
        return torchMissing, install_plan.missing_requirements()

    def ensureDependencies(self, interactive: Optional[bool] = None, log: Optional[Callable[[str], None]] = None) -> None:
        """Install torch and the other requirements after one confirmation, step by step, each step and its
        outcome (with the command to run by hand when it fails) in ``log``; never ask when headless.

        An installed torch that is too old is not replaced (other extensions may rely on it): the error
        says how to update it.
        """
        log = log or (lambda line: logging.info("ACTION++: %s", line))
        torchMissing, extras = self.missingDependencies()
        problem = None if torchMissing else install_plan.torch_version_problem()
        if problem:
            raise RuntimeError(problem)
        if not torchMissing and not extras:
            return
        if interactive is None:
            interactive = self.isInteractive()
        if not interactive:
            raise RuntimeError(install_plan.headless_install_message(torchMissing, extras))
        torchLogic = self._pyTorchUtilsLogic()
        text = install_plan.install_confirmation_text(torchMissing, extras, torch_via_extension=torchLogic is not None)
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("ACTION++: install Python packages")):
            raise RuntimeError(_("Installation declined: ACTION++ needs these packages to train or predict."))
        pipEnsure = install_plan.find_pip_ensure(slicer)
        steps = install_plan.install_steps(torchMissing, extras, torch_via_extension=torchLogic is not None,
                                           has_pip_ensure=pipEnsure is not None)
        for step in steps:
            log(step.title + "\u2026")
            slicer.app.processEvents()
            try:
                with _waitCursor():
                    self._runInstallStep(step, torchLogic, pipEnsure)
            except Exception as exc:  # noqa: BLE001 - shown with the manual command, then raised
                message = install_plan.install_failure_text(step, exc)
                log(message)
                raise RuntimeError(message) from exc
            log(_("{title}: done.").format(title=step.title))
        torchMissing, extras = self.missingDependencies()
        if torchMissing or extras:
            message = install_plan.headless_install_message(torchMissing, extras)
            log(message)
            raise RuntimeError(message)
        self._deviceInfo = None  # torch is new: ask again what it sees

    @staticmethod
    def _runInstallStep(step: "install_plan.InstallStep", torchLogic, pipEnsure) -> None:
        from packaging.requirements import Requirement

        if step.method == "pytorch-extension":
            # picks the CUDA build that matches the driver; the user already confirmed
            torch = api_versions.call_with_supported(
                torchLogic.installTorch, askConfirmation=False, torchVersionRequirement=install_plan.TORCH_REQUIREMENT[len("torch"):]
            )
            if torch is None:
                raise RuntimeError(_("the PyTorch extension did not install torch"))
        elif step.method == "pip_ensure":
            api_versions.call_with_supported(
                pipEnsure, [Requirement(step.requirement)], skip_packages=list(install_plan.PROTECTED_PACKAGES),
                prompt_install=False, requester="ACTION++",
            )
        else:
            for command in install_plan.pip_install_commands([step.requirement]):
                slicer.util.pip_install(command)

    # ------------------------------------------------------------------------ devices, settings

    def startDeviceProbe(self) -> bool:
        """Ask a short-lived child process what torch sees (torch is never imported into Slicer).
        False when torch is not installed (nothing to ask)."""
        torchMissing, _extras = self.missingDependencies()
        if torchMissing:
            self._deviceInfo = None
            return False
        from ACTIONPlusPlusLib.slicer_bridge.device_probe import DeviceProbe

        self._deviceProbe = DeviceProbe().start()
        return True

    def pollDeviceProbe(self) -> bool:
        """True once the probe has answered (its answer is then :meth:`deviceInfo`)."""
        if self._deviceProbe is None:
            return True
        result = self._deviceProbe.poll()
        if result is None:
            return False
        self._deviceInfo = result
        self._deviceProbe = None
        if result.get("error"):
            logging.warning("ACTION++: %s", result["error"])
        return True

    def deviceInfo(self) -> Optional[dict]:
        """What torch sees, as the last probe answered (None while unknown or torch is not installed)."""
        return self._deviceInfo

    @staticmethod
    def _settings():
        return qt.QSettings()

    def rememberedOutputFolder(self) -> Optional[str]:
        value = self._settings().value(self.SETTINGS_OUTPUT_FOLDER)
        return str(value) if value else None

    def rememberOutputFolder(self, folder: str) -> None:
        self._settings().setValue(self.SETTINGS_OUTPUT_FOLDER, str(folder))

    def measuredSpeed(self, preset: str, device: str) -> Optional[float]:
        """Seconds per iteration measured by the last run of ``preset`` on ``device`` (None: not yet)."""
        value = self._settings().value(budget_choice.speed_key(preset, device))
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    def rememberSpeed(self, preset: str, device: str, secondsPerIteration: float) -> None:
        self._settings().setValue(budget_choice.speed_key(preset, device), float(secondsPerIteration))

    def loadSampleData(self, preset: str) -> tuple[list, list]:
        """Phantom cases of ``preset`` (new nodes), registered in the panel as labeled and unlabeled."""
        from ACTIONPlusPlusLib.slicer_bridge.samples import add_phantom_sample

        pairs, unlabeled = add_phantom_sample(slicer.mrmlScene, preset.lower())
        parameters = self.getParameterNode()
        parameters.preset = preset.upper()
        parameters.labeledPairs = list(parameters.labeledPairs) + pairs
        if slicer.app.layoutManager() is not None:
            slicer.util.setSliceViewerLayers(background=pairs[0][0], fit=True)
        return pairs, unlabeled

    # -------------------------------------------------------------------------------- scene

    @staticmethod
    def candidateVolumes() -> list[Any]:
        """The scene's scalar volumes that can be training data (no labelmaps, no ACTION++ outputs)."""
        return node_selection.candidate_volumes(slicer.mrmlScene)

    @staticmethod
    def segmentEntries(segmentationNode) -> list[tuple[str, str]]:
        """(name, terminology entry) of each segment."""
        return node_selection.segment_entries(segmentationNode)

    @staticmethod
    def sourceVolume(segmentationNode) -> Any:
        """The volume a prediction was made on (recorded when it was added), or None."""
        return node_selection.source_volume(slicer.mrmlScene, segmentationNode)

    def selectionProblems(self, pairs: list[tuple[Any, Any]], unlabeled: list[Any], preset: str) -> list[str]:
        return node_selection.node_selection_problems(pairs, unlabeled, preset)

    def prepareTrainingJob(
        self, pairs: list[tuple[Any, Any]], unlabeled: list[Any], settings: job_options.PanelSettings, predictUnlabeled: bool = True,
        progress: Optional[Callable[[int, int, str], None]] = None,
    ) -> tuple[Path, job_options.RunPlan]:
        """Check the selection and the disk, then export the nodes as a job folder; returns (job.json, plan).

        Raises with a message for the panel; the user's nodes are only read.
        """
        from ACTIONPlusPlusLib.slicer_bridge import module_jobs

        return module_jobs.prepare_training_job(slicer.mrmlScene, pairs, unlabeled, settings, predictUnlabeled, progress)

    def preparePredictionJob(self, volumes: list[Any], modelPath: str, settings: job_options.PanelSettings) -> Path:
        """Export the volumes as a predict job for an existing model file; returns job.json."""
        from ACTIONPlusPlusLib.slicer_bridge import module_jobs

        return module_jobs.prepare_prediction_job(slicer.mrmlScene, volumes, modelPath, settings)

    # ------------------------------------------------------------------------------- worker

    def startWorker(self, jobPath: Path, device: str = "auto"):
        """Start the worker process on a job (with Slicer's own Python); poll it with ``poll_events()``."""
        from ACTIONPlusPlusLib.slicer_bridge.runner import WorkerProcess

        worker = WorkerProcess(str(jobPath), force_cpu=(device or "").lower() == "cpu")
        worker.start()
        return worker

    def runWorkerBlocking(
        self, jobPath: Path, device: str = "auto", timeout: Optional[float] = None, callback: Optional[Callable[[dict], None]] = None
    ) -> blocking_run.WorkerOutcome:
        """Run a job to the end (batch scripts, the self-test). ``callback`` gets every event."""
        worker = self.startWorker(jobPath, device)
        return blocking_run.run_to_end(worker, timeout, callback, idle=lambda: slicer.app is not None and slicer.app.processEvents())

    def loadResults(self, jobDir: Path, events: Optional[list[dict]] = None, withConfidence: bool = False) -> list:
        """Add the job's predictions as new segmentation nodes (and confidence volumes)."""
        from ACTIONPlusPlusLib.slicer_bridge import module_jobs

        return module_jobs.load_results(slicer.mrmlScene, jobDir, events, with_confidence=withConfidence)

    @staticmethod
    def showResults(imports: list) -> None:
        """Show the last prediction over its volume in the slice views."""
        shown = [i for i in imports if i.segmentation_node is not None and i.volume_node is not None]
        if not shown or slicer.app.layoutManager() is None:
            return
        last = shown[-1]
        slicer.util.setSliceViewerLayers(background=last.volume_node, fit=True)
        displayNode = last.segmentation_node.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)


#
# ACTIONPlusPlusTest
#


class ACTIONPlusPlusTest(ScriptedLoadableModuleTest):
    """Phantom volumes and segmentations in the scene, a quick CPU training through the real worker,
    predictions checked for names, geometry and a Dice above chance; bad input leaves nodes untouched."""

    PRESET = "acdc"
    # small enough for a CPU in a couple of minutes, both stages included
    OVERRIDES = {
        "patch_size": [64, 64],
        "pretrain_warmup_iterations": 4,
        "pretrain_joint_iterations": 4,
        "finetune_iterations": 60,
        "pretrain_labeled_batch": 2,
        "pretrain_unlabeled_batch": 2,
        "finetune_labeled_batch": 4,
        "finetune_unlabeled_batch": 2,
        "local_window": 32,
        "local_stride": 32,
        "log_every": 5,
        "checkpoint_every": 1000,
        "amp": False,
    }

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        # Reload & Test calls runTest directly, where a skipTest would show as an error dialog: say why
        # nothing ran, and return
        missing = self._missingDependencies()
        if missing:
            self.delayDisplay(_("ACTION++ self-test not run: {why}").format(why=missing))
            logging.warning("ACTION++ self-test not run: %s", missing)
            return
        self.setUp()
        self.test_BadInputLeavesNodesUntouched()
        self.setUp()
        self.test_TrainAndPredictPhantom()

    @staticmethod
    def _missingDependencies() -> Optional[str]:
        try:
            ACTIONPlusPlusLogic().ensureDependencies(interactive=False)
        except RuntimeError as exc:
            return str(exc)
        return None

    def _phantomScene(self, count: int):
        import numpy as np

        from ACTIONPlusPlusLib.data import phantoms
        from ACTIONPlusPlusLib.slicer_bridge.volumes import volume_node_from_case

        rng = np.random.default_rng(7)
        cases, volumes = [], []
        for index in range(count):
            case = phantoms.cardiac_phantom_case(rng, f"Phantom{index}", num_slices=4, size=(64, 64))
            cases.append(case)
            volumes.append(volume_node_from_case(slicer.mrmlScene, case, case.id))
        return cases, volumes

    def _truthSegmentation(self, case, volume):
        from ACTIONPlusPlusLib.slicer_bridge.prediction_nodes import add_prediction_to_scene

        return add_prediction_to_scene(slicer.mrmlScene, case.label, volume, self.PRESET, name=f"{case.id} truth")

    @staticmethod
    def _mtimes(nodes) -> dict:
        return {n.GetID(): n.GetMTime() for n in nodes}

    def _settings(self, outputRoot: str) -> job_options.PanelSettings:
        # "paper" = budget_iterations 0: the explicit (tiny) counts of OVERRIDES are the schedule
        return job_options.PanelSettings(
            preset=self.PRESET, budget_mode="paper", device="cpu",
            output_root=outputRoot, extra_overrides=dict(self.OVERRIDES), seed=0,
        )

    def _logicWithDependencies(self) -> "ACTIONPlusPlusLogic":
        """The logic, or a skipped test when torch & co are not installed (tests never install them)."""
        logic = ACTIONPlusPlusLogic()
        missing = self._missingDependencies()
        if missing:  # reached from a unittest runner (ctest), where a skip is shown as a skip
            self.delayDisplay(missing)
            self.skipTest(missing)
        return logic

    def test_BadInputLeavesNodesUntouched(self) -> None:
        self.delayDisplay("Bad input gives a message and changes no node")
        logic = self._logicWithDependencies()
        cases, volumes = self._phantomScene(2)
        truth = self._truthSegmentation(cases[0], volumes[0])
        wrong = self._truthSegmentation(cases[0], volumes[0])
        wrong.SetName("Unrelated")
        for index in range(wrong.GetSegmentation().GetNumberOfSegments()):
            segment = wrong.GetSegmentation().GetNthSegment(index)
            segment.SetName(f"Liver {index}")
            segment.SetTerminology("")
        before = self._mtimes(volumes + [truth, wrong])
        outputRoot = tempfile.mkdtemp(prefix="ACTIONPlusPlusTest-")
        settings = self._settings(outputRoot)

        bad = {
            "no labeled pair": ([], [volumes[1]]),
            "no preset segment": ([(volumes[0], wrong)], [volumes[1]]),
            "also unlabeled": ([(volumes[0], truth)], [volumes[0], volumes[1]]),
        }
        for label, (pairs, unlabeled) in bad.items():
            with self.assertRaises(Exception, msg=label) as caught:
                logic.prepareTrainingJob(pairs, unlabeled, settings)
            self.assertTrue(str(caught.exception).strip(), f"{label}: empty message")
        messages = logic.selectionProblems([(volumes[0], wrong)], [], self.PRESET)
        self.assertTrue(any("Liver" in m for m in messages), messages)

        # no free disk: checked with shutil.disk_usage before anything is written
        original = shutil.disk_usage
        shutil.disk_usage = lambda path: collections.namedtuple("usage", "total used free")(100, 100, 0)
        try:
            with self.assertRaises(OSError) as caught:
                logic.prepareTrainingJob([(volumes[0], truth)], [volumes[1]], settings)
            self.assertIn("disk", str(caught.exception))
        finally:
            shutil.disk_usage = original

        self.assertEqual(before, self._mtimes(volumes + [truth, wrong]))
        self.assertEqual([p for p in Path(outputRoot).iterdir()], [], "nothing written for rejected input")
        self.delayDisplay("Bad input test passed")

    def test_TrainAndPredictPhantom(self) -> None:
        import numpy as np

        from ACTIONPlusPlusLib.slicer_bridge import terminology
        from ACTIONPlusPlusLib.slicer_bridge.segmentations import label_from_node

        self.delayDisplay("Quick ACTION++ training on phantoms (CPU, real worker)")
        logic = self._logicWithDependencies()
        cases, volumes = self._phantomScene(5)
        truths = [self._truthSegmentation(cases[i], volumes[i]) for i in range(3)]
        pairs = list(zip(volumes[:3], truths))
        unlabeled = volumes[3:]
        before = self._mtimes(volumes + truths)

        outputRoot = tempfile.mkdtemp(prefix="ACTIONPlusPlusTest-")
        jobPath, plan = logic.prepareTrainingJob(pairs, unlabeled, self._settings(outputRoot))
        outcome = logic.runWorkerBlocking(jobPath, "cpu", timeout=1800)
        self.assertEqual(outcome.returncode, 0, f"{outcome.message}\n" + "\n".join(outcome.log[-30:]))
        self.assertTrue(outcome.tracker.model_path and os.path.isfile(outcome.tracker.model_path))
        self.assertAlmostEqual(outcome.tracker.percent, 100.0)

        imports = logic.loadResults(jobPath.parent, outcome.events)
        self.assertEqual(len(imports), len(unlabeled), [i.message for i in imports])
        expectedNames = [info.name for info in terminology.classes(self.PRESET)]
        for item, case, volume in zip(sorted(imports, key=lambda i: i.volume_node.GetName()), cases[3:], unlabeled):
            self.assertIs(item.volume_node, volume)
            segmentation = item.segmentation_node.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
            self.assertEqual(names, expectedNames)
            # geometry: the prediction's labelmap lies on the volume's voxel grid
            labelmap = slicer.vtkOrientedImageData()
            item.segmentation_node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(0), labelmap)
            np.testing.assert_allclose(labelmap.GetSpacing(), volume.GetSpacing(), rtol=1e-6)
            np.testing.assert_allclose(labelmap.GetOrigin(), volume.GetOrigin(), atol=1e-4)
            directions, volumeDirections = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
            labelmap.GetDirectionMatrix(directions)
            volume.GetIJKToRASDirectionMatrix(volumeDirections)
            for r in range(3):
                for c in range(3):
                    self.assertAlmostEqual(directions.GetElement(r, c), volumeDirections.GetElement(r, c), places=5)
            predicted = label_from_node(item.segmentation_node, volume, self.PRESET)
            self.assertEqual(predicted.shape, case.label.shape)
            self.assertEqual(logic.sourceVolume(item.segmentation_node), volume)
            scores = [self_test.dice(predicted, case.label, info.value) for info in terminology.classes(self.PRESET)]
            chance = [self_test.chance_dice(case.label, info.value) for info in terminology.classes(self.PRESET)]
            logging.info("ACTION++ self-test %s: Dice %s, chance %s", volume.GetName(), np.round(scores, 3), np.round(chance, 3))
            self.assertGreater(float(np.mean(scores)), float(np.mean(chance)), f"Dice {scores} not above chance {chance}")

        self.assertEqual(before, self._mtimes(volumes + truths), "the user's nodes were modified")
        self.delayDisplay("Training test passed")
