"""Inference: slice-wise 2D, sliding-window 3D (checked against a hand computation), maps, devices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.types import Case, normalize
from ACTIONPlusPlusLib.device import DeviceError, autocast, describe_devices, resolve_device
from ACTIONPlusPlusLib.errors import ActionError, DataError
from ACTIONPlusPlusLib.inference import (
    PredictResult,
    _logits,
    confidence_map,
    entropy_map,
    predict_case,
    window_starts,
)


# ------------------------------------------------------------------------------------------------
# stand-in networks
class Pointwise(nn.Module):
    """Per-pixel logits [-x, x] (2 classes): labels must equal image > 0 wherever the net sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor):
        return (torch.cat([-self.gain * x, self.gain * x], dim=1), None)  # a tuple, logits first


class WindowDependent(nn.Module):
    """3-class logits that depend on the position inside the window (a ramp) and on the whole window
    (its mean), so that any error in window placement, padding or averaging changes the output."""

    def __init__(self, patch: tuple[int, int, int]) -> None:
        super().__init__()
        self.register_buffer("ramp", torch.linspace(-1.0, 1.0, math.prod(patch)).reshape(patch))
        self.scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor):
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        l1 = self.scale * x + self.ramp + 2.0 * mean
        return type("Out", (), {"logits": torch.cat([torch.zeros_like(l1), l1, -x], dim=1)})()


def _reference_sliding_window(net_image: np.ndarray, model: nn.Module, patch, stride) -> np.ndarray:
    """UA-MT's test_single_case written out plainly (one window at a time, explicit count map)."""
    w, h, d = net_image.shape
    pads = [max(p - s, 0) for s, p in zip((w, h, d), patch)]
    lo = [p // 2 for p in pads]
    image = np.pad(net_image, [(lo[i], pads[i] - lo[i]) for i in range(3)])
    ww, hh, dd = image.shape
    sx = math.ceil((ww - patch[0]) / stride[0]) + 1
    sy = math.ceil((hh - patch[1]) / stride[1]) + 1
    sz = math.ceil((dd - patch[2]) / stride[2]) + 1
    score, count = None, np.zeros(image.shape, dtype=np.float64)
    with torch.no_grad():
        for ix in range(sx):
            xs = min(stride[0] * ix, ww - patch[0])
            for iy in range(sy):
                ys = min(stride[1] * iy, hh - patch[1])
                for iz in range(sz):
                    zs = min(stride[2] * iz, dd - patch[2])
                    crop = image[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]]
                    out = _logits(model(torch.from_numpy(np.ascontiguousarray(crop))[None, None].float()))
                    prob = torch.softmax(out, dim=1)[0].double().numpy()
                    if score is None:
                        score = np.zeros((prob.shape[0], *image.shape))
                    score[:, xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += prob
                    count[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += 1
    score = score / count
    return score[:, lo[0] : lo[0] + w, lo[1] : lo[1] + h, lo[2] : lo[2] + d]


# ------------------------------------------------------------------------------------------------
def test_window_starts_spec_vector():
    # spec 12.14: 144x144x88 -> x/y starts {0, 18, 32}, z starts {0, 4, 8}; 112x112x80 -> 1 window
    assert window_starts(144, 112, 18) == [0, 18, 32]
    assert window_starts(88, 80, 4) == [0, 4, 8]
    assert window_starts(112, 112, 18) == [0]
    assert window_starts(80, 80, 4) == [0]
    assert window_starts(131, 112, 18) == [0, 18, 19]
    with pytest.raises(ValueError):
        window_starts(100, 112, 18)


def test_logits_helper_accepts_netoutput_tuple_tensor():
    from ACTIONPlusPlusLib.models import NetOutput

    t = torch.randn(1, 2, 4, 4)
    assert _logits(t) is t
    assert _logits((t, None)) is t
    assert _logits(NetOutput(t, t, [t])) is t
    assert _logits({"logits": t}) is t
    with pytest.raises(TypeError):
        _logits("nothing")


def test_sliding_window_matches_hand_computation_with_padding():
    patch, stride = (32, 32, 16), (5, 6, 4)
    cfg = preset("la", patch_size=list(patch))
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 40, 29)).astype(np.float32)  # (z, y, x): x = 29 < 32 is padded 1 + 2
    model = WindowDependent(patch)
    result = predict_case(model, Case("c", image), cfg, return_probabilities=True, stride=stride, batch_size=3)

    ref = _reference_sliding_window(image.transpose(2, 1, 0), model, patch, stride)  # (C, x, y, z)
    ref = ref.transpose(0, 3, 2, 1)  # (C, z, y, x)
    assert result.probabilities.shape == (3, 20, 40, 29)
    assert result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities, ref, atol=1e-5)
    np.testing.assert_array_equal(result.labels, ref.argmax(0))
    assert result.labels.dtype == np.uint8 and result.labels.shape == image.shape
    # the windows really overlap with different counts: averaging must not be a plain copy
    single = predict_case(model, Case("c", image), cfg, return_probabilities=True, stride=(32, 32, 16))
    assert np.abs(single.probabilities - result.probabilities).max() > 1e-3


def test_sliding_window_batch_size_does_not_change_result():
    patch = (32, 32, 16)
    cfg = preset("la", patch_size=list(patch))
    image = np.random.default_rng(1).normal(size=(24, 45, 37)).astype(np.float32)
    model = WindowDependent(patch)
    a = predict_case(model, Case("c", image), cfg, return_probabilities=True, batch_size=1, stride=(5, 5, 4))
    b = predict_case(model, Case("c", image), cfg, return_probabilities=True, batch_size=7, stride=(5, 5, 4))
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_3d_geometry_smaller_than_patch_and_orientation():
    cfg = preset("la", patch_size=[32, 32, 16])
    rng = np.random.default_rng(2)
    image = rng.normal(size=(9, 21, 26)).astype(np.float32)  # every axis smaller than the patch
    result = predict_case(Pointwise(), Case("small", image), cfg, return_probabilities=True)
    assert result.labels.shape == image.shape
    assert result.probabilities.shape == (2, *image.shape)
    np.testing.assert_array_equal(result.labels, (image > 0).astype(np.uint8))
    # a non-cubic volume larger than the patch along some axes, default LA stride
    image = rng.normal(size=(20, 50, 40)).astype(np.float32)
    result = predict_case(Pointwise(), Case("big", image), cfg)
    np.testing.assert_array_equal(result.labels, (image > 0).astype(np.uint8))


def test_2d_same_size_is_plain_softmax_and_keeps_orientation():
    cfg = preset("acdc", patch_size=[32, 32])
    image = np.random.default_rng(3).normal(size=(5, 32, 32)).astype(np.float32)
    model = Pointwise()
    result = predict_case(model, Case("c", image), cfg, return_probabilities=True, batch_size=2)
    with torch.no_grad():
        x = torch.from_numpy(image)[:, None]
        expected = torch.softmax(torch.cat([-3 * x, 3 * x], 1), 1).permute(1, 0, 2, 3).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(result.labels, (image > 0).astype(np.uint8))


def test_2d_non_square_slices_resized_and_back():
    cfg = preset("acdc", patch_size=[32, 32])
    image = np.zeros((3, 40, 24), dtype=np.float32)
    image[:, 5:20, 3:10] = 1.0  # an off-centre block: a transposed resize would misplace it
    image -= 0.5
    model = Pointwise()
    result = predict_case(model, Case("c", image), cfg, return_probabilities=True)
    assert result.labels.shape == (3, 40, 24)
    assert result.probabilities.shape == (4 - 2, 3, 40, 24)
    # reference: bilinear to 32x32, per-pixel softmax, bilinear back
    with torch.no_grad():
        x = F.interpolate(torch.from_numpy(image)[:, None], size=(32, 32), mode="bilinear", align_corners=False)
        p = torch.softmax(torch.cat([-3 * x, 3 * x], 1), 1)
        p = F.interpolate(p, size=(40, 24), mode="bilinear", align_corners=False).permute(1, 0, 2, 3).numpy()
    np.testing.assert_allclose(result.probabilities, p, atol=1e-6)
    agreement = (result.labels == (image > 0)).mean()
    assert agreement > 0.97, agreement


def test_2d_single_slice_array_and_normalize_input():
    cfg = preset("acdc", patch_size=[32, 32])
    raw = np.random.default_rng(4).uniform(100, 900, size=(32, 48)).astype(np.float32)
    model = Pointwise()
    got = predict_case(model, Case("c", raw), cfg, return_probabilities=True, normalize_input=True)
    want = predict_case(model, Case("c", normalize(raw, "minmax")), cfg, return_probabilities=True)
    assert got.labels.shape == raw.shape
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
    # without normalisation the raw intensities are all positive: every pixel foreground
    assert predict_case(model, Case("c", raw), cfg).labels.min() == 1


def test_bad_inputs_raise_data_error():
    cfg = preset("acdc", patch_size=[32, 32])
    image = np.zeros((2, 32, 32), dtype=np.float32)
    image[0, 1, 1] = np.nan
    with pytest.raises(DataError, match="case nanny"):
        predict_case(Pointwise(), Case("nanny", image), cfg)
    with pytest.raises(DataError):
        predict_case(Pointwise(), Case("flat", np.zeros((2, 3, 4, 5), np.float32)), cfg)


def test_real_unet_2d_keeps_geometry_and_mode():
    from ACTIONPlusPlusLib.models import build_network

    torch.manual_seed(0)
    cfg = preset("acdc", base_channels=4, patch_size=[32, 32])
    model = build_network(cfg)
    model.train()
    image = np.random.default_rng(5).uniform(size=(3, 40, 28)).astype(np.float32)
    a = predict_case(model, Case("c", image), cfg, return_probabilities=True, batch_size=1)
    b = predict_case(model, Case("c", image), cfg, return_probabilities=True, batch_size=3)
    assert model.training  # restored
    assert isinstance(a, PredictResult)
    assert a.labels.shape == (3, 40, 28) and a.labels.dtype == np.uint8
    assert a.probabilities.shape == (4, 3, 40, 28)
    np.testing.assert_allclose(a.probabilities.sum(0), 1.0, atol=1e-5)
    # eval mode: BN running statistics, so a slice's output does not depend on its batch mates
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert a.labels.max() < 4


def test_real_vnet_3d_keeps_geometry():
    from ACTIONPlusPlusLib.models import build_network

    torch.manual_seed(0)
    cfg = preset("la", base_channels=2, patch_size=[32, 32, 16])
    model = build_network(cfg)
    image = np.random.default_rng(6).normal(size=(14, 36, 30)).astype(np.float32)  # (z, y, x)
    result = predict_case(model, Case("c", image), cfg, return_probabilities=True, stride=(8, 8, 4))
    assert result.labels.shape == image.shape
    assert result.probabilities.shape == (2, *image.shape)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(0))


# ------------------------------------------------------------------------------------------------
def test_confidence_and_entropy_maps():
    probs = np.zeros((2, 1, 1, 3), dtype=np.float32)
    probs[:, 0, 0, 0] = [0.5, 0.5]
    probs[:, 0, 0, 1] = [0.0, 1.0]
    probs[:, 0, 0, 2] = [0.25, 0.75]
    conf = confidence_map(probs)
    ent = entropy_map(probs)
    assert conf.dtype == np.float32 and ent.dtype == np.float32 and ent.shape == (1, 1, 3)
    np.testing.assert_allclose(conf[0, 0], [0.5, 1.0, 0.75])
    np.testing.assert_allclose(ent[0, 0], [1.0, 0.0, 0.811278], atol=1e-5)
    uniform = np.full((4, 2, 2, 2), 0.25, dtype=np.float32)
    np.testing.assert_allclose(entropy_map(uniform), 1.0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "gpu", "cuda:1"])
def test_cuda_request_without_cuda_is_clear(name):
    with pytest.raises(ActionError) as info:
        resolve_device(name)
    assert isinstance(info.value, DataError)
    assert "CUDA" in str(info.value) and "no" in str(info.value) and torch.__version__ in str(info.value)


def test_autocast_is_noop_on_cpu_and_describe_devices_is_json():
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        y = nn.Linear(3, 3)(torch.randn(2, 3))
    assert y.dtype == torch.float32
    info = describe_devices()
    json.dumps(info)
    assert info["torch"] == torch.__version__
    assert info["cuda_available"] == torch.cuda.is_available()
    assert len(info["cuda_devices"]) == info["cuda_device_count"]
