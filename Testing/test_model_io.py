"""Model files: round trip, format, checkpoints, and the errors that name the file."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ACTIONPlusPlusLib.config import Config, preset
from ACTIONPlusPlusLib.errors import ModelFileError
from ACTIONPlusPlusLib.model_io import (
    MODEL_FORMAT,
    load_model,
    read_model_config,
    read_model_meta,
    save_model,
)
from ACTIONPlusPlusLib.models import build_network


def _trained_like(cfg: Config, seed: int = 0) -> nn.Module:
    """A network whose BN running stats are not the defaults (so the round trip must carry buffers)."""
    torch.manual_seed(seed)
    model = build_network(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(5)
    return model.eval()


@pytest.fixture()
def cfg2d() -> Config:
    return preset("acdc", base_channels=4, patch_size=[32, 32])


def test_round_trip_gives_identical_outputs_2d(tmp_path: Path, cfg2d: Config):
    model = _trained_like(cfg2d)
    path = save_model(tmp_path / "model.pt", model, cfg2d, labeled="3 patients", run_dir=tmp_path)
    assert path == tmp_path / "model.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind

    loaded, cfg = load_model(path, device="cpu", expect_preset="acdc", expect_classes=4)
    assert cfg == cfg2d
    assert not loaded.training
    assert next(loaded.parameters()).device.type == "cpu"
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    assert read_model_config(path) == cfg2d
    meta = read_model_meta(path)
    assert meta["labeled"] == "3 patients" and meta["run_dir"] == str(tmp_path)
    assert meta["torch_version"] == torch.__version__


def test_round_trip_3d(tmp_path: Path):
    cfg = preset("la", base_channels=2, patch_size=[16, 16, 16])
    model = _trained_like(cfg, seed=3)
    save_model(tmp_path / "m.pt", model, cfg)
    loaded, got = load_model(tmp_path / "m.pt", expect_preset="LA", expect_classes=2)
    assert got.dim == 3
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_file_format_is_plain_and_cpu(tmp_path: Path, cfg2d: Config):
    model = _trained_like(cfg2d)
    save_model(tmp_path / "model.pt", nn.DataParallel(model), cfg2d)  # a wrapper adds "module."
    data = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert data["format"] == MODEL_FORMAT and data["version"] == 1
    assert data["config"] == cfg2d.to_dict()
    assert data["class_names"] == ["background", "RV", "Myo", "LV"]
    assert set(data["state_dict"]) == set(model.state_dict())
    assert all(v.device.type == "cpu" for v in data["state_dict"].values())
    assert isinstance(data["meta"], dict)


def test_training_checkpoint_uses_student_weights(tmp_path: Path, cfg2d: Config):
    student, teacher = _trained_like(cfg2d, seed=1), _trained_like(cfg2d, seed=2)
    checkpoint = {
        "student": {"module." + k: v for k, v in student.state_dict().items()},  # saved from DDP
        "teacher": teacher.state_dict(),
        "config": cfg2d.to_dict(),
        # an SGD state_dict's shape (building a real optimizer costs a second of imports)
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        "rng": {"numpy": np.random.get_state(), "python": random.getstate(), "torch": torch.get_rng_state()},
        "stage": "finetune",
        "iteration": 7,
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    loaded, cfg = load_model(tmp_path / "checkpoint.pt")
    assert cfg == cfg2d
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, student(x).logits)
        assert not torch.equal(loaded(x).logits, teacher(x).logits)


def test_wrong_preset_or_classes_names_the_file(tmp_path: Path, cfg2d: Config):
    path = save_model(tmp_path / "acdc_model.pt", _trained_like(cfg2d), cfg2d)
    with pytest.raises(ModelFileError, match="acdc_model.pt") as info:
        load_model(path, expect_preset="la")
    assert "'acdc'" in str(info.value) and "'la'" in str(info.value)
    with pytest.raises(ModelFileError, match="acdc_model.pt") as info:
        load_model(path, expect_classes=2)
    assert "4 classes" in str(info.value)


def test_bad_files_raise_model_file_error(tmp_path: Path, cfg2d: Config):
    random_file = tmp_path / "random.pt"
    random_file.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFileError, match="random.pt"):
        load_model(random_file)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ModelFileError, match="is not a file"):
        load_model(tmp_path)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="other.pt"):
        load_model(tmp_path / "other.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # arbitrary objects are not unpickled
    with pytest.raises(ModelFileError, match="pickled.pt"):
        load_model(tmp_path / "pickled.pt")
    truncated = tmp_path / "truncated.pt"
    save_model(truncated, _trained_like(cfg2d), cfg2d)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(ModelFileError, match="truncated.pt"):
        load_model(truncated)
    with pytest.raises(ModelFileError, match="random.pt"):
        read_model_config(random_file)


def test_weights_that_do_not_fit_the_config(tmp_path: Path, cfg2d: Config):
    model = _trained_like(cfg2d)
    bigger = cfg2d.replace(base_channels=8)
    torch.save(
        {"format": MODEL_FORMAT, "version": 1, "config": bigger.to_dict(), "state_dict": model.state_dict(),
         "class_names": bigger.class_names, "meta": {}},
        tmp_path / "mismatch.pt",
    )
    with pytest.raises(ModelFileError, match="mismatch.pt"):
        load_model(tmp_path / "mismatch.pt")
    torch.save(
        {"format": MODEL_FORMAT, "version": 99, "config": cfg2d.to_dict(), "state_dict": model.state_dict()},
        tmp_path / "future.pt",
    )
    with pytest.raises(ModelFileError, match="version 99"):
        load_model(tmp_path / "future.pt")
