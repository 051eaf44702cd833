"""Schedules: ATS (Eq. 6, spec 12.2), the code's per-epoch cosine (12.1), poly LR (12.15), EMA (spec 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ACTIONPlusPlusLib import schedules
from ACTIONPlusPlusLib.schedules import ats_temperature, code_temperature, ema_update, poly_lr, set_lr


@pytest.mark.parametrize(
    "t, expected",
    [(0, 1.0), (2500, 0.868198), (5000, 0.55), (10000, 0.1), (15000, 0.55), (20000, 1.0)],
)
def test_ats_paper_vectors(t: int, expected: float) -> None:
    assert ats_temperature(t, 20000, 0.1, 1.0) == pytest.approx(expected, abs=1e-6)


def test_ats_edge_cases_and_periods() -> None:
    assert ats_temperature(5, 0, 0.1, 1.0) == 1.0
    assert ats_temperature(5, -3, 0.2, 0.7) == 0.7
    # two periods: minimum at a quarter, back to tau_max at half
    assert ats_temperature(250, 1000, 0.1, 1.0, periods=2.0) == pytest.approx(0.1, abs=1e-12)
    assert ats_temperature(500, 1000, 0.1, 1.0, periods=2.0) == pytest.approx(1.0, abs=1e-12)
    assert isinstance(ats_temperature(3, 10, 0.1, 1.0), float)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((0, 103, 0.1, 1.0, 0.1), 1.0),
        ((1, 103, 0.1, 1.0, 0.1), 0.918837),
        ((2, 103, 0.1, 1.0, 0.1), 0.704625),
        ((5, 103, 0.1, 1.0, 0.1), 0.101883),
        ((10, 103, 0.1, 1.0, 0.1), 0.992486),
        ((5, 103, 0.07, 1.0, 0.1), 0.071945),
        ((1875, 7501, 0.1, 1.0, 1.0), 0.550094),
        ((3750, 7501, 0.1, 1.0, 1.0), 0.1),
    ],
)
def test_code_temperature_vectors(args: tuple, expected: float) -> None:
    assert code_temperature(*args) == pytest.approx(expected, abs=1e-6)


def test_code_temperature_properties() -> None:
    # hi at 0, lo at E*T/2, midpoint at E*T/4 (spec 12.1)
    assert code_temperature(0, 200, 0.2, 0.8, 0.5) == pytest.approx(0.8)
    assert code_temperature(50, 200, 0.2, 0.8, 0.5) == pytest.approx(0.2)
    assert code_temperature(25, 200, 0.2, 0.8, 0.5) == pytest.approx(0.5)
    assert code_temperature(3, 0, 0.2, 0.8) == 0.8


def test_poly_lr_vectors() -> None:
    assert poly_lr(0.01, 15000, 30000) == pytest.approx(0.0053589, abs=1e-7)
    assert poly_lr(0.01, 1, 30000) == pytest.approx(0.0099997, abs=1e-7)
    assert poly_lr(0.01, 0, 30000) == 0.01
    assert poly_lr(0.01, 30000, 30000) == 0.0
    assert poly_lr(0.01, 40000, 30000) == 0.0  # clamped
    assert poly_lr(0.01, 5, 0) == 0.01
    assert poly_lr(1.0, 1, 2, power=1.0) == pytest.approx(0.5)


def test_set_lr_sets_every_group() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    set_lr(opt, 0.0042)
    assert [g["lr"] for g in opt.param_groups] == [0.0042, 0.0042]


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1))


def test_ema_update_parameters_only() -> None:
    torch.manual_seed(0)
    student, teacher = _net(), _net()
    with torch.no_grad():
        student[1].running_mean.fill_(5.0)
        teacher[1].running_mean.fill_(-1.0)
        student[1].num_batches_tracked.fill_(7)
    t_before = [p.detach().clone() for p in teacher.parameters()]
    s_before = [p.detach().clone() for p in student.parameters()]
    ema_update(teacher, student, 0.99)
    for t0, s0, t1, s1 in zip(t_before, s_before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t1.detach(), 0.99 * t0 + 0.01 * s0, rtol=0, atol=1e-7)
        assert torch.equal(s1.detach(), s0)  # student untouched
    # BN buffers are NOT averaged (spec 4)
    assert torch.all(teacher[1].running_mean == -1.0)
    assert int(teacher[1].num_batches_tracked) == 0
    # decay 0 copies, decay 1 keeps
    ema_update(teacher, student, 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)


def test_ema_update_fused_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"mul": 0, "add": 0}
    real_mul, real_add = torch._foreach_mul_, torch._foreach_add_

    def mul(*a, **k):
        calls["mul"] += 1
        return real_mul(*a, **k)

    def add(*a, **k):
        calls["add"] += 1
        return real_add(*a, **k)

    monkeypatch.setattr(schedules.torch, "_foreach_mul_", mul)
    monkeypatch.setattr(schedules.torch, "_foreach_add_", add)
    ema_update(_net(), _net(), 0.9)
    assert calls == {"mul": 1, "add": 1}  # one fused op each, whatever the number of tensors
    with pytest.raises(ValueError):
        ema_update(_net(), nn.Linear(2, 2), 0.9)
    with pytest.raises(ValueError):
        ema_update(nn.Linear(2, 3), nn.Linear(3, 2), 0.9)
