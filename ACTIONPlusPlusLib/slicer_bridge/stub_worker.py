"""A worker stand-in without torch (and without psutil): the module's self-test runs the panel's path
(selection -> job folder -> worker events -> nodes) with it where torch is not installed, and the tests
use it to drive the GUI-side code without a training.

:class:`StubWorker` has the part of :class:`.runner.WorkerProcess` the panel and
:func:`.blocking_run.run_to_end` use (``start``, ``poll_events``, ``is_running``, ``exit_code``,
``log_lines``, ``cancel``, ``request_cancel``).  It reads a ``predict`` job as the worker does
(``jobs.read_job``), "segments" every volume with ``labeler(image) -> labels`` (default: three intensity
bands, a crude but deterministic stand-in for a model), writes each result where the worker writes it
(``<output_dir>/predictions/<case>.<suffix>``, marked as ours) and reports the worker's events, one per
poll, in its order: start, stage, one ``prediction`` per volume, done.  No slicer, no Qt.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

EXIT_OK, EXIT_CANCELLED = 0, 4


def intensity_bands(image: np.ndarray, classes: int = 3) -> np.ndarray:
    """Labels 0..``classes`` by the image's intensity quantiles above its median (background below)."""
    image = np.asarray(image, dtype=np.float32)
    edges = np.quantile(image, np.linspace(0.5, 1.0, classes + 1)[:-1])
    return np.digitize(image, edges).astype(np.uint8)


class StubWorker:
    """Runs a predict job in the caller's thread, one volume per :meth:`poll_events` call."""

    def __init__(self, job_path: str | Path, labeler: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
        self.job_path = Path(job_path)
        self.labeler = labeler
        self.events: list[dict[str, Any]] = []
        self.log_lines: deque[str] = deque()
        self._plan: deque[Callable[[], dict[str, Any]]] = deque()
        self._started = False
        self._cancelled = False

    def start(self) -> "StubWorker":
        from ..jobs import read_job

        job = read_job(self.job_path)
        if job.mode != "predict":
            raise ValueError(f"the stub worker runs predict jobs only, not {job.mode!r}")
        files = job.predict_files()
        job.predictions_dir.mkdir(parents=True, exist_ok=True)
        classes = 2 if job.preset == "acdc" else 0  # LV/Myo/RV values 1-3, LA value 1
        outputs = [str(job.predictions_dir / Path(f).name) for f in files]
        self._plan.append(lambda: {"event": "start", "job": str(self.job_path), "device": "stub", "torch": None,
                                   "mode": job.mode, "preset": job.preset})
        self._plan.append(lambda: {"event": "stage", "stage": "predict", "phase": "predict", "total": len(files)})
        for index, path in enumerate(files, start=1):
            self._plan.append(lambda p=path, i=index: self._predict(job, p, i, len(files), classes + 1))
        self._plan.append(lambda: {"event": "done", "model": str(job.model), "predictions": outputs, "exit_code": EXIT_OK})
        self._started = True
        return self

    def _predict(self, job: Any, path: Path, index: int, total: int, classes: int) -> dict[str, Any]:
        from ..data.imageio import PREDICTION_NOTE, read_case, split_suffix, write_label

        case = read_case(path)
        labels = (self.labeler or (lambda image: intensity_bands(image, classes)))(case.image)
        output = write_label(job.predictions_dir / Path(path).name, labels, case, note=PREDICTION_NOTE)
        return {"event": "prediction", "input": str(path), "output": str(output), "case": split_suffix(Path(path))[0],
                "index": index, "total": total}

    @property
    def is_running(self) -> bool:
        return self._started and bool(self._plan)

    @property
    def exit_code(self) -> Optional[int]:
        for event in reversed(self.events):
            if "exit_code" in event:
                return int(event["exit_code"])
        return None

    def poll_events(self) -> list[dict[str, Any]]:
        """The next event (its work done now), or nothing once the run has ended."""
        if not self._plan:
            return []
        event = self._plan.popleft()()
        self.events.append(event)
        return [event]

    def request_cancel(self, kill_after: Optional[float] = None) -> None:
        self._plan.clear()
        if self._started and self.exit_code is None:
            self._plan.append(lambda: {"event": "cancelled", "message": "cancelled", "resumable": False,
                                       "exit_code": EXIT_CANCELLED})

    def cancel(self, timeout: float = 0.0) -> None:
        self.request_cancel()
