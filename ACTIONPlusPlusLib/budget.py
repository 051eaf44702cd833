"""One iteration budget from which the whole training schedule follows (issue 9).

``budget_iterations = N`` splits N into the three phases by the config's fractions (the paper's
proportions by default: ACDC 5K + 5K + 20K of 30K, LA 2.5K + 2.5K + 15K of 20K).  Below the paper's
total (``budget_pretrain_full``) the pre-training share shrinks in proportion: on real ACDC at 600
iterations, fine-tuning alone beat the paper's proportions by 4 Dice points (docs/DESIGN.md, *Budget and schedule*).  Everything else that
has a length is defined per phase (poly LR decay, ATS cosine, the fine-tuning ramp-up), so a short run
is the whole method compressed, not the first minutes of a long one.  With the fractions at their
defaults, ``N = 30000`` (ACDC) or ``20000`` (LA) is exactly the paper's protocol, which the presets'
explicit counts (``budget_iterations = 0``) also give.

A phase too short to do its job is dropped and its iterations go to fine-tuning; :func:`layout` says
so in its notes, which the trainer reports as warnings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["MIN_PRETRAIN_PHASE", "Layout", "cached_pretraining_iterations", "layout", "phase_lengths", "iterations_for_minutes",
           "DEFAULT_SECONDS_PER_ITERATION"]

# A pre-training phase shorter than this is dropped: its queues (36 entries, filled 8 per iteration)
# barely turn over and the phase's own LR schedule and ATS cosine have no room.
MIN_PRETRAIN_PHASE = 25

# Used to turn minutes into iterations before the device's speed has been measured: a 2D step at
# 256x256 (4 + 4) on a laptop CPU.  The panel replaces it with the measured figure as soon as it has one.
DEFAULT_SECONDS_PER_ITERATION = {2: 2.0, 3: 6.0}


@dataclass(frozen=True)
class Layout:
    warmup: int
    joint: int
    finetune: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.warmup + self.joint + self.finetune


def layout(total: int, warmup_fraction: float, joint_fraction: float, pretrain_full: int = 0) -> Layout:
    """Phase lengths for a budget of ``total`` iterations (see the module docstring).

    ``pretrain_full`` > 0: the pre-training fractions apply in full from that budget upward and shrink
    in proportion below it (``fraction * total / pretrain_full``), so short runs spend their few
    iterations on fine-tuning, where the labels are used from the first step.
    """
    total = int(total)
    if total < 1:
        raise ValueError(f"the iteration budget must be at least 1, got {total}")
    if pretrain_full > 0 and total < pretrain_full:
        scale = total / float(pretrain_full)
        warmup_fraction, joint_fraction = warmup_fraction * scale, joint_fraction * scale
    warmup = int(round(total * warmup_fraction))
    joint = int(round(total * joint_fraction))
    notes: list[str] = []
    if 0 < warmup < MIN_PRETRAIN_PHASE:
        notes.append(f"a budget of {total} iterations leaves the pre-training warm-up {warmup} iterations, "
                     f"fewer than {MIN_PRETRAIN_PHASE}: the warm-up is dropped and its iterations go to fine-tuning")
        warmup = 0
    if 0 < joint < MIN_PRETRAIN_PHASE:
        notes.append(f"a budget of {total} iterations leaves joint pre-training {joint} iterations, "
                     f"fewer than {MIN_PRETRAIN_PHASE}: it is dropped and its iterations go to fine-tuning")
        joint = 0
    return Layout(warmup, joint, total - warmup - joint, notes)


def cached_pretraining_iterations(cfg) -> int:
    """Iterations of the cached pre-training (``pretrain_cache_iterations``; 0 = none).

    -1 (automatic): the paper's ratio of pre-training to fine-tuning applied to the run's fine-tuning,
    which is then the whole budget: ``budget * p / (1 - p)`` with ``p`` the pre-training fractions
    (ACDC 10K : 20K, half the budget; LA 5K : 15K, a third); with explicit counts (``budget_iterations
    = 0``) the preset's own pre-training counts (the paper's protocol, pre-trained once).
    """
    n = int(getattr(cfg, "pretrain_cache_iterations", 0))
    if n >= 0:
        return n
    if int(cfg.budget_iterations) > 0:
        share = float(cfg.budget_warmup_fraction) + float(cfg.budget_joint_fraction)
        if share <= 0.0 or share >= 1.0:
            return 0
        return int(round(int(cfg.budget_iterations) * share / (1.0 - share)))
    return int(cfg.pretrain_warmup_iterations) + int(cfg.pretrain_joint_iterations)


def phase_lengths(cfg) -> Layout:
    """The (warm-up, joint, fine-tuning) lengths of ``cfg``: from its budget, or its explicit counts."""
    if cached_pretraining_iterations(cfg) > 0:  # pre-trained once, apart (training/pretrain_cache.py)
        total = int(cfg.budget_iterations) if int(cfg.budget_iterations) > 0 else int(cfg.finetune_iterations)
        return Layout(0, 0, total)
    if int(cfg.budget_iterations) > 0:
        return layout(cfg.budget_iterations, cfg.budget_warmup_fraction, cfg.budget_joint_fraction,
                      cfg.budget_pretrain_full)
    return Layout(int(cfg.pretrain_warmup_iterations), int(cfg.pretrain_joint_iterations), int(cfg.finetune_iterations))


def iterations_for_minutes(minutes: float, seconds_per_iteration: float | None, dim: int = 2) -> tuple[int, str]:
    """A budget in iterations for ``minutes`` of training, and a sentence saying how it was estimated.

    ``seconds_per_iteration`` is the measured speed on the user's device (None or <= 0 when it has not
    been measured yet: a stated default for the network's dimension is used and the sentence says so).
    """
    if not minutes > 0:
        raise ValueError(f"the time budget must be positive, got {minutes} minutes")
    if seconds_per_iteration is not None and seconds_per_iteration > 0:
        speed, how = float(seconds_per_iteration), f"at the measured {seconds_per_iteration:.2f} s per iteration"
    else:
        speed = DEFAULT_SECONDS_PER_ITERATION[3 if dim == 3 else 2]
        how = (f"at an assumed {speed:.1f} s per iteration (this device's speed has not been measured yet; "
               "the estimate improves after the first run)")
    iterations = max(1, int(math.floor(minutes * 60.0 / speed)))
    return iterations, f"{minutes:g} min -> {iterations} iterations {how}"
