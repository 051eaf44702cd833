"""Supervised segmentation loss ``L_sup = 0.5 (CE + Dice)`` (spec 5.3 and 6.2).

All loss math runs in fp32 whatever the dtype of the logits (autocast-safe).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dice_loss", "supervised_loss", "one_hot", "fp32_loss"]

_F = TypeVar("_F", bound=Callable)


def fp32_loss(fn: _F) -> _F:
    """Run ``fn`` with autocast disabled (CUDA and CPU), so its matmuls stay fp32 (decision D15).

    The losses may be called inside the training loop's bf16 autocast region; their inputs are cast
    with ``.float()`` and this guard keeps autocast from lowering the products back to bf16.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

_SMOOTH = 1e-5


def one_hot(target: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N, *S) integer labels -> (N, C, *S) one-hot (labels outside [0, C) give all-zero rows).

    Built by comparison with ``arange(C)`` so that no range check (host sync) is needed on CUDA.
    """
    classes = torch.arange(num_classes, device=target.device).view(1, num_classes, *([1] * (target.dim() - 1)))
    return (target.unsqueeze(1).long() == classes).to(dtype)


@fp32_loss
def dice_loss(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Soft Dice over the whole batch for every class including background (spec 5.3).

    ``dice_c = (2 sum p_c y_c + 1e-5) / (sum p_c^2 + sum y_c^2 + 1e-5)`` with ``p = softmax(logits, 1)``;
    returns ``mean_c (1 - dice_c)``.  ``logits`` (N, C, *S), ``target`` (N, *S) integer; 2D or 3D.
    ``mask`` (N, *S) bool: the sums run over these pixels only (an empty mask gives 0).
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = one_hot(target, probs.shape[1])
    if mask is not None:
        keep = mask.unsqueeze(1).float()
        probs, onehot = probs * keep, onehot * keep
    dims = [0] + list(range(2, probs.dim()))
    intersect = (probs * onehot).sum(dims)
    p_sq = (probs * probs).sum(dims)
    y_sq = onehot.sum(dims)  # y^2 = y for a one-hot target
    dice = (2.0 * intersect + _SMOOTH) / (p_sq + y_sq + _SMOOTH)
    return (1.0 - dice).mean()


@fp32_loss
def supervised_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``0.5 (CE + Dice)``, CE averaged over pixels (spec 5.3, 6.2; vector 12.7)."""
    logits = logits.float()
    target = target.long()
    ce = F.cross_entropy(logits, target)
    return 0.5 * (ce + dice_loss(logits, target))
