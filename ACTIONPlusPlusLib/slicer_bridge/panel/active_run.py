"""The worker the panel is watching, with what it reported so far (pure Python)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run_progress import ProgressTracker


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

    def trained_device(self) -> str:
        """'cuda', 'mps' or 'cpu': where the worker said it ran (the key of the remembered speed)."""
        return (self.tracker.device or "cpu").split(":")[0]

