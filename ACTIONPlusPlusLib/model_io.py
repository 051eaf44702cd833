"""The inference model file (``model.pt``, docs/ARCHITECTURE.md "Model file").

Format: ``{"format": "actionpp-model", "version": 1, "config": cfg.to_dict(), "state_dict": student
weights on CPU, "class_names": [...], "meta": {...}, "checksum": {"algorithm": "sha256", "tensors": HEX}}``
(checksums.py: a file damaged after it was written is refused, naming it; files written before the
checksum existed have none and still load).  NaN/Inf weights are refused whatever the file's age.  Only plain containers, numbers, strings and
tensors go in, so the file loads with ``torch.load(weights_only=True)`` (no arbitrary code runs when a
user opens a model someone sent them) and, being on CPU, loads on a machine without CUDA.

:func:`load_model` also accepts a training checkpoint (``checkpoint.pt`` / ``checkpoint_pretrain.pt``):
a dict with a ``"student"`` state dict and a ``"config"`` dict.  It takes the student weights (the
network the paper evaluates, spec 8), so a run interrupted before ``model.pt`` was written can still
be used for prediction.  Checkpoints may carry numpy RNG states; those are unpickled with numpy's
array/dtype reconstructors allow-listed, still under ``weights_only=True``.
"""

from __future__ import annotations

import pickle
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checksums import CHECKSUM_KEY, checksum_problem, non_finite_tensors, tensor_checksum
from .config import Config
from .errors import ModelFileError
from .io_utils import atomic_torch_save

MODEL_FORMAT = "actionpp-model"
MODEL_VERSION = 1

# Prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state_dict)
    changed = True
    while changed and out:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside a DDP/DataParallel wrapper or a torch.compile'd module."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module) and isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)
        ):
            model = inner
            continue
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        return model


def _plain(value: Any) -> Any:
    """Meta values as weights_only-loadable plain data (paths -> str, numpy scalars -> Python)."""
    if value is None:
        return None
    for kind in (bool, int, float, str):  # exact types: str subclasses such as TorchVersion do not load
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return str(value)


def save_model(path: str | Path, model: nn.Module, cfg: Config, **meta: Any) -> Path:
    """Write ``model``'s weights (moved to CPU, DDP ``module.`` prefix stripped) and ``cfg`` atomically."""
    from . import __version__

    state = _strip_prefixes({k: v.detach().to("cpu").clone() for k, v in _unwrap(model).state_dict().items()})
    info = {"actionpp_version": __version__, "torch_version": torch.__version__, "saved_at": time.time()}
    info.update(meta)
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "config": cfg.to_dict(),
        "state_dict": state,
        "class_names": list(cfg.class_names),
        "meta": _plain(info),
    }
    payload[CHECKSUM_KEY] = tensor_checksum(payload)
    return atomic_torch_save(payload, Path(path))


def _safe_numpy_globals() -> list[Any]:
    """numpy reconstructors a checkpoint's RNG state needs; allow-listed for weights_only loading."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    names: list[Any] = [_reconstruct, np.ndarray, np.dtype]
    names += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32", "uint8", "int32", "bool")]
    return names


def _read(path: Path) -> dict[str, Any]:
    """``torch.load`` the file on CPU with weights_only, mapping every failure to ModelFileError."""
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelFileError(f"model file {path} is not a file")
    is_archive = zipfile.is_zipfile(path)  # torch.save's format since 1.6; the legacy one is tried too
    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not is_archive:
            raise ModelFileError(f"{path} is not an ACTION++ model file (not a torch save archive)") from exc
        if not isinstance(exc, pickle.UnpicklingError):
            # corrupt/truncated archives raise RuntimeError, EOFError, ...
            raise ModelFileError(f"{path} could not be read as a model file: {exc}") from exc
        text = str(exc)
        detail = text[text.index("Unsupported global") :].split(" was not", 1)[0] if "Unsupported global" in text else text
        raise ModelFileError(
            f"{path} is not an ACTION++ model file: it holds objects that cannot be loaded safely ({detail})"
        ) from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not an ACTION++ model file (holds a {type(data).__name__})")
    return data


def _extract(path: Path, data: dict[str, Any]) -> tuple[dict[str, Any], Mapping[str, torch.Tensor], str]:
    """(config dict, state dict, kind) of a model file or a training checkpoint."""
    if data.get("format") == MODEL_FORMAT:
        version = data.get("version")
        if not isinstance(version, int) or version > MODEL_VERSION:
            raise ModelFileError(
                f"{path} has model format version {version!r}; this ACTION++ reads version <= {MODEL_VERSION} "
                "(update the extension)"
            )
        config, state, kind = data.get("config"), data.get("state_dict"), "model"
    elif "student" in data and "config" in data:
        config, state, kind = data["config"], data["student"], "checkpoint"
    else:
        raise ModelFileError(
            f"{path} is not an ACTION++ model file (no 'format': '{MODEL_FORMAT}' and not a training "
            "checkpoint with 'student' and 'config')"
        )
    if isinstance(config, Config):  # defensive: a checkpoint that pickled the dataclass itself
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ModelFileError(f"{path}: the stored config is not a dict")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: the stored weights are not a state dict of tensors")
    problem = checksum_problem(data)
    if problem is not None:
        raise ModelFileError(f"{path} is damaged: {problem}")
    bad = non_finite_tensors(state)
    if bad:
        raise ModelFileError(
            f"{path} is damaged or was saved from a diverged run: its {kind} weights hold NaN/Inf values "
            f"({', '.join(bad)}); use another model file")
    return dict(config), state, kind


def _config(path: Path, config: dict[str, Any]) -> Config:
    try:
        return Config.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid stored config ({exc})") from exc


def read_model_config(path: str | Path) -> Config:
    """The config stored in a model file or training checkpoint (no network is built)."""
    path = Path(path)
    config, _, _ = _extract(path, _read(path))
    return _config(path, config)


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` dict of a model file (empty for a training checkpoint)."""
    path = Path(path)
    data = _read(path)
    _extract(path, data)
    meta = data.get("meta") if data.get("format") == MODEL_FORMAT else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    expect_preset: str | None = None,
    expect_classes: int | None = None,
) -> tuple[nn.Module, Config]:
    """Build the network of the stored config, load its weights, and return ``(model.eval() on device, cfg)``.

    Raises :class:`ModelFileError` naming ``path`` when the file is missing, not a model file, made
    for another preset (``expect_preset``) or another number of classes (``expect_classes``), or its
    weights do not fit the network.
    """
    from .device import resolve_device
    from .models import build_network

    path = Path(path)
    config, state, kind = _extract(path, _read(path))
    cfg = _config(path, config)
    if expect_preset is not None and cfg.preset != expect_preset.lower():
        raise ModelFileError(
            f"{path} was trained for preset {cfg.preset!r} ({cfg.dim}D), not {expect_preset!r}"
        )
    if expect_classes is not None and cfg.num_classes != int(expect_classes):
        raise ModelFileError(
            f"{path} predicts {cfg.num_classes} classes ({', '.join(cfg.class_names)}), "
            f"not the {expect_classes} expected"
        )
    model = build_network(cfg)
    try:
        model.load_state_dict(_strip_prefixes(state), strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: the stored {kind} weights do not fit the {cfg.dim}D network: {exc}") from exc
    model.to(resolve_device(device))
    model.eval()
    return model, cfg


def check_init_model(path: str | Path, cfg: Config) -> None:
    """Everything ``train(init_model=path)`` will require of a warm-start model, checked before the run
    folder is touched (so ``--overwrite`` never moves a run aside for a model that is then refused):
    intact (checksum, finite weights), made for ``cfg``'s preset and classes, and its weights fit the
    network ``cfg`` builds (e.g. the same ``base_channels``)."""
    from .models import build_network

    path = Path(path)
    model, _ = load_model(path, device="cpu", expect_preset=cfg.preset, expect_classes=cfg.num_classes)
    try:
        build_network(cfg).load_state_dict(model.state_dict())
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"cannot warm-start from {path}: its network does not match this config ({first})") from exc
