"""Unsupervised pseudo-label loss on the strong view (ReCo style, spec 6.3, vector 12.10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .supervised import fp32_loss

__all__ = ["pseudo_label_loss", "masked_pseudo_label_loss"]


@fp32_loss
def pseudo_label_loss(logits_u: Tensor, pseudo: Tensor, conf: Tensor, threshold: float = 0.97) -> Tensor:
    """``mean over {pixels with CE > 0} of w_n * CE`` (spec 6.3).

    ``logits_u`` (B, C, *S) student logits on the strong view, ``pseudo`` (B, *S) long teacher labels
    (-1 = ignored), ``conf`` (B, *S) teacher confidence.  ``w_n`` = #{pixels of image n with
    conf >= threshold} / #{pixels of image n with pseudo >= 0}: an image-level weight, not a pixel
    mask.  Returns 0 when no pixel has a positive CE.  fp32, no host sync.
    """
    b = logits_u.shape[0]
    pseudo = pseudo.long()
    conf = conf.detach().float().reshape(b, -1)
    n_valid = (pseudo.reshape(b, -1) >= 0).sum(dim=1).clamp_min(1)
    weight = (conf >= threshold).sum(dim=1).float() / n_valid.float()  # (B,)
    ce = F.cross_entropy(logits_u.float(), pseudo, reduction="none", ignore_index=-1).reshape(b, -1)
    positive = ce > 0
    weighted = torch.where(positive, weight.unsqueeze(1) * ce, torch.zeros_like(ce))
    return weighted.sum() / positive.sum().clamp_min(1).float()


@fp32_loss
def masked_pseudo_label_loss(logits_u: Tensor, pseudo: Tensor, mask: Tensor) -> Tensor:
    """``sum over pixels of mask * CE(logits, pseudo) / number of pixels`` (FixMatch / UniMatch style).

    ``mask`` (B, *S) bool: the pixels whose teacher confidence passes their class's threshold.  Dividing
    by every pixel (not by the masked ones) makes the term grow with the share of confident pixels, so
    an unsure teacher contributes little instead of a full-weight loss on a few pixels.
    """
    ce = F.cross_entropy(logits_u.float(), pseudo.long().clamp_min(0), reduction="none")
    return (ce * mask.float()).sum() / float(max(mask.numel(), 1))


@torch.no_grad()
def balanced_mask(conf: Tensor, pseudo: Tensor, visible: Tensor, threshold: float, num_classes: int) -> Tensor:
    """A pixel mask that teaches every class in proportion to its pseudo-labels.

    As many visible pixels pass as pass ``threshold`` overall (fraction ``keep``), but each class keeps
    its own most confident ``keep`` fraction, so the taught class shares equal the pseudo-label shares:
    a class the teacher is less sure of (usually the minority) is neither dropped nor over-taught.
    ``visible``: the pixels the teacher labels (not pasted from a labeled image).  One sort, no host sync.
    """
    flat_conf = conf.detach().float().flatten()
    group = torch.where(visible.flatten(), pseudo.flatten(), torch.full_like(pseudo.flatten(), num_classes))
    n = flat_conf.numel()
    keep = ((flat_conf >= threshold) & (group < num_classes)).sum() / (group < num_classes).sum().clamp_min(1)
    order = torch.argsort(group.to(torch.float64) * 2.0 + (1.0 - flat_conf.to(torch.float64)))  # class-major, confident first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=conf.device)
    counts = torch.bincount(group, minlength=num_classes + 1)
    starts = torch.cumsum(counts, 0) - counts
    within = rank - starts[group]
    mask = (within.to(torch.float64) < keep.to(torch.float64) * counts[group].to(torch.float64)) & (group < num_classes)
    return mask.view_as(conf)
