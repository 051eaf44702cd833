"""One run at a time, from the first click on: the panel's Train / Predict state machine (pure Python).

``idle`` -> ``preparing`` (the first click: dependencies, the checks, then the job folder written one
volume per timer tick, with the event loop running in between) -> ``running`` (the run object owns the
worker) -> ``idle``.  A click while
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


def begin_guarded(gate: RunGate, kind: str, prepare: Callable[[], Any], on_error: Callable[[Exception], Any],
                  refresh: Callable[[], Any]) -> Any:
    """The panel's Train / Predict click: None when refused (anything under way), else the panel is
    disabled (``refresh`` reads ``gate``) and ``prepare()`` runs the checks and returns the work that
    writes the job (a ``sliced_task.SlicedTask``: stepped by the panel's timer, the event loop running in
    between, where a click is refused; ``sliced_task.tick_preparation`` then starts the worker).  A failed
    preparation goes to ``on_error``, makes the panel usable again and returns None."""
    if not gate.begin(kind):
        return None
    refresh()
    try:
        return prepare()
    except Exception as exc:  # noqa: BLE001 - a refused selection, a full disk: nothing was written
        gate.finished()
        on_error(exc)
        refresh()
        return None
