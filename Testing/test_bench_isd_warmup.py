"""bench/isd_warmup.py's probe watches the pre-training warm-up without changing it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
from ACTIONPlusPlusLib.training.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import isd_warmup  # noqa: E402

SMALL = dict(patch_size=[32, 32], base_channels=4, local_window=16, local_stride=8, local_pool=4, device="cpu",
             checkpoint_every=10**6, log_every=2, budget_iterations=0, pretrain_warmup_iterations=4,
             pretrain_joint_iterations=0, finetune_iterations=0, isd_queue_size=8)


def _warmup(tmp_path: Path, probed: bool) -> Trainer:
    data = cardiac_phantom_dataset(num_labeled=2, num_unlabeled=2, num_test=0, seed=3, num_slices=3, size=(32, 32))
    trainer = Trainer(preset("acdc", **SMALL), data.labeled, data.unlabeled, tmp_path)
    if probed:
        trainer.isd.__class__ = isd_warmup.ProbedISDHeads
        trainer.isd.records = []
    trainer.run()
    return trainer


def test_the_probe_records_every_iteration_and_changes_nothing(tmp_path) -> None:
    plain = _warmup(tmp_path / "plain", probed=False)
    probed = _warmup(tmp_path / "probed", probed=True)
    records = probed.isd.records
    assert len(records) == 4 and set(records[0]) == set(isd_warmup.STATS)
    for r in records:
        assert 0.0 <= r["top-1"] <= 1.0 and r["loss"] >= 0.0
        assert 0.0 <= r["H teacher"] <= math.log(SMALL["isd_queue_size"]) + 1e-5  # uniform over the queue
        assert 0.0 <= r["H student"] <= math.log(SMALL["isd_queue_size"]) + 1e-5
    for (name, a), b in zip(plain.student.state_dict().items(), probed.student.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(plain.isd.lat_queue.data, probed.isd.lat_queue.data)
