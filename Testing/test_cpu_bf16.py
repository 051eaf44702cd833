"""bf16 autocast for CPU training (config ``cpu_bf16``, ``device.amp_dtype(..., cpu_bf16=True)``).

On processors with bf16 instructions (AVX512-BF16, AMX) oneDNN's bf16 convolutions are faster than
fp32; elsewhere bf16 is emulated and slower, so the choice follows the processor.  The losses stay
fp32 (D15) and predictions on the CPU stay fp32.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ACTIONPlusPlusLib import device
from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
from ACTIONPlusPlusLib.device import amp_dtype, autocast
from ACTIONPlusPlusLib.training.loop import Trainer

SMALL = dict(patch_size=[32, 32], base_channels=4, local_window=16, local_stride=8, local_pool=4,
             anco_queries=8, anco_negatives=16, saacl_anchors_per_class=8, saacl_queue_size=64,
             device="cpu", checkpoint_every=10**6, log_every=1, pretrain_warmup_iterations=0,
             pretrain_joint_iterations=0, finetune_iterations=6)


def test_cpu_bf16_needs_the_flag_and_a_processor_with_bf16(monkeypatch) -> None:
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    assert amp_dtype("cpu", True, cpu_bf16=True) is torch.bfloat16
    assert amp_dtype("cpu", True) is None  # predictions, and training without the flag
    assert amp_dtype("cpu", False, cpu_bf16=True) is None  # amp off turns every autocast off
    assert amp_dtype("mps", True, cpu_bf16=True) is None
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    assert amp_dtype("cpu", True, cpu_bf16=True) is None  # emulated bf16 is slower than fp32


def test_cpu_autocast_runs_convolutions_in_bf16_only_when_asked() -> None:
    conv = nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 8, 8)
    with autocast("cpu", True, torch.bfloat16):
        assert conv(x).dtype is torch.bfloat16
    with autocast("cpu", False, torch.bfloat16):
        assert conv(x).dtype is torch.float32
    with autocast("cpu", True):
        assert conv(x).dtype is torch.float32


def _losses(cardiac, tmp_path, monkeypatch, cpu_bf16: bool) -> tuple[Trainer, list[float], list[torch.dtype]]:
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)  # emulated where the CPU lacks it: slower only
    cfg = preset("acdc", **SMALL, cpu_bf16=cpu_bf16)
    trainer = Trainer(cfg, cardiac.labeled, cardiac.unlabeled, tmp_path / str(cpu_bf16))
    trainer.prepare()
    trainer.phase_index = 2
    trainer._begin_phase(trainer.phases[2])
    dtypes: list[torch.dtype] = []
    first_conv = next(m for m in trainer.student.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    losses = []
    for _ in range(3):
        loss, parts, _, _ = trainer.step_once(trainer.phases[2])
        trainer.iteration += 1
        assert loss.dtype is torch.float32 and all(v.dtype is torch.float32 for v in parts.values())
        losses.append(loss.item())
    return trainer, losses, dtypes


def test_cpu_bf16_training_runs_the_networks_in_bf16_and_the_losses_in_fp32(tmp_path, monkeypatch) -> None:
    cardiac = cardiac_phantom_dataset(num_labeled=2, num_unlabeled=3, num_test=1, seed=5, num_slices=3, size=(32, 32))
    trainer, bf16_losses, dtypes = _losses(cardiac, tmp_path, monkeypatch, True)
    assert trainer.amp_dtype is torch.bfloat16 and trainer.scaler is None  # bf16 needs no loss scaling
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype is torch.float32 for p in trainer.student.parameters())  # fp32 master weights
    assert all(p.dtype is torch.float32 for p in trainer.exported_network().parameters())
    _, fp32_losses, fp32_dtypes = _losses(cardiac, tmp_path, monkeypatch, False)
    assert set(fp32_dtypes) == {torch.float32}
    assert all(math.isfinite(v) for v in bf16_losses)
    # the same draws: the first step differs by bf16 rounding of the activations only
    assert bf16_losses[0] == pytest.approx(fp32_losses[0], rel=5e-2)
    assert bf16_losses[0] != fp32_losses[0]
