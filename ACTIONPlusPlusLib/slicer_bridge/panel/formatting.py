"""Small texts the panel shows: durations, losses, sizes, what torch sees, the question asked on close.

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


SEP = " \u00b7 "  # middle dot between the parts of the progress line


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    """'1h05', '4m12s', '12s'; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        days, hours = divmod(hours, 24)
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_loss(value: float | None) -> str:
    if value is None or value != value:
        return "nan" if value is not None else "?"
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.2e}"


def format_device_info(info: Mapping[str, Any] | None) -> str:
    """What torch sees, for the panel: 'GPU: NVIDIA H100 (79.6 GiB, bf16) · torch 2.13 (CUDA 12.8)'."""
    if not info:
        return "torch is not installed yet (installed on first use)"
    if info.get("error"):
        return f"Cannot tell what torch sees: {info['error']}"
    torch_text = f"torch {info.get('torch', '?')}"
    torch_text += f" (CUDA {info['torch_cuda']})" if info.get("torch_cuda") else " (CPU-only build)" if not info.get("mps_available") else ""
    devices = info.get("cuda_devices") or []
    if info.get("cuda_available") and devices:
        def gpu(d: Mapping[str, Any]) -> str:
            precision = str(d.get("precision", "")).split(" ")[0]
            extra = f", {precision}" if precision else ""
            return f"{d.get('name', 'GPU')} ({d.get('memory_gib', '?')} GiB{extra})"

        return f"GPU: {', '.join(gpu(d) for d in devices)}{SEP}{torch_text}"
    if info.get("mps_available"):
        return f"GPU: Apple MPS (operations it lacks run on the CPU){SEP}{torch_text}"
    details = [f"{info['cpu_count']} cores"] if info.get("cpu_count") else []
    if info.get("cpu_bf16"):  # the CPU has bf16 instructions: 3D training uses them (config cpu_bf16)
        details.append("bf16")
    suffix = " (" + ", ".join(details) + ")" if details else ""
    return f"CPU only{suffix}{SEP}{torch_text}"


def close_during_run_question(kind: str, closing: str) -> str:
    """The question the panel asks before the scene or the application closes during a run."""
    what = "Training" if kind == "train" else "Prediction"
    if closing == "application":
        return (f"{what} is still running. Quit anyway? The worker is stopped; a training run saves a checkpoint first "
                "and can be resumed later with \u201cContinue from last model\u201d.")
    return (f"{what} is still running. Cancel it? (Yes: stop it now; a training run saves a checkpoint first. "
            "No: let it finish in the background; its model and predictions are kept on disk, but not loaded "
            "into the new scene.)")
