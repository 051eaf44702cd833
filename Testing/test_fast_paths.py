"""The fine-tuning step's fast paths compute what their plain references compute (issue 10).

Each rewritten piece is compared in values and gradients with a direct implementation on small shapes
and fixed draws: the sparse and folded representation head, the index-based AnCo contrast, the chunked
log-sum-exp of SAACL, and AnCo with queries evaluated sparsely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ACTIONPlusPlusLib.losses import anco_loss, contrast_ce
from ACTIONPlusPlusLib.losses.anco import indexed_contrast
from ACTIONPlusPlusLib.losses.saacl import logsumexp_matmul
from ACTIONPlusPlusLib.models.heads import RepresentationHead, pixel_taps


def _features(dim: int, generator: torch.Generator) -> list[torch.Tensor]:
    shapes = [(32, 2, 2), (16, 4, 4), (8, 8, 8), (4, 16, 16)] if dim == 2 else [(16, 2, 2, 2), (8, 4, 4, 2), (4, 8, 8, 4)]
    return [torch.randn(3, *s, generator=generator, dtype=torch.float64, requires_grad=True) for s in shapes]


def test_sparse_and_folded_head_equal_the_dense_head() -> None:
    g = torch.Generator().manual_seed(0)
    for dim in (2, 3):
        feats = _features(dim, g)
        head = RepresentationHead(dim, [f.shape[1] for f in feats], 6).double()
        dense = head(feats)  # upsample, sum, 1x1 convs: the reference
        per_image = dense[0, 0].numel()
        idx = torch.randint(0, 3 * per_image, (40,), generator=g)
        ref_rows = dense.flatten(2)[idx // per_image, :, idx % per_image]
        rows = head.at_pixels(feats, idx)
        assert torch.allclose(rows, ref_rows, atol=1e-12)
        params = feats + list(head.parameters())
        ref_grads = torch.autograd.grad((ref_rows * torch.arange(6.0, dtype=torch.float64)).sum(), params)
        grads = torch.autograd.grad((rows * torch.arange(6.0, dtype=torch.float64)).sum(), params)
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, atol=1e-12)
        assert torch.allclose(head.dense_no_grad(feats), dense, atol=1e-12)
        assert not head.dense_no_grad(feats).requires_grad
        # one image at a time on the CPU: the whole batch's values (the products' blocking may differ)
        with torch.no_grad():
            last = head.last.weight.reshape(6, -1)
            folded = [last @ p.weight.reshape(6, -1) for p in head.per_scale]
            batch = head._dense_rows(feats, folded, tuple(feats[-1].shape[2:])).movedim(-1, 1)
        assert torch.allclose(head.dense_no_grad(feats), batch, rtol=0, atol=1e-13)


def test_dense_head_with_two_maps_on_one_grid_equals_the_dense_head() -> None:
    """LA's network ends in two full-resolution maps (u8, x9): they are projected into one map."""
    g = torch.Generator().manual_seed(5)
    for dim in (2, 3):
        feats = _features(dim, g)
        feats = feats + [torch.randn_like(feats[-1][:, :3])]  # a second map on the finest grid
        head = RepresentationHead(dim, [f.shape[1] for f in feats], 6).double()
        assert torch.allclose(head.dense_no_grad(feats), head(feats), atol=1e-12)
        assert torch.allclose(head.dense_no_grad([f[:1] for f in feats]), head([f[:1] for f in feats]), atol=1e-12)


def test_taps_computed_once_read_the_same_pixels_for_two_heads_and_batch_sizes() -> None:
    """The fine-tuning step computes the anchor taps once and reads the student's features (labeled +
    unlabeled images) and the teacher's (labeled only) with them: the rows must be those of each map."""
    g = torch.Generator().manual_seed(7)
    for dim in (2, 3):
        feats = _features(dim, g)  # 3 images
        student = RepresentationHead(dim, [f.shape[1] for f in feats], 6).double()
        teacher = RepresentationHead(dim, [f.shape[1] for f in feats], 6).double()
        per_image = feats[-1][0, 0].numel()
        idx = torch.randint(0, 2 * per_image, (30,), generator=g)  # pixels of the first 2 images
        taps = pixel_taps([tuple(f.shape[2:]) for f in feats], idx, torch.float64)
        assert torch.equal(student.at_pixels(feats, taps=taps), student.at_pixels(feats, idx))
        first_two = [f[:2] for f in feats]
        assert torch.equal(teacher.at_pixels(first_two, taps=taps), teacher.at_pixels(first_two, idx))
        ref = teacher(first_two).flatten(2)[idx // per_image, :, idx % per_image]
        assert torch.allclose(teacher.at_pixels(first_two, taps=taps), ref, atol=1e-12)


def test_indexed_contrast_equals_contrast_ce_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    rows = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    idx = torch.randint(0, 50, (7, 11), generator=g)
    pos = F.normalize(torch.randn(7, 8, generator=g), dim=1)
    query = torch.randn(7, 8, generator=g, requires_grad=True)
    for chunk in (1, 3, 7):
        ours = indexed_contrast(query, pos, rows, idx, 0.3, chunk=chunk)
        ref = torch.stack([contrast_ce(query[i : i + 1], pos[i : i + 1], rows[idx[i]], 0.3) for i in range(7)])
        assert torch.allclose(ours, ref, atol=1e-6)
        weights = torch.linspace(0.5, 2.0, 7)
        (grad,) = torch.autograd.grad((ours * weights).sum(), query)
        (ref_grad,) = torch.autograd.grad((ref * weights).sum(), query)
        assert torch.allclose(grad, ref_grad, atol=1e-6)
    raw = rows * torch.linspace(0.2, 5.0, 50).unsqueeze(1)  # the same directions, other lengths
    scaled = indexed_contrast(query, pos, raw, idx, 0.3, chunk=3, row_scale=1.0 / raw.norm(dim=1))
    ours = indexed_contrast(query, pos, rows, idx, 0.3, chunk=3)
    assert torch.allclose(scaled, ours, atol=1e-6)
    (scaled_grad,) = torch.autograd.grad(scaled.sum(), query)
    (unit_grad,) = torch.autograd.grad(ours.sum(), query)
    assert torch.allclose(scaled_grad, unit_grad, atol=1e-6)


def test_chunked_logsumexp_matmul_equals_torch() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(4000, 5, generator=g, dtype=torch.float64) * 3  # several chunks, large logits
    ours = logsumexp_matmul(a, keys)
    ref = torch.logsumexp(a @ keys.t(), dim=1)
    assert torch.allclose(ours, ref, atol=1e-10)
    w = torch.arange(9.0, dtype=torch.float64)
    assert torch.allclose(torch.autograd.grad((ours * w).sum(), a)[0], torch.autograd.grad((ref * w).sum(), a)[0], atol=1e-10)


def test_anco_with_sparse_queries_equals_the_dense_map() -> None:
    g = torch.Generator().manual_seed(3)
    feats = [f.float().detach().requires_grad_(True) for f in _features(2, g)]
    head = RepresentationHead(2, [f.shape[1] for f in feats], 6)
    labels = torch.randint(0, 3, (3, 16, 16), generator=g)
    prob = torch.softmax(torch.randn(3, 3, 16, 16, generator=g), dim=1)
    valid = torch.rand(3, 16, 16, generator=g) > 0.2
    dense = head(feats)
    ref = anco_loss(dense, labels, valid, prob, 0.4, 8, 16, generator=torch.Generator().manual_seed(5))
    ours = anco_loss(head.dense_no_grad([f.detach() for f in feats]), labels, valid, prob, 0.4, 8, 16,
                     generator=torch.Generator().manual_seed(5), query_rows=lambda i: head.at_pixels(feats, i))
    assert ref.item() > 0 and torch.allclose(ours, ref, atol=1e-5)
    params = feats + list(head.parameters())
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        assert torch.allclose(a, b, atol=1e-5)
