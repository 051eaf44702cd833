"""A GUI that never freezes, the panel's decisions without Slicer or Qt (issue 34): the job is written
and the results loaded by ``panel.sliced_task``, one step per timer tick; after each tick of the job's
writing the panel starts the worker, reports a failure or a cancel (the steps clean up) and is usable
again; the Prediction list offers every volume, ticked only when chosen.  Also run under Python 3.9
(Testing/test_python39.py)."""

from __future__ import annotations

import pytest

from ACTIONPlusPlusLib.slicer_bridge.panel import run_gate, selection_checks, sliced_task


def test_tick_preparation_decides_start_failure_and_cancel():
    def steps(fail=False):
        yield 0, 2, "a"
        if fail:
            raise OSError("disk full")
        yield 1, 2, "b"
        return "job.json"

    gate, started, errors = run_gate.RunGate(), [], []
    gate.begin("train")
    task = sliced_task.SlicedTask(steps(), "Writing")
    while sliced_task.tick_preparation(gate, task, started.append, errors.append, pytest.fail):
        assert gate.state == run_gate.PREPARING and task.percent in (0, 50)
    assert started == ["job.json"] and gate.state == run_gate.RUNNING and errors == []

    for failing_start, generator in ((False, steps(fail=True)), (True, steps())):
        gate = run_gate.RunGate()
        gate.begin("train")
        task = sliced_task.SlicedTask(generator, "Writing")

        def start(job):
            raise RuntimeError("no python")

        while sliced_task.tick_preparation(gate, task, start if failing_start else pytest.fail, errors.append, pytest.fail):
            pass
        assert gate.controls_enabled and task.state in (sliced_task.FAILED, sliced_task.DONE)
    assert [type(e) for e in errors] == [OSError, RuntimeError]


def test_cancel_closes_the_steps_which_clean_up():
    cleaned = []

    def steps():
        try:
            yield 0, 3, "a"
            yield 1, 3, "b"
            yield 2, 3, "c"
        except GeneratorExit:
            cleaned.append("removed what was written")
            raise
        return "job.json"

    gate, cancelled = run_gate.RunGate(), []
    gate.begin("train")
    task = sliced_task.SlicedTask(steps(), "Writing", notes=["case 2 lacks RV"])
    assert sliced_task.tick_preparation(gate, task, pytest.fail, pytest.fail, pytest.fail)
    assert task.status == "Writing: 1/3 a" and task.notes == ["case 2 lacks RV"]
    task.cancel()
    assert not sliced_task.tick_preparation(gate, task, pytest.fail, pytest.fail, lambda: cancelled.append(1))
    assert cleaned == ["removed what was written"] and cancelled == [1] and gate.controls_enabled
    assert task.status == "Writing: cancelled." and not task.tick()


def test_the_predict_list_offers_every_volume_ticked_only_when_chosen():
    assert selection_checks.predict_rows(["v1", "v2", "v3"], ["v3", "gone"]) == [("v1", False), ("v2", False), ("v3", True)]
