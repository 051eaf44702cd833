"""Progress events (docs/ARCHITECTURE.md): the library reports through a callback and never prints."""

from __future__ import annotations

import time
from typing import Any, Callable

Callback = Callable[[dict[str, Any]], None]


class ProgressTracker:
    """Turns iteration counts and loss values into ``progress`` events with speed and ETA."""

    def __init__(self, callback: Callback | None, overall_total: int) -> None:
        self.callback = callback
        self.overall_total = overall_total
        self._last_time: float | None = None
        self._last_overall = 0
        self.seconds_per_iteration = 0.0

    def emit(self, event: dict[str, Any]) -> None:
        if self.callback is not None:
            self.callback(event)

    def start_window(self, overall_iteration: int) -> None:
        self._last_time = time.perf_counter()
        self._last_overall = overall_iteration

    def progress(self, *, stage: str, phase: str, iteration: int, total: int, overall_iteration: int,
                 losses: dict[str, float], lr: float, temperature: dict[str, float],
                 pseudo_labels: dict[str, Any] | None = None) -> dict[str, Any]:
        now = time.perf_counter()
        done = overall_iteration - self._last_overall
        if self._last_time is not None and done > 0:
            current = (now - self._last_time) / done
            # smooth over windows so the ETA does not jump with each log line
            self.seconds_per_iteration = current if self.seconds_per_iteration == 0 else 0.7 * self.seconds_per_iteration + 0.3 * current
        self._last_time, self._last_overall = now, overall_iteration
        event = {
            "event": "progress",
            "stage": stage,
            "phase": phase,
            "iteration": iteration,
            "total": total,
            "overall_iteration": overall_iteration,
            "overall_total": self.overall_total,
            "loss": losses.get("total", 0.0),
            "losses": losses,
            "lr": lr,
            "temperature": temperature,
            "seconds_per_iteration": self.seconds_per_iteration,
            "eta_seconds": self.seconds_per_iteration * max(0, self.overall_total - overall_iteration),
        }
        if pseudo_labels is not None:  # fine-tuning: class shares of labeled pixels and of pseudo-labels
            event["pseudo_labels"] = pseudo_labels
        self.emit(event)
        return event
