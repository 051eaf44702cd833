"""Whole-case inference: slice-wise 2D U-Net (ACDC protocol) and sliding-window 3D V-Net (LA protocol).

Both paths return labels in the Case's own geometry (SimpleITK order (z, y, x), same shape as the
input image), so predictions can be written with the input's spacing/origin/direction unchanged.

Everything heavy stays on the device: slices/windows are batched, softmax is taken in fp32 (logits may
come out of bf16 autocast on CUDA), and the 3D accumulation uses slice adds on device tensors.  The
only host transfers are the input volume and the final outputs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .data.types import Case, normalize, to_network_order
from .device import autocast, channels_last_2d, resolve_device, tune_backends
from .models.folding import channels_last_3d, fold_batchnorm
from .errors import DataError

#: Sliding-window stride of the LA protocol (spec 8.2): stride_xy = 18, stride_z = 4, in (x, y, z),
#: which belongs to the paper's 112 x 112 x 80 window.
DEFAULT_STRIDE_3D: tuple[int, int, int] = (18, 18, 4)
PAPER_WINDOW_3D: tuple[int, int, int] = (112, 112, 80)


def default_stride_3d(patch: Sequence[int]) -> tuple[int, ...]:
    """The window stride that follows the window: the paper's (18, 18, 4) for its 112 x 112 x 80 window,
    half the window (50 % overlap, the usual sliding-window default) for any other window.  The paper's
    stride on a smaller window multiplies the number of windows (about 400 for 64 x 64 x 48 on an LA
    volume, against 48 at half overlap)."""
    patch = tuple(int(p) for p in patch)
    if patch == PAPER_WINDOW_3D:
        return DEFAULT_STRIDE_3D
    return tuple(max(1, p // 2) for p in patch)


@dataclass
class PredictResult:
    """``labels`` (z, y, x) uint8 in the input's geometry; ``probabilities`` (C, z, y, x) float32 or None."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


def _logits(output: Any) -> torch.Tensor:
    """The logits of a network's output: ``NetOutput.logits``, a tuple's first item, or a bare tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a network output of type {type(output).__name__}")


def window_starts(dim: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis (UA-MT / spec 8.2): ceil((dim - patch) / stride) + 1 windows,
    start k = min(stride * k, dim - patch).  ``dim`` must already be padded to >= ``patch``.

    Spec 12.14: ``window_starts(144, 112, 18) == [0, 18, 32]``, ``window_starts(88, 80, 4) == [0, 4, 8]``.
    """
    if dim < patch:
        raise ValueError(f"dimension {dim} is smaller than the patch {patch}; pad first")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    count = math.ceil((dim - patch) / stride) + 1
    return [min(stride * k, dim - patch) for k in range(count)]


#: Run 3D CPU predictions on inference_network's copy (BatchNorm folded, channels-last): equal up to
#: float rounding; False runs the training network as it is (the reference).
OPTIMIZE_FOR_INFERENCE = True


def inference_network(model: torch.nn.Module, dev: torch.device, dim: int, channels_last: bool = True) -> torch.nn.Module:
    """The network ``predict_case`` runs.  3D on the CPU: a copy of ``model`` with its BatchNorms folded
    and channels-last (oneDNN's faster layout), 1.6x faster on the LA volume at equal labels
    (``bench/infer.py --compare``).  2D on the CPU: ``model`` channels-last (a copy unless it already
    is, as the trainer's networks are), not folded: the 2D U-Net measured no faster folded; 1.5x faster
    on an ACDC volume (``bench/infer.py --preset acdc --compare``); ``channels_last=False`` (config
    ``cpu_channels_last``) runs it as it is.  Elsewhere ``model`` itself: CUDA has not been measured."""
    if not _uses_inference_copy(dev, dim) or not (dim == 3 or channels_last_2d(dim, dev, channels_last)):
        return model
    if dim == 2:
        if model_is_channels_last(model):
            return model
        return copy.deepcopy(model).to(memory_format=torch.channels_last)
    return channels_last_3d(fold_batchnorm(model))


def _uses_inference_copy(dev: torch.device, dim: int) -> bool:
    """Whether ``inference_network`` replaces the network: on the CPU, in 2D (channels-last) and 3D (folded)."""
    return OPTIMIZE_FOR_INFERENCE and dev.type == "cpu" and dim in (2, 3)


def model_is_channels_last(model: torch.nn.Module) -> bool:
    """Whether every 4D parameter of ``model`` (the convolutions' weights) is channels-last in memory."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def predict_case(
    model: torch.nn.Module,
    case: Case,
    cfg: Config,
    device: torch.device | str | None = None,
    return_probabilities: bool = False,
    batch_size: int | None = None,
    normalize_input: bool = False,
    stride: Sequence[int] | None = None,
) -> PredictResult:
    """Segment one case with ``model`` (trained for ``cfg``).

    ``device=None`` runs where the model's parameters are; otherwise the model is moved there.  The
    model is put in ``eval()`` mode for the call (spec D11) and its previous train/eval mode is
    restored afterwards, so the trainer can call this for validation.  ``normalize_input=True``
    applies ``normalize(image, cfg.normalization)`` first (raw NIfTI/NRRD input; the h5 releases are
    already normalised).  ``batch_size``: slices per forward in 2D (default 16), windows per forward
    in 3D (default 4 on CUDA, 2 on CPU).  ``stride``: 3D window stride in (x, y, z), default
    :func:`default_stride_3d` of the model's window.
    """
    image = np.asarray(case.image)
    if image.ndim == 2 and cfg.dim == 2:
        image = image[None]
        squeeze = True
    else:
        squeeze = False
    if image.ndim != 3:
        raise DataError(f"case {case.id}: expected a 3D image array (z, y, x), got shape {image.shape}")
    if image.size == 0:
        raise DataError(f"case {case.id}: empty image of shape {image.shape}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise DataError(f"case {case.id}: the image contains NaN or infinite values")
    if normalize_input:
        image = normalize(image, cfg.normalization)

    dev = _model_device(model) if device is None else resolve_device(device)
    if device is not None:
        model.to(dev)
    tune_backends(dev, onednn_matmul=cfg.cpu_onednn_matmul)
    was_training = model.training
    model.eval()
    try:
        net = inference_network(model, dev, cfg.dim, cfg.cpu_channels_last)
        with torch.inference_mode():
            if cfg.dim == 2:
                probs = _predict_2d(net, image, cfg, dev, batch_size or 16)
            else:
                default_batch = 4 if dev.type == "cuda" else 2
                probs = _predict_3d(
                    net, image, cfg, dev, batch_size or default_batch, tuple(stride or default_stride_3d(cfg.patch_size))
                )
            # probs: (C, z, y, x) on the device, fp32
            labels = probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
            probabilities = probs.cpu().numpy().astype(np.float32, copy=False) if return_probabilities else None
    finally:
        model.train(was_training)

    if squeeze:
        labels = labels[0]
        if probabilities is not None:
            probabilities = probabilities[:, 0]
    return PredictResult(labels=np.ascontiguousarray(labels), probabilities=probabilities)


def _predict_2d(
    model: torch.nn.Module, image: np.ndarray, cfg: Config, dev: torch.device, batch_size: int
) -> torch.Tensor:
    """Slice-wise prediction, returns (C, S, H, W) fp32 probabilities on ``dev``.

    Each (H, W) = (y, x) slice is resized to ``cfg.patch_size`` with bilinear interpolation
    (``align_corners=False``), the softmax probabilities are resized back bilinearly and argmax is
    taken at the native resolution.  The reference code (spec 2.1 / 8.1) zooms the test image with
    order 0 but trains on cubic-zoomed slices; we use the same bilinear resize in training and test
    (the trainer resizes its slices with ``F.interpolate(..., mode="bilinear", align_corners=False)``),
    and resizing probabilities instead of hard labels gives smoother boundaries than an order-0 zoom
    of the argmax.
    """
    slices, height, width = image.shape
    target = (int(cfg.patch_size[0]), int(cfg.patch_size[1]))
    volume = torch.from_numpy(np.ascontiguousarray(image)).to(dev)
    chunks: list[torch.Tensor] = []
    for start in range(0, slices, batch_size):
        x = volume[start : start + batch_size].unsqueeze(1)  # (B, 1, H, W)
        if (height, width) != target:
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        with autocast(dev, cfg.amp):
            logits = _logits(model(x))
        probs = torch.softmax(logits.float(), dim=1)
        if probs.shape[-2:] != (height, width):
            probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
        chunks.append(probs)
    return torch.cat(chunks, dim=0).permute(1, 0, 2, 3).contiguous()  # (C, S, H, W)


def _predict_3d(
    model: torch.nn.Module,
    image: np.ndarray,
    cfg: Config,
    dev: torch.device,
    batch_size: int,
    stride: tuple[int, ...],
) -> torch.Tensor:
    """Sliding-window prediction (spec 8.2), returns (C, z, y, x) fp32 probabilities on ``dev``."""
    if len(stride) != 3:
        raise ValueError(f"stride must have 3 entries (x, y, z), got {stride}")
    net = to_network_order(image, 3)  # (x, y, z)
    shape = net.shape
    patch = tuple(int(p) for p in cfg.patch_size)
    pad_lo = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    pad_hi = [max(p - s, 0) - lo for s, p, lo in zip(shape, patch, pad_lo)]
    volume = torch.from_numpy(np.ascontiguousarray(net)).to(dev)
    if any(pad_lo) or any(pad_hi):
        # F.pad takes pads from the last axis backwards: (z_lo, z_hi, y_lo, y_hi, x_lo, x_hi)
        pads = [v for axis in (2, 1, 0) for v in (pad_lo[axis], pad_hi[axis])]
        volume = F.pad(volume, pads, mode="constant", value=0.0)
    padded = tuple(volume.shape)

    starts = [window_starts(d, p, s) for d, p, s in zip(padded, patch, stride)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]

    # Per-voxel window count is separable: the product of the per-axis coverage counts.
    axis_counts = []
    for d, p, axis_starts in zip(padded, patch, starts):
        count = torch.zeros(d, device=dev, dtype=torch.float32)
        for s0 in axis_starts:
            count[s0 : s0 + p] += 1.0
        axis_counts.append(count)
    counts = axis_counts[0][:, None, None] * axis_counts[1][None, :, None] * axis_counts[2][None, None, :]

    score: torch.Tensor | None = None
    channels_last = _uses_inference_copy(dev, 3)
    px, py, pz = patch
    for first in range(0, len(corners), batch_size):
        batch = corners[first : first + batch_size]
        x = torch.stack([volume[a : a + px, b : b + py, c : c + pz] for a, b, c in batch]).unsqueeze(1)
        if channels_last:  # the layout of inference_network's copy
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with autocast(dev, cfg.amp):
            logits = _logits(model(x))
        probs = torch.softmax(logits.float(), dim=1)  # (B, C, px, py, pz)
        if score is None:
            score = torch.zeros((probs.shape[1], *padded), device=dev, dtype=torch.float32)
        for (a, b, c), window in zip(batch, probs):
            score[:, a : a + px, b : b + py, c : c + pz] += window
    assert score is not None
    score = score / counts
    sx, sy, sz = shape
    score = score[:, pad_lo[0] : pad_lo[0] + sx, pad_lo[1] : pad_lo[1] + sy, pad_lo[2] : pad_lo[2] + sz]
    # (C, x, y, z) -> (C, z, y, x): data.types.from_network_order, done on the device tensor
    return score.permute(0, 3, 2, 1).contiguous()


def confidence_map(probabilities: np.ndarray) -> np.ndarray:
    """Per-voxel max class probability, (C, ...) -> (...) float32 in [1/C, 1]."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return probabilities.max(axis=0).astype(np.float32)


def entropy_map(probabilities: np.ndarray) -> np.ndarray:
    """Per-voxel Shannon entropy divided by log(C): 0 = certain, 1 = uniform ("annotate here next")."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    classes = probabilities.shape[0]
    entropy = np.zeros(probabilities.shape[1:], dtype=np.float32)
    if classes < 2:
        return entropy
    tiny = np.float32(np.finfo(np.float32).tiny)
    for p in probabilities:  # one class at a time: float32 temporaries of one volume, not C volumes
        p = np.clip(p, 0.0, 1.0)
        entropy -= p * np.log(np.maximum(p, tiny))  # p = 0 contributes 0 * log(tiny) = 0
    entropy /= np.float32(math.log(classes))
    return np.clip(entropy, 0.0, 1.0, out=entropy)
