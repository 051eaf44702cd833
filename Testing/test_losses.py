"""Supervised, instance-discrimination, queue and pseudo-label losses (spec 5.3, 6.2, 6.3, 12.6-12.12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ACTIONPlusPlusLib.losses import (
    FeatureQueue,
    dice_loss,
    kl_distill,
    pseudo_label_loss,
    similarity_logits,
    supervised_loss,
)

# --------------------------------------------------------------------------------------------- supervised


def test_supervised_spec_vector() -> None:
    # spec 12.7: 2 classes, 4 pixels, target [0,0,1,1], probabilities 0.5 everywhere
    logits = torch.zeros(1, 2, 4)
    target = torch.tensor([[0, 0, 1, 1]])
    assert dice_loss(logits, target).item() == pytest.approx(0.3333322, abs=1e-7)
    ce = F.cross_entropy(logits, target).item()
    assert ce == pytest.approx(math.log(2), abs=1e-7)
    assert supervised_loss(logits, target).item() == pytest.approx(0.513240, abs=1e-6)


def _dice_numpy(logits: np.ndarray, target: np.ndarray) -> float:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    c = logits.shape[1]
    losses = []
    for k in range(c):
        y = (target == k).astype(np.float64)
        pk = p[:, k]
        losses.append(1 - (2 * (pk * y).sum() + 1e-5) / ((pk**2).sum() + (y**2).sum() + 1e-5))
    return float(np.mean(losses))


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 2, 4, 3, 5)])
def test_dice_matches_reference_2d_3d(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(*shape, generator=g) * 2
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    ref = _dice_numpy(logits.double().numpy(), target.numpy())
    assert dice_loss(logits, target).item() == pytest.approx(ref, abs=1e-6)
    ce = F.cross_entropy(logits.double(), target).item()
    assert supervised_loss(logits, target).item() == pytest.approx(0.5 * (ce + ref), abs=1e-6)


def test_supervised_perfect_prediction_and_fp32() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50.0
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    out = supervised_loss(logits.to(torch.bfloat16), target)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(0.0, abs=1e-5)
    # an absent class in both prediction and target gives dice 1 (thanks to the smoothing)
    logits2 = torch.full((1, 3, 2, 2), -50.0)
    logits2[:, 0] = 50.0
    assert dice_loss(logits2, torch.zeros(1, 2, 2, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("spatial", [(6, 5), (4, 3, 5)])
def test_masked_dice_is_the_dice_of_the_masked_pixels_alone(spatial) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, *spatial, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, *spatial), generator=g)
    mask = torch.rand(2, *spatial, generator=g) < 0.4
    picked_logits = logits.movedim(1, -1)[mask].T[None]  # (1, C, K): the masked pixels only
    expected = dice_loss(picked_logits, target[mask][None])
    got = dice_loss(logits, target, mask)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert got.item() != pytest.approx(dice_loss(logits, target).item(), abs=1e-3)  # the mask matters
    got.backward()
    assert bool((logits.grad.movedim(1, -1)[~mask] == 0).all())  # no gradient outside the mask
    empty = dice_loss(logits, target, torch.zeros_like(mask))
    assert empty.item() == pytest.approx(0.0, abs=1e-6)  # nothing pasted: no loss


# --------------------------------------------------------------------------------------------- instance


def test_similarity_logits() -> None:
    a = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, -5.0], [1.0, 1.0]])
    out = similarity_logits(a, q, 0.5)
    s2 = 1 / math.sqrt(2)
    expected = torch.tensor([[0.6, -0.8, 0.6 * s2 + 0.8 * s2], [0.0, -1.0, s2]]) / 0.5
    torch.testing.assert_close(out, expected)


def test_kl_spec_vector_and_gradients() -> None:
    s = torch.tensor([[0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    loss = kl_distill(s, t)
    assert loss.item() == pytest.approx(0.130812, abs=1e-6)
    loss.backward()
    # gradients flow into BOTH inputs (spec 5.3 / 12.6)
    assert s.grad is not None and t.grad is not None
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    # d/ds KL = softmax(s) - p_t
    torch.testing.assert_close(s.grad, torch.tensor([[0.5 - 0.75, 0.5 - 0.25]]))


def test_kl_batchmean_direction() -> None:
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    pt = torch.softmax(t.double(), -1)
    ref = (pt * (pt.log() - torch.log_softmax(s.double(), -1))).sum() / 5
    assert kl_distill(s, t).item() == pytest.approx(ref.item(), abs=1e-6)
    assert kl_distill(t, t).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------- queue


def test_queue_buffers_and_init() -> None:
    q = FeatureQueue(6, 3, init="randn_normalized", with_labels=True, generator=torch.Generator().manual_seed(0))
    sd = q.state_dict()
    assert set(sd) == {"data", "ptr", "labels"}
    assert sd["data"].shape == (6, 3) and sd["ptr"].dtype == torch.long and int(sd["ptr"]) == 0
    torch.testing.assert_close(q.data.norm(dim=1), torch.ones(6))
    assert torch.all(q.labels == -1)
    q2 = FeatureQueue(4, (2, 5))
    assert q2.data.shape == (4, 2, 5) and "labels" not in q2.state_dict()
    assert torch.all(FeatureQueue(3, 2, init="zeros").data == 0)
    with pytest.raises(ValueError):
        FeatureQueue(3, 2, init="bogus")


def test_queue_full_turnover_spec_12_12() -> None:
    size, n = 12288, 1024
    q = FeatureQueue(size, 2, with_labels=True)
    for it in range(12):
        x = torch.full((n, 2), float(it + 1))
        x[:, 1] = torch.arange(n, dtype=torch.float32)
        q.enqueue(x, labels=torch.full((n,), it % 4))
    assert int(q.ptr) == 0
    # every slot replaced exactly once, in order
    expected_block = torch.arange(size) // n + 1
    torch.testing.assert_close(q.data[:, 0], expected_block.float())
    torch.testing.assert_close(q.data[:, 1], (torch.arange(size) % n).float())
    assert torch.all(q.labels == (torch.arange(size) // n) % 4)


def test_queue_wraparound_non_divisible() -> None:
    q = FeatureQueue(10, 1, init="zeros")
    for start in (1, 5, 9):  # rows 1..4, 5..8, 9..12 -> written sequentially with wrap-around
        q.enqueue(torch.arange(start, start + 4, dtype=torch.float32).unsqueeze(1))
    assert int(q.ptr) == 2
    assert q.data.squeeze(1).tolist() == [11, 12, 3, 4, 5, 6, 7, 8, 9, 10]
    # more rows than the queue holds: only the last `size` survive, as if written one by one
    q2 = FeatureQueue(4, 1, init="zeros")
    q2.enqueue(torch.tensor([[1.0]]))
    q2.enqueue(torch.arange(10, 16, dtype=torch.float32).unsqueeze(1))  # 6 rows from ptr 1
    assert int(q2.ptr) == 3
    assert q2.data.squeeze(1).tolist() == [13, 14, 15, 12]


def test_queue_masked_enqueue() -> None:
    q = FeatureQueue(8, 1, init="zeros", with_labels=True)
    q.enqueue(torch.arange(1, 7, dtype=torch.float32).unsqueeze(1), labels=torch.arange(6))  # ptr 6
    x = torch.tensor([[10.0], [20.0], [30.0], [40.0], [50.0]])
    mask = torch.tensor([True, False, True, False, True])
    q.enqueue(x, labels=torch.tensor([0, 1, 2, 3, 0]), mask=mask)
    assert int(q.ptr) == 1  # 6 + 3 valid rows, mod 8
    assert q.data.squeeze(1).tolist() == [50, 2, 3, 4, 5, 6, 10, 30]
    assert q.labels.tolist() == [0, 1, 2, 3, 4, 5, 0, 2]
    with pytest.raises(ValueError):
        q.enqueue(torch.zeros(2, 1))  # labels required
    with pytest.raises(ValueError):
        q.enqueue(torch.zeros(2, 3), labels=torch.zeros(2))  # wrong row shape


# --------------------------------------------------------------------------------------------- unsupervised


def test_pseudo_label_spec_vector() -> None:
    # spec 12.10: one image, 4 pixels, conf [0.99, 0.98, 0.5, 0.6] -> w = 0.5
    logits = torch.tensor([[[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 1.0, 3.0]]])  # (1, C=2, 4)
    pseudo = torch.tensor([[0, 1, 1, 0]])
    conf = torch.tensor([[0.99, 0.98, 0.5, 0.6]])
    ce = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log(2.0), math.log1p(math.exp(4.0))]
    expected = 0.5 * sum(ce) / 4
    assert pseudo_label_loss(logits, pseudo, conf).item() == pytest.approx(expected, abs=1e-6)


def test_pseudo_label_excludes_zero_ce_and_weights_per_image() -> None:
    # image 0: w = 1/4 ; image 1: w = 1 ; pixel with CE exactly 0 is excluded from the mean
    logits = torch.zeros(2, 2, 4)
    logits[0, 0, 0] = 200.0  # pixel (0, 0): label 0 with CE == 0 in fp32
    pseudo = torch.zeros(2, 4, dtype=torch.long)
    conf = torch.tensor([[0.99, 0.1, 0.1, 0.1], [0.98, 0.975, 0.99, 1.0]])
    ce = math.log(2.0)
    expected = (3 * 0.25 * ce + 4 * 1.0 * ce) / 7
    assert pseudo_label_loss(logits, pseudo, conf).item() == pytest.approx(expected, abs=1e-6)
    # the threshold is inclusive (conf >= 0.97)
    assert pseudo_label_loss(logits[1:], pseudo[1:], torch.full((1, 4), 0.97)).item() == pytest.approx(ce, abs=1e-6)
    assert pseudo_label_loss(logits[1:], pseudo[1:], torch.full((1, 4), 0.9699)).item() == 0.0


def test_pseudo_label_all_zero_ce_and_ignore() -> None:
    logits = torch.tensor([[[300.0, 300.0], [0.0, 0.0]]])  # both pixels CE 0 for label 0
    out = pseudo_label_loss(logits, torch.tensor([[0, 0]]), torch.tensor([[1.0, 1.0]]))
    assert out.item() == 0.0 and torch.isfinite(out)
    # ignored pixels (-1) are left out of the CE and of the weight's denominator
    logits = torch.zeros(1, 2, 4)
    pseudo = torch.tensor([[0, 1, -1, -1]])
    conf = torch.tensor([[0.99, 0.5, 0.99, 0.2]])
    # numerator counts conf >= thr over all pixels (2), denominator the 2 valid pixels -> w = 1
    assert pseudo_label_loss(logits, pseudo, conf).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_pseudo_label_gradient_3d() -> None:
    logits = torch.randn(2, 3, 4, 4, 2, requires_grad=True)
    pseudo = torch.randint(0, 3, (2, 4, 4, 2))
    conf = torch.rand(2, 4, 4, 2)
    loss = pseudo_label_loss(logits, pseudo, conf, threshold=0.5)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and logits.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- fp32 guard


def test_losses_stay_fp32_under_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    a, q = torch.randn(4, 64, generator=g), torch.randn(9, 64, generator=g)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    ref_sim = similarity_logits(a, q, 0.07)
    ref_kl = kl_distill(ref_sim, similarity_logits(q[:4], q, 0.07))
    ref_sup = supervised_loss(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ q.t()).dtype == torch.bfloat16  # autocast is really on
        sim = similarity_logits(a, q, 0.07)
        kl = kl_distill(sim, similarity_logits(q[:4], q, 0.07))
        sup = supervised_loss(logits, target)
    assert sim.dtype == torch.float32 and torch.equal(sim, ref_sim)
    assert kl.item() == ref_kl.item() and sup.item() == ref_sup.item()
