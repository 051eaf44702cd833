"""Checksums of the tensors in model files and checkpoints, and the finite-weights check.

A model file or a checkpoint carries ``"checksum": {"algorithm": "sha256", "tensors": HEX}``: the
SHA-256 of every tensor it holds (its path inside the file, dtype, shape and raw bytes, in a fixed
order).  A file whose bytes were damaged where ``torch.load`` does not notice (a flipped bit inside a
weight tensor: the zip archive stores tensors uncompressed and unchecked) then no longer matches, and
the loaders refuse it naming the file.  Files written before checksums existed carry none and still
load; the loaders still refuse NaN/Inf weights in them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Iterator

import torch

ALGORITHM = "sha256"
CHECKSUM_KEY = "checksum"


def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for every tensor inside nested dicts / lists / tuples, in a fixed order
    (dict keys sorted by their text, so that a file read back gives the same order)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            if prefix == "" and key == CHECKSUM_KEY:
                continue
            yield from iter_tensors(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from iter_tensors(item, f"{prefix}[{i}]")


def tensor_checksum(obj: Any) -> dict[str, str]:
    """``{"algorithm": "sha256", "tensors": HEX}`` over every tensor in ``obj`` (any device)."""
    digest = hashlib.sha256()
    for path, tensor in iter_tensors(obj):
        t = tensor.detach()
        if t.is_sparse:  # pragma: no cover - the project never stores sparse tensors
            t = t.to_dense()
        t = t.to("cpu").reshape(-1).contiguous()
        digest.update(f"{path}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        if t.numel():
            digest.update(t.view(torch.uint8).numpy().tobytes())
    return {"algorithm": ALGORITHM, "tensors": digest.hexdigest()}


def checksum_problem(data: Mapping[str, Any]) -> str | None:
    """None when ``data`` carries no checksum (an older file) or a matching one; else what is wrong."""
    stored = data.get(CHECKSUM_KEY)
    if stored is None:
        return None
    if not isinstance(stored, Mapping) or stored.get("algorithm") != ALGORITHM or not isinstance(stored.get("tensors"), str):
        return f"its checksum entry is not readable ({stored!r:.80})"
    if tensor_checksum(data)["tensors"] != stored["tensors"]:
        return ("its tensors do not match the checksum written with them: the file was damaged after it was "
                "written (disk, copy or download); use an intact copy or train again")
    return None


def non_finite_tensors(state: Mapping[str, Any], limit: int = 3) -> list[str]:
    """Names of up to ``limit`` floating-point tensors in ``state`` that hold NaN or Inf."""
    bad: list[str] = []
    for path, tensor in iter_tensors(state):
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel():
            if not bool(torch.isfinite(tensor).all()):
                bad.append(path.lstrip("/"))
                if len(bad) >= limit:
                    break
    return bad
