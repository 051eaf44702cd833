"""The worker the panel is watching, with what it reported so far (pure Python)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run_progress import ProgressTracker

CANCEL_GRACE_MIN = 30.0  # seconds: the checkpoint write alone (torch.save of model, EMA, optimiser, queues)
CANCEL_GRACE_MAX = 900.0  # never wait longer than this for a worker that does not stop
CANCEL_STEPS = 3  # iterations the worker may still need: the one running, the checkpoint's own pass, margin


def cancel_grace_seconds(seconds_per_iteration: float | None) -> float:
    """How long Cancel waits for the worker's checkpoint before killing it: scaled to the measured step
    (a slow CPU 3D iteration can take longer than a fixed 10 s), at least :data:`CANCEL_GRACE_MIN`
    (the checkpoint write), at most :data:`CANCEL_GRACE_MAX`.  Killed earlier, the run would fall back to
    a checkpoint hundreds of iterations old."""
    step = float(seconds_per_iteration or 0.0)
    if step != step or step < 0:  # NaN / negative: unknown
        step = 0.0
    return min(CANCEL_GRACE_MAX, CANCEL_GRACE_MIN + CANCEL_STEPS * step)


@dataclass
class ActiveRun:
    worker: Any  # runner.WorkerProcess
    job_path: Path
    kind: str  # "train" | "predict"
    confidence: bool
    preset: str = "la"
    tracker: ProgressTracker = field(default_factory=ProgressTracker)
    events: list[dict] = field(default_factory=list)
    cancelled: bool = False
    scene_closed: bool = False  # the scene was closed meanwhile: results stay on disk, not loaded
    chart: Any = None  # charts.TrainingChart of a training run
    chart_rows: int = 0

    @property
    def run_folder(self) -> Path:
        return Path(self.job_path).parent

    def cancel_grace(self) -> float:
        """Seconds Cancel waits for the checkpoint (:func:`cancel_grace_seconds` of the measured step)."""
        return cancel_grace_seconds(self.tracker.seconds_per_iteration)

    def trained_device(self) -> str:
        """'cuda', 'mps' or 'cpu': where the worker said it ran (the key of the remembered speed)."""
        return (self.tracker.device or "cpu").split(":")[0]

