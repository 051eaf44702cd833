"""What the module's Logic does with the scene, without Qt: prepare a training or prediction job from
picked nodes (selection checks, the disk-space check, the job folder) and bring a job's predictions
back as new nodes.  Each comes in two forms: ``*_steps`` (the checks at once, then a generator that
writes or loads one volume per step, for the panel's timer: see ``panel.sliced_task``) and the
one-call form that runs all the steps (scripts, the self-test, the tests).

``ACTIONPlusPlusLogic`` calls these with ``slicer.mrmlScene``; the tests call them with a
``vtkMRMLScene`` of slicer-core, so the Logic's work is tested without the application.  The user's
nodes are only read: every problem is raised before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import node_selection
from .job_folder import Steps, iter_training_job, run_steps
from .panel import job_options, model_cards, output_folder
from .results import PredictionImport, iter_predictions
from .segmentations import check_mapping

Progress = Callable[[int, int, str], None]


def prepare_training_job(
    scene: Any,
    pairs: Sequence[tuple[Any, Any]],
    unlabeled: Sequence[Any],
    settings: job_options.PanelSettings,
    predict_unlabeled: bool = True,
    progress: Progress | None = None,
) -> tuple[Path, job_options.RunPlan]:
    """Check the selection and the disk, then export the nodes as a job folder; returns (job.json, plan).
    ``plan.warnings``: one message per labeled case that lacks some of the classes (shown by the panel).

    Raises ``ValueError`` (selection, output folder) or ``OSError`` (disk space) with the panel's message.
    """
    plan, steps = training_job_steps(scene, pairs, unlabeled, settings, predict_unlabeled)
    return Path(run_steps(steps, progress)), plan


def training_job_steps(
    scene: Any,
    pairs: Sequence[tuple[Any, Any]],
    unlabeled: Sequence[Any],
    settings: job_options.PanelSettings,
    predict_unlabeled: bool = True,
) -> tuple[job_options.RunPlan, Steps]:
    """:func:`prepare_training_job`'s checks now (nothing written when they fail), then the plan and the
    steps that write the job folder, one volume each (``plan.warnings`` fills as the cases are built)."""
    check_mapping(settings.label_mapping)
    problems = node_selection.node_selection_problems(pairs, unlabeled, settings.preset, settings.label_mapping)
    if problems:
        raise ValueError("\n".join(problems))
    plan = job_options.plan_run(settings)
    voxels = node_selection.voxel_count([v for v, _s in pairs]) + node_selection.voxel_count(unlabeled)
    predicted = node_selection.voxel_count(unlabeled) if predict_unlabeled else 0
    required = output_folder.required_disk_bytes(voxels, predicted, confidence=settings.confidence)
    problem = output_folder.free_disk_message(plan.job_dir, required)
    if problem:
        raise OSError(problem)
    options = job_options.build_job_options(settings, plan)
    return plan, iter_training_job(
        scene, pairs, unlabeled, [], plan.job_dir, settings.preset,
        output_dir=plan.output_dir, predict_unlabeled=predict_unlabeled,
        label_mapping=settings.label_mapping, warnings=plan.warnings, **options,
    )


def prepare_prediction_job(scene: Any, volumes: Sequence[Any], model_path: str,
                           settings: job_options.PanelSettings) -> Path:
    """Export ``volumes`` as one predict job for an existing model file; returns job.json.  The preset is
    the model's (``panel.model_cards``: its run's config.json or job.json), the panel's only when the
    model's files do not say."""
    return Path(run_steps(prediction_job_steps(scene, volumes, model_path, settings)))


def prediction_job_steps(scene: Any, volumes: Sequence[Any], model_path: str,
                         settings: job_options.PanelSettings) -> Steps:
    """:func:`prepare_prediction_job`'s checks now, then the steps that write the job, one volume each."""
    volumes = [v for v in volumes if v is not None]
    if not volumes:
        raise ValueError("Tick the volumes to segment (one job predicts them all).")
    if not model_path or model_path == "." or not os.path.isfile(model_path):
        raise ValueError("Pick an existing model file (model.pt of a training run).")
    problem = output_folder.output_root_problem(settings.output_root)
    if problem:
        raise ValueError(problem)
    job_dir = output_folder.new_run_folder(settings.output_root, prefix="predict")
    required = output_folder.required_disk_bytes(2 * node_selection.voxel_count(volumes), confidence=settings.confidence)
    problem = output_folder.free_disk_message(job_dir, required)
    if problem:
        raise OSError(problem)
    options = job_options.build_job_options(settings)
    options.update(mode="predict", model=model_path, resume=False)
    preset = model_cards.model_preset(model_path) or settings.preset
    return iter_training_job(scene, [], [], volumes, job_dir, preset, **options)


def load_results(scene: Any, job_dir: str | Path, events: Sequence[dict] | None = None,
                 with_confidence: bool = False, model: str | None = None,
                 update_in_place: bool = True) -> list[PredictionImport]:
    """Add the job's predictions as segmentation nodes (and confidence volumes), each marked with the
    volume it was made on, its preset and ``model``.  With ``update_in_place`` a volume's earlier
    prediction of the same preset is updated instead of piling up "<volume> ACTION++_1" nodes, unless the
    user renamed or kept it (``node_selection.previous_prediction``)."""
    return run_steps(results_steps(scene, job_dir, events, with_confidence, model, update_in_place))


def results_steps(scene: Any, job_dir: str | Path, events: Sequence[dict] | None = None,
                  with_confidence: bool = False, model: str | None = None, update_in_place: bool = True) -> Steps:
    """:func:`load_results` one prediction per step (each node marked as it is made); returns the imports."""
    previous = node_selection.previous_prediction if update_in_place else None
    preset = _job_preset(job_dir)
    return iter_predictions(scene, job_dir, events, with_confidence=with_confidence, previous=previous,
                            on_import=lambda i: node_selection.mark_sources([i], preset=preset, model=model))


def _job_preset(job_dir: str | Path) -> str | None:
    import json

    try:
        return json.loads((Path(job_dir) / "nodes.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        return None
