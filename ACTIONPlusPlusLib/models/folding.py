"""An inference copy of a network with each BatchNorm folded into the convolution before it.

In ``eval()`` a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with
scaled weights and a shifted bias (equal up to float rounding).  On the CPU the 3D V-Net spends a good
part of its time in these memory-bound passes over large activations; the folded copy skips them.
The original network is left untouched (training goes on with it).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fold_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        conv, norm = seq._modules[first], seq._modules[second]
        if isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.track_running_stats:
            transpose = isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
            seq._modules[first] = fuse_conv_bn_eval(conv, norm, transpose=transpose)
            seq._modules[second] = nn.Identity()


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An ``eval()`` copy of ``model`` in which every (conv, BatchNorm) pair of an ``nn.Sequential`` is
    one convolution.  Same device and dtype; nothing is shared with ``model``."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            _fold_sequential(module)
    return folded


class _PointwiseAsLinear(nn.Module):
    """A 1x1x1 convolution as a matrix product over the channel axis: on a channels-last input the
    channel axis is already the innermost one, so nothing is copied."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, conv.in_channels).clone(),
                                   requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.movedim(1, -1), self.weight, self.bias).movedim(-1, 1)


class _ContiguousInput(nn.Module):
    """Runs ``conv`` on a contiguous (channels-first) copy of its input."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.contiguous())


def channels_last_3d(model: nn.Module, few_channels: int = 8) -> nn.Module:
    """``model`` (in place) in channels-last 3D, oneDNN's faster layout for 3D convolutions on the CPU,
    except the convolutions with fewer than ``few_channels`` outputs (the classifier): oneDNN runs those
    several times slower in channels-last (0.44 s against 0.06 s for the V-Net's 16 -> 2 classifier on
    two 112x112x80 windows, one thread).  A 1x1x1 one becomes a matrix product over the channel axis,
    any other gets a channels-first input."""
    model = model.to(memory_format=torch.channels_last_3d)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv3d) and child.out_channels < few_channels:
                pointwise = child.kernel_size == (1, 1, 1) and child.groups == 1 and child.stride == (1, 1, 1)
                child = child.to(memory_format=torch.contiguous_format)
                setattr(module, name, _PointwiseAsLinear(child) if pointwise else _ContiguousInput(child))
    return model
