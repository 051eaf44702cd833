"""The network written to ``model.pt``: the chosen weights, BatchNorm statistics re-estimated on clean images.

Why: in training, BatchNorm normalises with each batch's statistics and keeps a running average of them
for inference.  A student's batches ran with dropout on and augmented (ACTION++'s strong views: a
labeled box pasted into an unlabeled image, jitter, blur), so its running statistics describe images
that inference never sees, and this holds for the supervised baseline too.  Their labels of clean scans
suffer for it (ACDC quick budget, seed 1337: ACTION++'s student 47.15 with them, 52.48 with statistics
re-estimated on clean training images; supervised-only 44.84 and 48.78; the decision: docs/DESIGN.md,
*The saved model*).
Re-estimating the statistics of the finished weights over un-augmented training images ("precise
BatchNorm") costs a few forward passes and changes no weight.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["clean_batches", "export_network", "plain_batchnorm", "recalibrate_batchnorm", "recalibration_batches"]


def plain_batchnorm(model: nn.Module, dim: int) -> nn.Module:
    """``model`` with every ``SyncBatchNorm`` replaced, in place, by the ``dim``-D ``BatchNorm`` holding
    the same parameters and statistics (what ``model.pt``'s network is built with; a SyncBatchNorm in
    train mode would wait for the other ranks of a distributed run)."""
    plain = nn.BatchNorm2d if dim == 2 else nn.BatchNorm3d
    for name, child in list(model.named_children()):
        if isinstance(child, nn.SyncBatchNorm):
            bn = plain(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.to(next(iter(child.state_dict().values())).device)
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            plain_batchnorm(child, dim)
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor],
                          autocast: Callable[[], ContextManager] = nullcontext) -> int:
    """Replace the running mean and variance of every BatchNorm of ``model`` by their average over the
    ``batches`` (each normalised with its own statistics, as in training; ``momentum=None``: equal
    weights), the rest of the network in eval mode (no dropout).  Weights are not touched.  Returns the
    number of batches used; ``model`` is left in eval mode with its momenta restored.  With no batch the
    statistics stay as they were.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.eval()
    momenta = [m.momentum for m in norms]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        for x in batches:
            with autocast():
                model(x)
            used += 1
    finally:
        for m, momentum, (mean, var, count) in zip(norms, momenta, saved):
            m.momentum = momentum
            m.eval()
            if used == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
    return used


def clean_batches(cfg, source, count: int, seed: int, with_unlabeled: bool) -> Iterator[Tensor]:
    """``count`` batches of training images without augmentation, drawn with their own generators
    (the run's generators, saved in the checkpoint, are not touched): ``cfg.finetune_labeled_batch``
    labeled images and, when ``with_unlabeled``, ``cfg.finetune_unlabeled_batch`` unlabeled ones
    (the fine-tuning batch, without its strong view)."""
    host = torch.Generator().manual_seed(seed)
    dev = torch.Generator(device=source.device).manual_seed(seed + 1)
    for _ in range(count):
        x, _ = source.labeled(cfg.finetune_labeled_batch, host, dev, False)
        if with_unlabeled:
            x = torch.cat([x, source.unlabeled(cfg.finetune_unlabeled_batch, host, dev, False)])
        yield x


def recalibration_batches(cfg, teacher: bool) -> int:
    """How many clean batches re-estimate the exported network's statistics: ``cfg.export_bn_batches``
    for a student (it trained with dropout on augmented images), 0 for a teacher that ran without
    dropout (``teacher_dropout=False``: its statistics are already those of clean views)."""
    return 0 if teacher and not cfg.teacher_dropout else int(cfg.export_bn_batches)


def export_network(cfg, network: nn.Module, source, autocast: Callable[[], ContextManager] = nullcontext,
                   teacher: bool = False) -> nn.Module:
    """A copy of ``network`` for ``model.pt``: plain BatchNorm, its statistics re-estimated over
    :func:`recalibration_batches` clean training batches (:func:`clean_batches`; unlabeled images too in
    ACTION++ mode).  ``teacher``: ``network`` is the EMA teacher."""
    model = plain_batchnorm(copy.deepcopy(network), cfg.dim)
    model.eval()
    count = recalibration_batches(cfg, teacher)
    if count > 0:
        with_unlabeled = cfg.mode == "actionpp" and getattr(source, "n_unl", 0) > 0
        recalibrate_batchnorm(model, clean_batches(cfg, source, count, cfg.seed + 101, with_unlabeled), autocast)
    # model.pt holds plain channels-first tensors whatever layout training ran in (cpu_channels_last)
    return model.to(memory_format=torch.contiguous_format)
