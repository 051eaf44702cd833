"""Loss functions of ACTION++, one equation per module (spec sections 5-6).

- ``supervised``: ``L_sup = 0.5 (CE + Dice)`` (spec 5.3, 6.2)
- ``instance``: instance discrimination logits, KL distillation, ring-buffer queues (Eq. 1, spec 5.3)
- ``dense``: region InfoNCE of the optional dense pre-training term (``weight_dense``; not in the paper)
- ``centers``: fixed class centres, uniformity loss (Eq. 3, spec 6.6, D5)
- ``saacl``: supervised adaptive anatomical contrast + Hungarian allocation (Eq. 4-5, spec 6.5)
- ``anco``: anatomical contrast / ReCo regional contrast (Eq. 2, spec 6.4, 10.6)
- ``unsupervised``: confidence-weighted pseudo-label CE (spec 6.3)

All loss math is fp32 (inputs are cast with ``.float()``) and device-agnostic.
"""

from .anco import (
    AncoSample,
    anco_loss,
    anco_sample,
    contrast_ce,
    gather_pixels,
    sample_categorical,
    sample_per_class,
    sort_by_class,
)
from .centers import class_centers, optimize_centers, simplex_uniformity_minimum, uniformity_loss
from .dense import region_infonce, region_rows
from .instance import FeatureQueue, kl_distill, similarity_logits
from .saacl import SAACL, hungarian_allocation, saacl_loss
from .supervised import dice_loss, one_hot, supervised_loss
from .unsupervised import pseudo_label_loss

__all__ = [
    "AncoSample",
    "FeatureQueue",
    "SAACL",
    "anco_loss",
    "anco_sample",
    "class_centers",
    "contrast_ce",
    "dice_loss",
    "gather_pixels",
    "hungarian_allocation",
    "kl_distill",
    "one_hot",
    "optimize_centers",
    "pseudo_label_loss",
    "region_infonce",
    "region_rows",
    "sample_categorical",
    "saacl_loss",
    "sample_per_class",
    "similarity_logits",
    "simplex_uniformity_minimum",
    "sort_by_class",
    "supervised_loss",
    "uniformity_loss",
]
