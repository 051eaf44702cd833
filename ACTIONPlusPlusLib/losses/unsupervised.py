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
