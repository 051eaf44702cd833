"""Per-class segmentation metrics of the paper's protocol (spec 8): Dice, Jaccard, HD95, ASD via medpy.

Distances are in voxel-index units (medpy without ``voxelspacing``), as the paper reports them; with a
``spacing`` the same distances are also given in mm (``hd95_mm``, ``asd_mm``).  Arrays are in
SimpleITK order (z, y, x) while spacing is (x, y, z), so the spacing is reversed before it is handed
to medpy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from medpy.metric import binary as medpy_binary

from .errors import DataError

METRICS = ("dice", "jaccard", "hd95", "asd")
MM_METRICS = ("hd95_mm", "asd_mm")

#: Empty-mask convention (spec 8.1, the ACTION evaluation script); print it under result tables.
EMPTY_CONVENTION = (
    "Empty masks (ACTION protocol, spec 8.1): prediction and ground truth both non-empty -> medpy "
    "dc/jc/hd95/asd; prediction non-empty and ground truth empty -> Dice 1, Jaccard 1, HD95 0, ASD 0; "
    "prediction empty -> 0, 0, 0, 0 (also when the ground truth is empty). HD95/ASD in voxel units "
    "(no spacing) unless marked mm."
)


def _foreground_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    """Names of classes 1..C-1; ``class_names`` may include the background (length C) or not (C-1)."""
    if class_names is None:
        return [f"class_{c}" for c in range(1, num_classes)]
    names = list(class_names)
    if len(names) == num_classes:
        return names[1:]
    if len(names) == num_classes - 1:
        return names
    raise ValueError(f"class_names {names} do not match num_classes={num_classes}")


def _voxelspacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """(x, y, z) spacing -> medpy's per-array-axis spacing for a (z, y, x) / (y, x) array."""
    values = [float(s) for s in spacing]
    if len(values) < ndim:
        raise ValueError(f"spacing {tuple(values)} has fewer than {ndim} entries")
    return tuple(reversed(values[:ndim]))


def binary_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Metrics of one binary mask pair with the empty-mask convention of :data:`EMPTY_CONVENTION`."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    pred_any, gt_any = bool(pred.any()), bool(gt.any())
    if pred_any and gt_any:
        result = {
            "dice": float(medpy_binary.dc(pred, gt)),
            "jaccard": float(medpy_binary.jc(pred, gt)),
            "hd95": float(medpy_binary.hd95(pred, gt)),
            "asd": float(medpy_binary.asd(pred, gt)),
        }
        if spacing is not None:
            voxelspacing = _voxelspacing(spacing, pred.ndim)
            result["hd95_mm"] = float(medpy_binary.hd95(pred, gt, voxelspacing=voxelspacing))
            result["asd_mm"] = float(medpy_binary.asd(pred, gt, voxelspacing=voxelspacing))
    elif pred_any:  # ground truth empty
        result = {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
        if spacing is not None:
            result.update(hd95_mm=0.0, asd_mm=0.0)
    else:  # prediction empty
        result = {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
        if spacing is not None:
            result.update(hd95_mm=0.0, asd_mm=0.0)
    result["pred_empty"] = not pred_any
    result["gt_empty"] = not gt_any
    return result


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per foreground class c = 1..C-1: ``{name: {dice, jaccard, hd95, asd[, hd95_mm, asd_mm],
    pred_empty, gt_empty}}`` on the binary masks ``pred == c`` and ``gt == c``.

    ``pred``/``gt`` are label maps of the same shape in (z, y, x) order; ``spacing`` is (x, y, z) mm.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    names = _foreground_names(num_classes, class_names)
    return {name: binary_metrics(pred == c, gt == c, spacing) for c, name in enumerate(names, start=1)}


def summarize(per_case: Sequence[dict[str, dict[str, Any]]], class_names: Sequence[str]) -> dict[str, Any]:
    """Mean (and std) of each metric per class over the cases, and the mean over classes.

    ``class_names`` are the keys of each case's dict (foreground names; a leading "background" entry
    that no case has is ignored).  Returns ``{"num_cases", "metrics", "per_class": {name: {metric:
    mean}}, "per_class_std": {...}, "mean": {metric: mean over classes}}``; mm metrics are included
    only when every case has them.
    """
    if not per_case:
        raise ValueError("no cases to summarize")
    names = [n for n in class_names if all(n in case for case in per_case)]
    if not names:
        raise ValueError(f"none of the classes {list(class_names)} appears in every case")
    metrics = list(METRICS)
    if all(m in case[n] for case in per_case for n in names for m in MM_METRICS):
        metrics += list(MM_METRICS)
    per_class: dict[str, dict[str, float]] = {}
    per_class_std: dict[str, dict[str, float]] = {}
    for name in names:
        per_class[name] = {}
        per_class_std[name] = {}
        for metric in metrics:
            values = np.array([case[name][metric] for case in per_case], dtype=np.float64)
            per_class[name][metric] = float(values.mean())
            per_class_std[name][metric] = float(values.std())
    mean = {metric: float(np.mean([per_class[n][metric] for n in names])) for metric in metrics}
    return {
        "num_cases": len(per_case),
        "metrics": metrics,
        "classes": names,
        "per_class": per_class,
        "per_class_std": per_class_std,
        "mean": mean,
    }


_ROWS = (
    ("dice", "DSC (%)", 100.0),
    ("jaccard", "Jaccard (%)", 100.0),
    ("hd95", "95HD (voxel)", 1.0),
    ("asd", "ASD (voxel)", 1.0),
    ("hd95_mm", "95HD (mm)", 1.0),
    ("asd_mm", "ASD (mm)", 1.0),
)


def format_table(summary: dict[str, Any], class_names: Sequence[str], title: str) -> str:
    """Plain-text table in the paper's form: one row per metric, one column per class and the average.

    DSC and Jaccard in %, distances in voxels (and mm when available); the empty-mask convention
    and the number of cases are printed underneath.
    """
    names = [n for n in class_names if n in summary["per_class"]]
    header = ["Metric", *names, "Avg"]
    rows = [header]
    for key, label, scale in _ROWS:
        if key not in summary["metrics"]:
            continue
        cells = [label]
        for name in names:
            cells.append(_fmt(summary["per_class"][name][key] * scale))
        cells.append(_fmt(summary["mean"][key] * scale))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [title, ""]
    for index, row in enumerate(rows):
        line = "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        lines.append(line.rstrip())
        if index == 0:
            lines.append("-" * len(line))
    lines.append("")
    lines.append(f"n = {summary['num_cases']} cases; mean over cases, then over classes.")
    lines.append(EMPTY_CONVENTION)
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2f}"
