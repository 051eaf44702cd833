"""torch.distributed helpers that are the identity in a single process.

Queues and class centroids are updated from features gathered across ranks so that every rank holds
the same state (issue 6).  Every helper here is a no-op when torch.distributed is not initialised.

``init_from_env`` starts the process group when the process was launched by ``torchrun`` (the
environment holds ``RANK`` and ``WORLD_SIZE``): NCCL for CUDA tensors (with gloo beside it for the few
CPU-side collectives: stop flags, RNG states), gloo alone on CPU.  Each process uses the GPU
``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def local_rank() -> int:
    """The process's index on its node (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device of this process: ``name`` resolved as usual, and any CUDA device becomes
    ``cuda:LOCAL_RANK`` when launched by torchrun (one GPU per process)."""
    from .device import DeviceError, resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and launched_by_torchrun():
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"torchrun started local rank {index} but torch sees {torch.cuda.device_count()} GPU(s) on this "
                "node: use --nproc_per_node at most the number of GPUs")
        device = torch.device("cuda", index)
    return device


def init_from_env(device: str | torch.device | None = "auto") -> bool:
    """Initialise torch.distributed from torchrun's environment; True when distributed.

    Does nothing and returns False outside torchrun (no ``RANK``/``WORLD_SIZE``).  Returns True at once
    when a process group already exists.  ``device`` (the config's device) picks the backend: NCCL
    (plus gloo for CPU tensors) when this process trains on CUDA, whose current device is then set to
    ``cuda:LOCAL_RANK``; gloo otherwise.
    """
    if is_distributed():
        return True
    if not launched_by_torchrun() or not dist.is_available():
        return False
    target = local_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl", device_id=target)
    else:
        dist.init_process_group(backend="gloo")
    return True


def destroy(synchronize: bool = True) -> None:
    """Tear the process group down (end of a torchrun command), while the interpreter is fully alive.

    The DistributedDataParallel wrapper and its reducer sit in reference cycles that hold the gloo
    group's C++ object; left to the interpreter's shutdown, that object's worker threads are torn down
    with it and a rank can abort with "terminate called without an active exception" after a
    successful run (seen once in CI).  So the cycles are collected first, every rank waits for the
    others (``synchronize``; False after an error, where a rank may be gone and would leave the others
    waiting), and only then is the group destroyed.
    """
    if is_distributed():
        gc.collect()
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def _flag_device() -> torch.device:
    """Where small control tensors go: CPU when the group has gloo, else the current GPU."""
    backend = str(dist.get_backend())
    if "gloo" in backend or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


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


def any_rank(flag: bool | torch.Tensor) -> bool:
    """True when ``flag`` is true on at least one rank (a collective: every rank must call it)."""
    value = bool(flag)
    if not is_distributed():
        return value
    t = torch.tensor([int(value)], dtype=torch.int32, device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def agreed(should_stop: Callable[[], bool]) -> Callable[[], bool]:
    """``should_stop`` made collective: every rank stops at the same iteration once any rank asks.

    A signal reaches the ranks at slightly different times; a rank that stopped alone would leave the
    others waiting in the next gradient all-reduce.
    """
    if not is_distributed():
        return should_stop
    return lambda: any_rank(should_stop())


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _coalesced(tensors: list[torch.Tensor], op: Callable[[torch.Tensor], None]) -> None:
    """Apply the in-place collective ``op`` to one flat buffer per dtype and copy the results back."""
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        op(flat)
        offset = 0
        for t in group:
            n = t.numel()
            t.detach().copy_(flat[offset : offset + n].view_as(t))
            offset += n


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank ``src``'s values."""
    if not is_distributed():
        return
    tensors = [t for t in list(module.parameters()) + list(module.buffers()) if t.numel() > 0]
    _coalesced(tensors, lambda flat: dist.broadcast(flat, src))


@torch.no_grad()
def average_gradients_(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each ``.grad`` by its mean over ranks (one all-reduce per dtype).

    Parameters without a gradient are skipped; the set of parameters with a gradient must be the same
    on every rank (it is: every rank runs the same phase with the same losses).
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    _mean_over_ranks_(grads)


def _mean_over_ranks_(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor in place by its mean over ranks (one coalesced all-reduce)."""
    n = world_size()

    def op(flat: torch.Tensor) -> None:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(n)

    _coalesced(tensors, op)


@torch.no_grad()
def average_batchnorm_stats_(*modules: nn.Module) -> None:
    """Average the BatchNorm running means and variances of ``modules`` over ranks.

    Without SyncBatchNorm each rank's running statistics follow its own batches; their mean over ranks
    estimates the statistics of the global batch (the usual DDP practice before evaluating or saving).
    """
    if not is_distributed():
        return
    stats = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
                stats += [m.running_mean, m.running_var]
    if not stats:
        return
    _mean_over_ranks_(stats)
