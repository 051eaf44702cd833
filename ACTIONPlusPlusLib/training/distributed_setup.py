"""DistributedDataParallel for the trainer (``torchrun``, issue 6).

``train`` calls :func:`wrap_for_ddp` once the :class:`~.loop.Trainer` is built and before a checkpoint
or an initial model is loaded, when torch.distributed is initialised.  After it:

- every rank starts from rank 0's state: the student through DDP's own broadcast, and explicitly the
  teacher and both head modules, whose random initial weights, ISD queues, SAACL queue and centroids
  were drawn from per-rank seeds (the seeds differ so that ranks draw different batches);
- ``trainer.train_student`` is the DDP wrapper (the steps call it; student gradients are averaged
  during the backward pass), while ``trainer.student`` stays the plain network for ``state_dict``,
  the EMA teacher and ``model.pt``;
- ``trainer.sync_gradients`` averages the gradients of the trained heads (ISD projectors/predictors,
  the fine-tuning representation head), which live outside the DDP module, after each backward;
- ``trainer.sync_buffers`` averages the BatchNorm running statistics of student and teacher over the
  ranks before each checkpoint, so checkpoints and ``model.pt`` hold the statistics of all ranks.

Queues, class centroids and the Hungarian allocation stay identical on all ranks by construction:
they start equal (broadcast here) and are only updated from features gathered across ranks
(``all_gather_cat`` in ``ISDHeads.losses`` and ``SAACL.gather_fn``).

DDP options: ``find_unused_parameters`` is on for ACTION++ runs, because the pre-training warm-up
trains only the encoder (the global loss uses the latent code, the decoder gets no gradient) while
the joint phase and fine-tuning train everything; ``static_graph`` cannot describe a graph that
changes between phases.  Fine-tuning calls the student twice per step (labeled batch, mixed
unlabeled batch) before one backward; DDP handles this because every parameter is reached in both
forwards and its gradient hook fires once per backward.  ``broadcast_buffers`` is off: train-mode
BatchNorm normalises with batch statistics, so the running statistics only matter when saved, and
they are averaged then.  With ``cfg.sync_batchnorm`` (CUDA only) the trainer has already converted
student and teacher to SyncBatchNorm, which normalises with the statistics of the global batch.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as dist_utils
from ..config import Config
from .events import ProgressTracker
from .finetune import FinetuneHeads
from .pretrain import ISDHeads


class DistributedTrainer(Protocol):
    """What :func:`wrap_for_ddp` reads and sets on a :class:`~.loop.Trainer`.

    A protocol rather than an import of ``Trainer``: the loop imports this module, so this module must
    not import the loop (no import cycle).
    """

    cfg: Config
    device: torch.device
    tracker: ProgressTracker
    student: nn.Module
    teacher: nn.Module
    isd: ISDHeads
    ft: FinetuneHeads
    train_student: Any
    sync_gradients: Callable[[], None] | None
    sync_buffers: Callable[[], None] | None


def trained_head_parameters(trainer: DistributedTrainer) -> list[torch.nn.Parameter]:
    """Every parameter the optimisers train besides the student network."""
    return list(trainer.isd.student_parameters()) + list(trainer.ft.q_rep.parameters())


def wrap_for_ddp(trainer: DistributedTrainer) -> DistributedDataParallel:
    """Wrap ``trainer.student`` in DDP and install the gradient/buffer synchronisation hooks."""
    if not dist_utils.is_distributed():
        raise RuntimeError("wrap_for_ddp needs an initialised torch.distributed process group")
    cfg = trainer.cfg
    device = trainer.device
    if cfg.sync_batchnorm and device.type != "cuda":
        trainer.tracker.emit({"event": "warning", "message":
                              "sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU kernel): each "
                              "process normalises with the statistics of its own batch"})
    # identical starting point on every rank (the student is broadcast by DDP itself)
    dist_utils.broadcast_module_(trainer.teacher)
    dist_utils.broadcast_module_(trainer.isd)
    dist_utils.broadcast_module_(trainer.ft)
    # the warm-up leaves the decoder without gradient; DDP's traversal from the outputs cannot see that
    # (it logs once that it "did not find any unused parameters") but then handles it correctly
    kwargs: dict = dict(find_unused_parameters=cfg.mode != "supervised" and cfg.pretrain_warmup_iterations > 0)
    # no buffer broadcast before each forward (torch >= 2.13 names it forward_sync_buffers); the student's
    # buffers are equal at this point anyway (fresh BatchNorm statistics)
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        kwargs.update(device_ids=[index], output_device=index)
    ddp = DistributedDataParallel(trainer.student, **kwargs)
    trainer.train_student = ddp
    heads = trained_head_parameters(trainer)
    trainer.sync_gradients = lambda: dist_utils.average_gradients_(heads)
    trainer.sync_buffers = lambda: dist_utils.average_batchnorm_stats_(trainer.student, trainer.teacher)
    return ddp
