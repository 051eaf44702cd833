"""The dense term of pre-training (``weight_dense``, losses/dense.py): region InfoNCE between the student
and a rot90/flip view of the teacher, its maps turned back onto the student's grid."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
from ACTIONPlusPlusLib.losses.dense import region_infonce, region_rows
from ACTIONPlusPlusLib.models.common import NetOutput
from ACTIONPlusPlusLib.training import augment, pretrain_cache
from ACTIONPlusPlusLib.training.loop import Trainer
from ACTIONPlusPlusLib.training.pretrain import PretrainStep

SMALL = dict(patch_size=[32, 32], base_channels=4, local_window=16, local_stride=8, local_pool=4, device="cpu",
             checkpoint_every=10**6, log_every=1, budget_iterations=0, pretrain_warmup_iterations=2,
             pretrain_joint_iterations=2, finetune_iterations=0, isd_queue_size=8)


@pytest.mark.parametrize("shape", [(5, 2, 8, 8), (5, 2, 6, 6, 4), (5, 2, 6, 4)])
def test_dihedral_views_are_undone_exactly(shape) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape)
    turns = augment.random_dihedral(len(x), tuple(shape[2:]), gen)
    viewed = augment.apply_dihedral(x, turns)
    assert viewed.shape == x.shape and not torch.equal(viewed, x)
    assert torch.equal(augment.apply_dihedral(viewed, turns, inverse=True), x)
    if shape[2] != shape[3]:  # a turn would change the shape: only flips are drawn
        assert all(k == 0 for k, _ in turns)


def test_region_rows_are_the_mean_feature_of_each_region() -> None:
    f = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    rows = region_rows(f, (2, 2))
    assert rows.shape == (2 * 4, 3)
    assert torch.allclose(rows[5], f[1, :, 0:2, 2:4].mean(dim=(1, 2)))  # image 1, region (0, 1)


def test_region_infonce_rewards_the_matching_region_only() -> None:
    t = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
    assert region_infonce(t, t, 0.1) < 0.5
    assert region_infonce(t.roll(1, dims=0), t, 0.1) > math.log(32)
    constant = torch.ones(32, 16)
    assert region_infonce(constant, constant, 0.2) == pytest.approx(math.log(32), rel=1e-5)


class _Identity(nn.Module):
    """A network that is its own input on every map: rotating its input rotates its outputs exactly."""

    def __init__(self, classes: int, latent: int, last: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.sizes = (classes, latent, last)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> NetOutput:
        self.inputs.append(x.detach().clone())
        c, lat, last = self.sizes
        y = self.scale * x
        return NetOutput(y.expand(-1, c, *x.shape[2:]), y.expand(-1, lat, *x.shape[2:]), [y.expand(-1, last, *x.shape[2:])])


def test_the_teachers_turned_view_is_turned_back_before_both_local_terms(tmp_path) -> None:
    """Where the trainer uses it: ``PretrainStep`` shows the teacher a rot90/flip of the batch and hands
    the dense term and the local instance discrimination the teacher's maps on the student's grid."""
    data = cardiac_phantom_dataset(num_labeled=2, num_unlabeled=2, num_test=0, seed=3, num_slices=3, size=(32, 32))
    cfg = preset("acdc", **SMALL, weight_dense=1.0, intensity_augmentation=False)
    trainer = Trainer(cfg, data.labeled, data.unlabeled, tmp_path)
    student = _Identity(cfg.num_classes, trainer.student.latent_channels, trainer.student.feature_channels[-1])
    teacher = _Identity(cfg.num_classes, trainer.student.latent_channels, trainer.student.feature_channels[-1])
    seen: dict[str, torch.Tensor] = {}
    heads = trainer.isd
    dense_loss, losses = heads.dense_loss, heads.losses

    def spy_dense(s, t, tau):
        seen["dense"] = (s.detach(), t.detach())
        return dense_loss(s, t, tau)

    def spy_losses(out_s, out_t, *args, **kwargs):
        seen["local"] = (out_s.logits.detach(), out_t.logits.detach())
        return losses(out_s, out_t, *args, **kwargs)

    heads.dense_loss, heads.losses = spy_dense, spy_losses
    step = PretrainStep(cfg, student, teacher, heads)
    total, parts = step(trainer.batches, trainer.host_gen, trainer.dev_gen, 0.1, 0.01, True, trainer.autocast)
    assert {"global", "local", "dense", "sup"} <= set(parts) and torch.isfinite(total)
    assert not torch.equal(student.inputs[0], teacher.inputs[0])  # the teacher saw another view ...
    s, t = seen["dense"]
    assert torch.equal(s, t)  # ... and its maps came back onto the student's grid
    s, t = seen["local"]
    assert torch.equal(s, t)


def test_the_dense_term_trains_the_network_and_is_off_by_default(tmp_path) -> None:
    data = cardiac_phantom_dataset(num_labeled=2, num_unlabeled=2, num_test=0, seed=3, num_slices=3, size=(32, 32))
    assert preset("acdc").weight_dense == 0.0 and preset("la").weight_dense == 0.0
    plain = Trainer(preset("acdc", **SMALL), data.labeled, data.unlabeled, tmp_path / "plain")
    assert not any("dense" in k for k in plain.isd.state_dict())  # the default's checkpoints are unchanged
    cfg = preset("acdc", **SMALL, weight_dense=1.0, weight_global=0.0)
    trainer = Trainer(cfg, data.labeled, data.unlabeled, tmp_path / "dense")
    trainer.prepare()
    total, parts = trainer._steps["pretrain"](trainer.batches, trainer.host_gen, trainer.dev_gen, 0.1, 0.01, False,
                                              trainer.autocast)
    total.backward()
    # warm-up with the global term at 0: the gradient reaching the network is the dense term's alone
    grad = trainer.student.inc.block[0].weight.grad
    assert parts["dense"] > 0 and grad is not None and grad.abs().sum() > 0


def test_the_dense_settings_key_the_cached_pretraining_and_are_checked() -> None:
    data = cardiac_phantom_dataset(num_labeled=1, num_unlabeled=1, num_test=0, seed=3, num_slices=2, size=(32, 32))
    cfg = preset("acdc", **SMALL)
    key = pretrain_cache.cache_key(cfg, data.labeled, data.unlabeled)
    for other in (cfg.replace(weight_dense=0.5), cfg.replace(weight_dense=0.5, dense_temperature=0.1)):
        assert pretrain_cache.cache_key(other, data.labeled, data.unlabeled) != key
    with pytest.raises(ValueError, match="weight_dense"):
        preset("acdc", weight_dense=-1.0)
    with pytest.raises(ValueError, match="dense_temperature"):
        preset("acdc", dense_temperature=0.0)


def test_the_dense_term_runs_on_the_3d_network(tmp_path) -> None:
    """The V-Net's last decoder map, regions of ``local_stride`` x ``local_stride`` x ``local_stride_depth``
    voxels; an in-plane square patch draws turns as well as flips."""
    from ACTIONPlusPlusLib.data.phantoms import atrium_phantom_dataset

    data = atrium_phantom_dataset(num_labeled=1, num_unlabeled=1, num_test=0, seed=3, shape=(20, 40, 40))
    cfg = preset("la", patch_size=[32, 32, 16], base_channels=4, local_window=16, local_stride=8, local_pool=4,
                 local_window_depth=16, local_stride_depth=4, device="cpu", checkpoint_every=10**6, log_every=1,
                 budget_iterations=0, pretrain_warmup_iterations=1, pretrain_joint_iterations=1, finetune_iterations=0,
                 isd_queue_size=8, weight_dense=1.0, cpu_bf16=False)
    trainer = Trainer(cfg, data.labeled, data.unlabeled, tmp_path)
    assert trainer.isd.cells == (8, 8, 4)
    trainer.prepare()
    total, parts = trainer._steps["pretrain"](trainer.batches, trainer.host_gen, trainer.dev_gen, 0.1, 0.01, True,
                                              trainer.autocast)
    batch = cfg.pretrain_labeled_batch + cfg.pretrain_unlabeled_batch
    assert torch.isfinite(total) and float(parts["dense"].detach()) == pytest.approx(math.log(batch * 4 * 4 * 4), abs=0.5)
