"""The network predictions run on (inference.inference_network, models.folding): BatchNorm folded into
the convolutions, channels-last 3D on the CPU with the classifier as a matrix product.  Equal to the
training network in eval() up to float rounding, with the same labels; the training network untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ACTIONPlusPlusLib import inference
from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.types import Case
from ACTIONPlusPlusLib.models import build_network
from ACTIONPlusPlusLib.models.folding import channels_last_3d, fold_batchnorm


def _trained_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Running BatchNorm statistics and affine parameters away from their initial 0/1."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
        model.train()
        for _ in range(3):
            model(torch.randn(*shape) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("name, shape", [("la", (2, 1, 32, 32, 16)), ("acdc", (3, 1, 32, 32))])
def test_folded_network_equals_the_network_and_has_no_batchnorm(name, shape) -> None:
    cfg = preset(name, patch_size=list(shape[2:]) if name == "acdc" else [32, 32, 16])
    model = _trained_statistics(build_network(cfg), shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(*shape)
    with torch.inference_mode():
        reference, out = model(x), folded(x)
    torch.testing.assert_close(out.logits, reference.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(out.features, reference.features):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was folded
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_channels_last_copy_runs_the_classifier_as_a_product_with_equal_values() -> None:
    cfg = preset("la", patch_size=[32, 32, 16])
    model = _trained_statistics(build_network(cfg), (2, 1, 32, 32, 16))
    fast = channels_last_3d(fold_batchnorm(model))
    assert not isinstance(fast.out, nn.Conv3d)  # the 16 -> 2 classifier
    assert fast.block1[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.inference_mode():
        reference = model(x).logits
        out = fast(x.contiguous(memory_format=torch.channels_last_3d)).logits
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_predictions_with_and_without_the_inference_network_agree(monkeypatch) -> None:
    cfg = preset("la", patch_size=[32, 32, 16])
    model = _trained_statistics(build_network(cfg), (2, 1, 32, 32, 16))
    image = np.random.default_rng(0).standard_normal((20, 40, 36)).astype(np.float32)
    fast = inference.predict_case(model, Case("a", image), cfg, return_probabilities=True, stride=(6, 6, 4))
    monkeypatch.setattr(inference, "OPTIMIZE_FOR_INFERENCE", False)
    plain = inference.predict_case(model, Case("a", image), cfg, return_probabilities=True, stride=(6, 6, 4))
    np.testing.assert_allclose(fast.probabilities, plain.probabilities, rtol=1e-4, atol=1e-5)
    decided = np.abs(plain.probabilities[1] - plain.probabilities[0]) > 1e-4
    assert np.array_equal(fast.labels[decided], plain.labels[decided]) and decided.mean() > 0.99
