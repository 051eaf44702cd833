"""The network written to model.pt: BatchNorm statistics re-estimated on clean images (training/export.py).

The trainer-level checks run a couple of ``step_once`` steps and call ``Trainer.exported_network()``
(seconds); one short ``train`` run checks that model.pt is that network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
from ACTIONPlusPlusLib.model_io import load_model
from ACTIONPlusPlusLib.training import train
from ACTIONPlusPlusLib.training.batches import BatchSource
from ACTIONPlusPlusLib.training.checkpoint import load_checkpoint
from ACTIONPlusPlusLib.training.export import clean_batches, plain_batchnorm, recalibrate_batchnorm
from ACTIONPlusPlusLib.training.loop import Trainer


def tiny_acdc(**kw):
    return preset("acdc", **{**dict(patch_size=[32, 32], base_channels=8, local_window=16, local_stride=8, local_pool=4,
                                    pretrain_warmup_iterations=2, pretrain_joint_iterations=2, finetune_iterations=4,
                                    anco_queries=16, anco_negatives=32, saacl_anchors_per_class=16,
                                    saacl_queue_size=256, checkpoint_every=1000, device="cpu", log_every=2), **kw})


def _net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Dropout2d(dropout), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))


def _batches(n: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    # batches of different scale and offset: equal weights must come out as the plain average
    return [torch.randn(4, 1, 8, 8, generator=g) * (1 + i) + i for i in range(n)]


def test_statistics_are_the_average_of_each_batch_statistics():
    net = _net()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    for m in (net[2], net[5]):  # statistics of some other distribution (the strong views)
        m.running_mean.fill_(7.0)
        m.running_var.fill_(9.0)
    batches = _batches()
    assert recalibrate_batchnorm(net, batches) == len(batches)

    with torch.no_grad():
        first = [net[0](x) for x in batches]  # the first BatchNorm's inputs
        mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in first]).mean(0)
        var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in first]).mean(0)
        # the second BatchNorm sees the first one normalised by each batch's own statistics (train mode)
        second = [net[4](torch.relu((f - f.mean(dim=(0, 2, 3), keepdim=True))
                                    / torch.sqrt(f.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + net[2].eps)
                                    * net[2].weight.view(1, -1, 1, 1) + net[2].bias.view(1, -1, 1, 1)))
                  for f in first]
        mean2 = torch.stack([s.mean(dim=(0, 2, 3)) for s in second]).mean(0)
    torch.testing.assert_close(net[2].running_mean, mean)
    torch.testing.assert_close(net[2].running_var, var)
    torch.testing.assert_close(net[5].running_mean, mean2, rtol=1e-4, atol=1e-5)
    assert not net.training and not any(m.training for m in net.modules())
    assert net[2].momentum == 0.1 and net[5].momentum == 0.1  # restored
    for k, v in net.state_dict().items():  # no weight changes
        if k in weights:
            assert torch.equal(v, weights[k])


def test_dropout_is_off_while_statistics_are_taken():
    with_dropout, without = _net(dropout=0.5), _net(dropout=0.0)
    recalibrate_batchnorm(with_dropout, _batches())
    recalibrate_batchnorm(without, _batches())
    torch.testing.assert_close(with_dropout[2].running_var, without[2].running_var)


def test_no_batch_keeps_the_statistics():
    net = _net()
    net[2].running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_batchnorm(net, []) == 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("dim", [2, 3])
def test_sync_batchnorm_becomes_plain_batchnorm_with_the_same_state(dim):
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv3d, nn.BatchNorm3d)
    torch.manual_seed(0)
    net = nn.Sequential(conv(1, 4, 3, padding=1), bn(4), nn.Sequential(conv(4, 2, 1), bn(2)))
    for m in net.modules():
        if isinstance(m, bn):
            m.running_mean.uniform_(); m.running_var.uniform_(1, 2); m.weight.data.uniform_()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == 2
    state = {k: v.clone() for k, v in synced.state_dict().items()}
    plain = plain_batchnorm(synced, dim)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())
    assert sum(type(m) is bn for m in plain.modules()) == 2
    assert plain.state_dict().keys() == state.keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.fixture(scope="module")
def cardiac():
    return cardiac_phantom_dataset(num_labeled=2, num_unlabeled=4, num_test=1, seed=3, num_slices=4, size=(40, 40))


def test_clean_batches_are_unaugmented_training_images(cardiac):
    cfg = tiny_acdc(finetune_labeled_batch=2, finetune_unlabeled_batch=3)
    source = BatchSource(cfg, cardiac.labeled, cardiac.unlabeled, torch.device("cpu"))
    batches = list(clean_batches(cfg, source, 4, seed=5, with_unlabeled=True))
    assert len(batches) == 4 and all(b.shape == (5, 1, 32, 32) for b in batches)
    pool = torch.cat([source.lab_img, source.unl_img])  # every image a batch may hold, as stored
    for b in batches:
        for image in b:  # each one is a stored image, unchanged (no flip, jitter or mix)
            assert any(torch.equal(image, p) for p in pool)
    again = list(clean_batches(cfg, source, 4, seed=5, with_unlabeled=True))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # its own seeded draws
    labeled_only = list(clean_batches(cfg, source, 2, seed=5, with_unlabeled=False))
    assert all(b.shape[0] == 2 for b in labeled_only)


def _stepped(cardiac, tmp_path, events: list | None = None, steps: int = 2, **kw) -> Trainer:
    """A Trainer after ``steps`` steps of its last phase (fine-tuning, or the supervised baseline): teacher
    and student apart, BatchNorm statistics those of training (dropout, mixed and jittered views)."""
    cfg = tiny_acdc(**{**dict(pretrain_warmup_iterations=0, pretrain_joint_iterations=0, finetune_iterations=4,
                             base_channels=4, finetune_labeled_batch=2, finetune_unlabeled_batch=2), **kw})
    trainer = Trainer(cfg, cardiac.labeled, cardiac.unlabeled if cfg.mode == "actionpp" else [], tmp_path,
                      callback=None if events is None else events.append)
    trainer.prepare()
    trainer.phase_index = len(trainer.phases) - 1
    phase = trainer.phases[-1]
    trainer._begin_phase(phase)
    for t in range(steps):
        trainer.iteration = t
        trainer.step_once(phase)
    return trainer


def _stats(state: dict) -> list[str]:
    return [k for k in state if k.endswith("running_mean") or k.endswith("running_var")]


@pytest.mark.parametrize("weights, teacher_dropout, recalibrated", [
    ("student", False, True),  # trained with dropout on mixed, jittered images: statistics re-estimated
    ("teacher", False, False),  # ran without dropout on clean views: its own statistics kept
    ("teacher", True, True),  # the spec's teacher in dropout mode: re-estimated
])
def test_exported_network_holds_the_chosen_weights_with_clean_statistics(cardiac, tmp_path, weights, teacher_dropout,
                                                                          recalibrated):
    """``Trainer.exported_network()`` (what ``train`` writes to model.pt) after two fine-tuning steps: the
    chosen network's weights, its BatchNorm statistics re-estimated exactly when it ran with dropout or on
    augmented views, an ``export`` stage event then; the run's own networks are untouched."""
    events: list[dict] = []
    trainer = _stepped(cardiac, tmp_path, events, export_weights=weights, teacher_dropout=teacher_dropout,
                       export_bn_batches=3)
    chosen = trainer.teacher if weights == "teacher" else trainer.student
    other = trainer.student if weights == "teacher" else trainer.teacher
    state = {k: v.clone() for k, v in chosen.state_dict().items()}
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in state.items() if k not in _stats(state))
    exported = trainer.exported_network().state_dict()
    stats = _stats(state)
    assert stats and exported.keys() == state.keys()
    for k, v in state.items():
        if k in stats or k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(exported[k], v), k  # the weights are the chosen network's
    for k, v in chosen.state_dict().items():  # the run's network is not changed by the export
        assert torch.equal(v, state[k]), k
    changed = [k for k in stats if not torch.equal(exported[k], state[k])]
    export_stages = [e for e in events if e.get("stage") == "export"]
    if recalibrated:
        assert changed
        assert export_stages == [{"event": "stage", "stage": "export", "phase": "export", "total": 3}]
        trainer.cfg = trainer.cfg.replace(export_bn_batches=0)  # 0 batches: the statistics of training
        kept = trainer.exported_network().state_dict()
        for k in stats:
            assert torch.equal(kept[k], state[k]), k
    else:
        assert not changed and not export_stages


def test_model_file_is_the_exported_network(cardiac, tmp_path):
    """``train`` writes ``exported_network()`` to model.pt: after one fine-tuning step, the student's
    weights (export_weights="student") with statistics re-estimated, not the checkpoint's."""
    cfg = tiny_acdc(pretrain_warmup_iterations=0, pretrain_joint_iterations=0, finetune_iterations=1, base_channels=4,
                    finetune_labeled_batch=2, finetune_unlabeled_batch=2, export_weights="student", export_bn_batches=2)
    result = train(cfg, cardiac.labeled, cardiac.unlabeled, tmp_path)
    student = load_checkpoint(result.checkpoint_path)["student"]
    model, _ = load_model(result.model_path)
    exported = model.state_dict()
    stats = _stats(student)
    for k, v in student.items():
        if k not in stats and not k.endswith("num_batches_tracked"):
            assert torch.equal(exported[k], v), k
    assert any(not torch.equal(exported[k], student[k]) for k in stats)


def test_supervised_model_statistics_come_from_labeled_images_only(cardiac, tmp_path, monkeypatch):
    from ACTIONPlusPlusLib.training import export

    seen = []
    real = export.clean_batches
    monkeypatch.setattr(export, "clean_batches", lambda *a, **kw: seen.append(a[4]) or real(*a, **kw))
    trainer = _stepped(cardiac, tmp_path, mode="supervised", export_bn_batches=2)
    student = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    exported = trainer.exported_network().state_dict()
    assert seen == [False]  # with_unlabeled: the baseline never sees an unlabeled image
    assert any(not torch.equal(exported[k], v) for k, v in student.items() if k.endswith("running_var"))


def test_bad_batch_count_is_refused():
    with pytest.raises(ValueError, match="export_bn_batches"):
        tiny_acdc(export_bn_batches=-1)
