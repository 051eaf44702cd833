"""Dense (region-level) instance discrimination for pre-training (``weight_dense``; not in the paper).

The student's embedding of each region of its view must pick out the teacher's embedding of the same
region (seen under another intensity augmentation and a rot90/flip, mapped back) among the teacher's
embeddings of every region of every image in the batch: InfoNCE, one row per region.  Unlike the global
instance discrimination, which tells whole images apart, this asks *where in an image* a region is
from its content, the kind of feature a segmentation network needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .supervised import fp32_loss

__all__ = ["region_rows", "region_infonce"]


def region_rows(features: Tensor, cells: tuple[int, ...]) -> Tensor:
    """(N, C, *spatial) -> (N * regions, C): the mean feature of each ``cells``-sized region."""
    pool = F.avg_pool2d if features.dim() == 4 else F.avg_pool3d
    pooled = pool(features, kernel_size=cells, stride=cells)
    return pooled.flatten(2).transpose(1, 2).reshape(-1, features.shape[1])


@fp32_loss
def region_infonce(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """Cross-entropy of row i of ``student`` against all rows of ``teacher``, row i the positive (M, D)."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    logits = s @ t.t() / tau
    return F.cross_entropy(logits, torch.arange(len(s), device=s.device))
