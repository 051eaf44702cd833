"""Supervised adaptive anatomical contrast SAACL / TSC (paper Eq. 4-5, spec 6.5, decisions D4-D6).

Anchors are labeled pixels of a d = 128 representation (D6: student head, teacher = its EMA copy).
Each anchor is pulled towards the teacher feature of the same pixel, the same-class entries of a
memory queue of past teacher anchors and its class's assigned fixed centre (Hungarian allocation
of the centres to the EMA class centroids).

Host syncs: none.  The Hungarian allocation for C <= 6 classes is an exact brute force over all C!
permutations on the device (24 for C = 4), which gives the same result as scipy's
``linear_sum_assignment`` except for exact ties; larger C falls back to scipy (one tiny host sync).
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anco import gather_pixels, sample_per_class
from .centers import class_centers
from .instance import FeatureQueue
from .supervised import fp32_loss

__all__ = ["hungarian_allocation", "saacl_loss", "SAACL"]

_BRUTE_FORCE_MAX_CLASSES = 6


@functools.lru_cache(maxsize=16)
def _permutations(num_classes: int, device: str) -> Tensor:
    perms = list(itertools.permutations(range(num_classes)))
    return torch.tensor(perms, dtype=torch.long).to(device)


def hungarian_allocation(similarity: Tensor, method: str = "auto") -> Tensor:
    """Assignment ``pi`` (C,) long maximising ``sum_c similarity[c, pi(c)]`` (spec 6.5 step 5, Eq. 4).

    ``similarity[c, k]`` = cosine between class centroid c and centre k.  ``method``: ``"auto"``
    (on-device brute force for C <= 6, no host sync; scipy above), ``"brute"`` or ``"scipy"``
    (``scipy.optimize.linear_sum_assignment(maximize=True)``, one host sync).  Spec 12.5 vectors.
    """
    sim = similarity.detach()
    c = sim.shape[0]
    if sim.dim() != 2 or sim.shape[1] != c:
        raise ValueError(f"hungarian_allocation expects a square (C, C) matrix, got {tuple(sim.shape)}")
    if method not in ("auto", "brute", "scipy"):
        raise ValueError(f"method must be 'auto', 'brute' or 'scipy', got {method!r}")
    if method == "scipy" or (method == "auto" and c > _BRUTE_FORCE_MAX_CLASSES):
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(sim.float().cpu().numpy(), maximize=True)
        out = torch.empty(c, dtype=torch.long)
        out[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
        return out.to(similarity.device)
    perms = _permutations(c, str(sim.device))  # (C!, C), lexicographic
    totals = sim.double()[torch.arange(c, device=sim.device), perms].sum(dim=1)  # (C!,)
    # index_select with a 1-element tensor: indexing with a 0-dim tensor would convert it to a Python
    # int (a host sync on CUDA)
    return perms.index_select(0, torch.argmax(totals).view(1)).squeeze(0)


class _LogSumExpMatmul(torch.autograd.Function):
    """``logsumexp(a @ keys.T, dim=1)``, differentiable w.r.t. ``a`` only.

    Computed over chunks of ``keys`` with a running maximum (the online softmax), so the (n, K) matrix
    never exists whole: each (n, chunk) block is exponentiated in place while it is in cache, and its
    contribution to the gradient ``softmax(a @ keys.T) @ keys`` is accumulated in the same pass.  The
    backward only scales that saved (n, d) gradient.
    """

    @staticmethod
    def forward(ctx, a: Tensor, keys: Tensor, chunk: int) -> Tensor:
        n = a.shape[0]
        peak = a.new_full((n, 1), float("-inf"))
        total = a.new_zeros((n, 1))
        acc = a.new_zeros((n, keys.shape[1]))
        for block in keys.split(max(1, int(chunk))):
            z = a @ block.t()
            new_peak = torch.maximum(peak, z.amax(dim=1, keepdim=True))
            rescale = torch.exp(peak - new_peak)
            z.sub_(new_peak).exp_()
            total = total * rescale + z.sum(dim=1, keepdim=True)
            acc = acc * rescale + z @ block
            peak = new_peak
        ctx.save_for_backward(acc / total)
        return (peak + total.log()).squeeze(1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        return grad_out.unsqueeze(1) * grad, None, None


def logsumexp_matmul(a: Tensor, keys: Tensor) -> Tensor:
    """``torch.logsumexp(a @ keys.T, 1)`` differentiable w.r.t. ``a`` only (see :class:`_LogSumExpMatmul`)."""
    # cache-sized blocks on CPU (512: 35.8 ms against 45.2 with 2048 for 1024 anchors x 12,292 keys,
    # oneDNN route; 68.6 against 76.7 with MKL), all keys at once on GPUs
    chunk = 512 if a.device.type == "cpu" else max(1, keys.shape[0])
    return _LogSumExpMatmul.apply(a, keys.detach(), chunk)


@fp32_loss
def saacl_loss(
    s: Tensor,
    t: Tensor,
    y: Tensor,
    queue: Tensor,
    queue_labels: Tensor,
    centers: Tensor,
    assignment: Tensor,
    tau: float,
    lambda_a: float,
    weights: Tensor | None = None,
) -> Tensor:
    """SAACL loss of n anchors (spec 6.5 steps 3, 6, 7; vector 12.8).

    ``s`` (n, d) student and ``t`` (n, d) teacher features of the same pixels (unit rows: normalise
    before), ``y`` (n,) labels, ``queue`` (K, d) with ``queue_labels`` (K,) (-1 = never a positive),
    ``centers`` psi (C, d), ``assignment`` pi (C,).  With ``z = [s.t, s.queue^T, s.psi^T] / tau`` and
    ``log_prob = log_softmax(z)`` over all 1 + K + C columns, ``P_view = {0} U {queue k: label_k = y}``,
    ``|P| = |P_view| + 1``::

        loss_class  = -mean_i sum_{j in P_view(i)} log_prob_i[j] / |P_i|
        loss_target = -mean_i log_prob_i[1 + K + pi(y_i)] / |P_i|
        L = loss_class + lambda_a * loss_target

    ``weights`` (n,) optional 0/1 anchor weights: the means become weighted means (masked anchors).
    The same-class queue sum is computed through per-class queue sums (C, d), not an (n, K) mask.
    """
    s = s.float()
    t = t.float()
    queue = queue.float()
    centers = centers.float()
    y = y.long()
    num_classes = centers.shape[0]
    inv_tau = 1.0 / float(tau)
    # Only two (n, K + C) passes: one matmul and one logsumexp (whose backward is the softmax).  The
    # positive, same-class queue and target columns are computed from their rows directly (O(n d)),
    # never gathered from or scattered into the (n, 1 + K + C) matrix; 1 / tau scales ``s`` (n x d).
    s_tau = s * inv_tau
    l_pos = (s_tau * t).sum(dim=1)  # (n,) = z[:, 0]
    keys = torch.cat([queue, centers])  # (K + C, d)
    log_z = torch.logaddexp(l_pos, logsumexp_matmul(s_tau, keys))  # (n,)
    # same-class queue entries: sum_k [label_k == y_i] z_ik = s_i . (sum of the class's queue rows) / tau
    classes = torch.arange(num_classes, device=s.device)
    member = (queue_labels.long().unsqueeze(0) == classes.unsqueeze(1)).float()  # (C, K)
    class_sums = member @ queue  # (C, d)
    class_counts = member.sum(dim=1)  # (C,)
    y_c = y.clamp(0, num_classes - 1)
    pos_queue = (s_tau * class_sums[y_c]).sum(dim=1)
    n_view = 1.0 + class_counts[y_c]  # |P_view|
    sum_view = l_pos + pos_queue - n_view * log_z  # sum of log_prob over P_view
    card = n_view + 1.0  # |P|
    log_prob_target = (s_tau * centers[assignment.long()[y_c]]).sum(dim=1) - log_z
    loss_class = -sum_view / card
    loss_target = -log_prob_target / card
    per_anchor = loss_class + lambda_a * loss_target
    if weights is None:
        return per_anchor.mean()
    w = weights.float()
    return (per_anchor * w).sum() / w.sum().clamp_min(1.0)


class SAACL(nn.Module):
    """SAACL module: anchor sampling, loss, centroid EMA, Hungarian allocation and queue (spec 6.5).

    Buffers (all in ``state_dict``): ``centers`` (C, d) fixed simplex (:func:`class_centers`),
    ``queue`` (a :class:`FeatureQueue`: ``queue.data`` (K, d) random unit rows, ``queue.labels`` (K,)
    -1, ``queue.ptr``), ``centroids`` (C, d) random unit rows, ``assignment`` (C,) long (init identity).

    Assignment timing (``update_first``, default True = the released code's order, spec 6.5 steps
    4-7): the centroid EMA and the Hungarian allocation run on this step's anchors first (no grad),
    and the loss uses the UPDATED assignment.  ``update_first=False`` computes the loss with the
    assignment from before this step's update.  The queue used by the loss is always the one from
    before this step; this step's teacher anchors are enqueued afterwards.

    Anchors: ``anchors_per_class`` pixels per class, uniform with replacement among the pixels of that
    class over the whole batch, for every class at once; absent classes get weight 0 (loss = mean over
    the anchors of present classes, like the code's ``256 * #present`` anchors).  When a single class is
    present its anchors are uniform over all pixels of the batch, which is the intended fallback of
    spec 6.5 (labels outside ``[0, C)`` are never sampled).  The code's random row permutation is
    skipped (the loss does not depend on row order).  Only present-class anchors are enqueued.

    Distributed hook: ``gather_fn`` (attribute, default identity), a function that concatenates a
    tensor over ranks along dim 0 (e.g. ``all_gather_cat``).  It is applied to the teacher anchors,
    labels and mask before enqueueing and to the per-class anchor sums/counts of the centroid EMA, so
    every rank keeps the same queue, centroids and assignment.
    """

    centers: Tensor
    centroids: Tensor
    assignment: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        queue_size: int = 12288,
        anchors_per_class: int = 256,
        lambda_a: float = 0.2,
        centroid_momentum: float = 0.1,
        center_seed: int = 0,
        update_first: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.anchors_per_class = int(anchors_per_class)
        self.lambda_a = float(lambda_a)
        self.centroid_momentum = float(centroid_momentum)
        self.update_first = bool(update_first)
        self.gather_fn: Callable[[Tensor], Tensor] | None = None
        self.register_buffer("centers", class_centers(self.num_classes, self.dim, center_seed))
        self.queue = FeatureQueue(queue_size, self.dim, init="randn_normalized", with_labels=True)
        self.register_buffer("centroids", F.normalize(torch.randn(self.num_classes, self.dim), dim=1))
        self.register_buffer("assignment", torch.arange(self.num_classes, dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, dim={self.dim}, queue_size={self.queue.size}, "
                f"anchors_per_class={self.anchors_per_class}, lambda_a={self.lambda_a}, "
                f"centroid_momentum={self.centroid_momentum}, update_first={self.update_first}")

    def _gather(self, x: Tensor) -> Tensor:
        return x if self.gather_fn is None else self.gather_fn(x)

    @torch.no_grad()
    def update_centroids(self, s: Tensor, y: Tensor, weights: Tensor) -> None:
        """Eq. 4 bookkeeping (spec 6.5 steps 4-5): centroid EMA of present classes, then Hungarian.

        ``b_c = normalize(mean of the class's anchors)``,
        ``phi_c <- normalize((1 - m) phi_c + m b_c)``; absent classes keep their stale centroid;
        ``assignment = hungarian(phi @ psi^T)``.
        """
        c = self.num_classes
        member = (y.long().unsqueeze(0) == torch.arange(c, device=y.device).unsqueeze(1)).float()
        member = member * weights.float().unsqueeze(0)  # (C, n)
        stats = torch.cat([member @ s.float(), member.sum(dim=1, keepdim=True)], dim=1)  # (C, d+1)
        stats = self._gather(stats.unsqueeze(0)).sum(dim=0)
        sums, counts = stats[:, :-1], stats[:, -1]
        batch_mean = F.normalize(sums, dim=1)
        m = self.centroid_momentum
        updated = F.normalize((1.0 - m) * self.centroids + m * batch_mean, dim=1)
        self.centroids.copy_(torch.where((counts > 0).unsqueeze(1), updated, self.centroids))
        self.assignment.copy_(hungarian_allocation(self.centroids @ self.centers.t()))

    @fp32_loss
    def forward(
        self,
        student_feat: Tensor,
        teacher_feat: Tensor,
        labels: Tensor,
        tau: float,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Loss on the labeled batch; updates centroids, assignment and queue (spec 6.5).

        ``student_feat`` (N, d, *S) with gradient, ``teacher_feat`` (N, d, *S) (detached here),
        ``labels`` (N, *S) long at the same resolution.  ``generator`` must live on the features' device.
        """
        if student_feat.shape[1] != self.dim or teacher_feat.shape != student_feat.shape:
            raise ValueError(f"SAACL expects student/teacher features (N, {self.dim}, *S) of equal shape, got "
                             f"{tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}")
        if tuple(labels.shape) != (student_feat.shape[0], *student_feat.shape[2:]):
            raise ValueError(f"SAACL labels {tuple(labels.shape)} do not match features {tuple(student_feat.shape)}")
        idx, y, weights = self.sample(labels, generator)
        s = gather_pixels(student_feat, idx)
        with torch.no_grad():
            t = gather_pixels(teacher_feat.detach(), idx)
        return self.rows_loss(s, t, y, weights, tau)

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Anchor pixels: ``anchors_per_class`` per class, uniform with replacement over the batch.

        Returns flat pixel indices over ``labels`` (C*A,), the anchors' classes (C*A,) and their 0/1
        weights (absent classes False).
        """
        c, a = self.num_classes, self.anchors_per_class
        idx, counts = sample_per_class(labels.reshape(-1), c, a, generator)  # (C, A)
        weights = (counts > 0).view(c, 1).expand(c, a).reshape(-1)
        y = torch.arange(c, device=idx.device).view(c, 1).expand(c, a).reshape(-1)
        return idx.reshape(-1), y, weights

    @fp32_loss
    def rows_loss(self, student_rows: Tensor, teacher_rows: Tensor, y: Tensor, weights: Tensor, tau: float) -> Tensor:
        """Loss of anchors given as rows (n, d) (from :meth:`sample`'s indices); updates the state.

        Rows are normalised here (identical to normalising the whole map first).
        """
        s = F.normalize(student_rows.float(), dim=1)
        with torch.no_grad():
            t = F.normalize(teacher_rows.detach().float(), dim=1)
        if self.update_first:
            self.update_centroids(s.detach(), y, weights)
        # the queue is cloned because autograd saves it for the backward of ``s @ queue.T`` and the
        # enqueue below updates it in place (12288 x 128 floats, a 6 MB device copy)
        loss = saacl_loss(s, t, y, self.queue.data.clone(), self.queue.labels.clone(), self.centers,
                          self.assignment.clone(), tau, self.lambda_a, weights=weights)
        if not self.update_first:
            self.update_centroids(s.detach(), y, weights)
        with torch.no_grad():
            self.queue.enqueue(self._gather(t), labels=self._gather(y), mask=self._gather(weights))
        return loss
