"""The panel's settings -> a run plan (job folder; fresh, warm start or resume) and the job's options
(the ``TrainingJob`` fields that :func:`..job_folder.write_training_job` takes).

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budget_choice import Budget, budget_for
from .model_cards import preset_mismatch
from .output_folder import new_run_folder, output_root_problem


DEVICE_CHOICES = ("auto", "cuda", "cpu", "mps")


@dataclass
class PanelSettings:
    """The training settings the panel shows (mirrors the parameter node)."""

    preset: str = "la"
    budget_mode: str = "paper"  # quick | paper | custom
    budget_value: float = 0  # custom: iterations or minutes
    budget_unit: str = "iterations"  # iterations | minutes
    seconds_per_iteration: float | None = None  # measured on this device by an earlier run (minutes -> iterations)
    device: str = "auto"
    continue_training: bool = False
    output_root: str = ""  # where run-* folders go; "continue from last model" looks here
    confidence: bool = False
    seed: int = 1337
    extra_overrides: dict[str, Any] = field(default_factory=dict)
    label_mapping: str = "name"  # segments -> classes by "name" or by label "value" (segmentations.LABEL_MAPPINGS)
    warm_start_model: str = ""  # a model.pt picked in the model list: "continue" starts from it, not the last run


LABEL_MAPPING_CHOICES = {"by name": "name", "by label value": "value"}  # the panel's words -> segmentations' mapping


def label_mapping(choice: str) -> str:
    """The bridge's mapping ("name" | "value") for the panel's choice ("by name" | "by label value")."""
    return LABEL_MAPPING_CHOICES.get(choice, choice)


RUN_OUTPUT = "run"  # a job folder's output sub-folder (job_folder.RUN_FOLDER, not imported: that module imports slicer)


@dataclass
class RunPlan:
    """Where a training run writes and how it starts (fresh, warm start, or resume)."""

    job_dir: Path  # job.json, nodes.json, dataset/; the worker writes into job_dir / "run"
    mode: str  # "train" | "continue"
    model: str | None = None  # warm-start model for mode "continue"
    resume: bool = False  # continue the interrupted run in job_dir / "run" (its checkpoint.pt)
    warnings: list[str] = field(default_factory=list)  # per-case messages found while writing the job

    @property
    def output_dir(self) -> Path:
        return self.job_dir / RUN_OUTPUT

    @property
    def description(self) -> str:
        if self.resume:
            return f"Resuming the interrupted run in {self.job_dir}"
        if self.mode == "continue":
            return f"Continuing from {self.model} in {self.job_dir}"
        return f"New run in {self.job_dir}"


def find_last_run(root: str | os.PathLike[str]) -> Path | None:
    """The most recent ``run-*`` job folder under ``root`` whose output holds a model or a checkpoint."""
    root = Path(root)
    if not root.is_dir():
        return None
    latest: tuple[float, Path] | None = None
    for job_dir in root.glob("run-*"):
        for name in ("model.pt", "checkpoint.pt"):
            path = job_dir / RUN_OUTPUT / name
            if path.is_file():
                stamp = path.stat().st_mtime
                if latest is None or stamp > latest[0]:
                    latest = (stamp, job_dir)
    return None if latest is None else latest[1]


def plan_run(settings: PanelSettings, now: float | None = None) -> RunPlan:
    """Decide the job folder and start mode from the panel's settings.

    "Continue from last model" picks the most recent run under the output folder: an interrupted run
    (checkpoint.pt without model.pt, e.g. cancelled) is resumed in place; a finished one (model.pt) is
    the warm start of a new run. With nothing to continue from, it says so instead of starting afresh.
    A last run trained for another preset is refused here, before anything is written (its job data
    included).
    """
    root = settings.output_root
    problem = output_root_problem(root)
    if problem:
        raise ValueError(problem)
    if settings.continue_training and settings.warm_start_model:
        return _warm_start_plan(settings, now)
    if settings.continue_training:
        last = find_last_run(root)
        if last is None:
            raise ValueError(
                f'"Continue from last model" is on but {root} holds no previous run (model.pt or checkpoint.pt). '
                "Turn it off to start a new run, or choose the output folder of an earlier run."
            )
        out = last / RUN_OUTPUT
        mismatch = preset_mismatch(out / "model.pt", settings.preset)
        if mismatch:
            raise ValueError(mismatch)
        if (out / "checkpoint.pt").is_file() and not (out / "model.pt").is_file():
            return RunPlan(job_dir=last, mode="train", resume=True)
        return RunPlan(job_dir=new_run_folder(root, now), mode="continue", model=str(out / "model.pt"))
    return RunPlan(job_dir=new_run_folder(root, now), mode="train")


def _warm_start_plan(settings: PanelSettings, now: float | None) -> RunPlan:
    """A new run that starts from the model picked in the model list (checked before anything is written)."""
    model = settings.warm_start_model
    if not os.path.isfile(model):
        raise ValueError(f"The warm-start model {model} does not exist (deleted or moved): pick another one in the "
                         "model list, or turn off \"Continue\".")
    mismatch = preset_mismatch(model, settings.preset)
    if mismatch:
        raise ValueError(mismatch)
    return RunPlan(job_dir=new_run_folder(settings.output_root, now), mode="continue", model=str(model))


def build_job_options(settings: PanelSettings, plan: RunPlan | None = None) -> dict[str, Any]:
    """Keyword options for ``job_folder.write_training_job`` (the ``TrainingJob`` fields) from the panel.

    Returns ``mode``, ``model``, ``resume``, ``overrides`` (the budget, ``budget_iterations``, plus any
    extra config overrides), ``device``, ``seed`` and ``write_confidence``.
    """
    device = (settings.device or "auto").lower()
    if device == "gpu":
        device = "cuda"
    if device not in DEVICE_CHOICES and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"unknown device {settings.device!r}; choose auto, cuda (GPU), mps or cpu")
    overrides: dict[str, Any] = dict(settings_budget(settings).overrides)
    overrides.update(settings.extra_overrides)
    plan = plan or RunPlan(job_dir=Path(settings.output_root or "."), mode="train")
    return {
        "mode": plan.mode,
        "model": plan.model,
        "resume": plan.resume,
        "overrides": overrides,
        "device": device,
        "seed": int(settings.seed),
        "write_confidence": bool(settings.confidence),
    }


def settings_budget(settings: PanelSettings) -> Budget:
    return budget_for(settings.preset, settings.budget_mode, settings.budget_value, settings.budget_unit,
                      settings.seconds_per_iteration)


def job_device(choice: str, info: Mapping[str, Any] | None) -> str:
    """The job's device for the panel's choice (auto / GPU / CPU) and what torch sees (``info`` from the
    device probe, None while unknown): GPU is CUDA, or Apple's MPS where torch reports only that."""
    choice = (choice or "auto").lower()
    if choice != "gpu":
        return choice
    if info and not info.get("cuda_available") and info.get("mps_available"):
        return "mps"
    return "cuda"


def effective_device(choice: str, info: Mapping[str, Any] | None) -> str:
    """The device a run will use (for the time estimate): 'cuda', 'mps' or 'cpu'."""
    choice = job_device(choice, info)
    if choice != "auto":
        return "cuda" if choice.startswith("cuda") else choice
    if info and info.get("cuda_available"):
        return "cuda"
    if info and info.get("mps_available"):
        return "mps"
    return "cpu"
