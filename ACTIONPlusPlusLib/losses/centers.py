"""Fixed class centres of SAACL (paper Eq. 3, spec 6.6, decision D5).

The centres minimise the uniformity loss of Eq. 3 on the unit sphere.  When ``dim >= C - 1`` the
minimiser is a regular simplex (pairwise dot ``-1/(C-1)``), built here analytically and rotated by a
fixed-seed random orthogonal matrix; when ``dim < C - 1`` Eq. 3 is minimised by gradient descent in
float64 at ``tau = 1``.  Results are cached per ``(C, d, seed)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .supervised import fp32_loss

__all__ = ["uniformity_loss", "class_centers", "optimize_centers", "simplex_uniformity_minimum"]


@fp32_loss
def uniformity_loss(centers: Tensor, tau: float = 1.0) -> Tensor:
    """Eq. 3 as in the authors' generator: ``mean_i logsumexp_j(psi_i . psi_j / tau)``, j over ALL rows.

    Rows are L2-normalised first (the loss lives on the unit sphere).  ``centers`` (C, d).
    """
    x = F.normalize(centers, dim=1)
    return torch.logsumexp(x @ x.t() / tau, dim=1).mean()


def simplex_uniformity_minimum(num_classes: int, tau: float = 1.0) -> float:
    """Closed-form value of :func:`uniformity_loss` at a regular simplex (spec 6.6).

    ``log(e^{1/tau} + (C-1) e^{-1/((C-1) tau)})``: 1.126928 (C=2) and 1.582658 (C=4) at tau = 1.
    """
    c = int(num_classes)
    if c == 1:
        return 1.0 / tau
    return math.log(math.exp(1.0 / tau) + (c - 1) * math.exp(-1.0 / ((c - 1) * tau)))


def optimize_centers(
    num_classes: int,
    dim: int,
    seed: int = 0,
    steps: int = 2000,
    lr: float = 0.05,
    tau: float = 1.0,
) -> Tensor:
    """Minimise Eq. 3 by Adam in float64 from a seeded random start; returns unit rows (C, d) float64.

    Plain NumPy with the analytic gradient (a few microseconds per step): with ``u = x / |x|``,
    ``P = softmax(u u^T / tau)`` row-wise, ``dL/du = (P + P^T) u / (C tau)``, projected on the tangent
    space of each row and divided by its norm.
    """
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64).numpy()
    c = num_classes
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(1, int(steps) + 1):
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        u = x / norm
        g = u @ u.T / tau
        p = np.exp(g - g.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        du = (p + p.T) @ u / (c * tau)
        grad = (du - np.sum(du * u, axis=1, keepdims=True) * u) / norm
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        x = x - lr * (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + eps)
    return F.normalize(torch.from_numpy(x), dim=1)


def _random_frame(dim: int, k: int, gen: torch.Generator) -> Tensor:
    """Haar-random orthonormal k-frame in R^dim, (dim, k) float64 (reduced QR of a Gaussian, sign fix).

    Equal in distribution to the first k columns of a random orthogonal matrix, at O(dim k^2) cost.
    """
    a = torch.randn(dim, k, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs.unsqueeze(0)


def _simplex(num_classes: int, dim: int, gen: torch.Generator) -> Tensor:
    """Regular simplex of C unit vectors in R^dim (dim >= C - 1), randomly rotated, float64."""
    c = num_classes
    e = torch.eye(c, dtype=torch.float64) - 1.0 / c  # C orthonormal vectors minus their mean
    # The rows span the (C-1)-dim complement of the all-ones vector: express them in an orthonormal
    # basis of that subspace (so dim == C - 1 works too), then map that basis onto a random
    # orthonormal (C-1)-frame of R^dim, i.e. a fixed-seed random rotation of the padded simplex.
    _, _, vh = torch.linalg.svd(e)
    coords = F.normalize(e @ vh[: c - 1].t(), dim=1)  # (C, C-1)
    return coords @ _random_frame(dim, c - 1, gen).t()


@functools.lru_cache(maxsize=32)
def _cached_centers(num_classes: int, dim: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    if num_classes == 1:
        out = F.normalize(torch.randn(1, dim, generator=gen, dtype=torch.float64), dim=1)
    elif dim >= num_classes - 1:
        out = _simplex(num_classes, dim, gen)
    else:
        out = optimize_centers(num_classes, dim, seed=seed, steps=2000, lr=0.05, tau=1.0)
    return out.to(torch.float32)


def class_centers(num_classes: int, dim: int, seed: int = 0) -> Tensor:
    """SAACL class centres psi (C, d) float32, unit rows (D5).

    Exact regular simplex (Gram ``C/(C-1) I - 1/(C-1) 11^T``, rows summing to 0) for ``dim >= C - 1``,
    rotated by a fixed-seed orthogonal matrix; gradient descent on Eq. 3 (float64, tau = 1) otherwise.
    Deterministic in ``(C, d, seed)`` and cached; a fresh clone is returned each call.
    """
    if num_classes < 1 or dim < 1:
        raise ValueError(f"class_centers needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
    return _cached_centers(int(num_classes), int(dim), int(seed)).clone()
