"""Work the panel does in the GUI thread, one small step per timer tick, so that the window never
freezes: writing a job's volumes, loading a job's predictions as nodes.

A :class:`SlicedTask` wraps a generator that yields ``(done, total, name)`` before each step and returns
its result (``job_folder.iter_training_job``, ``results.iter_predictions``).  The panel calls
:meth:`SlicedTask.tick` from a zero-interval ``qt.QTimer`` (one volume per tick, the event loop runs in
between), shows :attr:`SlicedTask.status` and :attr:`SlicedTask.percent`, and Cancel calls
:meth:`SlicedTask.cancel`, which closes the generator (it removes what it wrote).  :func:`tick_preparation`
is the decision after each tick of a job being written: keep going, start the worker, or make the panel
usable again after a failure or a cancel.

Pure Python for the Slicer panel: no Qt, no slicer, no torch, so it is tested without Slicer.
"""

from __future__ import annotations

from typing import Any, Callable, Generator, List, Optional

from .run_gate import PREPARING, RunGate

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


class SlicedTask:
    """One generator, stepped by :meth:`tick`. ``what`` names the work in the status line; ``notes`` is a
    list the work fills as it goes (the per-case warnings of a job), shown when it is done."""

    def __init__(self, steps: Generator[Any, None, Any], what: str, notes: Optional[List[str]] = None) -> None:
        self.steps = steps
        self.what = what
        self.notes = notes if notes is not None else []
        self.state = RUNNING
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.done, self.total, self.name = 0, 0, ""

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0

    @property
    def status(self) -> str:
        if self.state == CANCELLED:
            return f"{self.what}: cancelled."
        if self.total and self.done < self.total:
            return f"{self.what}: {self.done + 1}/{self.total} {self.name}".rstrip()
        return f"{self.what}\u2026"

    def tick(self) -> bool:
        """Run one step; True while more remain. An exception ends the task (``state`` failed, ``error``)."""
        if self.finished:
            return False
        try:
            progress = next(self.steps)
        except StopIteration as stop:
            self.state, self.result = DONE, stop.value
            self.done = self.total
            return False
        except Exception as exc:  # noqa: BLE001 - reported by the panel, which stays usable
            self.state, self.error = FAILED, exc
            return False
        if isinstance(progress, tuple) and len(progress) == 3:
            self.done, self.total, self.name = progress
        return True

    def cancel(self) -> None:
        """Stop before the next step: the generator is closed (its clean-up runs now)."""
        if self.finished:
            return
        self.state = CANCELLED
        try:
            self.steps.close()
        except Exception as exc:  # noqa: BLE001 - a failing clean-up is still a cancel, with its error
            self.error = exc


def tick_preparation(gate: RunGate, task: SlicedTask, start: Callable[[Any], Any],
                     on_error: Callable[[BaseException], Any], on_cancelled: Callable[[], Any]) -> bool:
    """One tick of a job being written while ``gate`` is preparing; True while it goes on.

    Done: ``start(result)`` (the worker; the gate is then running). Failed (the writing or the start):
    ``on_error`` and the panel is usable again. Cancelled: ``on_cancelled``, the panel usable again."""
    if task.tick():
        return True
    try:
        if task.state == DONE:
            start(task.result)
            if gate.state == PREPARING:
                gate.started()
            return False
    except Exception as exc:  # noqa: BLE001 - a worker that cannot start: the panel stays usable
        task.error = exc
    if gate.state == PREPARING:
        gate.finished()
    if task.state == CANCELLED and task.error is None:
        on_cancelled()
    else:
        on_error(task.error or RuntimeError(f"{task.what} stopped"))
    return False
