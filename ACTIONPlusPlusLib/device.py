"""Device selection and mixed precision, in one place for the trainer, inference, worker and GUI.

Convolutions run under bf16 autocast on CUDA (``Config.amp``); on CPU autocast is a no-op, because
CPU bf16 convolutions are slower than fp32 on most machines and the tests compare CPU outputs exactly.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, ContextManager

import torch

from .errors import DataError


class DeviceError(DataError):
    """The requested device does not exist on this machine (or in this torch build).

    A :class:`DataError` (bad input) so that the worker reports it as a bad job (exit code 2), not
    as a crash: the fix is in the job/config (``device``), not in the code.
    """


_ALIASES = {"gpu": "cuda", "": "auto", "default": "auto"}


def _torch_build() -> str:
    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU-only build'})"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Map a user-facing device name to a :class:`torch.device`.

    ``"auto"`` (or ``None``) picks ``cuda`` when torch sees a GPU, else ``cpu``.  ``"gpu"`` is an alias
    of ``"cuda"``.  ``"cuda"``/``"cuda:N"`` on a machine where torch sees no such GPU raises
    :class:`DeviceError` naming the torch build (a CPU-only wheel is the usual cause).
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    text = _ALIASES.get(text, text)
    if text.startswith("gpu:"):
        text = "cuda:" + text[4:]
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
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
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or gpu")


def autocast(device: torch.device | str, enabled: bool = True) -> ContextManager[Any]:
    """bf16 autocast on CUDA when ``enabled``; a null context on CPU (fp32 everywhere)."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    if enabled and device_type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
        "default_device": "cuda" if cuda else "cpu",
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
                }
            )
        info["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    return info
