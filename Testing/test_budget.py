"""The iteration budget that lays out the whole schedule (issue 9) and the schedule values it implies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ACTIONPlusPlusLib.budget import MIN_PRETRAIN_PHASE, iterations_for_minutes, layout
from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.types import Case
from ACTIONPlusPlusLib.schedules import ats_temperature, poly_lr, sigmoid_rampup
from ACTIONPlusPlusLib.training.loop import Phase, Trainer, phases_for


@pytest.mark.parametrize("name, budget, full, expected", [
    ("acdc", 30000, 30000, (5000, 5000, 20000)),  # the paper's ACDC protocol exactly
    ("la", 20000, 20000, (2500, 2500, 15000)),  # the paper's LA protocol exactly
    ("acdc", 10000, 30000, (556, 556, 8888)),  # pre-training shrinks in proportion below the paper's total
    ("acdc", 5000, 30000, (139, 139, 4722)),
    ("acdc", 600, 0, (100, 100, 400)),  # budget_pretrain_full=0: the paper's proportions at any budget
    ("acdc", 2000, 0, (333, 333, 1334)),
    ("la", 400, 0, (50, 50, 300)),
])
def test_budget_lays_out_the_phases(name: str, budget: int, full: int, expected: tuple[int, int, int]) -> None:
    cfg = preset(name, budget_iterations=budget, budget_pretrain_full=full)
    lengths = cfg.phase_lengths()
    assert (lengths.warmup, lengths.joint, lengths.finetune) == expected
    assert cfg.total_iterations == budget and lengths.notes == []
    assert [p.iterations for p in phases_for(cfg)] == list(expected)
    assert [p.iterations for p in phases_for(cfg.replace(mode="supervised"))] == [budget]


@pytest.mark.parametrize("name, budget", [("acdc", 600), ("acdc", 2000), ("la", 400)])
def test_short_budgets_fine_tune_only_and_say_so(name: str, budget: int) -> None:
    lengths = preset(name, budget_iterations=budget).phase_lengths()
    assert (lengths.warmup, lengths.joint, lengths.finetune) == (0, 0, budget)
    assert len(lengths.notes) == 2 and all(f"budget of {budget}" in n for n in lengths.notes)


def test_budget_zero_keeps_the_explicit_paper_schedule() -> None:
    for name in ("acdc", "la"):
        cfg = preset(name)
        assert cfg.budget_iterations == 0
        lengths = cfg.phase_lengths()
        assert (lengths.warmup, lengths.joint, lengths.finetune) == (
            cfg.pretrain_warmup_iterations, cfg.pretrain_joint_iterations, cfg.finetune_iterations)
        explicit = cfg.replace(budget_iterations=lengths.total).phase_lengths()  # the same schedule as a budget
        assert (explicit.warmup, explicit.joint, explicit.finetune) == (lengths.warmup, lengths.joint, lengths.finetune)


def test_too_small_a_budget_drops_pretraining_and_says_so() -> None:
    small = layout(100, 1 / 6, 1 / 6)  # 17 + 17 iterations would be too short to pre-train
    assert (small.warmup, small.joint, small.finetune) == (0, 0, 100)
    assert len(small.notes) == 2 and all("dropped" in n and "fine-tuning" in n for n in small.notes)
    assert "warm-up" in small.notes[0] and "joint" in small.notes[1]
    edge = layout(6 * MIN_PRETRAIN_PHASE, 1 / 6, 1 / 6)
    assert (edge.warmup, edge.joint) == (MIN_PRETRAIN_PHASE, MIN_PRETRAIN_PHASE) and not edge.notes
    with pytest.raises(ValueError, match="at least 1"):
        layout(0, 0.1, 0.1)
    with pytest.raises(ValueError, match="fractions"):
        preset("acdc", budget_warmup_fraction=0.6, budget_joint_fraction=0.5)


def test_minutes_to_iterations_with_and_without_a_measured_speed() -> None:
    n, how = iterations_for_minutes(10, 0.5)
    assert n == 1200 and "measured 0.50 s" in how
    n, how = iterations_for_minutes(10, None, dim=3)
    assert n == 100 and "not been measured" in how and "6.0 s" in how
    with pytest.raises(ValueError, match="positive"):
        iterations_for_minutes(0, 1.0)


@pytest.mark.parametrize("budget", [600, 2000, 30000])
def test_schedules_follow_the_phase_lengths(budget: int) -> None:
    """ATS, LR decay and the ramp-up are per phase, so a short budget is the whole schedule compressed."""
    cfg = preset("acdc", budget_iterations=budget)
    fine = phases_for(cfg)[2].iterations
    assert ats_temperature(0, fine, cfg.tau_min, cfg.tau_max) == pytest.approx(cfg.tau_max)
    assert ats_temperature(fine // 2, fine, cfg.tau_min, cfg.tau_max) == pytest.approx(cfg.tau_min, abs=1e-6)
    assert poly_lr(cfg.lr, fine, fine) == 0.0
    ramp = round(cfg.rampup_fraction * fine)
    assert sigmoid_rampup(0, ramp) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(ramp // 2, ramp) == pytest.approx(math.exp(-5 * (1 - (ramp // 2) / ramp) ** 2))
    assert sigmoid_rampup(ramp, ramp) == 1.0 and sigmoid_rampup(fine - 1, ramp) == 1.0


def test_rampup_and_teacher_decay_of_the_trainer(tmp_path) -> None:
    cfg = preset("acdc", patch_size=[32, 32], base_channels=4, budget_iterations=300, budget_pretrain_full=0, local_window=16,
                 local_stride=8, local_pool=4, device="cpu")
    img = np.zeros((1, 32, 32), np.float32)
    trainer = Trainer(cfg, [Case("l", img, np.zeros((1, 32, 32), np.uint8))], [Case("u", img)], tmp_path)
    fine = trainer.phases[2]
    assert fine.iterations == 200
    assert trainer.rampup(fine, 0) == pytest.approx(math.exp(-5))
    assert trainer.rampup(fine, 60) == 1.0  # 0.3 of 200
    assert trainer.ema_decay(fine, 0) == 0.5 and trainer.ema_decay(fine, 8) == pytest.approx(0.9)
    # the horizon is 5 % of the phase: 10 iterations of 200 (decay 1 - 1/11), the paper's 0.99 at 20K
    assert trainer.ema_decay(fine, 150) == pytest.approx(1 - 1 / 11)
    assert trainer.ema_decay(Phase("finetune", "finetune", 20000), 5000) == cfg.ema_decay
    assert trainer.ema_decay(Phase("joint", "pretrain", 10), 0) == cfg.ema_decay  # pre-training: spec 4
    flat = Trainer(cfg.replace(rampup_fraction=0.0, ema_warmup=False, ema_horizon_fraction=0.0), [Case("l", img, np.zeros((1, 32, 32), np.uint8))],
                   [Case("u", img)], tmp_path)
    assert flat.rampup(fine, 0) == 1.0 and flat.ema_decay(fine, 0) == cfg.ema_decay
