"""AnCo / ReCo regional contrast (Eq. 2, spec 6.4, 10.6, 12.9) and its vectorised samplers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ACTIONPlusPlusLib.losses import (
    anco_loss,
    anco_sample,
    contrast_ce,
    gather_pixels,
    sample_categorical,
    sample_per_class,
)


def test_contrast_ce_spec_vector() -> None:
    # spec 12.9: tau 0.5, query (1,0), positive (1,0), negatives (0,1), (-1,0) -> logits [2, 0, -2]
    q = torch.tensor([1.0, 0.0])
    out = contrast_ce(q, torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), 0.5)
    assert out.item() == pytest.approx(0.142932, abs=1e-6)
    assert out.item() == pytest.approx(math.log(math.exp(2) + 1 + math.exp(-2)) - 2, abs=1e-6)


def test_contrast_ce_batched_matches_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    q, pos, neg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, 7, 4, generator=g)
    logits = torch.cat(
        [F.cosine_similarity(q, pos, dim=1).unsqueeze(1), F.cosine_similarity(q.unsqueeze(1), neg, dim=2)], 1
    ) / 0.3
    ref = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert contrast_ce(q, pos, neg, 0.3).item() == pytest.approx(ref.item(), abs=1e-5)


def test_gather_pixels() -> None:
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 2, 2)  # (N, D, H, W)
    rows = gather_pixels(x, torch.tensor([[0, 5], [7, 3]]))
    flat = x.movedim(1, -1).reshape(-1, 3)
    torch.testing.assert_close(rows, flat[torch.tensor([[0, 5], [7, 3]])])


def test_sample_per_class_membership_and_uniformity() -> None:
    keys = torch.tensor([2, 0, 2, 5, -1, 2, 0, 2])  # class 1 absent, 5 and -1 in no class
    idx, counts = sample_per_class(keys, 3, 4000, generator=torch.Generator().manual_seed(0))
    assert counts.tolist() == [2, 0, 4] and idx.shape == (3, 4000)
    assert set(idx[0].tolist()) == {1, 6}
    assert set(idx[2].tolist()) == {0, 2, 5, 7}
    freq = torch.bincount(idx[2], minlength=8)[[0, 2, 5, 7]].numpy()
    assert stats.chisquare(freq).pvalue > 1e-3


def test_sample_categorical_distribution() -> None:
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    draws = sample_categorical(probs, 20000, generator=torch.Generator().manual_seed(1))
    assert draws.shape == (3, 20000)
    assert not (draws[0] == 1).any() and torch.all(draws[1] == 3)
    for row in (0, 2):
        obs = torch.bincount(draws[row], minlength=4).double()
        p = probs[row].double()
        keep = p > 0
        assert stats.chisquare(obs[keep].numpy(), (p[keep] * 20000).numpy()).pvalue > 1e-3


def test_sample_categorical_comparisons_equal_searchsorted(monkeypatch) -> None:
    """The CPU's comparison path draws exactly what searchsorted draws from the same uniforms."""
    from ACTIONPlusPlusLib.losses import anco

    g = torch.Generator().manual_seed(4)
    for k in (2, 3, 4, 7):
        probs = torch.softmax(torch.randn(k, k, generator=g), dim=1)
        probs[0, 0] = 0.0
        probs[-1] = torch.nn.functional.one_hot(torch.tensor(k - 1), k).float()
        compared = sample_categorical(probs, 5000, generator=torch.Generator().manual_seed(k))
        monkeypatch.setattr(anco, "_COMPARE_MAX_CLASSES", 0)
        searched = sample_categorical(probs, 5000, generator=torch.Generator().manual_seed(k))
        monkeypatch.undo()
        assert torch.equal(compared, searched)
        assert not (compared[0] == 0).any() and torch.all(compared[-1] == k - 1)


# --------------------------------------------------------------------------------------------- anco_loss


def _map(labels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return table[labels].movedim(-1, 1).contiguous()


def _prob_own(labels: torch.Tensor, num_classes: int, own: torch.Tensor) -> torch.Tensor:
    """Probabilities with ``own`` (same shape as labels) on the pixel's label, the rest spread evenly."""
    rest = (1 - own) / (num_classes - 1)
    prob = rest.unsqueeze(1).repeat(1, num_classes, *([1] * (labels.dim() - 1)))
    return prob.scatter(1, labels.unsqueeze(1), own.unsqueeze(1))


def test_anco_two_classes_closed_form() -> None:
    # every pixel of a class has the same feature: the loss no longer depends on the random draws
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]])  # (1, 3, 4)
    table = torch.tensor([[2.0, 0.0, 0.0], [0.6, 0.8, 0.0]])  # cos = 0.6 (features not unit-norm)
    rep = _map(labels, table)
    prob = _prob_own(labels, 2, torch.full(labels.shape, 0.6))
    m, tau = 6, 0.5
    out = anco_loss(rep, labels, torch.ones_like(labels, dtype=torch.bool), prob, tau, num_queries=4, num_negatives=m)
    term = math.log(math.exp(1 / tau) + m * math.exp(0.6 / tau)) - 1 / tau
    assert out.item() == pytest.approx(term, abs=1e-5)  # (term_0 + term_1) / V, V = 2


def test_anco_valid_mask_hard_queries_and_division_by_v() -> None:
    # classes 0 (feature a), 1 and 2 (feature b); only class 0 has hard pixels -> L = term_0 / 3.
    # Invalid pixels (labels 0 and 1, feature c) must be ignored by prototypes, queries and negatives.
    labels = torch.tensor([[[0, 0, 0, 1], [1, 2, 2, 0], [1, 0, 2, 1]]])
    valid = torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]]], dtype=torch.bool)
    a, b, c = [1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]
    table = torch.tensor([a, b, b])
    rep = _map(labels, table)
    rep[0, :, 1, 3] = torch.tensor(c)  # invalid, label 0
    rep[0, :, 2, 0] = torch.tensor(c)  # invalid, label 1
    own = torch.where(labels == 0, torch.tensor(0.5), torch.tensor(0.99))  # classes 1, 2 never hard
    prob = _prob_own(labels, 3, own)
    m, tau = 8, 0.7
    out = anco_loss(rep, labels, valid, prob, tau, num_queries=16, num_negatives=m,
                    generator=torch.Generator().manual_seed(0))
    term0 = math.log(math.exp(1 / tau) + m * math.exp(0.6 / tau)) - 1 / tau
    assert out.item() == pytest.approx(term0 / 3, abs=1e-5)
    # the strong threshold is strict: prob exactly 0.97 is not hard
    prob_edge = _prob_own(labels, 3, torch.full(labels.shape, 0.97))
    assert anco_loss(rep, labels, valid, prob_edge, tau, 16, m).item() == 0.0


def test_anco_single_valid_class_is_zero() -> None:
    labels = torch.tensor([[[0, 0], [1, 1]]])
    rep = torch.randn(1, 4, 2, 2, requires_grad=True)
    prob = _prob_own(labels, 2, torch.full(labels.shape, 0.5))
    only_class0 = labels == 0
    out = anco_loss(rep, labels, only_class0, prob, 0.5, 4, 4)
    assert out.item() == 0.0
    out.backward()
    assert torch.all(rep.grad == 0)
    none = anco_loss(rep, labels, torch.zeros_like(only_class0), prob, 0.5, 4, 4)
    assert none.item() == 0.0 and torch.isfinite(none)


def test_anco_gradient_only_through_queries() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    rep = torch.randn(2, 5, 6, 6, generator=g, requires_grad=True)
    own = torch.rand(labels.shape, generator=g)
    own[:, :3] = 0.99  # top half: valid but never hard -> never queries
    prob = _prob_own(labels, 3, own)
    valid = torch.ones_like(labels, dtype=torch.bool)
    q, m, tau = 8, 16, 0.4
    loss = anco_loss(rep, labels, valid, prob, tau, q, m, generator=torch.Generator().manual_seed(9))
    loss.backward()
    grad = rep.grad.abs().sum(dim=1).reshape(-1)  # per pixel
    smp = anco_sample(rep, labels, valid, prob, tau, q, m, generator=torch.Generator().manual_seed(9))
    assert smp.use.tolist() == [True, True, True] and int(smp.num_valid) == 3
    queries = set(smp.query_idx.reshape(-1).tolist())
    assert set(torch.nonzero(grad).reshape(-1).tolist()) == queries
    assert grad.view(2, 6, 6)[:, :3].sum() == 0
    # same value recomputed from the sampled indices, with prototypes and negatives as constants
    total = 0.0
    for i in range(3):
        qf = gather_pixels(rep, smp.query_idx[i])
        neg = gather_pixels(rep.detach(), smp.negative_idx[i])
        total = total + contrast_ce(qf, smp.prototypes[i], neg, tau)
    assert loss.item() == pytest.approx((total / 3).item(), abs=1e-6)
    # prototypes are the means over each class's valid pixels
    flat = rep.detach().movedim(1, -1).reshape(-1, 5)
    for i in range(3):
        torch.testing.assert_close(smp.prototypes[i], flat[labels.reshape(-1) == i].mean(0), rtol=1e-5, atol=1e-6)


def test_anco_negative_distribution_matches_multinomial() -> None:
    # prototypes: class 0 (1,0); class 1 at 60 degrees (cos 0.5); class 2 opposite (cos -1)
    labels = torch.tensor([[[0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 2, 2]]])  # 4 / 6 / 2 pixels
    table = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [-1.0, 0.0]])
    rep = _map(labels, table)
    prob = _prob_own(labels, 3, torch.full(labels.shape, 0.5))
    valid = torch.ones_like(labels, dtype=torch.bool)
    tau, q, m = 0.5, 256, 512
    smp = anco_sample(rep, labels, valid, prob, tau, q, m, generator=torch.Generator().manual_seed(11))
    w = torch.tensor([math.exp(0.5 / tau), math.exp(-1.0 / tau)])
    pi = w / w.sum()
    torch.testing.assert_close(smp.pi[0, 1:], pi.float(), rtol=1e-5, atol=1e-6)
    assert smp.pi[0, 0] == 0
    cls = smp.negative_cls[0]  # (Q, M) negative classes of the class-0 queries
    assert not (cls == 0).any()
    counts = torch.stack([(cls == 1).sum(1), (cls == 2).sum(1)], 1).double()  # per-query counts
    assert torch.all(counts.sum(1) == m)
    total = counts.sum(0).numpy()
    assert stats.chisquare(total, (pi.double() * q * m).numpy()).pvalue > 1e-3
    # per query the class-2 count is Binomial(M, pi_2): mean and variance
    c2 = counts[:, 1]
    assert c2.mean().item() == pytest.approx(m * pi[1].item(), rel=0.05)
    assert c2.var().item() == pytest.approx(m * pi[1].item() * (1 - pi[1].item()), rel=0.35)
    # each negative lies in its class's valid set, uniformly
    flat_labels = labels.reshape(-1)
    neg = smp.negative_idx[0]
    assert torch.equal(flat_labels[neg], cls)
    class1_pixels = torch.nonzero(flat_labels == 1).reshape(-1)
    freq = torch.bincount(neg[cls == 1], minlength=12)[class1_pixels].numpy()
    assert stats.chisquare(freq).pvalue > 1e-3
    # queries are class-0 pixels only
    assert torch.all(flat_labels[smp.query_idx[0]] == 0)


def test_anco_3d_bf16_and_determinism() -> None:
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 2, (1, 4, 4, 3), generator=g)
    rep = torch.randn(1, 6, 4, 4, 3, generator=g).to(torch.bfloat16).requires_grad_(True)
    prob = _prob_own(labels, 2, torch.rand(labels.shape, generator=g))
    valid = torch.ones_like(labels, dtype=torch.bool)
    l1 = anco_loss(rep, labels, valid, prob, 0.3, 8, 8, generator=torch.Generator().manual_seed(1))
    l2 = anco_loss(rep, labels, valid, prob, 0.3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert l1.dtype == torch.float32 and torch.isfinite(l1) and l1.item() == l2.item() and l1.item() > 0
    l1.backward()
    assert rep.grad is not None and rep.grad.dtype == torch.bfloat16
