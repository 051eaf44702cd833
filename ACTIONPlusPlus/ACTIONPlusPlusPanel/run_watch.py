"""The panel's view of a run: the job written one volume per timer tick, the worker started, polled
(progress, live chart, cancel), and the results loaded back as nodes one per tick, so the window never
freezes. A mixin of ``ACTIONPlusPlusWidget`` (it uses the widget's ``ui``, ``logic``, ``_run``, ``_gate``,
``_timer``, ``plotWidget``, ``_parameterNode``, ``_panelSettings`` and its message methods); the events
are read by ``panel.run_progress``, the slices driven by ``panel.sliced_task``, the nodes made by the bridge."""

from __future__ import annotations

import logging
from pathlib import Path

import qt

import slicer
from slicer.i18n import tr as _

from ACTIONPlusPlusLib.slicer_bridge import charts, module_jobs
from ACTIONPlusPlusLib.slicer_bridge.panel import active_run, formatting, model_list, run_gate, sliced_task


class RunWatchMixin:
    """One run at a time (``self._run``, guarded by ``self._gate`` from the first click), polled by
    ``self._timer``; the job's writing and the results' loading are ``self._task``, one step per tick of
    ``self._sliceTimer``."""

    _task = None  # sliced_task.SlicedTask being stepped (writing the job, loading the results)
    _sliceTimer = None
    _onSlice = None  # what a tick does with the task: True while it goes on

    def _runGuarded(self, kind: str, prepare) -> None:
        """A Train / Predict click: refused while anything is under way; the panel stays disabled from
        here until the run ends. ``prepare()`` (dependencies, every check) returns the task that writes
        the job, one volume per tick; the worker starts when it is written (``sliced_task.tick_preparation``)."""
        if not self._gate.controls_enabled:
            return self.showStatus(_("A run is being prepared or running: wait for it, or cancel it."))
        self.clearMessages()
        task = run_gate.begin_guarded(self._gate, kind, prepare, self.showError, self.updateButtons)
        if task is None:  # refused, or the checks failed (said, the panel usable again)
            return
        self._startSlices(task, lambda t: sliced_task.tick_preparation(
            self._gate, t, lambda jobPath: self._startRun(jobPath, kind), self.showError,
            lambda: self.showStatus(_("Cancelled before the worker started: nothing was run, nothing kept."))))

    def _startSlices(self, task, onSlice) -> None:
        if self._sliceTimer is None:
            self._sliceTimer = qt.QTimer()
            self._sliceTimer.setInterval(0)  # as soon as the event loop is idle: one step, then the GUI again
            self._sliceTimer.connect("timeout()", self.onSliceTick)
        self._task, self._onSlice = task, onSlice
        self.updateButtons()
        self._sliceTimer.start()

    def onSliceTick(self) -> None:
        task = self._task
        if task is None:
            return self._sliceTimer.stop()
        try:
            goingOn = self._onSlice(task)
        except Exception as exc:  # never the same failing step again on every tick
            logging.exception("ACTION++: %s", task.what)
            goingOn = False
            if self._run is None or not self._run.worker.is_running:
                self._run = None
                self._gate.finished()
            self.showError(exc)
        if goingOn:
            self.ui.progressBar.value = task.percent
            self.showStatus(task.status)
            return
        self._sliceTimer.stop()
        self._task = None
        for note in task.notes if task.state == sliced_task.DONE else []:
            self.appendLog(_("Warning: {text}").format(text=note))
        self.updateButtons()

    def _startRun(self, jobPath: Path, kind: str) -> None:
        settings = self._panelSettings()
        worker = self.logic.startWorker(jobPath, settings.device)
        self._run = active_run.ActiveRun(worker, Path(jobPath), kind, settings.confidence, settings.preset)
        self._gate.started()  # the run object owns the worker now
        if kind == "train":
            self._run.chart = charts.create_training_chart(slicer.mrmlScene, Path(jobPath).parent.name)
            self.showChart()
        self.ui.progressBar.value = 0
        self.appendLog(_("Job: {path}").format(path=jobPath))
        self.showStatus(_("Starting the worker\u2026"))
        self.updateButtons()
        self._timer.start()

    def onPollWorker(self) -> None:
        run = self._run
        if run is None:
            return self._timer.stop()
        try:
            self._consume(run)
            if not run.worker.is_running:
                self._consume(run)  # what it printed last
                self._finishRun(run)
        except Exception as exc:
            logging.exception("ACTION++: while watching the worker")
            self._run = None
            self._gate.finished()
            self._timer.stop()
            self.showError(exc)
            self.updateButtons()

    def _consume(self, run: active_run.ActiveRun) -> None:
        for event in run.worker.poll_events():
            run.events.append(event)
            line = run.tracker.handle(event)
            if line:
                self.appendLog(line)
        logLines = run.worker.log_lines  # stderr and stray output: moved into the panel's log
        while logLines:
            self.appendLog(logLines.popleft())
        if run.chart is not None and len(run.tracker.history.rows) != run.chart_rows:
            charts.update_training_chart(slicer.mrmlScene, run.chart, run.tracker.history)
            run.chart_rows = len(run.tracker.history.rows)
        self.ui.progressBar.value = int(round(run.tracker.percent))
        if not run.cancelled:
            self.showStatus(run.tracker.status)

    def _finishRun(self, run: active_run.ActiveRun) -> None:
        """The worker ended: its predictions are loaded one per tick (the panel stays disabled meanwhile)."""
        self._timer.stop()
        code = run.worker.exit_code
        if run.kind == "train" and run.tracker.seconds_per_iteration:
            self.logic.memory.remember_speed(run.preset, run.trained_device(), run.tracker.seconds_per_iteration)
            self.updateEstimate()  # the next estimate uses the measured speed
        self._recordModel(run)
        if code == 0 and not run.scene_closed:  # a volume's earlier prediction is updated in place
            steps = module_jobs.results_steps(slicer.mrmlScene, run.run_folder, run.events, with_confidence=run.confidence,
                                              model=run.tracker.model_path or None)
            return self._startSlices(sliced_task.SlicedTask(steps, _("Loading the predictions")),
                                     lambda task: self._tickLoading(task, run))
        self._endRun()
        if code == 0:
            self.showStatus(_("Finished. The scene was closed meanwhile: the results are in {folder}.").format(folder=run.run_folder))
        else:
            self.showError(run.tracker.outcome_message(code))

    def _endRun(self) -> None:
        self._run = None
        self._gate.finished()
        self.updateButtons()

    def _tickLoading(self, task, run: active_run.ActiveRun) -> bool:
        if task.tick():
            return True
        self._endRun()
        if task.state == sliced_task.DONE:
            self._showResults(run, task.result)
        elif task.state == sliced_task.CANCELLED:
            self.showStatus(_("Loading cancelled: the other predictions are in {folder}.").format(folder=run.run_folder))
        else:
            self.showError(task.error)
        return False

    def _recordModel(self, run: active_run.ActiveRun) -> None:
        """A finished training's model joins the model list, its card saying the device it ran on."""
        if run.kind == "train" and run.worker.exit_code == 0 and run.tracker.model_path:
            try:
                model_list.write_card(run.tracker.model_path, device=run.tracker.device or None)
            except OSError as exc:
                self.appendLog(_("Warning: the model's card was not written: {error}").format(error=exc))
        self.updateModelList(force=True)

    def _showResults(self, run: active_run.ActiveRun, imports: list) -> None:
        """The run's predictions (now nodes): the last one shown and selected for "Add as labeled"."""
        if self.parent.isEntered:  # the views move only while the module is shown (not under Segment Editor)
            self._showInViews(imports)
        added = [i.segmentation_node for i in imports if i.segmentation_node is not None]
        if added:
            self.ui.resultSegmentationSelector.setCurrentNode(added[-1])
        if run.tracker.model_path and run.kind == "train" and self._parameterNode is not None:
            self._parameterNode.modelPath = Path(run.tracker.model_path)
        skipped = [i.message for i in imports if i.message]
        for text in skipped:
            self.appendLog(text)
        message = _("Finished: {count} segmentation(s) added, {updated} of them updated in place.").format(
            count=len(added), updated=sum(1 for i in imports if i.updated))
        if skipped:
            self.showError(" ".join([message, *skipped]))
        else:
            self.showStatus(message)
        self.ui.progressBar.value = 100

    @staticmethod
    def _showInViews(imports: list) -> None:
        """Show the last prediction over its volume in the slice views."""
        shown = [i for i in imports if i.segmentation_node is not None and i.volume_node is not None]
        if not shown or slicer.app.layoutManager() is None:
            return
        last = shown[-1]
        slicer.util.setSliceViewerLayers(background=last.volume_node, fit=True)
        displayNode = last.segmentation_node.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)

    def onCancel(self) -> None:
        if self._task is not None:  # writing the job or loading the results: stops before the next volume
            return self._task.cancel()
        if self._run is None:
            return
        self._run.cancelled = True
        self.showStatus(_("Cancelling\u2026 the worker saves its checkpoint first."))
        # non-blocking: the worker saves its checkpoint and exits; the polling timer picks up the end (and
        # kills whatever of the process tree is still alive after a grace scaled to the measured step)
        self._run.worker.request_cancel(kill_after=self._run.cancel_grace())

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


class CloseGuard(qt.QObject):
    """Asks before the application closes during a run (the close is refused when the user says no)."""

    def __init__(self, widget: "RunWatchMixin") -> None:
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
