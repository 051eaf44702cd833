"""Device selection and mixed precision, in one place for the trainer, inference, worker and GUI.

Devices: ``auto`` picks a CUDA GPU, else Apple's ``mps`` GPU, else the CPU.  On ``mps`` the worker
sets ``PYTORCH_ENABLE_MPS_FALLBACK=1`` (``slicer_bridge/child_process.py``) so that an operation MPS
lacks runs on the CPU instead of failing.

Mixed precision (``Config.amp``), chosen by :func:`amp_dtype` from what the GPU really supports:

- CUDA with native bf16 (compute capability >= 8.0: Ampere, Ada, Hopper...): bf16 autocast, no scaler;
- CUDA with fp16 tensor cores but no native bf16 (7.x: V100, T4, RTX 20xx): fp16 autocast, and the
  training loop scales the loss with :func:`grad_scaler` (fp16 gradients underflow without it);
- older GPUs (GTX 10xx and before) and ``mps``: fp32 (autocast off).  bf16 is emulated, and fp16
  without tensor cores is slow, on those GPUs;
- the CPU: fp32, except for training with ``Config.cpu_bf16`` on a processor with bf16 instructions
  (AVX512-BF16 or AMX: :func:`cpu_bf16_native`), where oneDNN's bf16 convolutions are faster than
  fp32 (on other processors bf16 is emulated and slower).  Predictions on the CPU stay fp32.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Any, ContextManager

import torch

from .errors import DataError


class DeviceError(DataError):
    """The requested device does not exist on this machine (or in this torch build).

    A :class:`DataError` (bad input) so that the worker reports it as a bad job (exit code 2), not
    as a crash: the fix is in the job/config (``device``), not in the code.
    """


_ALIASES = {"": "auto", "default": "auto"}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:  # noqa: BLE001 - an odd build must not break device selection
        return False


def _torch_build() -> str:
    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU-only build'})"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Map a user-facing device name to a :class:`torch.device`.

    ``"auto"`` (or ``None``) picks ``cuda`` when torch sees a CUDA GPU, else ``mps`` (Apple Silicon)
    when torch reports it, else ``cpu``.  ``"gpu"`` is the GPU torch sees: ``cuda``, else ``mps``.
    ``"cuda"``/``"cuda:N"``/``"mps"`` on a machine where torch sees no such GPU raises
    :class:`DeviceError` naming the torch build (a CPU-only wheel is the usual cause).
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    text = _ALIASES.get(text, text)
    if text.startswith("gpu:"):
        text = "cuda:" + text[4:]
    if text in ("auto", "gpu"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        if text == "auto":
            return torch.device("cpu")
        raise DeviceError(f"device {name!r} requested but torch sees no CUDA GPU and no Apple MPS GPU; "
                          f"{_torch_build()}. Use device 'cpu' or 'auto', or install a CUDA build of torch.")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceError(f"device {name!r} requested but torch reports no Apple MPS GPU; {_torch_build()}. "
                              "Use device 'cpu' or 'auto'.")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} requested but torch sees no CUDA GPU; {_torch_build()}. "
                "Use device 'cpu' or 'auto', or install a CUDA build of torch."
            )
        if text == "cuda":
            return torch.device("cuda")
        index_text = text.split(":", 1)[1]
        if not index_text.isdigit():
            raise DeviceError(f"device {name!r}: expected cuda:N with an integer N")
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {name!r} requested but torch sees only {count} CUDA device(s)")
        return torch.device("cuda", index)
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N, mps or gpu")


def amp_policy(device_type: str, capability: tuple[int, int] | None, bf16_native: bool) -> torch.dtype | None:
    """The autocast dtype for a device, from what it supports (pure: tested with patched values).

    ``capability`` is the CUDA compute capability (major, minor); ``bf16_native`` whether the GPU does
    bf16 in hardware (not emulated).  None means fp32 (autocast off).
    """
    if device_type != "cuda" or capability is None:
        return None  # CPU (slower in bf16), mps (fp32 is the safe choice)
    if bf16_native and capability >= (8, 0):
        return torch.bfloat16
    if capability >= (7, 0):
        return torch.float16  # tensor cores without bf16: fp16 with a gradient scaler
    return None  # Pascal and older: bf16 emulated, fp16 slow: fp32


def _cuda_capability(device: torch.device) -> tuple[tuple[int, int] | None, bool]:
    if not torch.cuda.is_available():
        return None, False
    index = device.index if device.index is not None else torch.cuda.current_device()
    capability = tuple(torch.cuda.get_device_capability(index))
    try:
        native = bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation (and reports native support only)
        native = bool(torch.cuda.is_bf16_supported())
    return capability, native  # type: ignore[return-value]


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX) and torch's oneDNN can use it."""
    cpu = torch.cpu
    native = any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    mkldnn = getattr(torch.backends, "mkldnn", None)
    return bool(native and mkldnn is not None and mkldnn.is_available())


def amp_dtype(device: torch.device | str, enabled: bool = True, cpu_bf16: bool = False) -> torch.dtype | None:
    """The dtype autocast uses on ``device`` (None: fp32), see :func:`amp_policy`; on the CPU bf16 only
    with ``cpu_bf16`` (training) on a processor with bf16 instructions (:func:`cpu_bf16_native`)."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    if not enabled:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16 and cpu_bf16_native() else None
    if device.type != "cuda":
        return None
    capability, native = _cuda_capability(device)
    return amp_policy(device.type, capability, native)


def amp_description(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16 mixed precision", torch.float16: "fp16 mixed precision with loss scaling"}.get(
        dtype, "fp32 (no mixed precision)")  # type: ignore[arg-type]


def autocast(device: torch.device | str, enabled: bool = True, dtype: torch.dtype | None | str = "auto") -> ContextManager[Any]:
    """Autocast on CUDA in the dtype the GPU supports (:func:`amp_dtype`) when ``enabled``; a null
    context on ``mps``, on GPUs where mixed precision does not pay and on the CPU unless ``dtype`` is
    bf16 (what :func:`amp_dtype` chooses for CPU training with ``cpu_bf16``).
    ``dtype`` overrides the choice (None: fp32)."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    if enabled and device_type == "cpu" and dtype is torch.bfloat16:
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if not enabled or device_type != "cuda":
        return contextlib.nullcontext()
    chosen = amp_dtype(device, True) if isinstance(dtype, str) else dtype
    if chosen is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=chosen)


def tune_backends(device: torch.device | str, onednn_matmul: bool = True, retain_memory: bool = False) -> None:
    """Let cuDNN pick the fastest convolution algorithms for the fixed shapes of training and inference;
    on the CPU, route fp32 matrix products through oneDNN where that stays fp32 (:func:`onednn_fp32_matmul`)
    and, with ``retain_memory`` (training), keep freed memory for the next step (:func:`retain_freed_memory`).

    Patches and windows keep one shape per run, so ``cudnn.benchmark`` measures once per shape and wins
    from then on.  TF32 is left as torch sets it (on for convolutions, off for matmuls), so the losses'
    fp32 matmuls stay fp32 (decision D15).  Both CPU settings are process-wide.
    """
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif device_type == "cpu":
        if onednn_matmul:
            onednn_fp32_matmul()
        if retain_memory:
            retain_freed_memory()


def channels_last_2d(dim: int, device: torch.device | str, enabled: bool = True) -> bool:
    """Whether a 2D network on ``device`` should run channels-last: on the CPU, oneDNN's convolutions are
    faster in that layout (the U-Net's training step 1.2x at 64x64 and 1.4x at 128x128 on one thread,
    ``bench/train_step.py``); values differ from channels-first by float rounding only.  Not on CUDA
    (not measured) nor in 3D (the V-Net's training step measured no faster)."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return bool(enabled) and dim == 2 and device_type == "cpu"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def retain_freed_memory() -> bool:
    """Make glibc serve large blocks from the heap and keep what is freed; returns whether it now does.

    torch's CPU tensors come from ``malloc``, and glibc gives every block above 32 MiB its own ``mmap``
    and returns it to the system when it is freed: a training step that builds and drops the same
    large maps every iteration (the dense representation: 67 MiB at ACDC 128x128, 151 MiB at LA
    48x48x32) then pays the kernel for zeroed pages again each step (LA fine-tuning step 1112 -> 815
    ms, one thread; docs/DESIGN.md, *Precision and CPU speed*).  The heap settles after a few steps (``Testing/test_device.py``)
    and the process's resident memory then stays at its peak, which a training process reaches every
    step anyway; called from the trainer only, never in Slicer's own process.  A no-op (False) off
    Linux or with a C library without ``mallopt`` (musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0),  # no mmap per block: large blocks come from the heap
        (_M_TRIM_THRESHOLD, 1 << 30),  # keep up to 1 GiB of freed memory at the heap's top
        (_M_TOP_PAD, 64 << 20),  # and grow the heap in 64 MiB steps
    ))


_ONEDNN_MATMUL: bool | None = None  # the probe's answer, once per process


def _fp32_exact(product: Any) -> bool:
    """Whether ``product(a, b)`` computes fp32 matrix products to fp32 accuracy, on the shapes the
    contrastive losses use (a bf16 product is off by ~1e-3 relative: 500x the bound checked here)."""
    gen = torch.Generator().manual_seed(0)
    for m, k, n in ((256, 128, 512), (256, 512, 128)):
        a = torch.randn(m, k, generator=gen)
        b = torch.randn(k, n, generator=gen)
        exact = a.double() @ b.double()
        scale = a.double().abs() @ b.double().abs()  # the bound of a sum's rounding error is relative to this
        if not bool(((product(a, b).double() - exact).abs() <= 2e-6 * scale).all()):
            return False
    return True


def onednn_fp32_matmul(enable: bool = True, product: Any = None) -> bool:
    """Route the CPU's fp32 matrix products (``mm``, ``linear``) through oneDNN when that stays fp32;
    returns whether they now are.

    torch sends CPU fp32 products to MKL, whose kernels on AMD processors use AVX2 even where the
    processor has AVX-512; oneDNN uses AVX-512 (2.4x faster at SAACL's 1024 x 128 x 2048 blocks on the
    project's AMD EPYC, one thread).  torch only takes the oneDNN route under the "bf16" fp32 precision,
    which lets oneDNN round the inputs to bf16 where it has kernels that do so (processors with AMX).
    So the route is taken only on AVX-512 processors without AMX, and only after a probe has checked
    that the products are still fp32-accurate (D15: the losses stay fp32); otherwise nothing changes.
    ``product`` replaces ``torch.mm`` in the probe (tests).
    """
    global _ONEDNN_MATMUL
    settings = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if settings is None or not hasattr(settings, "fp32_precision") or not torch.backends.mkldnn.is_available():
        return False  # torch < 2.9, or a build without oneDNN: the default route
    if not enable:
        settings.fp32_precision = "none"
        _ONEDNN_MATMUL = None
        return False
    if _ONEDNN_MATMUL is not None and product is None:
        return _ONEDNN_MATMUL
    cpu = torch.cpu
    with_amx = any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_amx_fp16_supported"))
    ok = False
    if getattr(cpu, "_is_avx512_supported", lambda: False)() and not with_amx:
        previous = settings.fp32_precision
        settings.fp32_precision = "bf16"
        ok = _fp32_exact(product or torch.mm)
        if not ok:
            settings.fp32_precision = previous
    _ONEDNN_MATMUL = ok
    return ok


def grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> Any:
    """A gradient scaler when training runs in fp16 (needed against underflow), else None.

    It is not checkpointed: after a resume it re-calibrates its scale within a few steps."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    if dtype is not torch.float16 or device_type != "cuda":
        return None
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()  # torch 2.1 / 2.2


def describe_devices() -> dict[str, Any]:
    """Plain-JSON description of the compute available (for the worker's ``start`` event and the GUI)."""
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cuda_device_count": torch.cuda.device_count() if cuda else 0,
        "cuda_devices": [],
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_bf16_native(),
        "mps_available": _mps_available(),
        "default_device": "cuda" if cuda else ("mps" if _mps_available() else "cpu"),
    }
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["cuda_devices"].append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                    "precision": amp_description(amp_dtype(torch.device("cuda", index))),
                }
            )
        info["bf16_supported"] = _cuda_capability(torch.device("cuda", 0))[1]
    return info


if __name__ == "__main__":  # ``python -m ACTIONPlusPlusLib.device``: the device list as one JSON line (GUI probe)
    import json
    import sys

    sys.stdout.write(json.dumps(describe_devices()) + "\n")
