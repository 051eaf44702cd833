"""One run at a time, from the first click on: the panel's Train / Predict state machine (pure Python).

``idle`` -> ``preparing`` (the first click: dependencies, the job folder being written, with the event
loop running in between) -> ``running`` (the run object owns the worker) -> ``idle``.  A click while
``preparing`` or ``running`` is refused, so a second Train during the export can never start a second
worker that nothing watches; the panel's controls are disabled in both states (``controls_enabled``).
A failed preparation goes back to ``idle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IDLE, PREPARING, RUNNING = "idle", "preparing", "running"


@dataclass
class RunGate:
    state: str = IDLE
    kind: str | None = None  # "train" | "predict" while not idle

    @property
    def controls_enabled(self) -> bool:
        """Whether the panel's inputs and Train / Predict may be used (only when nothing is under way)."""
        return self.state == IDLE

    @property
    def cancellable(self) -> bool:
        """Cancel is offered once a worker runs (before that the click is still in the GUI thread)."""
        return self.state == RUNNING

    def begin(self, kind: str) -> bool:
        """The click: True when it may go on (now ``preparing``), False when something is under way."""
        if self.state != IDLE:
            return False
        self.state, self.kind = PREPARING, kind
        return True

    def started(self) -> None:
        """The run object now owns the worker."""
        if self.state != PREPARING:
            raise RuntimeError(f"a run started while the panel was {self.state}")
        self.state = RUNNING

    def finished(self) -> None:
        """The run ended (or its preparation failed): the panel is usable again."""
        self.state, self.kind = IDLE, None


def run_guarded(gate: RunGate, kind: str, prepare: Callable[[], Any], start: Callable[[Any], Any],
                on_error: Callable[[Exception], Any], refresh: Callable[[], Any]) -> bool:
    """The panel's click handler: refuse a click while anything is under way, else disable the panel
    (``refresh`` reads ``gate``), ``prepare()`` the job (it may run the event loop: a click there is
    refused), ``start(job)`` the worker (the caller calls ``gate.started()`` once the run object holds
    it).  Any failure goes to ``on_error`` and makes the panel usable again.  True when a run started."""
    if not gate.begin(kind):
        return False
    refresh()
    try:
        start(prepare())
        if gate.state != RUNNING:
            gate.started()
        return True
    except Exception as exc:  # noqa: BLE001 - every failure ends in the panel, controls enabled
        if gate.state == PREPARING:  # (once running, the run object owns the worker and ends the run)
            gate.finished()
        on_error(exc)
        return False
    finally:
        refresh()
