"""Instance discrimination (paper Eq. 1, spec 5.3): similarity logits, KL distillation, ring buffers.

``FeatureQueue`` is also the memory bank of SAACL (spec 6.5).  Its state lives in registered buffers,
so it goes into ``state_dict`` and follows ``.to(device)``.  Enqueueing never syncs with the host:
the write positions are computed on the device from the pointer buffer.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .supervised import fp32_loss

__all__ = ["similarity_logits", "kl_distill", "FeatureQueue"]


@fp32_loss
def similarity_logits(a: Tensor, queue: Tensor, tau: float) -> Tensor:
    """``normalize(a) @ normalize(queue).T / tau`` (spec 5.3 ``compute_logits``), fp32.

    ``a`` (N, F), ``queue`` (K, F) -> (N, K); rows are L2-normalised at use time.
    """
    a = F.normalize(a.float(), dim=1)
    q = F.normalize(queue.float(), dim=1)
    return a @ q.t() / tau


@fp32_loss
def kl_distill(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(p_teacher || p_student)``, batchmean over rows (spec 5.3, vector 12.6).

    Softmax over the last axis.  The teacher target keeps its graph: gradients flow into both inputs
    (the code's k-heads are trained through the target).
    """
    log_ps = F.log_softmax(student_logits.float(), dim=-1)
    log_pt = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)


class FeatureQueue(nn.Module):
    """FIFO ring buffer of ``size`` rows of shape ``dim`` (spec 5.3 ISD queues, 6.5 SAACL queue).

    Buffers: ``data`` (size, *dim) float32, ``ptr`` () long, and with ``with_labels`` ``labels`` (size,)
    long initialised to -1 (never a positive).  ``init``: ``"randn"`` (raw normal values, the ISD
    queues, normalised at use), ``"randn_normalized"`` (each row L2-normalised, the SAACL queue) or
    ``"zeros"``.  There is no divisibility requirement between ``size`` and the batch size.
    """

    data: Tensor
    ptr: Tensor
    labels: Tensor

    def __init__(
        self,
        size: int,
        dim: int | tuple[int, ...],
        init: str = "randn",
        with_labels: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"FeatureQueue size must be >= 1, got {size}")
        shape = (dim,) if isinstance(dim, int) else tuple(int(d) for d in dim)
        self.size = int(size)
        self.dim = shape
        if init == "zeros":
            data = torch.zeros(self.size, *shape)
        elif init in ("randn", "randn_normalized"):
            data = torch.randn(self.size, *shape, generator=generator)
            if init == "randn_normalized":
                data = F.normalize(data.reshape(self.size, -1), dim=1).reshape(self.size, *shape)
        else:
            raise ValueError(f"FeatureQueue init must be 'randn', 'randn_normalized' or 'zeros', got {init!r}")
        self.register_buffer("data", data)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.with_labels = bool(with_labels)
        if self.with_labels:
            self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, with_labels={self.with_labels}"

    @torch.no_grad()
    def enqueue(self, x: Tensor, labels: Tensor | None = None, mask: Tensor | None = None) -> None:
        """Write the rows of ``x`` (n, *dim) at ``ptr`` with wrap-around; ``ptr <- (ptr + n) mod size``.

        Equivalent to writing the rows one after the other: when ``n > size`` only the last ``size``
        rows survive.  ``mask`` (n,) bool, optional: only the rows where it is true are written, in
        order, and ``ptr`` advances by their count, all on the device (the masked-out rows rewrite their
        slot's current value, so they change nothing; more than ``size`` rows go in chunks of ``size``).
        No host sync.
        """
        if tuple(x.shape[1:]) != self.dim:
            raise ValueError(f"enqueue: rows of shape {tuple(x.shape[1:])}, queue expects {self.dim}")
        if self.with_labels and labels is None:
            raise ValueError("enqueue: this queue stores labels; pass labels")
        if not self.with_labels and labels is not None:
            raise ValueError("enqueue: this queue stores no labels")
        n = int(x.shape[0])
        if n == 0:
            return
        x = x.detach().to(dtype=self.data.dtype, device=self.data.device)
        if labels is not None:
            labels = labels.detach().to(dtype=torch.long, device=self.data.device).reshape(n)
        if mask is None:
            keep = min(n, self.size)
            offsets = torch.arange(n - keep, n, device=self.data.device)
            idx = (self.ptr + offsets) % self.size
            self.data.index_copy_(0, idx, x[n - keep :])
            if labels is not None:
                self.labels.index_copy_(0, idx, labels[n - keep :])
            self.ptr.copy_((self.ptr + n) % self.size)
            return
        if n > self.size:  # e.g. anchors gathered from many ranks: chunks of size rows, written in order
            for start in range(0, n, self.size):
                end = start + self.size
                self.enqueue(x[start:end], None if labels is None else labels[start:end], mask.reshape(n)[start:end])
            return
        valid = mask.to(device=self.data.device).reshape(n).bool()
        vi = valid.long()
        n_valid = vi.sum()
        rank_valid = torch.cumsum(vi, 0) - vi  # valid rows before this one
        inv = 1 - vi
        rank_invalid = torch.cumsum(inv, 0) - inv
        # valid rows: consecutive slots from ptr; invalid rows: the slots right after them, rewritten
        # with their own current content.  All n destinations are distinct because n <= size.
        idx = torch.where(valid, self.ptr + rank_valid, self.ptr + n_valid + rank_invalid) % self.size
        keep_shape = (n,) + (1,) * len(self.dim)
        values = torch.where(valid.view(keep_shape), x, self.data.index_select(0, idx))
        self.data.index_copy_(0, idx, values)
        if labels is not None:
            self.labels.index_copy_(0, idx, torch.where(valid, labels, self.labels.index_select(0, idx)))
        self.ptr.copy_((self.ptr + n_valid) % self.size)

    def get(self) -> Tensor:
        """The stored rows (size, *dim) (a view of the buffer; do not modify)."""
        return self.data
