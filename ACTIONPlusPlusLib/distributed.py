"""torch.distributed helpers that are the identity in a single process.

Queues and class centroids are updated from features gathered across ranks so that every rank holds
the same state (issue 6).  Every helper here is a no-op when torch.distributed is not initialised.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all ranks along dim 0, rank order."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
