"""Class centres (Eq. 3, D5, spec 6.6/12.4), Hungarian allocation (12.5) and SAACL (Eq. 4-5, 6.5/12.8)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ACTIONPlusPlusLib.losses import (
    SAACL,
    class_centers,
    hungarian_allocation,
    optimize_centers,
    saacl_loss,
    simplex_uniformity_minimum,
    uniformity_loss,
)

# --------------------------------------------------------------------------------------------- centres


@pytest.mark.parametrize("c, d", [(2, 128), (4, 128), (4, 496), (4, 3), (3, 2), (2, 1)])
def test_centers_are_a_regular_simplex(c: int, d: int) -> None:
    psi = class_centers(c, d)
    assert psi.shape == (c, d) and psi.dtype == torch.float32
    gram = psi.double() @ psi.double().t()
    expected = c / (c - 1) * torch.eye(c, dtype=torch.float64) - 1.0 / (c - 1) * torch.ones(c, c, dtype=torch.float64)
    torch.testing.assert_close(gram, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(psi.sum(dim=0), torch.zeros(d), rtol=0, atol=1e-6)


def test_centers_uniformity_values() -> None:
    assert simplex_uniformity_minimum(2) == pytest.approx(1.126928, abs=1e-6)
    assert simplex_uniformity_minimum(4) == pytest.approx(1.582658, abs=1e-6)
    assert uniformity_loss(class_centers(2, 128)).item() == pytest.approx(1.126928, abs=1e-5)
    assert uniformity_loss(class_centers(4, 496)).item() == pytest.approx(1.582658, abs=1e-5)
    # spec 12.4: at tau = 0.07 the loss is 14.285714 (1/0.07 plus a 1.6e-8 off-diagonal term)
    at_007 = uniformity_loss(class_centers(4, 128).double(), 0.07).item()
    assert at_007 == pytest.approx(simplex_uniformity_minimum(4, 0.07), abs=1e-9)
    assert at_007 == pytest.approx(14.285714, abs=1e-6)
    # hand value: two orthogonal unit vectors, tau 1 -> log(e + 1)
    assert uniformity_loss(torch.eye(2)).item() == pytest.approx(math.log(math.e + 1), abs=1e-6)


def test_centers_cached_rotated_and_fresh_copies() -> None:
    a = class_centers(4, 128, seed=0)
    a.zero_()  # a clone: mutating it does not touch the cache
    b, c = class_centers(4, 128, seed=0), class_centers(4, 128, seed=0)
    assert torch.equal(b, c) and b.abs().sum() > 0
    other = class_centers(4, 128, seed=1)
    assert not torch.allclose(b, other)  # another rotation, same geometry
    torch.testing.assert_close(other @ other.t(), b @ b.t(), rtol=0, atol=1e-6)
    # not axis aligned: the random rotation spreads every centre over many axes
    assert (b.abs() > 1e-3).sum(dim=1).min() > 64


@pytest.mark.parametrize("c, d", [(2, 16), (4, 16), (4, 3), (4, 496)])
def test_gradient_descent_reaches_closed_form_minimum(c: int, d: int) -> None:
    x = optimize_centers(c, d, seed=5, steps=600, lr=0.05)
    assert uniformity_loss(x).item() == pytest.approx(simplex_uniformity_minimum(c), abs=1e-4)
    start = F.normalize(torch.randn(c, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64), dim=1)
    assert uniformity_loss(start).item() > simplex_uniformity_minimum(c) + 1e-3


def test_centers_low_dimension_uses_descent() -> None:
    # d < C - 1: no simplex fits; 4 points on a circle end up as a square (the Eq. 3 optimum)
    psi = class_centers(4, 2)
    torch.testing.assert_close(psi.norm(dim=1), torch.ones(4))
    dots = sorted((psi @ psi.t()).flatten().tolist())
    torch.testing.assert_close(torch.tensor(dots), torch.tensor([-1.0] * 4 + [0.0] * 8 + [1.0] * 4), rtol=0, atol=1e-3)


# --------------------------------------------------------------------------------------------- Hungarian


@pytest.mark.parametrize("method", ["auto", "brute", "scipy"])
def test_hungarian_spec_vectors(method: str) -> None:
    m2 = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    assert hungarian_allocation(m2, method=method).tolist() == [1, 0]  # total 1.65, greedy 1.0
    m4 = torch.tensor(
        [[0.9, 0.8, 0.1, 0.0], [0.85, 0.2, 0.3, 0.1], [0.1, 0.7, 0.6, 0.2], [0.0, 0.1, 0.65, 0.5]]
    )
    pi = hungarian_allocation(m4, method=method)
    assert pi.tolist() == [1, 0, 2, 3] and pi.dtype == torch.long
    assert m4[torch.arange(4), pi].sum().item() == pytest.approx(2.75)


def test_hungarian_brute_force_equals_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    for c in (2, 3, 4, 5):
        for _ in range(10):
            m = torch.rand(c, c, generator=g) * 2 - 1
            assert hungarian_allocation(m, "brute").tolist() == hungarian_allocation(m, "scipy").tolist()
    with pytest.raises(ValueError):
        hungarian_allocation(torch.zeros(2, 3))


# --------------------------------------------------------------------------------------------- SAACL loss


def test_saacl_spec_vector() -> None:
    # spec 12.8: T = 1, columns [l_pos = 1, queue +1 (same class), -1 (other), centres +1 (assigned), -1]
    e = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    queue_labels = torch.tensor([0, 1])
    centers = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    args = (e, e, torch.tensor([0]), queue, queue_labels, centers, torch.tensor([0, 1]), 1.0)
    assert saacl_loss(*args, 0.2).item() == pytest.approx(0.868996, abs=1e-6)
    assert saacl_loss(*args, 0.1).item() == pytest.approx(0.829497, abs=1e-6)
    assert saacl_loss(*args, 0.0).item() == pytest.approx(0.789997, abs=1e-6)  # loss_class alone
    # the assignment picks the centre column: assigning class 0 to the -1 centre raises loss_target
    swapped = saacl_loss(e, e, torch.tensor([0]), queue, queue_labels, centers, torch.tensor([1, 0]), 1.0, 0.2)
    log_z = math.log(3 * math.e + 2 / math.e)
    assert swapped.item() == pytest.approx(0.789997 + 0.2 * (1 + log_z) / 3, abs=1e-6)


def _saacl_loop(s, t, y, queue, qlab, centers, pi, tau, lam, weights=None):
    """Direct per-anchor implementation of spec 6.5 step 7 (test reference only)."""
    n, k = s.shape[0], queue.shape[0]
    total_c, total_t, total_w = 0.0, 0.0, 0.0
    for i in range(n):
        w = 1.0 if weights is None else float(weights[i])
        z = [torch.dot(s[i], t[i])] + [torch.dot(s[i], queue[j]) for j in range(k)]
        z += [torch.dot(s[i], centers[c]) for c in range(centers.shape[0])]
        z = torch.stack(z) / tau
        log_prob = z - torch.log(torch.exp(z).sum())
        pos = [0] + [1 + j for j in range(k) if int(qlab[j]) == int(y[i])]
        card = len(pos) + 1
        total_c = total_c + w * (-log_prob[pos].sum() / card)
        total_t = total_t + w * (-log_prob[1 + k + int(pi[int(y[i])])] / card)
        total_w += w
    return total_c / total_w + lam * total_t / total_w


def test_saacl_matches_loop_reference_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(7)
    n, k, d, c = 6, 20, 5, 3
    s = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).float().requires_grad_(True)
    t = F.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.tensor([0, 1, 2, 2, 0, 1])
    queue = F.normalize(torch.randn(k, d, generator=g), dim=1)
    qlab = torch.randint(-1, c, (k,), generator=g)
    qlab[:3] = -1
    centers = class_centers(c, d, seed=3)
    pi = torch.tensor([2, 0, 1])
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    for tau, lam, w in [(0.3, 0.2, None), (1.0, 0.1, None), (0.07, 0.2, weights)]:
        s.grad = None
        ours = saacl_loss(s, t, y, queue, qlab, centers, pi, tau, lam, weights=w)
        ours.backward()
        g_ours = s.grad.clone()
        s_ref = s.detach().double().requires_grad_(True)
        ref = _saacl_loop(s_ref, t.double(), y, queue.double(), qlab, centers.double(), pi, tau, lam, w)
        ref.backward()
        assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
        torch.testing.assert_close(g_ours.double(), s_ref.grad, rtol=1e-4, atol=1e-5)


def test_saacl_unlabeled_queue_entries_are_never_positives() -> None:
    g = torch.Generator().manual_seed(2)
    d, k = 4, 10
    s = F.normalize(torch.randn(3, d, generator=g), dim=1)
    t = F.normalize(torch.randn(3, d, generator=g), dim=1)
    y = torch.tensor([0, 1, 0])
    queue = F.normalize(torch.randn(k, d, generator=g), dim=1)
    centers = class_centers(2, d)
    pi = torch.tensor([0, 1])
    all_unlabeled = torch.full((k,), -1)
    base = saacl_loss(s, t, y, queue, all_unlabeled, centers, pi, 0.5, 0.2)
    # with no labeled queue entry |P| = 2 for every anchor: only the same-pixel view and the centre
    z = torch.cat([(s * t).sum(1, keepdim=True), s @ queue.t(), s @ centers.t()], 1) / 0.5
    lp = torch.log_softmax(z, 1)
    expected = (-lp[:, 0] / 2).mean() + 0.2 * (-lp[torch.arange(3), 1 + k + pi[y]] / 2).mean()
    assert base.item() == pytest.approx(expected.item(), abs=1e-6)
    # labelling the entries as class 0 makes them positives of the class-0 anchors: the loss changes
    relabeled = saacl_loss(s, t, y, queue, torch.zeros(k, dtype=torch.long), centers, pi, 0.5, 0.2)
    assert abs(relabeled.item() - base.item()) > 1e-3


# --------------------------------------------------------------------------------------------- SAACL module


def _features_from_classes(labels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(N, *S) labels -> (N, d, *S) features whose every pixel of class c equals table[c]."""
    return table[labels].movedim(-1, 1).contiguous()


def test_saacl_module_buffers() -> None:
    m = SAACL(4, 16, queue_size=64, anchors_per_class=8)
    sd = m.state_dict()
    assert set(sd) == {"centers", "centroids", "assignment", "queue.data", "queue.labels", "queue.ptr"}
    assert sd["queue.data"].shape == (64, 16) and torch.all(sd["queue.labels"] == -1)
    torch.testing.assert_close(sd["queue.data"].norm(dim=1), torch.ones(64))
    torch.testing.assert_close(sd["centroids"].norm(dim=1), torch.ones(4))
    assert sd["assignment"].tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(sd["centers"], class_centers(4, 16))


def test_saacl_recovers_a_known_permutation() -> None:
    c, d = 4, 16
    perm = torch.tensor([2, 0, 3, 1])
    m = SAACL(c, d, queue_size=256, anchors_per_class=8)
    with torch.no_grad():
        m.centroids.copy_(m.centers[perm])
    labels = torch.arange(c).repeat_interleave(8).view(2, 4, 4)
    feats = _features_from_classes(labels, m.centers[perm])
    m(feats, feats, labels, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert m.assignment.tolist() == perm.tolist()
    torch.testing.assert_close(m.centroids, m.centers[perm])


def test_saacl_centroids_converge_from_random_init() -> None:
    c, d = 4, 16
    perm = torch.tensor([1, 3, 0, 2])
    torch.manual_seed(0)
    m = SAACL(c, d, queue_size=256, anchors_per_class=4)
    labels = torch.arange(c).repeat_interleave(4).view(1, 4, 4)
    feats = _features_from_classes(labels, m.centers[perm])
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        m(feats, feats, labels, tau=0.5, generator=gen)
    assert m.assignment.tolist() == perm.tolist()
    assert torch.allclose(m.centroids, m.centers[perm], atol=1e-2)


def test_saacl_forward_value_queue_and_absent_classes() -> None:
    # classes 0 and 2 present out of 3: anchors of the absent class 1 are masked out
    c, d, a = 3, 8, 5
    g = torch.Generator().manual_seed(4)
    m = SAACL(c, d, queue_size=32, anchors_per_class=a, lambda_a=0.2)
    table_s = torch.randn(c, d, generator=g)
    table_t = torch.randn(c, d, generator=g)
    labels = torch.tensor([[[0, 0, 2], [2, 2, 0]], [[0, 2, 2], [0, 0, 0]]])  # (2, 2, 3)
    queue0, qlab0 = m.queue.data.clone(), m.queue.labels.clone()
    student = _features_from_classes(labels, table_s).requires_grad_(True)
    teacher = _features_from_classes(labels, table_t).requires_grad_(True)
    loss = m(student, teacher, labels, tau=0.4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0] * a + [2] * a)
    s = F.normalize(table_s[y], dim=1)
    t = F.normalize(table_t[y], dim=1)
    expected = saacl_loss(s, t, y, queue0, qlab0, m.centers, m.assignment, 0.4, 0.2)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    # queue: exactly the 2*a present-class teacher anchors were enqueued, in class order
    assert int(m.queue.ptr) == 2 * a
    assert m.queue.labels[: 2 * a].tolist() == y.tolist() and torch.all(m.queue.labels[2 * a :] == -1)
    torch.testing.assert_close(m.queue.data[: 2 * a], t)
    torch.testing.assert_close(m.queue.data[2 * a :], queue0[2 * a :])
    # gradient to the student only; the absent class's centroid is unchanged
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_saacl_single_class_fallback_is_uniform_over_batch() -> None:
    m = SAACL(2, 4, queue_size=64, anchors_per_class=16)
    labels = torch.ones(2, 3, 3, dtype=torch.long)
    pixel_id = torch.arange(18, dtype=torch.float32).view(2, 1, 3, 3)
    feats = torch.cat([pixel_id, torch.ones(2, 3, 3, 3)], dim=1)  # pixel index readable in channel 0
    loss = m(feats, feats, labels, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert int(m.queue.ptr) == 16 and torch.all(m.queue.labels[:16] == 1)
    # the 16 anchors are pixels of both images (uniform over the whole batch)
    ids = (m.queue.data[:16, 0] / m.queue.data[:16, 1]).round().long()  # undo the normalisation
    assert ids.min() >= 0 and ids.max() <= 17 and (ids < 9).any() and (ids >= 9).any()


def test_saacl_assignment_timing() -> None:
    c, d = 4, 8
    perm = torch.tensor([3, 2, 1, 0])
    labels = torch.arange(c).repeat_interleave(4).view(1, 4, 4)
    losses = {}
    for update_first in (True, False):
        m = SAACL(c, d, queue_size=64, anchors_per_class=4, centroid_momentum=1.0, update_first=update_first)
        with torch.no_grad():
            m.centroids.copy_(m.centers)  # assignment = identity before the step
        feats = _features_from_classes(labels, m.centers[perm])
        q0, l0 = m.queue.data.clone(), m.queue.labels.clone()
        losses[update_first] = m(feats, feats, labels, tau=0.5).item()
        assert m.assignment.tolist() == perm.tolist()  # updated after the step in both modes
        y = torch.arange(c).repeat_interleave(4)
        s = m.centers[perm][y]
        used = perm if update_first else torch.arange(c)
        expected = saacl_loss(s, s, y, q0, l0, m.centers, used, 0.5, 0.2).item()
        assert losses[update_first] == pytest.approx(expected, abs=1e-6)
    assert losses[True] < losses[False]  # the right centre is the assigned one only after the update


def test_saacl_gather_hook_and_determinism() -> None:
    calls = []

    def twice(x: torch.Tensor) -> torch.Tensor:  # two identical "ranks"
        calls.append(tuple(x.shape))
        return torch.cat([x, x], dim=0)

    labels = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(0))
    feats = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(1))
    out = []
    for hook in (None, twice):
        torch.manual_seed(0)
        m = SAACL(3, 6, queue_size=64, anchors_per_class=4)
        m.gather_fn = hook
        out.append((m(feats, feats, labels, 0.5, generator=torch.Generator().manual_seed(3)).item(), m))
    (l1, m1), (l2, m2) = out
    assert l1 == pytest.approx(l2, abs=1e-6)
    assert int(m1.queue.ptr) == 12 and int(m2.queue.ptr) == 24  # both ranks' anchors enqueued
    torch.testing.assert_close(m1.centroids, m2.centroids)  # summed stats give the same mean direction
    assert len(calls) == 4  # centroid stats, teacher anchors, labels, mask
