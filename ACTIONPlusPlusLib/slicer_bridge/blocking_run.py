"""Run a started worker to its end in the caller's thread (batch scripts, the module's self-test),
folding its events into a :class:`.panel.run_progress.ProgressTracker` (no slicer, no Qt)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .panel.run_progress import ProgressTracker


class WorkerOutcome:
    """What a blocking run returns: exit code, all events and the folded progress state."""

    def __init__(self, returncode: int | None, events: list[dict], tracker: ProgressTracker, log: list[str]) -> None:
        self.returncode = returncode
        self.events = events
        self.tracker = tracker
        self.log = log

    @property
    def message(self) -> str:
        return self.tracker.outcome_message(self.returncode)


def run_to_end(
    worker: Any,
    timeout: float | None = None,
    callback: Callable[[dict], None] | None = None,
    idle: Callable[[], Any] | None = None,
) -> WorkerOutcome:
    """Poll ``worker`` (a started :class:`.runner.WorkerProcess`) until it exits; ``callback`` gets every
    event, ``idle`` runs between polls (the application's event loop).  The worker is cancelled on a
    timeout (TimeoutError) or any exception."""
    tracker = ProgressTracker()
    events: list[dict] = []
    start = time.monotonic()
    try:
        while True:
            for event in worker.poll_events():
                events.append(event)
                line = tracker.handle(event)
                if line:
                    logging.info("ACTION++: %s", line)
                if callback is not None:
                    callback(event)
            if not worker.is_running:
                for event in worker.poll_events():
                    events.append(event)
                    tracker.handle(event)
                break
            if timeout is not None and time.monotonic() - start > timeout:
                worker.cancel()
                raise TimeoutError(f"the worker did not finish within {timeout:.0f} s")
            time.sleep(0.2)
            if idle is not None:
                idle()
    except BaseException:
        if worker.is_running:
            worker.cancel()
        raise
    return WorkerOutcome(worker.exit_code, events, tracker, list(worker.log_lines))
