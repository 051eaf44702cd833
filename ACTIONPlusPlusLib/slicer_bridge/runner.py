"""Run the worker as a separate process and collect its JSON-lines events (no slicer, no Qt).

The GUI polls :meth:`WorkerProcess.poll_events` from a ``qt.QTimer``; the batch script and the tests
call :meth:`WorkerProcess.wait_events` in a blocking loop.  Reader threads drain stdout and stderr
into queues so the child never blocks on a full pipe and the caller never blocks on a read.

Cancelling kills the WHOLE process tree: in Slicer the child is started through ``PythonSlicer``, a
launcher that runs ``python-real``; killing the launcher alone would leave training running.  The
worker also honours a stop file (``<job>.stop``) so that cancelling works where signals do not reach a
Python handler (Windows).  See docs/ARCHITECTURE.md for the events and exit codes.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

import psutil

from ..jobs import stop_file_for
from .child_process import LIB_DIR, child_environment, find_python, lower_priority, popen_options, thread_environment

WORKER_SCRIPT = LIB_DIR / "worker.py"  # run by file path: the child does not inherit Slicer's module paths
TERMINAL_EVENTS = ("done", "error", "cancelled")
EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_TRAINING, EXIT_CANCELLED = 0, 1, 2, 3, 4


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class WorkerProcess:
    """One worker run: ``start()``, then ``poll_events()`` until ``is_running`` is False.

    ``python``: interpreter (default :func:`find_python`); ``env``: extra environment variables;
    ``force_cpu``: hide GPUs from the child (``CUDA_VISIBLE_DEVICES=-1``); ``log_limit``: how many
    non-event lines (stderr, stray stdout) are kept in :attr:`log_lines`.
    """

    def __init__(
        self,
        job_path: str | Path,
        python: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        *,
        force_cpu: bool = False,
        script: str | Path | None = None,
        extra_args: Sequence[str] = (),
        log_limit: int = 2000,
    ) -> None:
        self.job_path = Path(job_path)
        self.python = python or find_python()
        self.extra_env = dict(env or {})
        self.cwd = str(cwd) if cwd is not None else None
        self.force_cpu = force_cpu
        self.script = Path(script) if script is not None else WORKER_SCRIPT
        self.extra_args = list(extra_args)
        self.log_lines: deque[str] = deque(maxlen=log_limit)
        self.events: list[dict[str, Any]] = []  # every event seen so far, in order
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._queue: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._pending: deque[tuple[str, str | None]] = deque()
        self._process: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._open_pipes = 0
        self._finished = False
        self._terminal_seen = False
        self._cancel_requested = False
        self._killed = False
        self._start_time: float | None = None
        self._kill_deadline: float | None = None
        self._terminated: list[psutil.Process] = []

    # ------------------------------------------------------------------------------------------------
    @property
    def command(self) -> list[str]:
        return [self.python, str(self.script), str(self.job_path), *self.extra_args]

    def environment(self) -> dict[str, str]:
        """The child's environment; CPU threads leave Slicer a core (:func:`thread_environment`)."""
        return thread_environment(child_environment(self.extra_env, self.force_cpu))

    def start(self) -> "WorkerProcess":
        if self._process is not None:
            raise RuntimeError("this worker was already started; create a new WorkerProcess")
        stop_file_for(self.job_path).unlink(missing_ok=True)
        kwargs = popen_options()  # Windows: no console window; POSIX: its own session
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment(),
            cwd=self.cwd,
            **kwargs,
        )
        self._start_time = time.monotonic()
        lower_priority(self._process.pid)  # below Slicer: the GUI stays responsive during CPU training
        self._open_pipes = 2
        for name, pipe in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            thread = threading.Thread(target=self._read, args=(name, pipe), name=f"worker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, name: str, pipe: Any) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                self._queue.put((name, raw.decode("utf-8", errors="replace").rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))  # end of this pipe

    # ------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The process's exit status (None while running; negative = killed by that signal on POSIX)."""
        return self._process.poll() if self._process is not None else None

    @property
    def exit_code(self) -> int | None:
        """The worker's own exit code when it reported one (``done``/``error``/``cancelled`` events),
        which survives a launcher (PythonSlicer) that dies by signal; else :attr:`returncode`."""
        for event in reversed(self.events):
            if event.get("event") in TERMINAL_EVENTS and isinstance(event.get("exit_code"), int):
                return event["exit_code"]
        return self.returncode

    @property
    def is_running(self) -> bool:
        """True until the process has exited AND both pipes are drained AND all events were polled."""
        if self._process is None:
            return False
        return not self._finished

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def _handle_line(self, name: str, line: str, out: list[dict[str, Any]]) -> None:
        if name == "stderr":
            self.log_lines.append(line)
            if line.strip():
                self._stderr_tail.append(line)
            return
        text = line.strip()
        if text.startswith("{"):
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                if event["event"] in TERMINAL_EVENTS:
                    self._terminal_seen = True
                self.events.append(event)
                out.append(event)
                return
        self.log_lines.append(line)

    def _enforce_kill_deadline(self) -> None:
        if self._kill_deadline is not None and time.monotonic() > self._kill_deadline:
            self._kill_deadline = None
            self._kill_tree()

    def poll_events(self) -> list[dict[str, Any]]:
        """Parsed events that arrived since the last call (never blocks).

        When the process has ended with a non-zero code and said nothing about it, a synthesized
        ``error`` event (or ``cancelled`` after :meth:`cancel`) carrying the exit code and the last
        stderr lines is appended, so callers only ever look at events.
        """
        out: list[dict[str, Any]] = []
        self._enforce_kill_deadline()
        while True:
            if self._pending:
                name, line = self._pending.popleft()
            else:
                try:
                    name, line = self._queue.get_nowait()
                except queue.Empty:
                    break
            if line is None:
                self._open_pipes -= 1
                continue
            self._handle_line(name, line, out)
        if self._process is not None and not self._finished and self._open_pipes <= 0:
            code = self._process.poll()
            if code is None:
                self._enforce_kill_deadline()
                return out  # pipes closed but the process is still exiting: look again next poll
            self._finished = True
            if not self._terminal_seen:
                synthesized = self._synthesize(code)
                if synthesized is not None:
                    self.events.append(synthesized)
                    out.append(synthesized)
        return out

    def _synthesize(self, code: int) -> dict[str, Any] | None:
        tail = "\n".join(list(self._stderr_tail)[-8:])
        if self._cancel_requested:
            how = "killed" if self._killed else "stopped"
            return {"event": "cancelled", "message": f"training was cancelled (worker {how}, exit code {code})",
                    "exit_code": EXIT_CANCELLED, "synthesized": True}
        if code == 0:
            return {"event": "error", "message": "worker exited without reporting a result (exit code 0)",
                    "type": "WorkerCrash", "exit_code": EXIT_UNEXPECTED, "synthesized": True}
        detail = f": {tail}" if tail else " (no error output)"
        event: dict[str, Any] = {"event": "error", "type": "WorkerCrash", "returncode": code, "synthesized": True}
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            event["signal"] = sig
            message = f"worker was killed by {sig}{detail}"
        else:
            message = f"worker exited with code {code}{detail}"
        # the protocol's codes only (a signal's -9 or a launcher's 137 is reported as unexpected, 1)
        known = (EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_TRAINING, EXIT_CANCELLED)
        return {**event, "message": message, "exit_code": code if code in known else EXIT_UNEXPECTED}

    def wait_events(self, timeout: float | None = None, interval: float = 0.05) -> Iterator[dict[str, Any]]:
        """Yield events as they arrive until the worker has finished (or ``timeout`` seconds passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll_events():
                yield event
            if not self.is_running:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.pid} still running after {timeout} s")
            try:  # sleep until something arrives; keep it for the next poll, in order
                self._pending.append(self._queue.get(timeout=interval))
            except queue.Empty:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until finished, collecting every event into :attr:`events`; return :attr:`exit_code`."""
        for _ in self.wait_events(timeout):
            pass
        return self.exit_code

    # ------------------------------------------------------------------------------------------------
    def _tree(self) -> list[psutil.Process]:
        if self._process is None:
            return []
        try:
            root = psutil.Process(self._process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def request_cancel(self, kill_after: float | None = 10.0) -> None:
        """Ask the worker to stop WITHOUT blocking (for a GUI timer): write the stop file and (POSIX)
        SIGTERM every process of its tree.  The worker saves a checkpoint and exits with code 4; if anything of
        the tree is still alive ``kill_after`` seconds later, the next :meth:`poll_events` kills it.
        """
        if self._process is None or self._finished:
            return
        self._cancel_requested = True
        try:
            stop_file_for(self.job_path).write_text("cancel requested\n")
        except OSError:
            pass
        self._terminated = self._tree()
        if os.name != "nt":  # on Windows terminate() is TerminateProcess (no checkpoint): the stop file asks
            for proc in self._terminated:
                try:
                    proc.terminate()  # SIGTERM: the worker's handler stops at the next iteration
                except psutil.NoSuchProcess:
                    pass
        if kill_after is not None:
            self._kill_deadline = time.monotonic() + kill_after

    def cancel(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop (stop file + SIGTERM to its whole tree), wait up to ``timeout``
        seconds for the checkpoint and a clean exit, then SIGKILL whatever is left of the tree.

        Blocks for at most about ``timeout`` seconds; the remaining events are still delivered by
        :meth:`poll_events`.  The GUI should prefer :meth:`request_cancel` and keep polling.
        """
        if self._process is None:
            return
        self.request_cancel(kill_after=None)
        tree = self._terminated
        # Wait for the root through Popen (psutil's wait would reap it and steal its exit status),
        # for the others through psutil; children spawned after the snapshot are caught by the sweep.
        deadline = time.monotonic() + timeout
        try:
            self._process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            pass
        others = [p for p in tree if p.pid != self._process.pid]
        psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
        self._kill_tree(extra=others)

    def _kill_tree(self, extra: Sequence[psutil.Process] = ()) -> None:
        if self._process is None:
            return
        alive = [p for p in self._tree() if _alive(p)] + [p for p in extra if _alive(p)]
        alive += [p for p in self._terminated if _alive(p) and p not in alive]
        for proc in alive:
            try:
                proc.kill()
                self._killed = True
            except psutil.NoSuchProcess:
                pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        psutil.wait_procs([p for p in alive if p.pid != self._process.pid], timeout=5)

    def kill(self) -> None:
        """Kill the whole tree immediately (no checkpoint)."""
        self._cancel_requested = True
        self._kill_tree()

    def __enter__(self) -> "WorkerProcess":
        return self if self._process is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        if self.is_running and self.returncode is None:
            self.kill()
