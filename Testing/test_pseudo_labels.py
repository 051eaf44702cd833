"""Class-aware pseudo-labels (issue 9): distribution alignment, per-class thresholds, the pixel mask,
the teacher-reliability gate, on constructed probability maps where a minority class must survive."""

from __future__ import annotations

import pytest
import torch

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.losses.unsupervised import balanced_mask, masked_pseudo_label_loss
from ACTIONPlusPlusLib.training.finetune import FinetuneHeads, labeled_dice


def _heads(cfg) -> FinetuneHeads:
    return FinetuneHeads(cfg, [8, 4])


def _maps(minority_prob: float = 0.3):
    """Labels with 10 % class 1 and 2 % class 2; a teacher that gives the minority class (2) only
    ``minority_prob`` on its own pixels (background wins the argmax there)."""
    y = torch.zeros(2, 10, 10, dtype=torch.long)
    y[:, :1, :] = 1  # 10 %
    y[:, 9, :2] = 2  # 2 %
    prob = torch.zeros(2, 3, 10, 10)
    prob[:, 0] = 0.98
    prob[:, 1] = 0.01
    prob[:, 2] = 0.01
    prob[:, :, :1, :] = torch.tensor([0.02, 0.97, 0.01]).view(1, 3, 1, 1)
    prob[:, :, 9, :2] = torch.tensor([1 - minority_prob - 0.01, 0.01, minority_prob]).view(1, 3, 1)
    return prob, y


def test_alignment_brings_back_a_class_the_teacher_under_predicts() -> None:
    cfg = preset("acdc", num_classes=3, class_names=["bg", "a", "b"], pseudo_threshold_mode="classwise")
    prob, y = _maps(minority_prob=0.04)  # confidently wrong: 0.95 background on the minority pixels
    off = cfg.replace(pseudo_distribution_alignment=False)
    pseudo, conf, thresholds = _heads(off).pseudo_labels(off, prob, y)
    mask = conf >= thresholds[pseudo]
    assert (pseudo == 2).sum() == 0 and mask[y == 2].all()  # without alignment: taught "background"
    heads = _heads(cfg)
    for _ in range(80):
        pseudo, conf, thresholds = heads.pseudo_labels(cfg, prob, y)
    assert torch.equal(pseudo, y)  # exactly the minority pixels come back, no others
    assert heads.logit_offset[2] > heads.logit_offset[0]
    mask = conf >= thresholds[pseudo]
    assert not (mask & (pseudo == 0))[y == 2].any()  # never taught "background" any more
    # class-wise thresholds: less confident classes get a lower threshold, within [floor, base]
    assert thresholds[2] < thresholds[0] <= cfg.pseudo_threshold
    assert thresholds.min() >= cfg.pseudo_threshold_floor - 1e-6


def test_alignment_tolerance_leaves_a_teacher_within_the_band_alone() -> None:
    """The labeled shares of a few patients are a sample: a teacher that predicts a class at 1.5x its
    labeled share keeps its own labels with a tolerance of 2, while exact matching takes pixels away."""
    cfg = preset("acdc", num_classes=3, class_names=["bg", "a", "b"])
    prob, y = _maps(minority_prob=0.9)
    prob[:, :, 8, :1] = torch.tensor([0.3, 0.01, 0.69]).view(1, 3, 1)  # class 2 on 3 % of the pixels, 2 % labeled
    own = prob.argmax(dim=1)
    exact_cfg, banded_cfg = cfg.replace(alignment_tolerance=1.0), cfg.replace(alignment_tolerance=2.0)
    exact, banded = _heads(exact_cfg), _heads(banded_cfg)
    for _ in range(80):
        p_exact, _, _ = exact.pseudo_labels(exact_cfg, prob, y)
        p_banded, _, _ = banded.pseudo_labels(banded_cfg, prob, y)
    assert torch.equal(p_banded, own) and banded.logit_offset.abs().max() < 1e-6
    assert (p_exact == 2).sum() < (own == 2).sum()  # exact matching relabels the teacher's own class-2 pixels


def test_alignment_tolerance_still_brings_back_an_erased_class() -> None:
    cfg = preset("acdc", num_classes=3, class_names=["bg", "a", "b"], alignment_tolerance=2.0)
    prob, y = _maps(minority_prob=0.04)
    heads = _heads(cfg)
    present = []
    for _ in range(120):
        pseudo, _, _ = heads.pseudo_labels(cfg, prob, y)
        present.append(bool(torch.equal(pseudo, y)))
    # the offset leaks towards 0 and is pushed back at the band's edge: once back, the class is labeled
    # (exactly its pixels) on most steps, never erased for long
    assert sum(present[-60:]) >= 45, present[-60:]


def test_a_running_share_keeps_batches_without_a_class_from_pushing_its_offset() -> None:
    """Every tenth unlabeled batch holds no pixel of the minority class (apical slices without RV). The
    teacher predicts the class at its labeled share on the other batches. Compared batch by batch, each
    such batch looks like an erased class (log of the share's floor) and pushes its offset up, so the
    class ends up over-predicted; compared through a running share (alignment_momentum=0.9) it is a
    dip of a tenth and the teacher's own labels stay."""
    cfg = preset("acdc", num_classes=3, class_names=["bg", "a", "b"], alignment_tolerance=2.0)
    prob, y = _maps(minority_prob=0.9)
    prob[:, :, 9, 2:5] = torch.tensor([0.6, 0.01, 0.39]).view(1, 3, 1)  # background, a close second
    without = prob.clone()
    without[:, :, 9, :2] = torch.tensor([0.98, 0.01, 0.01]).view(1, 3, 1)
    own = prob.argmax(dim=1)
    offsets = {}
    for momentum in (0.0, 0.9):
        c = cfg.replace(alignment_momentum=momentum)
        heads = _heads(c)
        for step in range(300):
            pseudo, _, _ = heads.pseudo_labels(c, without if step % 10 == 9 else prob, y)
        offsets[momentum] = heads.logit_offset[2] - heads.logit_offset[0]
        if momentum:
            assert torch.equal(heads.pseudo_labels(c, prob, y)[0], own)
        else:
            assert (heads.pseudo_labels(c, prob, y)[0] == 2).sum() > (own == 2).sum()  # over-predicted
    assert offsets[0.9].abs() < 0.05 and offsets[0.0] > 0.5, offsets


def test_fixed_threshold_mode_uses_one_threshold() -> None:
    cfg = preset("acdc", num_classes=3, class_names=["bg", "a", "b"], pseudo_threshold_mode="fixed")
    prob, y = _maps()
    _, _, thresholds = _heads(cfg).pseudo_labels(cfg, prob, y)
    assert torch.allclose(thresholds, torch.full((3,), cfg.pseudo_threshold))


def test_masked_pseudo_label_loss_counts_only_masked_pixels_over_all_pixels() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    pseudo = torch.randint(0, 3, (2, 4, 4))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    ce = torch.nn.functional.cross_entropy(logits, pseudo, reduction="none")
    expected = ce[mask].sum() / 32
    assert masked_pseudo_label_loss(logits, pseudo, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert masked_pseudo_label_loss(logits, pseudo, torch.zeros_like(mask)).item() == 0.0
    (grad,) = torch.autograd.grad(masked_pseudo_label_loss(logits, pseudo, mask), logits)
    assert grad[1].abs().sum() == 0 and grad[0, :, :2].abs().sum() > 0


def test_reliability_is_the_teachers_foreground_dice_on_labeled_images() -> None:
    cfg = preset("acdc", num_classes=3, class_names=["bg", "a", "b"], reliability_momentum=0.0)
    heads = _heads(cfg)
    _, y = _maps()
    perfect = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 10
    assert heads.update_reliability(cfg, labeled_dice(perfect, y)).item() == pytest.approx(1.0)
    background_only = torch.zeros(2, 3, 10, 10)
    background_only[:, 0] = 10
    assert heads.update_reliability(cfg, labeled_dice(background_only, y)).item() == 0.0
    half = perfect.clone()
    half[:, :, 9, :2] = torch.tensor([10.0, 0, 0]).view(1, 3, 1)  # misses class 2 entirely
    assert heads.update_reliability(cfg, labeled_dice(half, y)).item() == pytest.approx(0.5)


def test_cli_shows_pseudo_label_shares_next_to_labeled_shares() -> None:
    from ACTIONPlusPlusLib.cli import pseudo_label_summary

    report = {"taught_fraction": {"background": 0.97, "RV": 0.0, "LV": 0.03},
              "labeled_fraction": {"background": 0.95, "RV": 0.02, "LV": 0.03},
              "mask_fraction": 0.9, "teacher_dice": 0.5}
    assert pseudo_label_summary(report) == " taught RV 0.0/2.0 LV 3.0/3.0 mask 90% teacher 50"
    assert pseudo_label_summary(None) == ""


def test_the_balanced_mask_teaches_each_class_in_its_pseudo_label_share() -> None:
    """A confident background, an unsure minority: a threshold drops the minority; the balanced mask
    keeps the same fraction of every class (the overall pass fraction), never a pasted pixel."""
    g = torch.Generator().manual_seed(0)
    pseudo = torch.zeros(2, 32, 32, dtype=torch.long)
    pseudo[:, 10:14, 10:14] = 1
    pseudo[:, 20:22, :] = 2
    conf = 0.9 + 0.1 * torch.rand(2, 32, 32, generator=g)
    conf[pseudo == 1] = 0.6  # all tied
    conf[pseudo == 2] = 0.5 + 0.5 * torch.rand(int((pseudo == 2).sum()), generator=g)
    visible = torch.ones_like(pseudo, dtype=torch.bool)
    visible[:, :5] = False  # pasted from a labeled image
    mask = balanced_mask(conf, pseudo, visible, 0.95, 3)
    keep = ((conf >= 0.95) & visible).sum() / visible.sum()
    assert not mask[~visible].any()
    assert not ((conf >= 0.95) & (pseudo == 1)).any()  # a fixed threshold would never teach class 1
    for c in range(3):
        own = (pseudo == c) & visible
        assert abs(float((mask & own).sum() / own.sum()) - float(keep)) < 1.0 / int(own.sum()) + 1e-6
    for c in (0, 2):  # within a class, the most confident pass
        own = (pseudo == c) & visible
        assert conf[mask & own].min() >= conf[~mask & own].max()


def test_heads_from_a_checkpoint_without_the_running_share_still_load() -> None:
    """A run checkpointed before ``pseudo_share`` existed resumes: the share starts from the teacher's."""
    cfg = preset("acdc", num_classes=3, class_names=["bg", "a", "b"])
    old = _heads(cfg)
    old.teacher_prior.copy_(torch.tensor([0.9, 0.07, 0.03]))
    state = {k: v for k, v in old.state_dict().items() if k != "pseudo_share"}
    fresh = _heads(cfg)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pseudo_share, old.teacher_prior)
