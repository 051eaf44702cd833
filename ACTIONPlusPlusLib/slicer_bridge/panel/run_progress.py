"""Worker events -> the panel's state: the progress line ("Stage 2/2 fine-tuning · it 1200/20000 · loss
0.43 · 0.21 s/it · ETA 1h05"), the overall percentage over both stages, the loss history behind the
live chart, the pseudo-label report of fine-tuning, and the messages for the worker's exit codes.

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .budget_choice import measured_seconds_per_iteration
from .formatting import SEP, format_duration, format_loss


STAGES = {
    "pretrain": (1, "pre-training"),
    "finetune": (2, "fine-tuning"),
    "supervised": (0, "supervised training"),
}

PHASES = {"warmup": "warm-up", "joint": "joint", "finetune": ""}


def stage_title(stage: str | None, phase: str | None = None, two_stages: bool = True) -> str:
    """'Stage 1/2 pre-training (warm-up)', 'Stage 2/2 fine-tuning', 'Supervised training'."""
    number, label = STAGES.get(stage or "", (0, stage or "training"))
    if stage in ("pretrain", "finetune") and two_stages:
        title = f"Stage {number}/2 {label}"
    else:
        title = label[:1].upper() + label[1:]
    phase_label = PHASES.get(phase or "", phase or "")
    if phase_label and stage == "pretrain":
        title += f" ({phase_label})"
    return title


def format_progress(event: Mapping[str, Any], two_stages: bool = True) -> str:
    """'Stage 2/2 fine-tuning · it 1200/20000 · loss 0.43 · 0.21 s/it · ETA 1h05'."""
    parts = [stage_title(event.get("stage"), event.get("phase"), two_stages)]
    if event.get("iteration") is not None:
        total = event.get("total")
        parts.append(f"it {event['iteration']}/{total}" if total else f"it {event['iteration']}")
    if event.get("loss") is not None:
        parts.append(f"loss {format_loss(float(event['loss']))}")
    spi = event.get("seconds_per_iteration")
    if spi is not None:
        parts.append(f"{spi:.2f} s/it" if spi < 10 else f"{spi:.0f} s/it")
    if event.get("eta_seconds") is not None:
        parts.append(f"ETA {format_duration(float(event['eta_seconds']))}")
    return SEP.join(parts)


def overall_percent(event: Mapping[str, Any], stage_totals: Mapping[str, int] | None = None) -> float:
    """Progress over both stages, 0-100.

    Uses ``overall_iteration / overall_total`` when the event has them, else combines the stage's
    ``iteration / total`` with ``stage_totals`` (iterations of each stage, e.g. from the job).
    """
    done, total = event.get("overall_iteration"), event.get("overall_total")
    if done is not None and total:
        return max(0.0, min(100.0, 100.0 * float(done) / float(total)))
    it, stage_total = event.get("iteration"), event.get("total")
    if it is None or not stage_total:
        return 0.0
    stage = event.get("stage")
    if stage_totals:
        order = [s for s in ("pretrain", "finetune") if stage_totals.get(s)]
        grand = sum(int(stage_totals[s]) for s in order) or 1
        before = 0
        for s in order:
            if s == stage:
                break
            before += int(stage_totals[s])
        return max(0.0, min(100.0, 100.0 * (before + float(it)) / grand))
    return max(0.0, min(100.0, 100.0 * float(it) / float(stage_total)))


PSEUDO_COLLAPSE_RATIO = 0.2  # a class whose pseudo-label share falls below this fraction of its labeled share


def _foreground(shares: Mapping[str, Any] | None) -> dict[str, float]:
    return {str(k): float(v) for k, v in (shares or {}).items()
            if str(k).lower() not in ("background", "bg") and isinstance(v, (int, float))}


def pseudo_label_collapse(report: Mapping[str, Any] | None, ratio: float = PSEUDO_COLLAPSE_RATIO) -> list[str]:
    """Foreground classes whose share among the kept pseudo-labels fell below ``ratio`` times their share
    among labeled pixels (the teacher stopped predicting them: pseudo-labels are collapsing)."""
    if not report:
        return []
    labeled = _foreground(report.get("labeled_fraction"))
    pseudo = _foreground(report.get("pseudo_fraction"))
    return [name for name, share in labeled.items() if share >= 0.005 and pseudo.get(name, 0.0) < ratio * share]


def format_pseudo_labels(report: Mapping[str, Any] | None) -> str | None:
    """'Pseudo-labels: 62% of unlabeled pixels kept · RV 21% (labeled 20%) · Myo 3% (labeled 25%) ...'."""
    if not report:
        return None
    parts = []
    mask = report.get("mask_fraction")
    if isinstance(mask, (int, float)):
        parts.append(f"{100 * float(mask):.0f}% of unlabeled pixels kept")
    labeled = _foreground(report.get("labeled_fraction"))
    pseudo = _foreground(report.get("pseudo_fraction"))
    for name in list(dict.fromkeys([*labeled, *pseudo])):
        text = f"{name} {100 * pseudo.get(name, 0.0):.0f}%"
        if name in labeled:
            text += f" (labeled {100 * labeled[name]:.0f}%)"
        parts.append(text)
    if not parts:
        return None
    line = "Pseudo-labels: " + SEP.join(parts)
    collapsed = pseudo_label_collapse(report)
    if collapsed:
        line += f"{SEP}collapsing: {', '.join(collapsed)}"
    return line


class LossHistory:
    """The rows behind the live loss chart, one per progress event (columns grow as names appear).

    Columns: ``iteration`` (over the whole run), ``loss``, each named loss, then for fine-tuning
    ``pseudo <class>`` / ``labeled <class>`` (class shares, 0-1) and ``mask fraction``.  Missing values
    are NaN, so a plot skips them.
    """

    ITERATION = "iteration"

    def __init__(self) -> None:
        self.columns: list[str] = [self.ITERATION, "loss"]
        self.rows: list[dict[str, float]] = []

    def add(self, event: Mapping[str, Any]) -> bool:
        if event.get("event") != "progress" or event.get("overall_iteration") is None:
            return False
        row: dict[str, float] = {self.ITERATION: float(event["overall_iteration"])}
        if isinstance(event.get("loss"), (int, float)):
            row["loss"] = float(event["loss"])
        for name, value in (event.get("losses") or {}).items():
            if name != "total" and isinstance(value, (int, float)):
                row[f"loss {name}"] = float(value)
        report = event.get("pseudo_labels") or {}
        for name, value in _foreground(report.get("pseudo_fraction")).items():
            row[f"pseudo {name}"] = value
        for name, value in _foreground(report.get("labeled_fraction")).items():
            row[f"labeled {name}"] = value
        if isinstance(report.get("mask_fraction"), (int, float)):
            row["mask fraction"] = float(report["mask_fraction"])
        for key in row:
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(row)
        return True

    def column(self, name: str) -> list[float]:
        return [row.get(name, float("nan")) for row in self.rows]

    @property
    def loss_columns(self) -> list[str]:
        return [c for c in self.columns if c == "loss" or c.startswith("loss ")]

    @property
    def fraction_columns(self) -> list[str]:
        return [c for c in self.columns if c.startswith(("pseudo ", "labeled ")) or c == "mask fraction"]


EXIT_MESSAGES = {
    0: "Finished.",
    1: "The worker stopped on an unexpected error.",
    2: "The worker rejected the input (job or data).",
    3: "Training failed (for example a NaN loss); the last good checkpoint is kept.",
    4: "Cancelled. The last checkpoint was saved: turn on \u201cContinue from last model\u201d to resume.",
}


def exit_code_message(code: int | None, error: str | None = None) -> str:
    """A sentence for the panel about how the worker ended (``error`` is its last error event)."""
    if code is None:
        return "The worker is still running."
    base = EXIT_MESSAGES.get(code)
    if base is None:
        if code < 0:
            base = f"The worker was killed by signal {-code} (out of memory, or stopped from outside)."
        else:
            base = f"The worker exited with code {code}."
    if error and code != 0:
        return f"{base} {error}"
    return base


@dataclass
class ProgressTracker:
    """Folds worker events into what the panel shows. Feed every event to :meth:`handle`."""

    stage_totals: dict[str, int] = field(default_factory=dict)
    percent: float = 0.0
    status: str = "Starting\u2026"
    device: str = ""
    error: str | None = None
    error_type: str | None = None
    warnings: list[str] = field(default_factory=list)
    model_path: str | None = None
    predictions: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    done: bool = False
    cancelled: bool = False
    resumable: bool = False
    exit_code: int | None = None  # from the terminal event (done / error / cancelled)
    last_progress: dict[str, Any] | None = None
    history: LossHistory = field(default_factory=LossHistory)
    collapsed: list[str] = field(default_factory=list)  # classes whose pseudo-labels collapsed (last report)
    events: list[dict[str, Any]] = field(default_factory=list)  # progress events (for the measured speed)

    @property
    def two_stages(self) -> bool:
        """False for a supervised-only run (one stage)."""
        return "supervised" not in self.stage_totals

    def handle(self, event: Mapping[str, Any]) -> str | None:
        """Update the state from one event; returns a line for the log (or None)."""
        kind = event.get("event")
        if isinstance(event.get("exit_code"), int) and kind in ("done", "error", "cancelled"):
            self.exit_code = int(event["exit_code"])
        if kind == "start":
            self.device = str(event.get("device", ""))
            self.status = f"Worker started on {self.device or 'the default device'}"
            torch_version = event.get("torch")
            return self.status + (f" (torch {torch_version})" if torch_version else "")
        if kind == "stage":
            stage = str(event.get("stage", ""))
            total = event.get("total")
            if stage == "predict":
                self.status = f"Predicting {total} volume(s)" if total is not None else "Predicting"
                return self.status
            if stage == "export":
                self.status = f"Saving the model (BatchNorm statistics over {total} batches of training images)"
                return self.status
            if total is not None:
                self.stage_totals[stage] = max(int(total), self.stage_totals.get(stage, 0))
            self.status = stage_title(stage, event.get("phase"), self.two_stages)
            return f"{self.status}: {total} iterations" if total is not None else self.status
        if kind == "progress":
            self.last_progress = dict(event)
            self.events.append(dict(event))
            self.history.add(event)
            self.percent = overall_percent(event, self.stage_totals)
            self.status = format_progress(event, self.two_stages)
            line = self.status
            report = event.get("pseudo_labels")
            pseudo = format_pseudo_labels(report)
            if pseudo:
                line += "\n  " + pseudo
            collapsed = pseudo_label_collapse(report)
            if collapsed:
                self.status += f"{SEP}pseudo-labels collapsing: {', '.join(collapsed)}"
                new = [c for c in collapsed if c not in self.collapsed]
                if new:
                    message = (f"pseudo-labels of {', '.join(new)} are collapsing (the teacher hardly predicts "
                               "them on unlabeled images); more labeled cases or a longer pre-training may help")
                    self.warnings.append(message)
                    line += f"\n  Warning: {message}"
            self.collapsed = collapsed
            return line
        if kind == "pretraining":  # cached pre-training (training/pretrain_cache.py): reused, or made now
            iterations = event.get("iterations")
            if event.get("cached"):
                self.status = f"Using the cached pre-training ({iterations} iterations) of these images"
            else:
                again = "resuming" if event.get("resumed") else "once"
                self.status = (f"Pre-training {iterations} iterations {again}; later runs on these images "
                               "start from it")
            return f"{self.status}: {event.get('path')}"
        if kind == "checkpoint":
            self.checkpoint = str(event.get("path"))
            return f"Checkpoint saved: {self.checkpoint}"
        if kind == "warning":
            message = str(event.get("message", ""))
            self.warnings.append(message)
            return f"Warning: {message}"
        if kind == "prediction":
            output = str(event.get("output", ""))
            if output not in self.predictions:
                self.predictions.append(output)
            index, total = event.get("index"), event.get("total")
            position = f" ({index}/{total})" if index is not None and total else ""
            if self.last_progress is None and index is not None and total:
                self.percent = 100.0 * float(index) / float(total)  # a predict-only job
            self.status = f"Predicted {event.get('case', output)}{position}"
            return self.status
        if kind == "done":
            self.done = True
            self.percent = 100.0
            self.model_path = event.get("model") or self.model_path
            for path in event.get("predictions") or []:
                if path not in self.predictions:
                    self.predictions.append(path)
            self.status = "Finished."
            return f"Done. Model: {self.model_path}" if self.model_path else "Done."
        if kind == "cancelled":
            self.cancelled = True
            self.resumable = bool(event.get("resumable"))
            self.checkpoint = event.get("checkpoint") or self.checkpoint
            self.model_path = event.get("model") or self.model_path
            self.status = f"Cancelled: {event.get('message', 'stopped')}"
            return self.status
        if kind == "error":
            self.error = str(event.get("message", "unknown error"))
            self.error_type = event.get("type")
            self.status = f"Error: {self.error}"
            return self.status
        return None

    @property
    def seconds_per_iteration(self) -> float | None:
        """The run's measured speed (see :func:`measured_seconds_per_iteration`)."""
        return measured_seconds_per_iteration(self.events)

    def outcome_message(self, returncode: int | None) -> str:
        """How the run ended, in one paragraph for the panel."""
        code = self.exit_code if self.exit_code is not None else returncode
        if self.cancelled or code == 4:
            if self.resumable:
                return exit_code_message(4)
            return "Cancelled." + (f" {self.status[len('Cancelled: '):]}" if self.status.startswith("Cancelled: ") else "")
        return exit_code_message(code, self.error)
