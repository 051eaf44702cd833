"""The training budget in the user's terms: quick / paper / custom iterations or minutes, with the
estimated time on the chosen device (``budget.py`` lays the total out over the phases).

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ... import config as _config
from ...budget import Layout
from .formatting import SEP, format_duration


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


@dataclass(frozen=True)
class Budget(Layout):
    """A training budget as the panel shows it and the job receives it: the phase lengths it lays out
    (:class:`~ACTIONPlusPlusLib.budget.Layout`), with ``notes`` on why a phase was dropped (too small a
    budget) or how minutes became iterations.

    ``budget_iterations``: the job's ``Config.budget_iterations`` (0 = the preset's explicit paper
    schedule); ``mode``: the panel's choice (quick, paper, custom).
    """

    mode: str = "paper"
    budget_iterations: int = 0

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
    from ... import budget as _budget

    cfg = preset_config(preset)
    mode = (mode or "paper").lower()
    notes: list[str] = []
    if mode == "paper":
        lengths = _budget.phase_lengths(cfg)
        return Budget(lengths.warmup, lengths.joint, lengths.finetune, list(lengths.notes), "paper", 0)
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
    return Budget(lengths.warmup, lengths.joint, lengths.finetune, notes + list(lengths.notes), mode, int(total))


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
    from ...budget import DEFAULT_SECONDS_PER_ITERATION

    if seconds_per_iteration is not None and seconds_per_iteration > 0:
        speed, how = float(seconds_per_iteration), f"measured {seconds_per_iteration:.2f} s/it"
    else:
        speed = DEFAULT_SECONDS_PER_ITERATION[3 if preset_config(preset).dim == 3 else 2]
        how = f"assumed {speed:.1f} s/it until a run has measured this device"
    return f"{budget.summary}{SEP}about {format_duration(budget.total * speed)} on {device or 'this device'} ({how})"
