from __future__ import annotations

from typing import NamedTuple

import torch


class NetOutput(NamedTuple):
    """What every segmentation network returns.

    ``latent`` feeds the global (encoder) instance discrimination; ``features`` is the multi-scale list
    (coarse to fine) that stage 2 upsamples and concatenates for the representation head.
    """

    logits: torch.Tensor
    latent: torch.Tensor
    features: list[torch.Tensor]
