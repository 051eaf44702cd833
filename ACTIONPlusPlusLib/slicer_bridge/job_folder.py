"""Scene -> job folder: the selected nodes as a generic dataset, ``job.json`` and ``nodes.json``.

``nodes.json`` records which file came from which node (ID and name), so that :mod:`.results` puts each
prediction back on the right volume.  The volumes are written one at a time (one Case in memory, one
step of :func:`iter_training_job` each) into a staging folder, and move into the job folder only when
all are written: a bad node, a full disk or a cancel part-way leaves the job folder as it was.  The job
is validated with the reader the worker uses.  Nothing in the scene is modified.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Sequence

from ..errors import DataError
from ..jobs import TrainingJob, write_job
from . import terminology
from .geometry import node_label
from .segmentations import check_mapping, labeled_case_from_nodes, missing_class_warning
from .volumes import case_from_volume_node, safe_id

NODES_FILE = "nodes.json"
DATASET_FOLDER = "dataset"
PREDICT_FOLDER = "predict"
RUN_FOLDER = "run"
STAGING_PREFIX = ".writing-"  # a job's volumes are written here first, moved into place when all are written


@dataclass
class _Entry:
    role: str
    case_id: str
    image: str
    volume_node_id: str
    volume_node_name: str
    label: str | None = None
    label_node_id: str | None = None
    label_node_name: str | None = None


def _discard(job_dir: Path, staging: Path) -> None:
    """Remove the staging folder, and the job folder when that leaves it empty (it was made for this job)."""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        job_dir.rmdir()
    except OSError:  # not empty: an earlier run's folder (resume), kept as it was
        pass


def _previous_files(job_dir: Path) -> list[Path]:
    mapping = job_dir / NODES_FILE
    if not mapping.is_file():
        return []
    try:
        data = json.loads(mapping.read_text())
        out = []
        for entry in data.get("entries", []):
            for key in ("image", "label"):
                if entry.get(key):
                    out.append(job_dir / entry[key])
        return out
    except (OSError, ValueError, AttributeError):
        return []


Progress = Callable[[int, int, str], None]
Steps = Generator[tuple[int, int, str], None, Any]  # yields (done, total, name); returns its result


def run_steps(steps: Steps, progress: Progress | None = None) -> Any:
    """Run ``steps`` to the end in one go (scripts, tests), ``progress`` told of each; its result."""
    while True:
        try:
            done, total, name = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total, name)


def iter_training_job(
    scene: Any,
    labeled_pairs: Sequence[tuple[Any, Any]],
    unlabeled_volume_nodes: Iterable[Any],
    predict_volume_nodes: Iterable[Any],
    job_dir: str | Path,
    preset: str,
    *,
    mode: str = "train",
    output_dir: str | Path | None = None,
    model: str | Path | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    seed: int = 1337,
    write_confidence: bool = False,
    predict_unlabeled: bool = True,
    file_suffix: str = ".nrrd",
    overwrite: bool = False,
    label_mapping: str = "name",
    warnings: list[str] | None = None,
) -> Steps:
    """Export nodes as a generic dataset + job.json + nodes.json in ``job_dir``, one volume per step: a
    generator that yields ``(done, total, name)`` before each volume is written and returns job.json's
    path (the panel runs one step per timer tick, so its window never freezes; :func:`write_training_job`
    runs them all).  Closing it part-way (the panel's Cancel) removes the files it wrote and writes no
    job.json.

    Layout: ``dataset/imagesTr/<id><suffix>`` with ``dataset/labelsTr/<id><suffix>`` (same file names),
    ``dataset/imagesUnlabeled/``, ``predict/`` for the extra volumes to predict, output in ``run/``
    unless ``output_dir`` is given.  ``nodes.json`` records which file came from which node (ID and
    name) so :func:`load_predictions` puts each result on the right volume.  Files are written with
    SimpleITK (geometry kept, atomic renames).  Nothing in the scene is modified.

    ``predict_unlabeled`` (default True): the worker also predicts every unlabeled volume after training.
    A volume listed both as unlabeled and for prediction is written (and predicted) once; a labeled
    volume may also be listed for prediction.

    ``label_mapping``: segments matched to classes by "name" (default) or by label "value"
    (:mod:`.segmentations`).  ``warnings`` (a list, when given) receives one message per labeled case
    that lacks some of the classes (partial annotations: those voxels train as background); the
    messages are also kept in ``nodes.json``.

    DataError: no labeled pair (train/continue), a volume listed twice, an unlabeled volume that is
    also labeled, a pair whose extents do not overlap (naming both nodes), a label without the
    preset's classes, 2D/4D volumes, a job folder that is not writable.
    """
    from ..data.imageio import write_image, write_label
    from ..io_utils import atomic_write_text, check_writable_dir

    preset = preset.lower()
    terminology.classes(preset)
    check_mapping(label_mapping)
    if file_suffix not in (".nrrd", ".nii.gz", ".nii", ".mha"):
        raise DataError(f"unsupported file suffix {file_suffix!r}; use .nrrd or .nii.gz")
    labeled_pairs = list(labeled_pairs)
    unlabeled = [n for n in unlabeled_volume_nodes if n is not None]
    predict = []
    for node in predict_volume_nodes:
        if node is None or any(node.GetID() == p.GetID() for p in predict):
            continue
        if predict_unlabeled and any(node.GetID() == u.GetID() for u in unlabeled):
            continue  # predicted as an unlabeled volume anyway
        predict.append(node)
    if mode in ("train", "continue") and not labeled_pairs:
        raise DataError("no labeled case: add at least one (volume, segmentation) pair")
    if mode == "predict" and not predict and not unlabeled:
        raise DataError("nothing to predict: pick at least one volume")

    labeled_ids: dict[str, Any] = {}
    for volume, label in labeled_pairs:
        if volume is None or label is None:
            raise DataError("a labeled pair is missing its volume or its segmentation")
        if volume.GetID() in labeled_ids:
            raise DataError(f"volume {node_label(volume)} is listed twice as a labeled case")
        labeled_ids[volume.GetID()] = volume
    seen_unlabeled: set[str] = set()
    for volume in unlabeled:
        if volume.GetID() in labeled_ids:
            raise DataError(
                f"volume {node_label(volume)} is both labeled and unlabeled; remove it from the unlabeled list"
            )
        if volume.GetID() in seen_unlabeled:
            raise DataError(f"volume {node_label(volume)} is listed twice as unlabeled")
        seen_unlabeled.add(volume.GetID())

    job_dir = Path(job_dir)
    try:
        check_writable_dir(job_dir)
    except PermissionError as exc:
        raise DataError(str(exc)) from exc
    allow_single = preset == "acdc"

    # One volume at a time (a single Case in memory): built, checked and written into a staging folder.
    # Only once every volume is there do they replace the job's files, so a bad node, a full disk or a
    # cancel part-way leaves the job folder as it was (a new one is removed again).
    used: set[str] = set()

    def unique_id(node: Any) -> str:
        base = safe_id(node.GetName())
        candidate, n = base, 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{base}_{n}"
        used.add(candidate.lower())
        return candidate

    pending = [("labeled", v, l, unique_id(v), f"{DATASET_FOLDER}/imagesTr") for v, l in labeled_pairs]
    pending += [("unlabeled", v, None, unique_id(v), f"{DATASET_FOLDER}/imagesUnlabeled") for v in unlabeled]
    pending += [("predict", v, None, unique_id(v), PREDICT_FOLDER) for v in predict]
    staging = job_dir / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    entries: list[_Entry] = []
    case_warnings: list[str] = []
    try:
        for role, volume, label, case_id, folder in pending:
            yield len(entries), len(pending), volume.GetName()
            entry = _Entry(role, case_id, f"{folder}/{case_id}{file_suffix}", volume.GetID(), volume.GetName())
            if label is None:
                case = case_from_volume_node(volume, case_id, allow_single_slice=allow_single)
            else:
                case = labeled_case_from_nodes(volume, label, preset, case_id, label_mapping)
                case_warnings += [w for w in [missing_class_warning(case.label, preset, volume, label)] if w]
                entry.label, entry.label_node_id, entry.label_node_name = (
                    f"{DATASET_FOLDER}/labelsTr/{case_id}{file_suffix}", label.GetID(), label.GetName())
                write_label(staging / entry.label, case.label, case)
            write_image(staging / entry.image, case.image, case)
            entries.append(entry)
            del case
        yield len(pending), len(pending), ""
        for stale in _previous_files(job_dir):
            stale.unlink(missing_ok=True)
        for path in (p for e in entries for p in (e.image, e.label) if p):
            (job_dir / path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / path, job_dir / path)
    except OSError as exc:
        _discard(job_dir, staging)
        raise DataError(f"cannot write the training data into {job_dir}: {exc.strerror or exc}") from exc
    except BaseException:  # a bad node (DataError), a cancel (GeneratorExit): nothing of this job is kept
        _discard(job_dir, staging)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    if warnings is not None:
        warnings.extend(case_warnings)
    dataset = job_dir / DATASET_FOLDER

    has_dataset = bool(labeled_pairs)
    # without labeled cases (a predict-only job) the unlabeled volumes are just more volumes to predict
    predict_files = [job_dir / e.image for e in entries
                     if e.role == "predict" or (not has_dataset and predict_unlabeled and e.role == "unlabeled")]
    job = TrainingJob(
        mode=mode,
        preset=preset,
        output_dir=Path(output_dir) if output_dir is not None else job_dir / RUN_FOLDER,
        dataset_dir=dataset if has_dataset else None,
        predict_dir=predict_files or None,
        model=Path(model) if model is not None else None,
        resume=bool(resume),
        overrides=dict(overrides or {}),
        device=device,
        seed=int(seed),
        write_confidence=bool(write_confidence),
        predict_unlabeled=bool(predict_unlabeled),
        overwrite=bool(overwrite),
    )
    mapping = {
        "version": 1,
        "preset": preset,
        "entries": [entry.__dict__ for entry in entries],
        "label_mapping": label_mapping,
        "warnings": case_warnings,
    }
    atomic_write_text(job_dir / NODES_FILE, json.dumps(mapping, indent=2) + "\n")
    job_path = write_job(job, job_dir / "job.json")
    # validate what was written with the reader the worker uses: a bad option fails here, in the GUI
    from ..jobs import read_job

    try:
        read_job(job_path)
    except DataError:
        job_path.unlink(missing_ok=True)  # never leave a job behind that the worker would reject
        raise
    return job_path


def write_training_job(*args: Any, progress: Progress | None = None, **kwargs: Any) -> Path:
    """:func:`iter_training_job` in one go (same arguments, plus ``progress``): ``progress(done, total,
    name)`` is told before each volume is written.  Returns job.json's path."""
    return run_steps(iter_training_job(*args, **kwargs), progress)


# What inspect shows (the panel's api_versions, the tests): iter_training_job's parameters, spelled out
# once there, plus ``progress``; exactly the arguments the call above accepts.
_steps_signature = inspect.signature(iter_training_job)
write_training_job.__signature__ = _steps_signature.replace(  # type: ignore[attr-defined]
    parameters=[*_steps_signature.parameters.values(),
                inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Progress | None")],
    return_annotation="Path",
)
del _steps_signature
