"""The contrastive heads against independent references (spec 3.3, 5.2, 6.1 step 6; decisions D6, D9).

- ``LocalWindows``: every row (one window of one sample) equals adaptive average pooling of that window
  cut out of the logits directly, in H-major, then W, then D order, with the window counts of the spec.
- The local similarity rows (D9): one row per (sample, feature), one column per window.
- ``RepresentationHead(kernel=1)``: equals a single 1x1 conv on the concatenation of the features
  upsampled to full resolution (align_corners=True), followed by the last layer; the composite map is
  recovered by probing the head with constant fields, so the test does not rely on its internals.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.models.heads import LocalWindows, RepresentationHead


def _reference_windows(logits, windows, strides, pool):
    """Cut every full window (start + size <= extent) and adaptive-average-pool it; H-major order."""
    spatial = logits.shape[2:]
    starts = [range(0, max(n - w, 0) + 1, s) for n, w, s in zip(spatial, windows, strides)]
    pool_fn = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
    rows = []
    for corner in itertools.product(*starts):
        index = tuple(slice(c, c + min(w, n)) for c, w, n in zip(corner, windows, spatial))
        rows.append(pool_fn(logits[(slice(None), slice(None), *index)], pool))
    return torch.stack(rows, dim=1)  # (N, P, C, pool...)


@pytest.mark.parametrize(
    ("shape", "window", "stride", "pool", "depth", "depth_stride", "count"),
    [
        ((2, 3, 32, 32), 16, 8, 4, 0, 0, 9),
        ((1, 2, 48, 32), 16, 8, 4, 0, 0, 5 * 3),  # non-square map
        ((2, 2, 32, 32, 16), 16, 8, 4, 8, 4, 3 * 3 * 3),  # 3D with its own depth window
        ((1, 4, 16, 16), 64, 32, 8, 0, 0, 1),  # a map smaller than the window: one window, the whole map
    ],
)
def test_local_windows_rows_equal_pooling_each_window(shape, window, stride, pool, depth, depth_stride, count):
    torch.manual_seed(0)
    logits = torch.randn(*shape)
    dim = len(shape) - 2
    windows = LocalWindows(dim, window, stride, pool, depth, depth_stride)(logits)
    sizes, steps = [window] * dim, [stride] * dim
    if dim == 3:
        sizes[2], steps[2] = depth or window, depth_stride or stride
    cells = min(pool, min(shape[2:]))
    expected = _reference_windows(logits, sizes, steps, cells)
    assert windows.shape == expected.shape and windows.shape[1] == count
    torch.testing.assert_close(windows, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "count", "cells"), [("acdc", 7 * 7, (8, 8)), ("la", 10 * 10 * 7, (4, 4, 4))])
def test_local_windows_at_the_presets_geometry(name, count, cells):
    """2D: 64-px windows at stride 32 over 256 (every full window, spec 5.2 keeps 6x6 of them, we keep
    7x7 so every pixel is covered); 3D: 20 at stride 10 over 112x112x80 gives the spec's 10x10x7 = 700."""
    cfg = preset(name)
    torch.manual_seed(1)
    logits = torch.randn(1, cfg.num_classes, *cfg.patch_size)
    windows = LocalWindows(cfg.dim, cfg.local_window, cfg.local_stride, cfg.local_pool,
                           cfg.local_window_depth, cfg.local_stride_depth)(logits)
    assert windows.shape == (1, count, cfg.num_classes, *cells)
    sizes = [cfg.local_window] * cfg.dim
    steps = [cfg.local_stride] * cfg.dim
    expected = _reference_windows(logits, sizes, steps, cfg.local_pool)
    torch.testing.assert_close(windows, expected, rtol=1e-5, atol=1e-6)


def test_local_similarity_rows_are_one_per_sample_and_feature():
    """D9: the local KL compares rows (sample n, feature f) over the P windows, for the student, the
    teacher and the queue alike (the authors' reshape scrambles (p, n, f) memory instead)."""
    from ACTIONPlusPlusLib.training.pretrain import ISDHeads

    cfg = preset("acdc", patch_size=[32, 32], local_window=16, local_stride=8, local_pool=4, isd_queue_size=4)
    heads = ISDHeads(cfg, latent_channels=8)
    n, p, f = 3, heads.num_windows, heads.local_features
    assert (p, f) == (9, cfg.num_classes * 4 * 4)
    z = torch.arange(n * p * f, dtype=torch.float32).reshape(n, p, f)
    rows = heads._rows(z)
    assert rows.shape == (n * f, p)
    for sample, feature in [(0, 0), (1, 5), (2, f - 1)]:
        assert torch.equal(rows[sample * f + feature], z[sample, :, feature])
    scrambled = ISDHeads(cfg.replace(local_intended_reshape=False), latent_channels=8)._rows(z)
    assert torch.equal(scrambled.flatten(), z.transpose(0, 1).flatten())  # the code's memory, viewed by P


def _upsampled_concat(features, size, mode):
    return torch.cat([F.interpolate(f, size=size, mode=mode, align_corners=True) if f.shape[2:] != size else f
                      for f in features], dim=1)


@pytest.mark.parametrize("dim", [2, 3])
def test_kernel1_representation_head_is_a_1x1_conv_on_the_concatenation(dim):
    torch.manual_seed(2)
    channels = [12, 8, 4, 3]
    out_dim = 6
    head = RepresentationHead(dim, channels, out_dim, kernel=1).eval()
    full = (16, 12) if dim == 2 else (16, 16, 8)
    sizes = [tuple(max(1, s // 2 ** k) for s in full) for k in reversed(range(len(channels)))]
    assert sizes[-1] == full
    total = sum(channels)

    # the composite map, probed with constant fields (interpolating a constant gives the constant):
    # A[:, i] = head(e_i) - head(0), b = head(0)
    probes = torch.cat([torch.zeros(1, total), torch.eye(total)])  # (1 + total, total)
    fields, start = [], 0
    for c, size in zip(channels, sizes):
        block = probes[:, start:start + c]
        fields.append(block.reshape(*block.shape, *([1] * dim)).expand(-1, -1, *size).contiguous())
        start += c
    with torch.no_grad():
        probed = head(fields).flatten(2)[..., 0]  # (1 + total, out_dim), the same at every position
    bias, matrix = probed[0], (probed[1:] - probed[0]).t()  # (out_dim,), (out_dim, total)

    features = [torch.randn(2, c, *size) for c, size in zip(channels, sizes)]
    mode = "bilinear" if dim == 2 else "trilinear"
    concat = _upsampled_concat(features, full, mode)  # (2, total, *full)
    expected = torch.einsum("ot,nt...->no...", matrix, concat) + bias.reshape(1, -1, *([1] * dim))
    with torch.no_grad():
        actual = head(features)
    assert actual.shape == (2, out_dim, *full)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    # the coarse scales matter: the interpolation really is exercised, not only the full-resolution map
    assert matrix[:, : channels[0]].abs().sum() > 0
    coarse_only = [f if i == 0 else torch.zeros_like(f) for i, f in enumerate(features)]
    with torch.no_grad():
        varying = head(coarse_only) - bias.reshape(1, -1, *([1] * dim))
    assert varying.flatten(2).std(dim=2).min() > 0  # an upsampled coarse map, not a constant


def test_kernel1_head_is_cheaper_but_kernel3_is_the_authors_design():
    """Both variants map the same features to the same shape; kernel 3 is a genuine 3x3 (not pointwise)."""
    torch.manual_seed(3)
    channels = [8, 4]
    features = [torch.randn(1, 8, 4, 4), torch.randn(1, 4, 8, 8)]
    three = RepresentationHead(2, channels, 5, kernel=3).eval()
    with torch.no_grad():
        base = three(features)
        poked = [features[0], features[1].clone()]
        poked[1][0, :, 3, 3] += 1.0  # one full-resolution pixel
        change = (three(poked) - base).abs().sum(dim=1)[0]
    assert base.shape == (1, 5, 8, 8)
    assert (change > 1e-6).sum() == 9  # the 3x3 neighbourhood of the pixel, nothing else
