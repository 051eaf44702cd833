"""The worker leaves Slicer room and time (issue 34, item 7): Cancel waits for the checkpoint for a time
scaled to the measured step (not a fixed 10 s), and the worker runs below Slicer's priority with a CPU
thread count that leaves Slicer a core.  No torch, no Slicer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ACTIONPlusPlusLib.slicer_bridge import child_process
from ACTIONPlusPlusLib.slicer_bridge.panel import active_run


def test_cancel_waits_longer_for_a_slow_step():
    fast = active_run.cancel_grace_seconds(0.05)
    slow = active_run.cancel_grace_seconds(40.0)  # a CPU 3D iteration
    assert fast >= 30.0 and slow >= 3 * 40.0 > 10.0 and slow > fast
    assert active_run.cancel_grace_seconds(None) == active_run.CANCEL_GRACE_MIN
    assert active_run.cancel_grace_seconds(float("nan")) == active_run.CANCEL_GRACE_MIN
    assert active_run.cancel_grace_seconds(1e6) == active_run.CANCEL_GRACE_MAX


def test_the_watched_run_scales_its_grace_to_the_measured_step():
    run = active_run.ActiveRun(worker=None, job_path="job/job.json", kind="train", confidence=False)
    assert run.cancel_grace() == active_run.CANCEL_GRACE_MIN
    for iteration in range(1, 6):
        run.tracker.handle({"event": "progress", "stage": "pretrain", "phase": "warmup", "iteration": iteration,
                            "total": 100, "overall_iteration": iteration, "overall_total": 100, "loss": 1.0,
                            "seconds_per_iteration": 20.0})
    assert run.cancel_grace() >= 60.0


def test_the_panel_cancel_uses_the_scaled_grace():
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "ACTIONPlusPlus" / "ACTIONPlusPlusPanel" / "run_watch.py").read_text()
    assert "request_cancel(kill_after=self._run.cancel_grace())" in source and "kill_after=10" not in source


def test_the_worker_leaves_slicer_a_core(monkeypatch):
    assert child_process.worker_threads(8) == 7 and child_process.worker_threads(1) == 1
    assert child_process.worker_threads(0) == 1
    env = child_process.thread_environment({}, cpu_count=4)
    assert {env[name] for name in child_process.THREAD_VARIABLES} == {"3"}
    assert child_process.thread_environment({"OMP_NUM_THREADS": "2"}, cpu_count=4)["OMP_NUM_THREADS"] == "2"
    from ACTIONPlusPlusLib.slicer_bridge.runner import WorkerProcess

    for name in child_process.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = WorkerProcess("job.json").environment()
    assert env["OMP_NUM_THREADS"] == str(child_process.worker_threads())


class FakeProcess:
    def __init__(self, pid, nice=0, refuse=False):
        self.pid, self.value, self.refuse, self.calls = pid, nice, refuse, []

    def nice(self, value=None):
        if value is None:
            return self.value
        if self.refuse:
            raise PermissionError("access denied")
        self.calls.append(value)
        self.value = value


def test_priority_is_lowered_on_each_platform():
    made = {}

    def factory(pid, **kw):
        made[pid] = FakeProcess(pid, **kw)
        return made[pid]

    assert child_process.lower_priority(1, os_name="posix", process_class=factory)
    assert made[1].calls == [child_process.WORKER_NICE]
    assert child_process.lower_priority(2, os_name="nt", process_class=factory)
    assert made[2].calls == [child_process.BELOW_NORMAL_PRIORITY_CLASS]
    assert child_process.lower_priority(3, process_class=lambda pid: FakeProcess(pid, refuse=True)) is False
    already = FakeProcess(4, nice=15)
    child_process.lower_priority(4, os_name="posix", process_class=lambda pid: already)
    assert already.value == 15  # never raised back towards Slicer's priority


@pytest.mark.skipif(os.name == "nt", reason="POSIX niceness")
def test_a_started_child_runs_below_this_process():
    psutil = pytest.importorskip("psutil")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child_process.lower_priority(child.pid)
        assert psutil.Process(child.pid).nice() >= max(psutil.Process().nice(), child_process.WORKER_NICE)
    finally:
        child.kill()
        child.wait()
