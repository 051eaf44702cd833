"""Every option value checked when the configuration is built, before any file or folder is touched.

``Config.validate`` (config.py) checks the choices and the relations between fields; this module adds
what a run needs of each single value: its type (the field's default's type: an int field takes no
``1.5``, a list field no number), finite numbers, ranges (``lr > 0``, ``ema_decay`` in [0, 1), batch
sizes and ``checkpoint_every`` >= 1, ...) and patch sizes the networks can take (> 0 and divisible by
their 16x downsampling).  ``check_config`` raises a :class:`DataError` with one line that names the
option, its value and what it must be: the CLI, the worker and the batch script exit 2 with it before
any run folder is opened (so ``--overwrite`` never moves an old run aside for a run that cannot start).

Fields added to ``Config`` later are type-checked (and finite-checked) without an entry here; their
ranges go in the tables below.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from .errors import DataError

#: the networks' total downsampling (2D U-Net: 4 max-poolings; 3D V-Net: 4 stride-2 convolutions)
DOWNSAMPLING = 16

_AT_LEAST_1 = (
    "base_channels", "latent_dim", "local_pool", "local_window", "local_stride", "representation_dim",
    "isd_queue_size", "anco_queries", "anco_negatives", "saacl_anchors_per_class", "saacl_queue_size",
    "pretrain_labeled_batch", "pretrain_unlabeled_batch", "finetune_labeled_batch", "finetune_unlabeled_batch",
    "log_every", "checkpoint_every",
)
_AT_LEAST_0 = (
    "local_window_depth", "local_stride_depth", "num_threads", "export_bn_batches", "budget_iterations",
    "budget_pretrain_full", "pretrain_warmup_iterations", "pretrain_joint_iterations", "finetune_iterations",
    "weight_decay", "grad_clip", "poly_power", "alignment_rate", "alignment_max_offset", "lambda_a",
    "ema_horizon_fraction",
)
_POSITIVE = ("lr", "tau_min", "tau_max", "warmup_tau_student", "warmup_tau_teacher", "ats_periods")
_UNIT_OPEN = ("ema_decay", "momentum", "alignment_momentum", "class_stats_momentum", "reliability_momentum",
              "jitter_strength", "strong_jitter_strength")  # [0, 1)
_UNIT_CLOSED = ("centroid_momentum", "strong_threshold", "weak_threshold", "pseudo_threshold",
                "pseudo_threshold_floor", "mix_share", "rampup_fraction", "budget_warmup_fraction",
                "budget_joint_fraction")  # [0, 1]
_WHY = {
    "lr": "the SGD learning rate",
    "ema_decay": "the teacher's EMA decay; 1 would never update the teacher",
    "checkpoint_every": "iterations between checkpoints",
    "log_every": "iterations between progress reports",
    "momentum": "SGD momentum",
}


def _problem(name: str, value: Any, default: Any) -> str | None:
    """What is wrong with one field's value (None when it is fine)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
    elif isinstance(default, str):
        if not isinstance(value, str):
            return "must be a text"
    elif isinstance(default, list):
        if not isinstance(value, (list, tuple)) or not value:
            return "must be a non-empty list"
        if default and isinstance(default[0], int) and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "must be a list of whole numbers"
        if default and isinstance(default[0], str) and not all(isinstance(v, str) and v.strip() for v in value):
            return "must be a list of non-empty names"
        return None
    else:
        return None
    if name in _AT_LEAST_1 and value < 1:
        return "must be at least 1"
    if name in _AT_LEAST_0 and value < 0:
        return "must be >= 0"
    if name in _POSITIVE and not value > 0:
        return "must be > 0"
    if name in _UNIT_OPEN and not 0 <= value < 1:
        return "must be in [0, 1)"
    if name in _UNIT_CLOSED and not 0 <= value <= 1:
        return "must be in [0, 1]"
    if name == "num_classes" and value < 2:
        return "must be at least 2 (background and one structure)"
    if name == "representation_kernel" and value not in (1, 3):
        return "must be 1 or 3"
    if name == "seed" and not 0 <= value < 2**63:
        return "must be in 0 .. 2**63-1"
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, str) else str(value)


def config_problems(cfg: Any) -> list[str]:
    """Every problem of ``cfg``'s values, one line each (empty when the configuration can run)."""
    from .config import Config

    defaults = Config()
    problems: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        problem = _problem(f.name, value, getattr(defaults, f.name, None))
        if problem is not None:
            why = f" ({_WHY[f.name]})" if f.name in _WHY else ""
            problems.append(f"{f.name}={_fmt(value)}: {problem}{why}")
    patch = getattr(cfg, "patch_size", None)
    if not any(p.startswith("patch_size=") for p in problems) and isinstance(patch, (list, tuple)):
        if any(p < 1 for p in patch):
            problems.append(f"patch_size={_fmt(patch)}: every size must be > 0")
        elif any(p % DOWNSAMPLING for p in patch):
            fitting = ",".join(str(max(DOWNSAMPLING, round(p / DOWNSAMPLING) * DOWNSAMPLING)) for p in patch)
            problems.append(f"patch_size={_fmt(patch)}: every size must be a multiple of {DOWNSAMPLING} (the "
                            f"network halves it 4 times), e.g. {fitting}")
        elif len(patch) != getattr(cfg, "dim", len(patch)):
            problems.append(f"patch_size={_fmt(patch)}: needs {cfg.dim} sizes for the {cfg.dim}D preset")
    if not problems:
        try:
            cfg.validate()  # the relations between fields (config.py)
        except (TypeError, ValueError) as exc:
            problems.append(str(exc))
    return problems


def check_config(cfg: Any, where: str = "invalid configuration") -> Any:
    """``cfg`` when every value can run; else a DataError with one line (the first problem, and how
    many more there are)."""
    problems = config_problems(cfg)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:3])})" if len(problems) > 1 else ""
        raise DataError(f"{where}: {problems[0]}{more}")
    return cfg


def override_problem(preset_name: str, overrides: dict[str, Any], exc: Exception) -> str:
    """The override that made building the config fail, in one line (``patch_size=32: must be a
    non-empty list``, ``unknown config key 'lrr' (did you mean lr?)``); ``exc``'s text otherwise."""
    import difflib

    from .config import Config, preset

    base, defaults = preset(preset_name), Config()
    known = set(base.to_dict())
    for key, value in overrides.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=3)
            return f"unknown config key {key!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
        try:
            base.replace(**{key: value})
        except (TypeError, ValueError) as single:
            typed = _problem(key, value, getattr(defaults, key)) if not isinstance(value, str) else None
            return f"{key}={_fmt(value)}: {typed or single}"
    return str(exc)
