"""The method's wiring (issues 14 and 37): each test fails when one part of ACTION++ is switched off
where the trainer uses it, not only in the part's own unit test.

- both stages' totals are the weighted sums of their logged parts (the local ISD term and the global
  term's weight included), with the budget's ramp-up and the reliability gate, and every term's gradient
  reaches the heads only it trains;
- the teacher is the EMA of the student's trajectory and equals the student when fine-tuning starts; the
  ISD heads (k_lat, k_loc) and the representation head (k_rep) are the EMAs of their student heads;
- pseudo-labels come from the teacher (on the weak view of the unlabeled pool), not from the student or
  the labeled pool; the confidence mask and AnCo's ``weak_threshold`` select the pixels a teacher of
  known partial confidence is sure of;
- the temperatures AnCo, SAACL and ISD receive follow the ATS schedule, the optimiser's learning rate the
  poly decay of each phase;
- the 3D geometric augmentation moves image and label together and is not the identity, and the
  training batches keep image and label together with augmentation on.

Mutants shown failing (issue 37, each applied by hand to the source and the test run against it) are
named in each test's docstring.
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
from ACTIONPlusPlusLib.schedules import ema_update
from ACTIONPlusPlusLib.training import augment
from ACTIONPlusPlusLib.training.finetune import FinetuneStep
from ACTIONPlusPlusLib.training.loop import Phase, Trainer

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


def _trainer_in(cardiac, tmp_path: Path, phase_name: str, **kw) -> tuple[Trainer, Phase]:
    """A prepared Trainer at the start of ``phase_name`` (as ``run`` begins it), ready for ``step_once``."""
    cfg = preset("acdc", **{**SMALL, "pretrain_warmup_iterations": 4, "pretrain_joint_iterations": 4,
                            "finetune_iterations": 8, **kw})
    trainer = Trainer(cfg, cardiac.labeled, cardiac.unlabeled, tmp_path)
    trainer.prepare()
    trainer.phase_index = [p.name for p in trainer.phases].index(phase_name)
    phase = trainer.phases[trainer.phase_index]
    trainer._begin_phase(phase)
    return trainer, phase


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
    assert parts["saacl"] > 0 and parts["anco"] > 0 and parts["pasted"] > 0 and gate > 0
    assert total.item() != pytest.approx((parts["sup"] + parts["pasted"]).item())  # not the supervised term alone


def test_teacher_is_the_ema_of_the_student_trajectory(cardiac, tmp_path) -> None:
    """Fine-tuning starts with the teacher reset to the (pre-trained) student, then after each step the
    teacher is decay_t * teacher + (1 - decay_t) * student, recomputed here from the students' trajectory.
    Built on ``step_once`` (one joint step moves the student off the teacher first).  Kills: the teacher's
    EMA removed, the reset at the start of fine-tuning removed."""
    trainer, joint = _trainer_in(cardiac, tmp_path, "joint", finetune_iterations=5, finetune_labeled_batch=2,
                                 finetune_unlabeled_batch=2)
    trainer.step_once(joint)
    assert not all(torch.equal(t, s) for t, s in zip(trainer.teacher.parameters(), trainer.student.parameters()))
    trainer.phase_index, trainer.iteration = 2, 0
    fine = trainer.phases[2]
    trainer._begin_phase(fine)
    start = {k: v.clone() for k, v in trainer.teacher.named_parameters()}
    assert all(torch.equal(start[k], v) for k, v in trainer.student.named_parameters())  # the reset
    trajectory: list[dict[str, torch.Tensor]] = []
    for t in range(fine.iterations):
        trainer.iteration = t
        trainer.step_once(fine)
        trajectory.append({k: v.detach().clone() for k, v in trainer.student.named_parameters()})
    expected = copy.deepcopy(start)
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


# --- issue 37: the parts the trainer uses, checked where it uses them ----------------------------------

def _spy(monkeypatch, function, calls: list[dict]) -> None:
    """Record the bound arguments of every call of ``function`` made through any trainer module that
    holds it (found by identity, so a step that imports it under another name is spied on too)."""
    signature = inspect.signature(function)

    def spy(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return function(*args, **kwargs)

    patched = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("ACTIONPlusPlusLib"):
            continue
        for attr, value in list(vars(module).items()):
            if value is function:
                monkeypatch.setattr(module, attr, spy)
                patched += 1
    assert patched, f"{function.__name__} is not used by any trainer module"


class _KnownTeacher(nn.Module):
    """The real teacher with its logits replaced by a known map: on the left half of every image it is
    sure of class 1 (p = 1 - 6e-9), on the right half unsure (class 0 with p = e^0.5 / (e^0.5 + 3) = 0.355,
    under every confidence threshold the presets use).  Features and latent stay the teacher's own."""

    UNSURE = math.exp(0.5) / (math.exp(0.5) + 3.0)

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.net = teacher

    def forward(self, x):
        out = self.net(x)
        logits = torch.zeros_like(out.logits)
        half = logits.shape[-1] // 2
        logits[:, 1, ..., :half] = 20.0
        logits[:, 0, ..., half:] = 0.5
        return out._replace(logits=logits)


def _sure_half(shape) -> torch.Tensor:
    """The left half of the last axis: where :class:`_KnownTeacher` is sure."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., : shape[-1] // 2] = True
    return mask


def test_pretraining_total_is_the_weighted_sum_of_its_parts(cardiac, tmp_path) -> None:
    """Pre-training's loss as ``step_once`` returns it: weight_global * global (+ weight_local * local + sup
    in the joint phase), each part positive, and each ISD term's gradient reaches the predictor only it
    trains.  Kills: the local term removed from the total (``total = total + losses["sup"]``, mutant 1);
    the global term multiplied by 0 (mutant 2); the global weight not applied."""
    trainer, warmup = _trainer_in(cardiac, tmp_path, "warmup", weight_global=0.7, weight_local=0.3)
    loss, parts, _, _ = trainer.step_once(warmup)
    assert set(parts) == {"global"} and parts["global"] > 0
    assert torch.allclose(loss, 0.7 * parts["global"])

    trainer, joint = _trainer_in(cardiac, tmp_path / "joint", "joint", weight_global=0.7, weight_local=0.3)
    loss, parts, _, _ = trainer.step_once(joint)
    assert set(parts) >= {"global", "local", "sup"}
    assert all(parts[k] > 0 for k in ("global", "local", "sup")), parts
    assert torch.allclose(loss, 0.7 * parts["global"] + 0.3 * parts["local"] + parts["sup"])
    for name, head in (("global", trainer.isd.pred_lat), ("local", trainer.isd.pred_loc)):
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name


def test_fine_tuning_unlabeled_batch_comes_from_the_unlabeled_pool(cardiac, tmp_path) -> None:
    """The teacher labels images of the unlabeled pool: of the images it sees in one fine-tuning step,
    ``finetune_unlabeled_batch`` are unlabeled ones, the rest labeled ones.  Kills: the "unlabeled"
    batch drawn from the labeled pool (``x_u, _ = batches.labeled(...)`` in training/finetune.py, mutant 3)."""
    trainer, fine = _trainer_in(cardiac, tmp_path, "finetune")
    seen: list[torch.Tensor] = []
    hook = trainer.teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        trainer.step_once(fine)
    finally:
        hook.remove()
    images = torch.cat(seen)
    labeled, unlabeled = trainer.batches.lab_img, trainer.batches.unl_img

    def member(image, pool) -> bool:
        return any(torch.equal(image, p) for p in pool)

    assert not any(member(u, labeled) for u in unlabeled)  # the pools are told apart by content
    origins = ["unlabeled" if member(x, unlabeled) else "labeled" if member(x, labeled) else "other" for x in images]
    assert origins.count("unlabeled") == trainer.cfg.finetune_unlabeled_batch, origins
    assert origins.count("labeled") == trainer.cfg.finetune_labeled_batch, origins


@pytest.mark.parametrize("mode", ["classwise", "balanced"])
def test_confidence_mask_selects_the_pixels_a_known_teacher_is_sure_of(cardiac, tmp_path, mode) -> None:
    """A teacher sure of class 1 on the left half of every image and unsure (class 0, p = 0.355) on the
    right half; which pixels of the unlabeled images the pseudo-label loss's gradient reaches:
    ``classwise`` (and ``fixed``): the sure half only; ``balanced`` (the presets' default since issue 37
    was filed): as many pixels as pass the threshold overall (a half), taken as each class's most confident
    half, so a half of each half.  The logged mask fraction is one half either way.  Kills: the
    confidence mask removed in the step (``teacher_mask = ~from_labeled``, mutant 4, in either branch),
    which the old all-confident teacher could not see."""
    trainer, _ = _trainer_in(cardiac, tmp_path, "finetune", mix="none", pseudo_threshold_mode=mode)
    cfg = trainer.cfg
    step = FinetuneStep(cfg, trainer.student, _KnownTeacher(trainer.teacher), trainer.ft)
    outputs: list[torch.Tensor] = []

    def keep(module, args, out):
        out.logits.retain_grad()
        outputs.append(out.logits)

    hook = trainer.student.register_forward_hook(keep)
    try:
        total, parts, diagnostics = step(trainer.batches, trainer.host_gen, trainer.dev_gen, 0.5, trainer.autocast, 1.0)
    finally:
        hook.remove()
    total.backward()
    n_u = cfg.finetune_unlabeled_batch
    grad = torch.cat([o.grad for o in outputs])[-n_u:].abs().sum(dim=1)  # (N_u, H, W): the strong view's pixels
    sure = _sure_half(grad.shape)
    assert diagnostics["teacher_dice"] > 0  # the gate lets the pseudo-label loss through
    assert parts["unsup"] > 0
    taught_sure = (grad[sure] > 0).float().mean().item()
    taught_unsure = (grad[~sure] > 0).float().mean().item()
    if mode == "classwise":
        assert taught_unsure == 0, "a pixel the teacher is unsure of was taught"
        assert taught_sure > 0.99, "the pixels the teacher is sure of were not taught"
    else:
        assert taught_sure == pytest.approx(0.5, abs=0.01) and taught_unsure == pytest.approx(0.5, abs=0.01)
    assert diagnostics["mask_fraction"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("weak_threshold, sure_only", [(0.9, True), (0.3, False)])
def test_anco_valid_pixels_follow_the_weak_threshold(cardiac, tmp_path, monkeypatch, weak_threshold, sure_only) -> None:
    """AnCo's valid mask as the loss receives it: every labeled pixel, and the unlabeled pixels whose
    teacher confidence reaches ``weak_threshold`` (0.9: the sure half; 0.3: the unsure half too, p = 0.355).
    Kills: the valid mask ignoring ``weak_threshold`` (all pixels valid, or a fixed 0.7: mutant 6)."""
    from ACTIONPlusPlusLib.losses.anco import anco_loss

    calls: list[dict] = []
    _spy(monkeypatch, anco_loss, calls)
    trainer, _ = _trainer_in(cardiac, tmp_path, "finetune", mix="none", weak_threshold=weak_threshold)
    cfg = trainer.cfg
    step = FinetuneStep(cfg, trainer.student, _KnownTeacher(trainer.teacher), trainer.ft)
    step(trainer.batches, trainer.host_gen, trainer.dev_gen, 0.5, trainer.autocast, 1.0)
    assert len(calls) == 1
    valid = calls[0]["valid"]
    n_l = cfg.finetune_labeled_batch
    assert valid.shape[0] == n_l + cfg.finetune_unlabeled_batch
    assert valid[:n_l].all()
    expected = _sure_half(valid[n_l:].shape) if sure_only else torch.ones_like(valid[n_l:])
    assert torch.equal(valid[n_l:].cpu(), expected)


def test_losses_receive_the_ats_temperature_of_the_iteration(cardiac, tmp_path, monkeypatch) -> None:
    """The temperature AnCo and SAACL (fine-tuning) and the ISD similarities (joint phase) are called
    with, spied on the call, at known iterations: Eq. 6, tau_min + (tau_max - tau_min)(1 + cos(2 pi t/T))/2.
    Kills: the step passing a constant ``tau_max`` to AnCo while the log shows the schedule (mutant 7),
    and the same for SAACL or ISD."""
    from ACTIONPlusPlusLib.losses.anco import anco_loss
    from ACTIONPlusPlusLib.losses.instance import similarity_logits
    from ACTIONPlusPlusLib.losses.saacl import saacl_loss

    def ats(t: int, total: int) -> float:  # written out here, not the trainer's ats_temperature
        return 0.2 + 0.6 * (1 + math.cos(2 * math.pi * t / total)) / 2

    anco_calls: list[dict] = []
    saacl_calls: list[dict] = []
    isd_calls: list[dict] = []
    _spy(monkeypatch, anco_loss, anco_calls)
    _spy(monkeypatch, saacl_loss, saacl_calls)
    _spy(monkeypatch, similarity_logits, isd_calls)
    kw = dict(tau_min=0.2, tau_max=0.8, ats_periods=1.0)
    trainer, fine = _trainer_in(cardiac, tmp_path, "finetune", **kw)
    for t in (0, 2, 4, 6):  # tau_max, the middle, tau_min, the middle again
        trainer.iteration = t
        _, _, _, logged = trainer.step_once(fine)
        assert len(anco_calls) == len(saacl_calls) == 1
        assert float(anco_calls.pop()["tau"]) == pytest.approx(ats(t, 8)), t
        assert float(saacl_calls.pop()["tau"]) == pytest.approx(ats(t, 8)), t
        assert logged["anco"] == pytest.approx(ats(t, 8))
    trainer, joint = _trainer_in(cardiac, tmp_path / "joint", "joint", **kw)
    for t in (1, 2):
        trainer.iteration = t
        isd_calls.clear()
        trainer.step_once(joint)
        assert len(isd_calls) == 4  # student and teacher, global and local
        assert all(float(c["tau"]) == pytest.approx(ats(t, 4)) for c in isd_calls), t


def test_learning_rate_follows_the_poly_decay_of_each_phase(cardiac, tmp_path, monkeypatch) -> None:
    """The learning rate the optimiser steps with at each iteration t of a phase of T iterations:
    lr (1 - t/T)^0.9, a fresh schedule per phase.  Kills: the poly decay never applied (``set_lr``
    removed in training/loop.py, mutant 5)."""
    cfg = preset("acdc", **{**SMALL, "pretrain_warmup_iterations": 3, "pretrain_joint_iterations": 2,
                            "finetune_iterations": 4, "lr": 0.02, "poly_power": 0.9, "pretrain_labeled_batch": 2,
                            "pretrain_unlabeled_batch": 2, "finetune_labeled_batch": 2, "finetune_unlabeled_batch": 2})
    trainer = Trainer(cfg, cardiac.labeled, cardiac.unlabeled, tmp_path)
    seen: list[tuple[str, int, list[float]]] = []
    original_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        seen.append((trainer.phases[trainer.phase_index].name, trainer.iteration, [g["lr"] for g in self.param_groups]))
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    trainer.run()
    expected = [(name, t, 0.02 * (1 - t / n) ** 0.9) for name, n in (("warmup", 3), ("joint", 2), ("finetune", 4))
                for t in range(n)]
    assert [(name, t) for name, t, _ in seen] == [(name, t) for name, t, _ in expected]
    for (name, t, lrs), (_, _, lr) in zip(seen, expected):
        assert all(value == pytest.approx(lr) for value in lrs), (name, t, lrs, lr)


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("phase_name", ["joint", "finetune"])
def test_teacher_heads_are_the_ema_of_the_student_heads(cardiac, tmp_path, phase_name) -> None:
    """After each step the teacher-side heads are decay * before + (1 - decay) * the student head after
    the SGD step: k_lat and k_loc of q_lat and q_loc in pre-training, k_rep of q_rep in fine-tuning (which
    starts as a copy).  Kills: the EMA of the ISD / representation heads dropped (mutant 8)."""
    trainer, phase = _trainer_in(cardiac, tmp_path, phase_name)
    pairs = ([(trainer.isd.k_lat, trainer.isd.q_lat), (trainer.isd.k_loc, trainer.isd.q_loc)] if phase_name == "joint"
             else [(trainer.ft.k_rep, trainer.ft.q_rep)])
    if phase_name == "finetune":
        for k, q in pairs:
            assert all(torch.equal(a, b) for a, b in zip(k.parameters(), q.parameters()))
    for t in range(2):
        trainer.iteration = t
        before = [_params(k) for k, _ in pairs]
        trainer.step_once(phase)
        d = trainer.ema_decay(phase, t)
        for (k, q), old in zip(pairs, before):
            student = _params(q)
            moved = [name for name in old if not torch.equal(student[name], old[name])]
            assert moved  # the student head trained, so the EMA has something to follow
            for name, value in k.named_parameters():
                expected = d * old[name] + (1 - d) * student[name]
                assert torch.allclose(value, expected, rtol=0, atol=1e-7), (phase_name, t, name)
