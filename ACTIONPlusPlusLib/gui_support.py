"""Pure-Python helpers for the Slicer panel (no Qt, no slicer, no torch at import time).

The module file ``ACTIONPlusPlus/ACTIONPlusPlus.py`` only wires widgets; everything it needs beyond
wiring that the scene bridge does not provide lives here so that it is tested without Slicer:

- the training budget in the user's terms ("quick" / "paper" / "custom" iterations or minutes, with
  the estimated time on the chosen device) and the job options built from the panel's settings;
- the output folder: a persistent per-user default and the checks of a folder the user typed;
- the progress line ("Stage 2/2 fine-tuning · it 1200/20000 · loss 0.43 · 0.21 s/it · ETA 1h05"), the
  overall percentage over both stages, and a :class:`ProgressTracker` that folds worker events into the
  panel's state;
- checks of the user's selection before a job is written (no labeled pair, a volume both labeled and
  unlabeled, no free disk) and messages for the worker's exit codes;
- the dependency plan (what to install, step by step with the command to run by hand, the torch
  version check, the message for headless runs) and a lookup of Slicer's pip helpers that works across
  Slicer versions;
- the loss history behind the live chart, and the pseudo-label report of fine-tuning;
- small numpy helpers for the module's self-test (Dice).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as _config

SEP = " \u00b7 "  # middle dot between the parts of the progress line

# ---------------------------------------------------------------------------------------------------
# Presets and iterations
# ---------------------------------------------------------------------------------------------------

PRESET_TITLES = {
    "la": "Left atrium (3D V-Net)",
    "acdc": "Cardiac LV / Myo / RV (2D U-Net)",
}

BUDGET_MODES = ("quick", "paper", "custom")
BUDGET_UNITS = ("iterations", "minutes")
ITERATION_KEYS = ("pretrain_warmup_iterations", "pretrain_joint_iterations", "finetune_iterations")

# "quick": a sanity run that shows the whole pipeline (both stages, prediction) in minutes on a CPU; a
# budget (``Config.budget_iterations``) laid out over the phases in the paper's proportions.
QUICK_BUDGET = {"acdc": 600, "la": 400}


def preset_config(preset: str) -> _config.Config:
    """The paper's protocol for ``preset`` (raises ValueError naming the known presets)."""
    return _config.preset(preset)


def preset_summary(preset: str) -> str:
    """One line for the panel: network, number of classes and the segment names."""
    cfg = preset_config(preset)
    net = "3D V-Net" if cfg.dim == 3 else "2D U-Net (slice by slice)"
    names = ", ".join(cfg.foreground_names)
    return f"{net} \u00b7 {cfg.num_classes} classes (background + {names}) \u00b7 patch {'x'.join(map(str, cfg.patch_size))}"


@dataclass
class Budget:
    """A training budget as the panel shows it and the job receives it.

    ``budget_iterations``: the job's ``Config.budget_iterations`` (0 = the preset's explicit paper
    schedule); ``warmup``/``joint``/``finetune``: the phase lengths it lays out; ``notes``: why a phase
    was dropped (too small a budget) or how minutes became iterations.
    """

    mode: str
    budget_iterations: int
    warmup: int
    joint: int
    finetune: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.warmup + self.joint + self.finetune

    @property
    def overrides(self) -> dict[str, int]:
        return {"budget_iterations": int(self.budget_iterations)}

    @property
    def summary(self) -> str:
        stages = f"pre-training {self.warmup} + {self.joint}, fine-tuning {self.finetune}"
        return f"{self.total} iterations ({stages})"


def budget_for(preset: str, mode: str, value: float = 0, unit: str = "iterations",
               seconds_per_iteration: float | None = None) -> Budget:
    """The budget for the panel's choice: ``quick`` (:data:`QUICK_BUDGET`), ``paper`` (the preset's
    schedule, ``budget_iterations = 0``) or ``custom`` (``value`` iterations, or ``value`` minutes on the
    device whose measured ``seconds_per_iteration`` is given; the stated default when None)."""
    from . import budget as _budget

    cfg = preset_config(preset)
    mode = (mode or "paper").lower()
    notes: list[str] = []
    if mode == "paper":
        lengths = _budget.phase_lengths(cfg)
        return Budget("paper", 0, lengths.warmup, lengths.joint, lengths.finetune)
    if mode == "quick":
        total = QUICK_BUDGET[cfg.preset]
    elif mode == "custom":
        unit = (unit or "iterations").lower()
        if unit == "minutes":
            total, how = _budget.iterations_for_minutes(float(value), seconds_per_iteration, cfg.dim)
            notes.append(how)
        elif unit == "iterations":
            total = int(value)
            if total < 1:
                raise ValueError(f"the iteration budget must be at least 1, got {value}")
        else:
            raise ValueError(f"unknown budget unit {unit!r}; choose one of {', '.join(BUDGET_UNITS)}")
    else:
        raise ValueError(f"unknown budget {mode!r}; choose one of {', '.join(BUDGET_MODES)}")
    if total < 1:
        raise ValueError(f"the iteration budget must be at least 1, got {total}")
    lengths = cfg.replace(budget_iterations=int(total)).phase_lengths()  # the trainer's own layout
    return Budget(mode, int(total), lengths.warmup, lengths.joint, lengths.finetune, notes + list(lengths.notes))


def explicit_iterations(values: Sequence[int]) -> dict[str, int]:
    """Config overrides for explicit (warm-up, joint, fine-tuning) counts (the batch script's ``W,J,F``)."""
    if len(values) != 3:
        raise ValueError("explicit iterations need three numbers: warm-up, joint pre-training, fine-tuning")
    numbers = [int(v) for v in values]
    if any(v < 0 for v in numbers):
        raise ValueError(f"iterations must be >= 0, got {numbers}")
    if sum(numbers) <= 0:
        raise ValueError("at least one stage needs iterations > 0")
    return {"budget_iterations": 0, **dict(zip(ITERATION_KEYS, numbers))}


def measured_seconds_per_iteration(events: Iterable[Mapping[str, Any]]) -> float | None:
    """The run's speed from its progress events: seconds per iteration averaged over the logged
    windows (weighted by their iterations), or None when the run logged too little to tell."""
    last = 0
    weighted = count = 0.0
    for event in events:
        if event.get("event") != "progress":
            continue
        spi, overall = event.get("seconds_per_iteration"), event.get("overall_iteration")
        if not isinstance(overall, (int, float)):
            continue
        done = float(overall) - last
        last = float(overall)
        if isinstance(spi, (int, float)) and spi > 0 and done > 0:
            weighted += float(spi) * done
            count += done
    return weighted / count if count > 0 else None


def speed_key(preset: str, device: str) -> str:
    """Settings key under which the measured speed of ``preset`` on ``device`` is remembered."""
    return f"ACTIONPlusPlus/SecondsPerIteration/{str(preset).lower()}-{str(device).lower() or 'cpu'}"


def estimate_text(budget: Budget, device: str, seconds_per_iteration: float | None, preset: str) -> str:
    """'600 iterations (pre-training 100 + 100, fine-tuning 400) · about 20m00s on cpu (assumed 2.0 s/it)'."""
    from .budget import DEFAULT_SECONDS_PER_ITERATION

    if seconds_per_iteration is not None and seconds_per_iteration > 0:
        speed, how = float(seconds_per_iteration), f"measured {seconds_per_iteration:.2f} s/it"
    else:
        speed = DEFAULT_SECONDS_PER_ITERATION[3 if preset_config(preset).dim == 3 else 2]
        how = f"assumed {speed:.1f} s/it until a run has measured this device"
    return f"{budget.summary}{SEP}about {format_duration(budget.total * speed)} on {device or 'this device'} ({how})"


# ---------------------------------------------------------------------------------------------------
# Panel settings -> job options
# ---------------------------------------------------------------------------------------------------

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


RUN_OUTPUT = "run"  # a job folder's output sub-folder (scene.RUN_FOLDER: checkpoints, model.pt, predictions)


@dataclass
class RunPlan:
    """Where a training run writes and how it starts (fresh, warm start, or resume)."""

    job_dir: Path  # job.json, nodes.json, dataset/; the worker writes into job_dir / "run"
    mode: str  # "train" | "continue"
    model: str | None = None  # warm-start model for mode "continue"
    resume: bool = False  # continue the interrupted run in job_dir / "run" (its checkpoint.pt)

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
    """
    root = settings.output_root
    problem = output_root_problem(root)
    if problem:
        raise ValueError(problem)
    if settings.continue_training:
        last = find_last_run(root)
        if last is None:
            raise ValueError(
                f'"Continue from last model" is on but {root} holds no previous run (model.pt or checkpoint.pt). '
                "Turn it off to start a new run, or choose the output folder of an earlier run."
            )
        out = last / RUN_OUTPUT
        if (out / "checkpoint.pt").is_file() and not (out / "model.pt").is_file():
            return RunPlan(job_dir=last, mode="train", resume=True)
        return RunPlan(job_dir=new_run_folder(root, now), mode="continue", model=str(out / "model.pt"))
    return RunPlan(job_dir=new_run_folder(root, now), mode="train")


def build_job_options(settings: PanelSettings, plan: RunPlan | None = None) -> dict[str, Any]:
    """Keyword options for ``scene.write_training_job`` (the ``TrainingJob`` fields) from the panel.

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


def adapt_options(options: Mapping[str, Any], accepted: Iterable[str] | None) -> tuple[dict[str, Any], list[str]]:
    """Keep the options a callee accepts; returns (kept, dropped names). ``accepted=None`` keeps all."""
    if accepted is None:
        return dict(options), []
    accepted = set(accepted)
    kept = {k: v for k, v in options.items() if k in accepted}
    dropped = sorted(k for k, v in options.items() if k not in accepted and v not in (None, False, {}, []))
    return kept, dropped


def accepted_keywords(func: Callable[..., Any]) -> set[str] | None:
    """Names of keyword arguments ``func`` accepts, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def call_with_supported(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` with only the keyword arguments its signature accepts (Slicer APIs differ by version)."""
    kept, _ = adapt_options(kwargs, accepted_keywords(func))
    return func(*args, **kept)


# ---------------------------------------------------------------------------------------------------
# Output folder, disk space
# ---------------------------------------------------------------------------------------------------


OUTPUT_FOLDER_SETTING = "ACTIONPlusPlus/OutputFolder"  # QSettings key of the last output folder chosen


def default_output_root(home: str | os.PathLike[str] | None = None) -> str:
    """The default output folder: ``ACTIONPlusPlus`` in the user's home folder.

    Persistent on purpose: a model is hours of training, and the OS may wipe Slicer's temporary folder
    (MONAIAuto3DSeg also keeps its files under the home folder).
    """
    return str(Path(home if home is not None else Path.home()) / "ACTIONPlusPlus")


def output_root_problem(text: str | os.PathLike[str] | None) -> str | None:
    """Why ``text`` cannot be the output folder (None when it can): empty, ".", a relative path (it would
    land wherever Slicer was started from), or an existing file."""
    raw = "" if text is None else str(text).strip()
    if not raw:
        return "Choose an output folder."
    path = Path(os.path.expanduser(raw))
    if raw in (".", "..") or not path.is_absolute():
        return (f"Output folder '{raw}' is a relative path; it would depend on where Slicer was started. "
                f"Choose a full path, for example {default_output_root()}.")
    if path.exists() and not path.is_dir():
        return f"Output folder '{raw}' is a file, not a folder: choose a folder."
    return None


def output_root_warning(text: str | os.PathLike[str], temporary_dir: str | os.PathLike[str] | None) -> str | None:
    """A warning when the output folder lies in a temporary folder, which the OS may empty."""
    if not text or not temporary_dir:
        return None
    try:
        Path(text).resolve().relative_to(Path(temporary_dir).resolve())
    except (ValueError, OSError):
        return None
    return (f"Output folder {text} is inside the temporary folder {temporary_dir}, which the system may empty: "
            "trained models could be lost. Choose a folder of your own.")


def initial_output_root(current: str | None, remembered: str | None, home: str | os.PathLike[str] | None = None) -> str:
    """The folder the panel starts with: the scene's own (parameter node), else the last one chosen
    (settings), else the default; a value that fails :func:`output_root_problem` is skipped."""
    for candidate in (current, remembered):
        if candidate and output_root_problem(candidate) is None:
            return str(candidate)
    return default_output_root(home)


def new_run_folder(
    root: str | os.PathLike[str], now: float | None = None, exists: Callable[[Path], bool] | None = None, prefix: str = "run"
) -> Path:
    """A fresh ``<prefix>-YYYYmmdd-HHMMSS`` folder path under ``root`` (not created; suffixed if taken)."""
    exists = exists or (lambda p: p.exists())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    candidate = Path(root) / f"{prefix}-{stamp}"
    n = 2
    while exists(candidate):
        candidate = Path(root) / f"{prefix}-{stamp}-{n}"
        n += 1
    return candidate


GiB = 1024**3
MiB = 1024**2


def required_disk_bytes(total_voxels: int, num_predictions_voxels: int = 0, num_classes: int = 4, confidence: bool = False) -> int:
    """A generous estimate of what a run writes: float32 inputs, labels, checkpoints, predictions."""
    inputs = 5 * int(total_voxels)  # float32 image + uint8 label
    predictions = int(num_predictions_voxels) * (1 + (4 if confidence else 0))
    checkpoints = 300 * MiB  # checkpoint.pt, checkpoint_pretrain.pt, model.pt with optimizer state
    return inputs + predictions + checkpoints + 200 * MiB


def free_disk_message(path: str | os.PathLike[str], required: int, disk_usage: Callable[[str], Any] | None = None) -> str | None:
    """None when ``path`` (or its nearest existing parent) has ``required`` bytes free, else a message.

    ``disk_usage`` defaults to ``shutil.disk_usage`` looked up at call time (tests replace it).
    """
    disk_usage = disk_usage or shutil.disk_usage
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = disk_usage(str(probe)).free
    except OSError as exc:
        return f"Cannot check free disk space in {probe}: {exc}"
    if free < required:
        return (
            f"Not enough free disk space in {probe}: {format_bytes(free)} free, about {format_bytes(required)} needed. "
            "Free some space or choose another output folder."
        )
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


# ---------------------------------------------------------------------------------------------------
# Selection checks (on node IDs and names, so they run without a scene)
# ---------------------------------------------------------------------------------------------------


def selection_problems(
    labeled_pairs: Sequence[tuple[str | None, str | None]],
    unlabeled_ids: Sequence[str],
    names: Mapping[str, str] | None = None,
) -> list[str]:
    """Problems with the cases picked for training, as messages for the panel (empty when fine).

    ``labeled_pairs`` holds (volume ID, segmentation ID); ``names`` maps IDs to display names.
    """
    names = names or {}

    def name(node_id: str | None) -> str:
        return names.get(node_id or "", node_id or "?")

    problems: list[str] = []
    if not labeled_pairs:
        problems.append("Add at least one labeled case (a volume and its segmentation) before training.")
    seen_volumes: dict[str, int] = {}
    for index, (volume_id, segmentation_id) in enumerate(labeled_pairs, start=1):
        if not volume_id or not segmentation_id:
            problems.append(f"Labeled case {index} needs both a volume and a segmentation.")
            continue
        if volume_id in seen_volumes:
            problems.append(f"Volume '{name(volume_id)}' is labeled twice (cases {seen_volumes[volume_id]} and {index}).")
        seen_volumes.setdefault(volume_id, index)
    for volume_id in unlabeled_ids:
        if volume_id in seen_volumes:
            problems.append(
                f"Volume '{name(volume_id)}' is both labeled (case {seen_volumes[volume_id]}) and checked as unlabeled: "
                "uncheck it in the unlabeled list."
            )
    return problems


def segments_problem(
    segmentation_name: str,
    segments: Sequence[tuple[str, str]] | Sequence[str],
    preset: str,
) -> str | None:
    """A message when a labeled segmentation holds none of the preset's classes (None when usable).

    ``segments`` are segment names or (name, serialised terminology entry) pairs; a segment counts when
    its name (or a synonym) or its SNOMED CT code names a class, as in the scene bridge.
    """
    from . import terminology

    names = []
    for item in segments:
        name, entry = (item, "") if isinstance(item, str) else (item[0], item[1] or "")
        names.append(name)
        if terminology.class_value_for_segment_name(preset, name) is not None:
            return None
        if entry and terminology.class_value_for_terminology(preset, entry) is not None:
            return None
    classes = [info.name for info in terminology.classes(preset)]
    have = ", ".join(f"'{n}'" for n in names) if names else "no segments"
    return (
        f"Segmentation '{segmentation_name}' has {have}: none of the {preset.upper()} preset's segments "
        f"({', '.join(classes)}). Rename its segments (e.g. in Segment Editor) or pick the other preset."
    )


# ---------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------

STAGES = {
    "pretrain": (1, "pre-training"),
    "finetune": (2, "fine-tuning"),
    "supervised": (0, "supervised training"),
}
PHASES = {"warmup": "warm-up", "joint": "joint", "finetune": ""}


def format_duration(seconds: float | None) -> str:
    """'1h05', '4m12s', '12s'; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        days, hours = divmod(hours, 24)
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_loss(value: float | None) -> str:
    if value is None or value != value:
        return "nan" if value is not None else "?"
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.2e}"


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


# ---------------------------------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------------------------------

TORCH_REQUIREMENT = "torch>=2.1"
# What the panel's path (the runner and the worker's train / predict) needs beyond torch that Slicer does
# not ship (numpy, scipy and SimpleITK it does).  Only this is installed by the panel.
EXTRA_REQUIREMENTS = ("psutil>=5.9",)
# Needed elsewhere and imported lazily there: evaluation metrics (medpy, built from source in Slicer),
# the ACDC / LA benchmark loaders (h5py), the CLI's progress bar (tqdm).  Never installed by the panel.
OPTIONAL_REQUIREMENTS = {"h5py>=3.8": "the ACDC / LA .h5 benchmark loaders",
                         "medpy>=0.5": "evaluation metrics (actionpp evaluate)",
                         "tqdm>=4.60": "the command line's progress bar"}
ALL_REQUIREMENTS = (*EXTRA_REQUIREMENTS, *OPTIONAL_REQUIREMENTS)
# Never reinstall these under Slicer's feet (Slicer or other extensions pin them).
PROTECTED_PACKAGES = ("SimpleITK", "torch", "numpy", "scipy", "vtk")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        out.append(int(digits.group()))
    return tuple(out)


def requirement_satisfied(requirement: str, version_of: Callable[[str], str] | None = None) -> bool:
    """Whether ``requirement`` ("name>=x.y" or "name") is installed at an acceptable version."""
    version_of = version_of or importlib.metadata.version
    name = _requirement_name(requirement)
    try:
        installed = version_of(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    match = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    if match:
        return _version_tuple(installed) >= _version_tuple(match.group(1))
    return True


def missing_requirements(requirements: Iterable[str] = EXTRA_REQUIREMENTS, version_of: Callable[[str], str] | None = None,
                         find_spec: Callable[[str], Any] | None = None) -> list[str]:
    """The requirements not installed at an acceptable version.  With the default ``version_of`` a
    package must also be importable (``find_spec``, nothing imported): a broken or hidden install counts
    as missing."""
    if version_of is None and find_spec is None:
        find_spec = importlib.util.find_spec
    out = []
    for requirement in requirements:
        ok = requirement_satisfied(requirement, version_of)
        if ok and find_spec is not None:
            try:
                ok = find_spec(_requirement_name(requirement).lower()) is not None
            except (ImportError, ValueError):
                ok = False
        if not ok:
            out.append(requirement)
    return out


def batch_dependency_problem(in_slicer: bool, find_spec: Callable[[str], Any] | None = None,
                             version_of: Callable[[str], str] | None = None) -> str | None:
    """What the headless batch script says (before anything else) when torch or psutil is missing or torch
    is too old; None when it can run.  The same text as the panel's headless message inside Slicer, a
    ``pip install`` line under plain Python."""
    find_spec = find_spec or importlib.util.find_spec
    torch_missing = not torch_available(find_spec)
    extras = missing_requirements(EXTRA_REQUIREMENTS, version_of, find_spec)
    if not torch_missing:
        problem = torch_version_problem(version_of)
        if problem:
            return problem
    if not torch_missing and not extras:
        return None
    if in_slicer:
        return headless_install_message(torch_missing, extras)
    import sys

    todo = ([TORCH_REQUIREMENT] if torch_missing else []) + list(extras)
    return (f"Missing Python packages: {', '.join(todo)}. Install them into this Python and run again: "
            f"{sys.executable} -m pip install " + " ".join(f"'{r}'" for r in todo))


def torch_version_problem(version_of: Callable[[str], str] | None = None) -> str | None:
    """None when the installed torch satisfies :data:`TORCH_REQUIREMENT` (or torch is absent: that is
    the installer's case), else what is wrong and what to do.  Reads the package metadata only."""
    version_of = version_of or importlib.metadata.version
    try:
        installed = version_of("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    if requirement_satisfied(TORCH_REQUIREMENT, lambda name: installed):
        return None
    return (
        f"torch {installed} is installed, but ACTION++ needs {TORCH_REQUIREMENT}. Other extensions may rely on "
        "this torch, so ACTION++ does not replace it by itself. Update it in the PyTorch Utils module "
        "(Utilities > PyTorch Utils: uninstall, then install), or in Slicer's Python console run: "
        f"{manual_torch_command(force=True)}; then restart Slicer."
    )


def manual_torch_command(force: bool = False) -> str:
    """What a user types in Slicer's Python console to install (or, with ``force``, replace) torch."""
    extra = ", forceReinstall=True" if force else ""
    return ("import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, "
            f"torchVersionRequirement='{TORCH_REQUIREMENT[len('torch'):]}'{extra})")


def manual_pip_command(requirement: str) -> str:
    """What a user types in Slicer's Python console to install one requirement."""
    return f"slicer.util.pip_install({' '.join(pip_install_commands([requirement]))!r})"


@dataclass
class InstallStep:
    """One step of the dependency installation, as the panel's log shows it."""

    title: str  # "Installing torch>=2.1 through the PyTorch extension"
    requirement: str  # the requirement it installs
    method: str  # "pytorch-extension" | "pip_ensure" | "pip_install"
    manual: str  # the command to run by hand when the step fails


def install_steps(torch_missing: bool, extras: Sequence[str], torch_via_extension: bool = True,
                  has_pip_ensure: bool = False) -> list[InstallStep]:
    """The steps to install what is missing, each with the command a user can run by hand."""
    steps = []
    pip_method = "pip_ensure" if has_pip_ensure else "pip_install"
    if torch_missing:
        if torch_via_extension:
            steps.append(InstallStep(f"Installing {TORCH_REQUIREMENT} through the PyTorch extension (the build that "
                                     "matches your GPU driver; 1-3 GB, several minutes)", TORCH_REQUIREMENT,
                                     "pytorch-extension", manual_torch_command()))
        else:
            steps.append(InstallStep(f"Installing {TORCH_REQUIREMENT} from PyPI (1-3 GB, several minutes)",
                                     TORCH_REQUIREMENT, pip_method, manual_pip_command(TORCH_REQUIREMENT)))
    for requirement in extras:
        steps.append(InstallStep(f"Installing {requirement}", requirement, pip_method, manual_pip_command(requirement)))
    return steps


def install_failure_text(step: InstallStep, error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__ if isinstance(error, BaseException) else str(error)
    return (f"{step.title}: failed ({text}). To install it by hand, run in Slicer's Python console "
            f"(View > Python Console): {step.manual}")


def torch_available(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> bool:
    """Whether torch can be imported, without importing it."""
    try:
        return find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def install_confirmation_text(torch_missing: bool, extras: Sequence[str], torch_via_extension: bool = True) -> str:
    lines = ["ACTION++ needs Python packages that are not installed yet:", ""]
    if torch_missing:
        how = "via the PyTorch extension, the build that matches your GPU driver" if torch_via_extension else "from PyPI"
        lines.append(f"\u2022 {TORCH_REQUIREMENT} ({how}; about 1-3 GB)")
    lines += [f"\u2022 {req}" for req in extras]
    lines += ["", "SimpleITK and the other packages that Slicer ships are left untouched.",
              "Each step and its outcome is shown in the panel's log.", "Install them now? This can take several minutes."]
    return "\n".join(lines)


def headless_install_message(torch_missing: bool, extras: Sequence[str]) -> str:
    """What to tell a --no-main-window / batch user (they cannot be asked)."""
    todo = ([TORCH_REQUIREMENT] if torch_missing else []) + list(extras)
    steps = []
    if torch_missing:
        steps.append(
            "import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)"
        )
    if extras:
        steps.append(f"slicer.util.pip_install({' '.join(extras)!r})")
    return (
        f"Missing Python packages: {', '.join(todo)}. They are not installed in batch (--no-main-window) runs. "
        "Open ACTION++ once in the Slicer application (it offers to install them), or run in Slicer's Python console: "
        + "; ".join(steps)
    )


def find_pip_ensure(slicer_module: Any) -> Callable[..., Any] | None:
    """``pip_ensure`` from Slicer >= 5.12 (``slicer.packaging`` or ``slicer.pydeps``), else None."""
    for attribute in ("packaging", "pydeps", "util"):
        holder = getattr(slicer_module, attribute, None)
        func = getattr(holder, "pip_ensure", None) if holder is not None else None
        if callable(func):
            return func
    return None


def pip_install_commands(extras: Sequence[str], satisfied: Callable[[str], bool] | None = None) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` on Slicer < 5.12, one call per package.

    medpy depends on SimpleITK and scipy, which Slicer ships: it is installed with ``--no-deps`` so pip
    never replaces them; the rest have no protected dependencies.
    """
    commands = []
    for requirement in extras:
        if _requirement_name(requirement).lower() == "medpy":
            commands.append(f"{requirement} --no-deps")
        else:
            commands.append(requirement)
    return commands


# ---------------------------------------------------------------------------------------------------
# Devices and scene helpers
# ---------------------------------------------------------------------------------------------------


def format_device_info(info: Mapping[str, Any] | None) -> str:
    """What torch sees, for the panel: 'GPU: NVIDIA H100 (79.6 GiB, bf16) · torch 2.13 (CUDA 12.8)'."""
    if not info:
        return "torch is not installed yet (installed on first use)"
    if info.get("error"):
        return f"Cannot tell what torch sees: {info['error']}"
    torch_text = f"torch {info.get('torch', '?')}"
    torch_text += f" (CUDA {info['torch_cuda']})" if info.get("torch_cuda") else " (CPU-only build)" if not info.get("mps_available") else ""
    devices = info.get("cuda_devices") or []
    if info.get("cuda_available") and devices:
        def gpu(d: Mapping[str, Any]) -> str:
            precision = str(d.get("precision", "")).split(" ")[0]
            extra = f", {precision}" if precision else ""
            return f"{d.get('name', 'GPU')} ({d.get('memory_gib', '?')} GiB{extra})"

        return f"GPU: {', '.join(gpu(d) for d in devices)}{SEP}{torch_text}"
    if info.get("mps_available"):
        return f"GPU: Apple MPS (operations it lacks run on the CPU){SEP}{torch_text}"
    cpus = info.get("cpu_count")
    return f"CPU only{f' ({cpus} cores)' if cpus else ''}{SEP}{torch_text}"


def package_info_line(version_of: Callable[[str], str] | None = None, python_version: str | None = None,
                      info: Mapping[str, Any] | None = None) -> str:
    """'ACTION++ 0.1.0 · Python 3.12.4 · torch 2.13.0 (CUDA 12.8) · psutil 7.2.2', from package metadata
    (nothing imported) and, when known, the device probe's CUDA build."""
    import sys

    from . import __version__

    version_of = version_of or importlib.metadata.version
    python_version = python_version or sys.version.split()[0]
    parts = [f"ACTION++ {__version__}", f"Python {python_version}"]
    for name in ("torch", *(_requirement_name(r) for r in EXTRA_REQUIREMENTS)):
        try:
            text = f"{name} {version_of(name)}"
        except importlib.metadata.PackageNotFoundError:
            text = f"{name} not installed"
        if name == "torch" and info and info.get("torch_cuda"):
            text += f" (CUDA {info['torch_cuda']})"
        parts.append(text)
    return SEP.join(parts)


def close_during_run_question(kind: str, closing: str) -> str:
    """The question the panel asks before the scene or the application closes during a run."""
    what = "Training" if kind == "train" else "Prediction"
    if closing == "application":
        return (f"{what} is still running. Quit anyway? The worker is stopped; a training run saves a checkpoint first "
                "and can be resumed later with \u201cContinue from last model\u201d.")
    return (f"{what} is still running. Cancel it? (Yes: stop it now; a training run saves a checkpoint first. "
            "No: let it finish in the background; its model and predictions are kept on disk, but not loaded "
            "into the new scene.)")


def unlabeled_candidates(volume_ids: Sequence[str], labeled_volume_ids: Iterable[str]) -> list[str]:
    """The scene's scalar volumes that are not already labeled, in scene order."""
    labeled = set(labeled_volume_ids)
    return [v for v in volume_ids if v not in labeled]


# ---------------------------------------------------------------------------------------------------
# Self-test helpers (numpy imported lazily)
# ---------------------------------------------------------------------------------------------------


def dice(prediction, reference, label: int) -> float:
    import numpy as np

    p = np.asarray(prediction) == label
    r = np.asarray(reference) == label
    denominator = p.sum() + r.sum()
    return 1.0 if denominator == 0 else float(2.0 * np.logical_and(p, r).sum() / denominator)


def chance_dice(reference, label: int) -> float:
    """Dice of the trivial guess 'everything is this class' (a floor that a trained model must beat)."""
    import numpy as np

    f = float((np.asarray(reference) == label).mean())
    return 2 * f / (1 + f)

