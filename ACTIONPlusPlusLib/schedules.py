"""Schedules: ATS temperatures (Eq. 6), poly learning rate and the EMA teacher update.

Spec sections 4 (optimisation, EMA over parameters only) and 7 (temperature schedules).  Every
function here is host-side arithmetic on Python floats except :func:`ema_update`, which is one fused
multi-tensor update on the parameters' device.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ats_temperature", "code_temperature", "poly_lr", "set_lr", "ema_update", "sigmoid_rampup"]


def ats_temperature(t: int, total: int, tau_min: float, tau_max: float, periods: float = 1.0) -> float:
    """Paper Eq. 6 (decisions D2/D3): ``tau_min + 0.5 (1 + cos(2 pi periods t / total)) (tau_max - tau_min)``.

    Evaluated per iteration ``t`` of a stage of ``total`` iterations; it starts at ``tau_max``, reaches
    ``tau_min`` half way through each period and returns to ``tau_max``.  ``total <= 0`` gives ``tau_max``.
    """
    if total <= 0:
        return float(tau_max)
    phase = 2.0 * math.pi * periods * float(t) / float(total)
    return float(tau_min + 0.5 * (1.0 + math.cos(phase)) * (tau_max - tau_min))


def code_temperature(epoch: int, max_epoch: int, lo: float, hi: float, T: float = 0.1) -> float:
    """The authors' per-epoch variant ``get_current_t`` (spec 7, vectors in 12.1).

    ``lo + (hi - lo) (1 + cos(2 pi epoch / (max_epoch T))) / 2``: period ``max_epoch * T`` epochs, so
    ``T = 0.1`` gives 10 periods over training.  A non-positive period gives ``hi``.
    """
    period = float(max_epoch) * float(T)
    if period <= 0:
        return float(hi)
    return float(lo + (hi - lo) * (1.0 + math.cos(2.0 * math.pi * float(epoch) / period)) / 2.0)


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """Poly decay ``base_lr (1 - iteration / max_iterations) ** power`` (spec 4, vectors in 12.15).

    ``iteration`` is clamped to ``[0, max_iterations]``; ``max_iterations <= 0`` gives ``base_lr``.
    """
    if max_iterations <= 0:
        return float(base_lr)
    frac = min(max(float(iteration), 0.0), float(max_iterations)) / float(max_iterations)
    return float(base_lr * (1.0 - frac) ** power)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``theta_t <- decay theta_t + (1 - decay) theta_s`` over **parameters only** (spec 4).

    Buffers (BN running statistics, counters) are not averaged: the teacher's own train-mode forward
    passes update them.  Parameters are paired in registration order; both modules must have the same
    parameter shapes.  Implemented with two fused ``torch._foreach_*`` kernels, no per-tensor loop.
    """
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(
            f"ema_update: teacher has {len(t_params)} parameters, student {len(s_params)}; the modules differ"
        )
    if not t_params:
        return
    for tp, sp in zip(t_params, s_params):
        if tp.shape != sp.shape:
            raise ValueError(f"ema_update: parameter shape mismatch {tuple(tp.shape)} vs {tuple(sp.shape)}")
    # the parameters themselves (no-grad mode): no ``.data`` / ``.detach()`` alias per tensor
    s_data = [s if s.dtype == t.dtype else s.to(dtype=t.dtype) for s, t in zip(s_params, t_params)]
    torch._foreach_mul_(t_params, float(decay))
    torch._foreach_add_(t_params, s_data, alpha=1.0 - float(decay))


def sigmoid_rampup(t: int, length: int) -> float:
    """``exp(-5 (1 - t / length)^2)`` for ``t < length``, then 1 (Laine and Aila; mean teacher).

    ``length <= 0`` gives 1 (no ramp-up).
    """
    if length <= 0 or t >= length:
        return 1.0
    x = 1.0 - max(float(t), 0.0) / float(length)
    return float(math.exp(-5.0 * x * x))
