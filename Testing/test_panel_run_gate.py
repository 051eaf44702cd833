"""The panel's decisions on its case lists and its Train / Predict clicks, without Slicer or Qt
(issue 34, items 3 and 4): one run at a time from the first click on (``panel.run_gate``), and
unlabeled volumes opted in (``selection_checks.unlabeled_rows``)."""

from __future__ import annotations

import pytest

from ACTIONPlusPlusLib.slicer_bridge.panel import run_gate, selection_checks, sliced_task


class Panel:
    """What the module does on a click (run_watch._runGuarded, onSliceTick), with the worker start and
    the event loop's timer ticks as fakes."""

    def __init__(self):
        self.gate = run_gate.RunGate()
        self.workers, self.errors, self.enabled = [], [], []
        self.during_export = None  # a click that arrives between two ticks of the job's writing

    def click(self, kind="train"):
        task = run_gate.begin_guarded(self.gate, kind, self.prepare, self.errors.append, self.refresh)
        if task is None:
            return False
        while sliced_task.tick_preparation(self.gate, task, self.start, self.errors.append, lambda: None):
            if self.during_export is not None:  # the event loop runs between two ticks: a click may arrive
                self.during_export()
        self.refresh()
        return self.gate.state == run_gate.RUNNING

    def prepare(self):
        assert not self.gate.controls_enabled, "the panel is enabled while the job is prepared"

        def steps():
            yield 0, 1, "MRI 1"
            return "job.json"

        return sliced_task.SlicedTask(steps(), "Writing")

    def start(self, job):
        self.workers.append(job)
        self.gate.started()

    def refresh(self):
        self.enabled.append(self.gate.controls_enabled)


def test_a_second_train_click_during_the_export_is_refused():
    panel = Panel()
    second = []
    panel.during_export = lambda: second.append(panel.click("train"))
    assert panel.click("train") is True
    assert second == [False] and panel.workers == ["job.json"]  # one worker, watched
    assert panel.gate.state == run_gate.RUNNING and not panel.gate.controls_enabled and panel.gate.cancellable
    assert panel.enabled == [False, False]  # disabled from the first click on, still disabled once running


def test_clicks_while_running_are_refused_until_the_run_ends():
    panel = Panel()
    panel.click("train")
    assert panel.click("predict") is False and panel.click("train") is False and len(panel.workers) == 1
    panel.gate.finished()
    assert panel.gate.controls_enabled and panel.click("predict") is True and len(panel.workers) == 2
    assert panel.gate.kind == "predict"


def test_a_failed_preparation_enables_the_panel_again():
    panel = Panel()

    def broken():
        raise ValueError("no labeled case")

    panel.prepare = broken
    assert panel.click() is False
    assert [str(e) for e in panel.errors] == ["no labeled case"] and panel.workers == []
    assert panel.gate.state == run_gate.IDLE and panel.enabled == [False, True] and not panel.gate.cancellable


def test_a_cancel_while_the_job_is_written_enables_the_panel_again():
    panel = Panel()
    tasks = []
    prepare = panel.prepare
    panel.prepare = lambda: tasks.append(prepare()) or tasks[-1]
    panel.during_export = lambda: tasks[-1].cancel()
    assert panel.click() is False and panel.workers == [] and panel.errors == []
    assert panel.gate.controls_enabled and tasks[-1].state == sliced_task.CANCELLED


def test_cancel_is_offered_only_once_a_worker_runs():
    gate = run_gate.RunGate()
    assert gate.begin("train") and not gate.cancellable and not gate.controls_enabled
    gate.started()
    assert gate.cancellable
    with pytest.raises(RuntimeError):
        gate.started()


def test_a_new_volume_is_not_training_data_until_chosen():
    scene = ["MRI1", "MRI2", "Scan to segment"]
    rows = selection_checks.unlabeled_rows(scene, labeled_volume_ids=["MRI1"], chosen_ids=["MRI2"])
    assert rows == [("MRI2", True), ("Scan to segment", False)]
    rows = selection_checks.unlabeled_rows([*scene, "Loaded later"], ["MRI1"], ["MRI2"])
    assert rows[-1] == ("Loaded later", False)
    assert selection_checks.unlabeled_rows(scene, [], []) == [(v, False) for v in scene]
