"""Contrastive heads (spec 3.3).

As in the authors' code the projector/predictor "MLPs" are compositions of linear maps (no activation,
no BN).  The local heads act on the segmentation logits pooled inside overlapping windows; following
spec 10.1 the windows are pooled once over the whole map and then cut out with ``unfold``, which gives
exactly the per-window adaptive pooling without a Python loop over windows.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class GlobalProjector(nn.Module):
    """GAP -> Linear(c, c) -> Linear(c, out)."""

    def __init__(self, channels: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Linear(channels, out_dim))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.fc(latent.flatten(2).mean(dim=2))


class Predictor(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _conv1(dim: int, cin: int, cout: int, bias: bool = True) -> nn.Module:
    return (nn.Conv2d if dim == 2 else nn.Conv3d)(cin, cout, 1, bias=bias)


class LocalWindows(nn.Module):
    """Cut overlapping windows out of a logits map and pool each to ``pool`` cells per axis.

    ``window``/``stride`` are in pixels (2D 64/32, 3D 20/10 in-plane).  All full windows are used
    (the 2D code's exclusive range end drops the last window row; we keep it: every pixel is covered).
    Output: (N, P, C, pool, pool[, pool]) with windows ordered H-major, then W, then D.
    """

    def __init__(self, dim: int, window: int, stride: int, pool: int,
                 window_depth: int = 0, stride_depth: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.pool = pool
        self.windows = [window] * dim
        self.strides = [stride] * dim
        if dim == 3:
            self.windows[2] = window_depth or window
            self.strides[2] = stride_depth or stride

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        spatial = logits.shape[2:]
        kernels, cells, steps = [], [], []
        for size, win, step in zip(spatial, self.windows, self.strides):
            win = min(win, size)
            kernel = max(1, win // self.pool)
            cell = min(self.pool, size // kernel)
            kernels.append(kernel)
            cells.append(cell)
            steps.append(max(1, step // kernel))
        pool_fn = F.avg_pool2d if self.dim == 2 else F.avg_pool3d
        pooled = pool_fn(logits, kernel_size=kernels, stride=kernels)  # (N, C, g1, g2[, g3])
        x = pooled
        for axis, (cell, step) in enumerate(zip(cells, steps)):
            x = x.unfold(2 + axis, cell, step)  # appends a window-content axis, grid axis -> #windows
        # x: (N, C, p1, p2[, p3], c1, c2[, c3])
        n, c = x.shape[:2]
        grid = x.shape[2 : 2 + self.dim]
        x = x.reshape(n, c, math.prod(grid), *cells)
        return x.transpose(1, 2)  # (N, P, C, cells...)


class LocalHead(nn.Module):
    """Conv1(C -> 2C) -> Conv1(2C -> C) (projector) or Conv1(C -> C) x2 (predictor), applied per window."""

    def __init__(self, dim: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_conv1(dim, channels, hidden), _conv1(dim, hidden, channels))
        self.dim = dim

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        n, p = windows.shape[:2]
        out = self.net(windows.flatten(0, 1))
        return out.reshape(n, p, *out.shape[1:])


class RepresentationHead(nn.Module):
    """Dense representation for AnCo and SAACL (spec 6.1 step 6, decision D6: d = 128 in 2D and 3D).

    ``kernel=3`` is the authors' design: Conv3(sum of channels -> d, no bias) -> Conv1(d -> d) on the
    multi-scale features upsampled to full resolution and concatenated (2D: 496 channels at 256^2,
    about 90 % of a fine-tuning step's FLOPs).  ``kernel=1`` (our default) makes the first layer a 1x1
    conv, which commutes with the linear (align_corners) interpolation: it is applied per scale at the
    scale's native resolution and the d-channel results are upsampled and summed.  That equals a 1x1
    conv on the concatenation exactly (up to rounding) at a fraction of the cost and memory.
    """

    def __init__(self, dim: int, feature_channels: list[int], out_dim: int, kernel: int = 1) -> None:
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.dim = dim
        self.kernel = kernel
        if kernel == 1:
            self.per_scale = nn.ModuleList(conv(c, out_dim, 1, bias=False) for c in feature_channels)
        else:
            self.first = conv(sum(feature_channels), out_dim, kernel, padding=kernel // 2, bias=False)
        self.last = conv(out_dim, out_dim, 1)

    def _up(self, f: torch.Tensor, size) -> torch.Tensor:
        if f.shape[2:] == size:
            return f
        return F.interpolate(f, size=size, mode="bilinear" if self.dim == 2 else "trilinear", align_corners=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[-1].shape[2:]
        if self.kernel == 1:
            x = sum(self._up(proj(f), size) for proj, f in zip(self.per_scale, features))
        else:
            x = self.first(torch.cat([self._up(f, size) for f in features], dim=1))
        return self.last(x)

    # --- sparse evaluation (kernel 1 only) ---------------------------------------------------------
    # With kernel 1 the head is linear end to end (1x1 conv per scale, linear upsampling, sum, 1x1 conv),
    # so its value at a pixel only needs each scale's features interpolated at that pixel.  The
    # fine-tuning losses need the representation with gradient at a few thousand sampled pixels only
    # (queries, anchors): :meth:`at_pixels` computes exactly those rows (its backward touches the
    # C_s-channel features at 2^dim corners per pixel, never a d-channel full-resolution map), and
    # :meth:`dense_no_grad` the whole map without gradient (prototypes, negatives).
    def at_pixels(self, features: list[torch.Tensor], idx: torch.Tensor | None = None,
                  taps: list[PixelTaps] | None = None) -> torch.Tensor:
        """Rows ``(len(idx), d)`` of ``forward(features)`` at flat pixel indices over ``(N, *S)``.

        Equal (to float rounding) to gathering the rows of the dense map; differentiable w.r.t. the
        features and the head's weights.  Interpolation follows ``align_corners=True``.  ``taps``
        (from :func:`pixel_taps`, instead of ``idx``) lets two heads read the same pixels of feature
        maps of the same sizes (the student's and the teacher's) without recomputing where.
        """
        if self.kernel != 1:
            raise ValueError("sparse evaluation needs representation_kernel=1")
        if taps is None:
            if idx is None:
                raise ValueError("at_pixels needs idx or taps")
            taps = pixel_taps([tuple(f.shape[2:]) for f in features], idx, features[0].dtype)
        rows = None
        for proj, f, tap in zip(self.per_scale, features, taps):
            part = F.linear(_read_taps(f, tap), proj.weight.reshape(proj.out_channels, -1))
            rows = part if rows is None else rows + part
        weight = self.last.weight.reshape(self.last.out_channels, -1)
        return F.linear(rows, weight, self.last.bias)

    @torch.no_grad()
    def dense_no_grad(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``forward(features)`` without gradient, as a (N, d, *S) view of channels-last memory (the
        losses read it as pixel rows); kernel 1 only.

        The last 1x1 conv is folded into each scale's projection (``W_last W_s``, exact by linearity), so
        no d x d product runs at full resolution; each scale is projected at its own resolution and then
        upsampled channels-last (``interpolate``'s vectorised channels-last kernel), summed in place.
        """
        if self.kernel != 1:
            raise ValueError("sparse evaluation needs representation_kernel=1")
        last = self.last.weight.reshape(self.last.out_channels, -1)
        folded = [last @ proj.weight.reshape(proj.out_channels, -1) for proj in self.per_scale]  # (d, C_s)
        size = tuple(features[-1].shape[2:])
        n = features[-1].shape[0]
        per_image = math.prod(size) * last.shape[0] * features[-1].element_size()
        if features[-1].device.type != "cpu" or n == 1 or per_image > _CACHED_MAP_BYTES:
            return self._dense_rows(features, folded, size).movedim(-1, 1)
        # On the CPU one image at a time when its map is cache-sized: the sum of the upsampled scales
        # then stays in cache (a full-resolution d-channel map per image: 8 MiB at 128x128) instead of
        # streaming the whole batch's map through memory once per scale; 2.5x faster at 128x128 (8
        # images), the same values (to rounding: the products' blocking may differ with the row count).
        out = features[-1].new_empty((n, *size, last.shape[0]))
        for i in range(n):
            out[i : i + 1] = self._dense_rows([f[i : i + 1] for f in features], folded, size)
        return out.movedim(-1, 1)

    def _dense_rows(self, features: list[torch.Tensor], folded: list[torch.Tensor], size: tuple[int, ...]
                    ) -> torch.Tensor:
        """The channels-last (N, *size, d) map of :meth:`dense_no_grad`.

        Consecutive scales on the same grid (LA's two full-resolution maps) are projected into one map
        (the second product accumulates into the first's output), so that grid is written once.
        """
        total = None
        x, grid = None, None
        for w, f in zip(folded, features):
            rows = f.movedim(1, -1).reshape(-1, f.shape[1])  # (N * prod(s), C_s) pixel rows
            if x is not None and tuple(f.shape[2:]) == grid:
                x.view(-1, x.shape[-1]).addmm_(rows, w.t())
                continue
            if x is not None:
                total = _summed(total, self._up_channels_last(x, size))
            grid = tuple(f.shape[2:])
            x = F.linear(rows, w).view(f.shape[0], *grid, -1)  # projected at native resolution
        total = _summed(total, self._up_channels_last(x, size))
        return total.add_(self.last.bias)

    def _up_channels_last(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """(N, *s, c) channels-last -> (N, *size, c): ``interpolate`` on a channels-last view, which
        runs its vectorised channels-last kernel and returns channels-last memory."""
        if tuple(x.shape[1:-1]) == tuple(size):
            return x
        return self._up(x.movedim(-1, 1), size).movedim(1, -1)


def _summed(total: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``total + x`` in place (``x`` is a fresh map here), or ``x`` when there is no total yet."""
    return x if total is None else total.add_(x)


_CACHED_MAP_BYTES = 16 * 2**20  # dense_no_grad goes image by image while one image's map is this small


class PixelTaps(NamedTuple):
    """Where one scale's features are read for a set of full-resolution pixels (:func:`pixel_taps`)."""

    image: torch.Tensor  # (K * n,) image index of each tap
    position: torch.Tensor  # (K * n,) flat position in the scale's grid
    weight: torch.Tensor | None  # (K * n,) interpolation weight, None when K = 1 (same grid)
    corners: int  # K: 2^dim, or 1 at full resolution


@functools.lru_cache(maxsize=64)
def _scale_tables(sources: tuple[tuple[int, ...], ...], size: tuple[int, ...], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source grid and axis (S, dim): the align_corners ratio ``(extent - 1) / (out - 1)`` (float64)
    and the extent (long), on ``device``.  Cached: built (one small host-to-device copy) once per run."""
    ratio = torch.tensor([[(e - 1) / (o - 1) if o > 1 else 0.0 for e, o in zip(src, size)] for src in sources],
                         dtype=torch.float64)
    extent = torch.tensor([list(src) for src in sources], dtype=torch.long)
    return ratio.to(device), extent.to(device)


def pixel_taps(sizes: list[tuple[int, ...]], idx: torch.Tensor, dtype: torch.dtype = torch.float32) -> list[PixelTaps]:
    """The taps of ``interpolate(f, sizes[-1], align_corners=True)`` at flat pixel indices ``idx`` over
    ``(N, *sizes[-1])``, for feature maps of the given spatial ``sizes`` (the last is full resolution);
    weights in ``dtype`` (the features').

    Every coarser scale and all 2^dim corners are formed at once by broadcasting (a (2, ..., 2, S, n)
    grid of indices and weights), so the number of operations grows with neither: on a GPU each
    operation is a kernel launch, and this runs twice per fine-tuning step.
    """
    size = tuple(int(e) for e in sizes[-1])
    dim = len(size)
    idx = idx.reshape(-1).long()
    per_image = math.prod(size)
    n_idx = idx // per_image
    rest = idx % per_image
    coords = []  # full-resolution integer coordinate along each axis
    for extent in reversed(size):
        coords.append(rest % extent)
        rest = rest // extent
    coords.reverse()
    full = None  # flat position at full resolution
    for c, extent in zip(coords, size):
        full = c if full is None else full * extent + c
    coarse = [i for i, src in enumerate(sizes) if tuple(src) != size]
    rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    corners = 2 ** dim  # order: axis 0 most significant, summed in that order
    if coarse:
        count = len(coarse)
        ratio, extents = _scale_tables(tuple(tuple(int(e) for e in sizes[i]) for i in coarse), size, idx.device)
        lin, weight = None, None
        for axis in range(dim):
            pos = coords[axis].to(torch.float64) * ratio[:, axis : axis + 1]  # (S, n), float64: exact
            lo = pos.floor().long()  # in [0, extent - 1]: the coordinates lie within the full-size grid
            frac = (pos - lo).to(dtype)
            hi = torch.minimum(lo + 1, extents[:, axis : axis + 1] - 1)
            shape = [1] * dim + [count, -1]
            shape[axis] = 2
            ends = torch.stack([lo, hi]).view(shape)  # lower, upper corner
            w = torch.stack([1.0 - frac, frac]).view(shape)
            lin = ends if lin is None else lin * extents[:, axis : axis + 1] + ends
            weight = w if weight is None else weight * w
        lin = lin.movedim(-2, 0).reshape(count, -1)  # (S, corners * n), corner-major
        weight = weight.movedim(-2, 0).reshape(count, -1)
        rows = {i: (lin[k], weight[k]) for k, i in enumerate(coarse)}
    image = n_idx.repeat(corners) if coarse else n_idx
    taps = []
    for i in range(len(sizes)):
        if i in rows:
            taps.append(PixelTaps(image, rows[i][0], rows[i][1], corners))
        else:
            taps.append(PixelTaps(n_idx, full, None, 1))
    return taps


class _GatherColumns(torch.autograd.Function):
    """``f[image, :, position]`` for an (N, C, P) map, whose backward accumulates in a fixed order.

    The advanced index's own backward is ``index_put_(accumulate=True)``, which on a CPU with more
    than one thread adds with atomics in whatever order the threads reach a pixel: the sampled pixels
    repeat (with replacement, and the 2^dim corners of neighbouring pixels coincide), so two runs with
    the same seed gave different weights in the last bits after one step and different Dice after a
    few hundred.  Here the gradient goes through ``index_add_`` on the map's flat memory, a serial
    loop in index order on the CPU: bitwise the same sums at any thread count, and faster (0.2-1.0 ms
    against 0.5-2.0 ms for 4,096 taps of ACDC's maps, two threads).
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, image: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(image, position)
        # the map's layout without its memory: a dense map keeps its strides (channels-last stays
        # channels-last), any other comes back contiguous (empty_like's preserve_format)
        ctx.like = torch.empty_like(f, device="meta")
        return f[image, :, position]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        image, position = ctx.saved_tensors
        out = torch.zeros_like(ctx.like, dtype=grad.dtype, device=grad.device)  # one dense block
        s_n, s_c, s_p = out.stride()
        offsets = (image * s_n + position * s_p).unsqueeze(1) + torch.arange(out.shape[1], device=grad.device) * s_c
        out.as_strided((out.numel(),), (1,)).index_add_(0, offsets.reshape(-1), grad.reshape(-1))
        return out, None, None


def _gather_columns(f: torch.Tensor, image: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """``f[image, :, position]``: rows (n, C) of the (N, C, P) map ``f``, with a deterministic backward
    on the CPU (:class:`_GatherColumns`).  Elsewhere the plain index, as the GPU figures measured it."""
    if f.device.type == "cpu" and f.requires_grad and torch.is_grad_enabled():
        return _GatherColumns.apply(f, image, position)
    return f[image, :, position]


def _read_taps(g: torch.Tensor, tap: PixelTaps) -> torch.Tensor:
    """(n, d) interpolated rows of the (N, d, *s) map ``g`` at ``tap`` (every corner in one gather, one
    accumulation in the backward)."""
    values = _gather_columns(g.flatten(2), tap.image, tap.position)  # (K * n, d)
    if tap.weight is None:
        return values
    weighted = values * tap.weight.to(g.dtype).unsqueeze(1)
    return weighted.view(tap.corners, -1, values.shape[1]).sum(dim=0)
