"""Evaluate a model on labeled cases: predictions + medpy metrics, shared by the CLI, the demo and the
benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .data.types import Case
from .inference import predict_case
from .metrics import case_metrics, summarize


@dataclass
class Evaluation:
    summary: dict[str, Any]
    per_case: list[dict[str, Any]]  # {"case": id, "metrics": {class: {...}}}
    predictions: dict[str, Any]  # case id -> labels (z, y, x)


def evaluate_cases(model: torch.nn.Module, cfg, cases: list[Case], device: torch.device | str | None = None,
                   normalize_input: bool = False, keep_predictions: bool = False,
                   on_case: Callable[[int, int, str], None] | None = None) -> Evaluation:
    per_case, metrics, predictions = [], [], {}
    for index, case in enumerate(cases):
        if case.label is None:
            raise ValueError(f"case {case.id} has no label: cannot evaluate it")
        result = predict_case(model, case, cfg, device=device, normalize_input=normalize_input)
        m = case_metrics(result.labels, case.label, cfg.num_classes, spacing=case.spacing, class_names=cfg.class_names)
        metrics.append(m)
        per_case.append({"case": case.id, "metrics": m})
        if keep_predictions:
            predictions[case.id] = result.labels
        if on_case is not None:
            on_case(index + 1, len(cases), case.id)
    return Evaluation(summarize(metrics, cfg.class_names), per_case, predictions)
