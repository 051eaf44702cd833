"""The method's wiring (issue 14 item 1): each test fails when one part of ACTION++ is switched off.

- the logged total is the weighted sum of its parts, with the budget's ramp-up and the reliability gate;
- the teacher is the EMA of the student's trajectory and equals the student when fine-tuning starts;
- pseudo-labels come from the teacher (on the weak view), not from the student;
- the 3D geometric augmentation moves image and label together and is not the identity.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
from ACTIONPlusPlusLib.schedules import ema_update
from ACTIONPlusPlusLib.training import augment
from ACTIONPlusPlusLib.training.finetune import FinetuneStep
from ACTIONPlusPlusLib.training.loop import Trainer

SMALL = dict(patch_size=[32, 32], base_channels=4, local_window=16, local_stride=8, local_pool=4,
             anco_queries=8, anco_negatives=16, saacl_anchors_per_class=8, saacl_queue_size=64,
             geometric_augmentation=False, device="cpu", checkpoint_every=10**6, log_every=1)


@pytest.fixture(scope="module")
def cardiac():
    return cardiac_phantom_dataset(num_labeled=2, num_unlabeled=3, num_test=1, seed=5, num_slices=3, size=(32, 32))


def _finetune_trainer(cardiac, tmp_path: Path, **kw) -> Trainer:
    cfg = preset("acdc", **{**SMALL, "pretrain_warmup_iterations": 0, "pretrain_joint_iterations": 0,
                            "finetune_iterations": 4, **kw})
    trainer = Trainer(cfg, cardiac.labeled, cardiac.unlabeled, tmp_path)
    trainer.phase_index = 2
    trainer._begin_phase(trainer.phases[2])
    return trainer


def test_logged_total_is_the_weighted_sum_of_its_parts(cardiac, tmp_path) -> None:
    trainer = _finetune_trainer(cardiac, tmp_path, weight_anco=0.3, weight_saacl=0.2, weight_unsup=0.7)
    cfg = trainer.cfg
    step = FinetuneStep(cfg, trainer.student, trainer.teacher, trainer.ft)
    trainer.student.train()
    trainer.teacher.train()
    ramp = 0.37
    total, parts, diagnostics = step(trainer.batches, trainer.host_gen, trainer.dev_gen, 0.5, trainer.autocast, ramp)
    gate = diagnostics["teacher_dice"]
    expected = (cfg.weight_sup * (parts["sup"] + parts["pasted"])
                + ramp * (gate * (cfg.weight_unsup * parts["unsup"] + cfg.weight_anco * parts["anco"])
                          + cfg.weight_saacl * parts["saacl"]))
    assert torch.allclose(total, expected)
    assert parts["saacl"] > 0 and parts["anco"] >= 0 and parts["pasted"] > 0
    assert total.item() != pytest.approx((parts["sup"] + parts["pasted"]).item())  # not the supervised term alone


def test_teacher_is_the_ema_of_the_student_trajectory(cardiac, tmp_path, monkeypatch) -> None:
    cfg = preset("acdc", **{**SMALL, "pretrain_warmup_iterations": 2, "pretrain_joint_iterations": 2,
                            "finetune_iterations": 5})
    trainer = Trainer(cfg, cardiac.labeled, cardiac.unlabeled, tmp_path)
    trajectory: list[dict[str, torch.Tensor]] = []
    starts: list[dict[str, torch.Tensor]] = []
    original_begin = Trainer._begin_phase
    original_step = torch.optim.SGD.step

    def begin(self, phase):
        original_begin(self, phase)
        if phase.name == "finetune":
            starts.append({k: v.clone() for k, v in self.teacher.named_parameters()})
            assert all(torch.equal(v, p) for (_, v), p in zip(self.teacher.named_parameters(), self.student.parameters()))

    def step(self, *args, **kwargs):
        out = original_step(self, *args, **kwargs)
        if trainer.phase_index == 2:
            trajectory.append({k: v.detach().clone() for k, v in trainer.student.named_parameters()})
        return out

    monkeypatch.setattr(Trainer, "_begin_phase", begin)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    trainer.run()
    assert len(starts) == 1 and len(trajectory) == 5  # the teacher was reset to the student once
    expected = copy.deepcopy(starts[0])
    fine = trainer.phases[2]
    for t, student in enumerate(trajectory):  # computed independently of the trainer's EMA call
        d = trainer.ema_decay(fine, t)
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * student[k]
    for k, v in trainer.teacher.named_parameters():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    assert not all(torch.allclose(v, trajectory[-1][k]) for k, v in trainer.teacher.named_parameters())


def test_pseudo_labels_come_from_the_teacher(cardiac, tmp_path) -> None:
    trainer = _finetune_trainer(cardiac, tmp_path, pseudo_distribution_alignment=False, mix="none",
                                intensity_augmentation=False)
    with torch.no_grad():  # a teacher that is sure every pixel is class 2, a student that says class 1
        trainer.teacher.out.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))
        trainer.student.out.bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0]))
    step = FinetuneStep(trainer.cfg, trainer.student, trainer.teacher, trainer.ft)
    _, _, diagnostics = step(trainer.batches, trainer.host_gen, trainer.dev_gen, 0.5, trainer.autocast, 1.0)
    assert diagnostics["pseudo_fraction"][2] == pytest.approx(1.0)
    assert diagnostics["taught_fraction"][2] == pytest.approx(1.0)
    assert diagnostics["mask_fraction"] == pytest.approx(1.0)
    swapped = FinetuneStep(trainer.cfg, trainer.teacher, trainer.student, trainer.ft)
    _, _, diagnostics = swapped(trainer.batches, trainer.host_gen, trainer.dev_gen, 0.5, trainer.autocast, 1.0)
    assert diagnostics["pseudo_fraction"][2] == pytest.approx(0.0)


@pytest.mark.parametrize("weighting", ["share", "half"])
def test_pasted_dice_adds_the_dice_of_the_pasted_pixels(cardiac, tmp_path, monkeypatch, weighting) -> None:
    """``share`` weighs the pasted Dice by the pasted pixels' share of the strong view (as the CE term
    is weighted); ``half`` by 0.5 whatever the share."""
    from ACTIONPlusPlusLib.training import finetune

    # one copy-paste direction: its share is the boxes' own (with both, this draw's shares cancel to 0.5)
    trainer = _finetune_trainer(cardiac, tmp_path, mix_bidirectional=False)
    host, dev = trainer.host_gen.get_state(), trainer.dev_gen.get_state()
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = finetune.dice_loss

    def recording(logits, target, mask=None):
        out = original(logits, target, mask)
        calls.append((out.detach(), mask))
        return out

    monkeypatch.setattr(finetune, "dice_loss", recording)
    parts = {}
    for on in (False, True):  # the same draws and dropout masks for both
        trainer.host_gen.set_state(host)
        trainer.dev_gen.set_state(dev)
        torch.manual_seed(0)
        cfg = trainer.cfg.replace(pasted_dice=on, pasted_dice_weight=weighting)
        step = FinetuneStep(cfg, trainer.student, trainer.teacher, trainer.ft)
        parts[on] = step(trainer.batches, trainer.host_gen, trainer.dev_gen, 0.5, trainer.autocast, 1.0)[1]
    assert len(calls) == 1  # only with pasted_dice, and only over the pasted pixels
    value, mask = calls[0]
    assert mask is not None and mask.any() and not mask.all()
    assert value > 0
    share = mask.float().mean().item()
    assert 0.3 < share < 0.7 and share != pytest.approx(0.5, abs=1e-4)  # the 2D box: about half, not exactly
    weight = share if weighting == "share" else 0.5
    assert parts[True]["pasted"].item() == pytest.approx((parts[False]["pasted"] + weight * value).item(), rel=1e-5)
    assert parts[True]["sup"].item() == pytest.approx(parts[False]["sup"].item(), rel=1e-6)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_copy_paste_goes_both_ways_by_default_in_2d(cardiac, tmp_path, monkeypatch, bidirectional) -> None:
    """``mix_bidirectional`` (the 2D default): odd unlabeled images keep their box and take the labeled
    image around it, so the teacher's labels of their centred anatomy are taught; even ones the reverse."""
    from ACTIONPlusPlusLib.training import finetune

    assert preset("acdc").mix_bidirectional and not preset("la").mix_bidirectional
    trainer = _finetune_trainer(cardiac, tmp_path, mix_bidirectional=bidirectional)
    seen: dict[str, torch.Tensor] = {}
    boxes, pair = augment.cutmix_masks, augment.mix_pair
    monkeypatch.setattr(finetune.augment, "cutmix_masks", lambda *a, **k: seen.setdefault("boxes", boxes(*a, **k)))
    monkeypatch.setattr(finetune.augment, "mix_pair",
                        lambda *a: (seen.setdefault("masks", a[-1]), pair(*a))[1])
    step = FinetuneStep(trainer.cfg, trainer.student, trainer.teacher, trainer.ft)
    step(trainer.batches, trainer.host_gen, trainer.dev_gen, 0.5, trainer.autocast, 1.0)
    n = len(seen["boxes"])
    assert n >= 2
    expected = seen["boxes"].clone()
    if bidirectional:
        expected[1::2] = 1 - expected[1::2]
    assert torch.equal(seen["masks"], expected)


def test_pasted_share_of_the_3d_box_is_an_eighth() -> None:
    """Why ``share`` differs from ``half`` in 3D: the box covers half the area over a quarter of the depth."""
    masks = augment.cutmix_masks(64, (64, 64, 48), torch.Generator().manual_seed(0), torch.device("cpu"), 0.25)
    assert (1 - masks).mean().item() == pytest.approx(0.125, abs=0.01)
    masks_2d = augment.cutmix_masks(64, (64, 64), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (1 - masks_2d).mean().item() == pytest.approx(0.5, abs=0.02)


def test_geometric_3d_moves_image_and_label_together() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(6, 1, 8, 8, 4, generator=g)
    label = (image[:, 0] > 0.3).long() + (image[:, 0] > 1.0).long()
    out_image, out_label = augment.geometric_3d(image, label, torch.Generator().manual_seed(1))
    assert torch.equal(out_label, (out_image[:, 0] > 0.3).long() + (out_image[:, 0] > 1.0).long())
    assert not torch.equal(out_image, image)
    assert out_image.shape == image.shape and out_label.shape == label.shape
    assert torch.allclose(out_image.flatten(1).sort(dim=1).values, image.flatten(1).sort(dim=1).values)


def test_ema_update_is_what_the_trajectory_test_recomputes() -> None:
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = [0.9 * t + 0.1 * s for t, s in zip(teacher.parameters(), student.parameters())]
    ema_update(teacher, student, 0.9)
    assert all(torch.allclose(a, b) for a, b in zip(teacher.parameters(), expected))


def test_unknown_pasted_dice_weight_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="pasted_dice_weight"):
        preset("acdc").replace(pasted_dice_weight="quarter")
