"""WorkerProcess against real subprocesses: fake workers written here, and the real worker on bad jobs."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from ACTIONPlusPlusLib.jobs import stop_file_for
from ACTIONPlusPlusLib.slicer_bridge.child_process import find_python
from ACTIONPlusPlusLib.slicer_bridge.runner import WorkerProcess

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signal semantics")


def fake_worker(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent("""
        import json, os, signal, subprocess, sys, time
        def emit(**event):
            sys.stdout.write(json.dumps(event) + "\\n"); sys.stdout.flush()
        job = sys.argv[1]
    """) + textwrap.dedent(body))
    return script


def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.json"
    path.write_text("{}")
    return path


def test_events_logs_and_environment(tmp_path):
    script = fake_worker(tmp_path, """
        emit(event="start", job=job, pythonpath=os.environ.get("PYTHONPATH"), unbuffered=os.environ.get("PYTHONUNBUFFERED"),
             cuda=os.environ.get("CUDA_VISIBLE_DEVICES"), extra=os.environ.get("EXTRA"))
        print("not json at all")
        print('{"no_event_key": 1}')
        sys.stderr.write("a warning on stderr\\n"); sys.stderr.flush()
        for i in range(1, 6):
            emit(event="progress", iteration=i, total=5)
        emit(event="done", model="m.pt", predictions=[], exit_code=0)
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script, env={"EXTRA": "yes"}, force_cpu=True).start()
    events = list(worker.wait_events(timeout=60))
    assert [e["event"] for e in events] == ["start"] + ["progress"] * 5 + ["done"]
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4, 5]
    start = events[0]
    package_parent = str(Path(__file__).resolve().parents[1])
    assert start["pythonpath"].split(os.pathsep)[0] == package_parent
    assert start["unbuffered"] == "1" and start["cuda"] == "-1" and start["extra"] == "yes"
    assert "not json at all" in worker.log_lines and '{"no_event_key": 1}' in worker.log_lines
    assert "a warning on stderr" in worker.log_lines
    assert not worker.is_running and worker.returncode == 0 and worker.exit_code == 0
    assert worker.poll_events() == []


def test_poll_is_non_blocking(tmp_path):
    script = fake_worker(tmp_path, """
        emit(event="start")
        time.sleep(1.5)
        emit(event="done", exit_code=0)
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    t0 = time.monotonic()
    seen = []
    while worker.is_running:
        seen += worker.poll_events()
        assert time.monotonic() - t0 < 30
        time.sleep(0.02)
    assert [e["event"] for e in seen] == ["start", "done"]
    worker2 = WorkerProcess(job_file(tmp_path), script=script).start()
    t0 = time.monotonic()
    worker2.poll_events()
    assert time.monotonic() - t0 < 0.5  # returns at once while the worker sleeps
    worker2.kill()
    worker2.wait(timeout=30)


def test_crash_becomes_error_event_with_stderr(tmp_path):
    script = fake_worker(tmp_path, """
        emit(event="start")
        sys.stderr.write("Traceback (most recent call last):\\nRuntimeError: boom in the worker\\n")
        sys.exit(7)
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    events = list(worker.wait_events(timeout=60))
    error = events[-1]
    # 7 is not a protocol code: reported as unexpected (1), the process's own status kept beside it
    assert error["event"] == "error" and error["exit_code"] == 1 and error["returncode"] == 7
    assert "worker exited with code 7" in error["message"] and "boom in the worker" in error["message"]
    assert worker.returncode == 7 and worker.exit_code == 1


def test_killed_worker_reports_a_protocol_exit_code(tmp_path):
    """An external SIGKILL (e.g. the OOM killer): exit code 1 with the signal named, never -9."""
    script = fake_worker(tmp_path, """
        emit(event="start")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    events = list(worker.wait_events(timeout=60))
    error = events[-1]
    assert error["event"] == "error" and error["exit_code"] == 1 and error["signal"] == "SIGKILL"
    assert "killed by SIGKILL" in error["message"]
    assert worker.returncode == -signal.SIGKILL and worker.exit_code == 1


def test_reported_error_is_not_duplicated(tmp_path):
    script = fake_worker(tmp_path, """
        emit(event="error", message="bad job", exit_code=2)
        sys.exit(2)
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    events = list(worker.wait_events(timeout=60))
    assert [e["message"] for e in events] == ["bad job"] and worker.exit_code == 2


def test_killed_by_signal_is_reported(tmp_path):
    script = fake_worker(tmp_path, """
        emit(event="start")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    events = list(worker.wait_events(timeout=60))
    assert events[-1]["event"] == "error" and "SIGKILL" in events[-1]["message"]


def _tree_alive(pids):
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_cancel_kills_the_whole_tree(tmp_path):
    # a launcher-like parent and two levels of children, one of which ignores SIGTERM
    script = fake_worker(tmp_path, """
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        middle = ("import subprocess, sys, time; "
                  f"subprocess.Popen([sys.executable, '-c', {stubborn!r}]); time.sleep(600)")
        kids = [subprocess.Popen([sys.executable, "-c", middle]) for _ in range(2)]
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent ignores it too
        time.sleep(1.0)
        emit(event="start", children=[k.pid for k in kids])
        time.sleep(600)
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    deadline = time.monotonic() + 60
    events = []
    while not events and time.monotonic() < deadline:
        events = worker.poll_events()
        time.sleep(0.05)
    assert events and events[0]["event"] == "start"
    tree = [worker.pid] + [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
    assert len(tree) == 5
    t0 = time.monotonic()
    worker.cancel(timeout=1.0)
    assert time.monotonic() - t0 < 10
    rest = list(worker.wait_events(timeout=30))
    assert _tree_alive(tree) == []
    assert rest[-1]["event"] == "cancelled" and rest[-1]["exit_code"] == 4
    assert stop_file_for(tmp_path / "job.json").exists()  # the cooperative request was made too


def test_launcher_dies_child_reports_cancel(tmp_path):
    """PythonSlicer-like: the launcher dies on SIGTERM, the real worker checkpoints and exits 4."""
    child = tmp_path / "python_real.py"
    child.write_text(textwrap.dedent("""
        import json, signal, sys, time
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        sys.stdout.write(json.dumps({"event": "start"}) + "\\n"); sys.stdout.flush()
        while not stop:
            time.sleep(0.01)
        time.sleep(0.3)  # "saving a checkpoint"
        sys.stdout.write(json.dumps({"event": "cancelled", "exit_code": 4, "resumable": True}) + "\\n")
        sys.stdout.flush()
        sys.exit(4)
    """))
    script = fake_worker(tmp_path, f"""
        real = subprocess.Popen([sys.executable, {str(child)!r}])
        real.wait()
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    while not worker.poll_events():
        time.sleep(0.05)
    tree = [worker.pid] + [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
    worker.cancel(timeout=10)
    rest = list(worker.wait_events(timeout=30))
    assert rest[-1] == {"event": "cancelled", "exit_code": 4, "resumable": True}
    assert worker.exit_code == 4 and worker.returncode == -signal.SIGTERM
    assert _tree_alive(tree) == []


def test_real_worker_bad_job_is_error_exit_2(tmp_path):
    """The real worker; a wrapper makes "C libraries" write to fd 1 and Python print: both end in the log."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"version": 1, "mode": "train"}))
    wrapper = tmp_path / "noisy_worker.py"
    wrapper.write_text(textwrap.dedent("""
        import os, sys
        from ACTIONPlusPlusLib import worker
        original = worker.run
        def run(*args, **kwargs):
            os.write(1, b"C-level noise on fd 1\\n")
            print("a stray print")
            return original(*args, **kwargs)
        worker.run = run
        sys.exit(worker.main())
    """))
    worker = WorkerProcess(job, python=sys.executable, script=wrapper).start()
    events = list(worker.wait_events(timeout=120))
    assert [e["event"] for e in events] == ["start", "error"]
    error = events[-1]
    assert error["type"] == "DataError" and error["exit_code"] == 2
    assert "missing field 'preset'" in error["message"] and "job.json" in error["message"]
    assert worker.returncode == 2
    assert not any(line.startswith("Traceback") for line in worker.log_lines)
    assert not any(line.startswith("{") for line in worker.log_lines)  # nothing else on stdout
    stderr_lines = list(worker._stderr_tail)  # proves they went to stderr, not to the event stream
    assert "C-level noise on fd 1" in stderr_lines and "a stray print" in stderr_lines


def test_find_python_outside_slicer():
    assert find_python() == sys.executable


def test_request_cancel_is_non_blocking_and_kills_after_deadline(tmp_path):
    script = fake_worker(tmp_path, """
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        kid = subprocess.Popen([sys.executable, "-c", stubborn])
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(0.5)
        emit(event="start")
        time.sleep(600)
    """)
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    while not worker.poll_events():
        time.sleep(0.05)
    tree = [worker.pid] + [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
    t0 = time.monotonic()
    worker.request_cancel(kill_after=1.0)
    assert time.monotonic() - t0 < 0.5
    events = []
    while worker.is_running:  # what a QTimer does
        events += worker.poll_events()
        assert time.monotonic() - t0 < 20
        time.sleep(0.05)
    assert _tree_alive(tree) == []
    assert events[-1]["event"] == "cancelled" and "killed" in events[-1]["message"]


# ------------------------------------------------------------------------- platform options, device probe


def test_windows_children_start_without_a_console_window():
    """With the platform patched to Windows: no console window (CREATE_NO_WINDOW + hidden STARTUPINFO)
    and a new process group, as slicer.util.launchConsoleProcess does."""
    import types

    from ACTIONPlusPlusLib.slicer_bridge import child_process

    class StartupInfo:
        def __init__(self):
            self.dwFlags = 0
            self.wShowWindow = 1

    windows = types.SimpleNamespace(CREATE_NEW_PROCESS_GROUP=0x200, CREATE_NO_WINDOW=0x08000000,
                                    STARTUPINFO=StartupInfo, STARTF_USESHOWWINDOW=1, SW_HIDE=0)
    options = child_process.popen_options("nt", windows)
    assert options["creationflags"] & 0x08000000 and options["creationflags"] & 0x200
    assert options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0
    assert "start_new_session" not in options
    # the constants are known even where the subprocess module lacks them (this machine)
    bare = child_process.popen_options("nt", types.SimpleNamespace())
    assert bare["creationflags"] == child_process.CREATE_NEW_PROCESS_GROUP | child_process.CREATE_NO_WINDOW
    assert child_process.popen_options("posix") == {"start_new_session": True}


def test_worker_start_uses_the_platform_options(tmp_path, monkeypatch):
    from ACTIONPlusPlusLib.slicer_bridge import runner

    seen = {}
    monkeypatch.setattr(runner, "popen_options", lambda: {"start_new_session": True, "close_fds": True})
    real_popen = runner.subprocess.Popen

    def recording_popen(*args, **kwargs):
        seen.update(kwargs)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(runner.subprocess, "Popen", recording_popen)
    script = fake_worker(tmp_path, 'emit(event="start", mps=os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK"))\nemit(event="done", exit_code=0)')
    worker = WorkerProcess(job_file(tmp_path), script=script).start()
    events = list(worker.wait_events(timeout=60))
    assert seen["start_new_session"] is True and seen["close_fds"] is True
    assert events[0]["mps"] == "1"  # an operation MPS lacks falls back to the CPU


def test_device_probe_asks_a_child_process(tmp_path):
    from ACTIONPlusPlusLib.slicer_bridge.device_probe import DeviceProbe

    probe = DeviceProbe(python=sys.executable).start()
    info = probe.wait()
    assert "error" not in info, info
    assert info["torch"] and "cuda_available" in info and "mps_available" in info
    assert probe.poll() is info and not probe.running
    broken = tmp_path / "broken_python"
    broken.write_text("#!/bin/sh\necho 'no torch here' >&2\nexit 3\n")
    broken.chmod(0o755)
    failed = DeviceProbe(python=str(broken)).start().wait()
    assert "exit code 3" in failed["error"] and "no torch here" in failed["error"]
    missing = DeviceProbe(python=str(tmp_path / "nope")).start().wait()
    assert "cannot start" in missing["error"]
