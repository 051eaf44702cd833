"""Device choice (CUDA / Apple MPS / CPU) and the mixed-precision policy, with the availability and
capability functions patched (this machine has neither a GPU nor MPS), plus the training loop's
gradient-scaler path run for real on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ACTIONPlusPlusLib import device
from ACTIONPlusPlusLib.device import DeviceError, amp_dtype, amp_policy, autocast, grad_scaler, resolve_device

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def machine(monkeypatch):
    """Set what torch reports: ``machine(cuda=..., mps=...)``."""

    def set_(cuda: bool = False, mps: bool = False, count: int = 1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    machine(cuda=True, mps=True)
    assert resolve_device("auto") == torch.device("cuda")
    machine(cuda=False, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("gpu") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")
    machine(cuda=False, mps=False)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")


def test_missing_gpu_is_a_clear_device_error(machine):
    machine(cuda=False, mps=False)
    for name in ("mps", "gpu", "cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="torch"):
            resolve_device(name)
    machine(cuda=True, count=1)
    with pytest.raises(DeviceError, match="only 1"):
        resolve_device("cuda:1")
    assert resolve_device("gpu:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize(
    "capability,native,expected",
    [
        ((9, 0), True, torch.bfloat16),   # H100
        ((8, 6), True, torch.bfloat16),   # RTX 30xx
        ((8, 0), False, torch.float16),   # a build that reports no native bf16
        ((7, 5), False, torch.float16),   # T4, RTX 20xx: fp16 with a scaler
        ((7, 0), True, torch.float16),    # V100: "supported" only through emulation
        ((6, 1), False, None),            # GTX 10xx: fp32
        ((5, 2), True, None),
    ],
)
def test_amp_policy_follows_the_gpu(capability, native, expected):
    assert amp_policy("cuda", capability, native) is expected


def test_amp_is_off_on_cpu_and_mps():
    assert amp_policy("cpu", None, False) is None
    assert amp_policy("mps", None, True) is None
    assert amp_dtype("cpu", True) is None
    assert amp_dtype("mps", True) is None
    assert isinstance(autocast("cpu", True), type(autocast("mps", True)))
    with autocast("cpu", True):
        assert not torch.is_autocast_enabled("cpu")


def test_amp_dtype_uses_the_capability_check(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(device, "_cuda_capability", lambda dev: ((7, 5), False))
    assert amp_dtype(cuda, True) is torch.float16
    assert amp_dtype(cuda, False) is None
    monkeypatch.setattr(device, "_cuda_capability", lambda dev: ((6, 1), False))
    assert amp_dtype(cuda, True) is None
    assert "fp32" in device.amp_description(None) and "scaling" in device.amp_description(torch.float16)


def test_bf16_check_asks_for_native_support(monkeypatch):
    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return including_emulation  # emulated only: what torch >= 2.3 reports on a T4

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert device._cuda_capability(torch.device("cuda")) == ((7, 5), False)
    assert calls == [False]
    assert amp_dtype("cuda", True) is torch.float16


def test_grad_scaler_only_for_fp16_on_cuda():
    assert grad_scaler("cpu", torch.float16) is None
    assert grad_scaler("cuda", torch.bfloat16) is None
    assert grad_scaler("cuda", None) is None
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else _nothing():
        scaler = grad_scaler("cuda", torch.float16)
    assert isinstance(scaler, torch.amp.GradScaler)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_training_loop_steps_through_a_gradient_scaler(monkeypatch, tmp_path):
    """The fp16 path (scale, unscale, clip, step, update) run for real with a CPU scaler."""
    from ACTIONPlusPlusLib.config import preset
    from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset
    from ACTIONPlusPlusLib.training import loop

    scalers = []

    def cpu_scaler(dev, dtype):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        scalers.append(scaler)
        return scaler

    monkeypatch.setattr(loop, "grad_scaler", cpu_scaler)
    data = cardiac_phantom_dataset(num_labeled=2, num_unlabeled=2, num_test=0, seed=3, num_slices=2, size=(32, 32))
    cfg = preset("acdc", patch_size=[32, 32], base_channels=4, local_window=16, local_stride=8, local_pool=4,
                 pretrain_warmup_iterations=0, pretrain_joint_iterations=0, finetune_iterations=3, log_every=1,
                 anco_queries=16, anco_negatives=32, saacl_anchors_per_class=16, saacl_queue_size=64,
                 checkpoint_every=1000, device="cpu", geometric_augmentation=False, grad_clip=1.0)
    trainer = loop.Trainer(cfg, data.labeled, data.unlabeled, tmp_path)
    before = [p.detach().clone() for p in trainer.student.parameters()]
    assert trainer.run() is False
    assert scalers and scalers[0]._scale is not None  # the scaler was used (its scale tensor exists)
    changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.student.parameters()))
    assert changed, "no optimizer step went through the scaler"


def test_device_probe_module_prints_one_json_line():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "ACTIONPlusPlusLib.device"], capture_output=True, text=True,
                            timeout=120, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["torch"] == torch.__version__ and "mps_available" in info and "cuda_available" in info


# ------------------------------------------------------------------ CPU fp32 products through oneDNN


@pytest.fixture
def fresh_matmul_route():
    """The oneDNN route's probe forgotten before and after (it answers once per process)."""
    settings = torch.backends.mkldnn.matmul
    before = settings.fp32_precision
    device._ONEDNN_MATMUL = None
    yield settings
    device._ONEDNN_MATMUL = None
    settings.fp32_precision = before


def test_onednn_route_is_refused_when_its_products_are_not_fp32(fresh_matmul_route, monkeypatch):
    """Where oneDNN would round to bf16 (a processor with AMX), the probe sees it and changes nothing."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    fresh_matmul_route.fp32_precision = "none"
    bf16_product = lambda a, b: (a.bfloat16() @ b.bfloat16()).float()  # noqa: E731
    assert device.onednn_fp32_matmul(product=bf16_product) is False
    assert fresh_matmul_route.fp32_precision == "none"
    assert device.onednn_fp32_matmul(product=torch.mm) is True  # an fp32 product passes
    assert fresh_matmul_route.fp32_precision == "bf16"


def test_onednn_route_is_never_taken_with_amx_or_without_avx512(fresh_matmul_route, monkeypatch):
    fresh_matmul_route.fp32_precision = "none"
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert device.onednn_fp32_matmul(product=torch.mm) is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: False)
    assert device.onednn_fp32_matmul(product=torch.mm) is False
    assert fresh_matmul_route.fp32_precision == "none"
    device.tune_backends("cpu", onednn_matmul=False)  # the config's opt-out restores torch's route
    assert fresh_matmul_route.fp32_precision == "none"


def test_products_stay_fp32_on_this_machine_whichever_route(fresh_matmul_route):
    """D15: the losses' products are fp32 whether or not this machine takes the oneDNN route (SAACL's
    log-sum-exp over a queue, in its blocks, against float64)."""
    from ACTIONPlusPlusLib.losses.saacl import logsumexp_matmul

    g = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(512, 128, generator=g), dim=1) / 0.07
    keys = torch.nn.functional.normalize(torch.randn(3000, 128, generator=g), dim=1)
    ref = torch.logsumexp(a.double() @ keys.double().t(), dim=1)
    for enable in (False, True):
        device._ONEDNN_MATMUL = None
        device.onednn_fp32_matmul(enable)
        assert torch.allclose(logsumexp_matmul(a, keys).double(), ref, rtol=0, atol=2e-5)


_STEPS_SCRIPT = """
import json, resource, sys, torch
from ACTIONPlusPlusLib import device
if sys.argv[1] == "retain":
    assert device.retain_freed_memory() is True
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
def step():  # two large maps built and dropped, as a training step does with its dense maps
    a = torch.empty(64 << 20, dtype=torch.uint8); b = torch.empty(64 << 20, dtype=torch.uint8)
    a.fill_(1); b.fill_(1)
    peak = resident()
    del a, b
    return peak, resident()
print(json.dumps([step() for _ in range(30)]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_retained_memory_is_reused_step_after_step():
    """By default glibc unmaps each large map when it is freed, so every step gets (and zeroes) fresh
    pages; with retain_freed_memory the freed maps stay resident and, once the heap has settled, the
    next step's maps are served from them: resident memory neither drops after a step nor grows.

    Resident memory, not page faults, is compared: a kernel with NUMA balancing faults resident pages
    too (its hinting faults: most likely what the CI machine counted).  The heap takes a few steps to
    settle (3-6 here):
    torch's CPU allocator uses ``posix_memalign``, whose small leading fragments glibc's thread cache
    holds, and a freed map beside one cannot merge with its neighbour, so early maps may not fit the
    holes.  The cache holds at most 7 fragments of a size, so this ends: 30 steps run, the last 5 are
    checked."""
    import json

    maps = 2 * (64 << 20)
    steps = {}
    for mode in ("retain", "default"):
        out = subprocess.run([sys.executable, "-c", _STEPS_SCRIPT, mode], cwd=REPO, capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        steps[mode] = json.loads(out.stdout)
    mib = {mode: [(p >> 20, a >> 20) for p, a in v] for mode, v in steps.items()}  # for the messages
    assert all(peak - after >= 0.9 * maps for peak, after in steps["default"][-5:]), mib
    settled = steps["retain"][-5:]
    # a tenth of the maps of slack (khugepaged may fill in pages around a collapse); a step without
    # retention gives back all of them, a heap not yet settled takes half or all of them anew
    assert all(peak - after < maps // 10 for peak, after in settled), mib  # nothing given back
    peaks = [peak for peak, _ in settled]
    assert max(peaks) - min(peaks) < maps // 10, mib  # and nothing new taken: the same pages serve
