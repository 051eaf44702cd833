"""The ``job.json`` a worker runs: schema, validation and atomic writing (no slicer, no Qt).

A job is machine-written (by ``slicer_bridge.job_folder.write_training_job``, the batch script or the CLI) and read by
``worker.py`` in another process, possibly another interpreter: ``read_job`` therefore checks EVERY field
and reports the first problem as a :class:`~ACTIONPlusPlusLib.errors.DataError` that names the field and
the job file.  All fields are required (``write_job`` always writes them all); unknown fields are
rejected so that a typo does not silently fall back to a default.  Relative paths are resolved against
the job file's folder, so a job folder can be moved as a whole.

Fields::

    version          1
    mode             "train" | "predict" | "continue"
    preset           "la" | "acdc"
    dataset_dir      generic layout (imagesTr/, labelsTr/, imagesUnlabeled/); required for train and
                     continue, optional (null) for predict (its imagesUnlabeled/ are then predicted)
    output_dir       run folder (config.json, checkpoint.pt, model.pt, predictions/)
    predict_dir      null, a folder of images, or a list of image files to predict after training
    model            null or an existing model.pt: required for predict (used as is) and continue
                     (warm start)
    resume           true: continue the interrupted run in output_dir/checkpoint.pt (must exist)
    overrides        {Config key: value}, e.g. {"finetune_iterations": 2000}
    device           "auto" | "cpu" | "cuda" | "cuda:N"
    seed             integer
    write_confidence true: also write a per-voxel confidence map (max class probability) per prediction
    predict_unlabeled true: after training, also predict every image of dataset_dir/imagesUnlabeled/
                     (what to annotate next); false: only predict_dir
    overwrite        optional (default false): start a new run in an output_dir that holds one, moving
                     the old run into output_dir/previous-<time>/; false refuses such a folder unless
                     "resume" is true (the CLI's --overwrite, same rules: training/run_folder.py)
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import PRESETS, preset as make_preset
from .errors import DataError
from .io_utils import atomic_write_text

JOB_VERSION = 1
MODES = ("train", "predict", "continue")
#: fields added after version 1 was published: a job written before them may leave them out
OPTIONAL_FIELDS = {"overwrite": False}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


@dataclass
class TrainingJob:
    mode: str
    preset: str
    output_dir: Path
    dataset_dir: Path | None = None
    predict_dir: Path | list[Path] | None = None
    model: Path | None = None
    resume: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 1337
    write_confidence: bool = False
    predict_unlabeled: bool = True
    overwrite: bool = False
    version: int = JOB_VERSION

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.output_dir) / "checkpoint.pt"

    @property
    def predictions_dir(self) -> Path:
        return Path(self.output_dir) / "predictions"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("output_dir", "dataset_dir", "model"):
            data[key] = None if data[key] is None else str(data[key])
        pd = self.predict_dir
        data["predict_dir"] = None if pd is None else [str(p) for p in pd] if isinstance(pd, list) else str(pd)
        return data

    def predict_files(self) -> list[Path]:
        """The image files named by ``predict_dir`` (a folder's .nrrd/.nii/.nii.gz/.mha, sorted)."""
        pd = self.predict_dir
        if pd is None:
            return []
        if isinstance(pd, list):
            return [Path(p) for p in pd]
        return sorted(p for p in Path(pd).iterdir() if p.is_file() and is_image_file(p))


def stop_file_for(job_path: str | Path) -> Path:
    """The file whose existence asks the worker running ``job_path`` to stop (checkpoint, exit 4).

    The runner writes it on cancel besides sending SIGTERM: it also works where a signal cannot reach
    a Python handler (Windows' TerminateProcess) and across launchers.
    """
    job_path = Path(job_path)
    return job_path.with_name(job_path.stem + ".stop")


_IMAGE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd")


def is_image_file(path: Path) -> bool:
    name = Path(path).name.lower()
    return not name.startswith(".") and name.endswith(_IMAGE_SUFFIXES) and not name.endswith(".seg.nrrd")


def write_job(job: TrainingJob, path: str | Path) -> Path:
    """Write ``job`` atomically (a crash leaves the old file or the new one, never half of one)."""
    path = Path(path)
    data = job.to_dict()
    ordered = {"version": data.pop("version"), **data}
    atomic_write_text(path, json.dumps(ordered, indent=2) + "\n")
    return path


def read_job(path: str | Path) -> TrainingJob:
    """Read and validate ``path``; raise DataError naming the job file and the offending field."""
    path = Path(path)
    where = f"job file {path}"
    if not path.is_file():
        raise DataError(f"{where} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where} cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{where} must hold a JSON object, found {type(data).__name__}")

    names = [f.name for f in fields(TrainingJob)]
    data = {**OPTIONAL_FIELDS, **data}
    missing = [n for n in names if n not in data]
    if missing:
        raise DataError(f"{where}: missing field {missing[0]!r}" + (f" (also {', '.join(missing[1:])})" if missing[1:] else ""))
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise DataError(f"{where}: unknown field {unknown[0]!r}; known fields: {', '.join(names)}")

    def bad(name: str, problem: str) -> DataError:
        return DataError(f"{where}: field {name!r} {problem}")

    def typed(name: str, kinds: tuple[type, ...], label: str, nullable: bool = False) -> Any:
        value = data[name]
        if value is None and nullable:
            return None
        # bool is an int subclass: "seed": true must not pass as an integer
        if isinstance(value, bool) and bool not in kinds:
            raise bad(name, f"must be {label}, got {json.dumps(value)}")
        if not isinstance(value, kinds):
            raise bad(name, f"must be {label}, got {json.dumps(value)}")
        return value

    base = path.parent

    def as_path(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)

    version = typed("version", (int,), "an integer")
    if version != JOB_VERSION:
        raise bad("version", f"is {version}; this worker reads version {JOB_VERSION}")
    mode = typed("mode", (str,), "a string")
    if mode not in MODES:
        raise bad("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    preset = typed("preset", (str,), "a string")
    if preset not in PRESETS:
        raise bad("preset", f"must be one of {', '.join(PRESETS)}, got {preset!r}")

    output_dir = typed("output_dir", (str,), "a folder path (string)")
    if not output_dir.strip():
        raise bad("output_dir", "is empty")
    output = as_path(output_dir)
    if output.exists() and not output.is_dir():
        raise bad("output_dir", f"is not a folder: {output}")

    dataset_dir = typed("dataset_dir", (str,), "a folder path (string) or null", nullable=True)
    dataset = None
    if dataset_dir is not None:
        dataset = as_path(dataset_dir)
        if not dataset.is_dir():
            raise bad("dataset_dir", f"names a folder that does not exist: {dataset}")
    elif mode in ("train", "continue"):
        raise bad("dataset_dir", f"is required for mode {mode!r} (the labeled training data)")

    pd_value = data["predict_dir"]
    predict_dir: Path | list[Path] | None
    if pd_value is None:
        predict_dir = None
    elif isinstance(pd_value, str):
        predict_dir = as_path(pd_value)
        if not predict_dir.is_dir():
            raise bad("predict_dir", f"names a folder that does not exist: {predict_dir}")
    elif isinstance(pd_value, list):
        predict_dir = []
        for i, item in enumerate(pd_value):
            if not isinstance(item, str):
                raise bad("predict_dir", f"item {i} must be a file path (string), got {json.dumps(item)}")
            p = as_path(item)
            if not p.is_file():
                raise bad("predict_dir", f"item {i} names a file that does not exist: {p}")
            predict_dir.append(p)
    else:
        raise bad("predict_dir", f"must be null, a folder path or a list of file paths, got {json.dumps(pd_value)}")

    model_value = typed("model", (str,), "a model file path (string) or null", nullable=True)
    model = None
    if model_value is not None:
        model = as_path(model_value)
        if not model.is_file():
            raise bad("model", f"names a file that does not exist: {model}")
    elif mode in ("predict", "continue"):
        raise bad("model", f"is required for mode {mode!r} (an existing model.pt)")
    if mode == "predict" and dataset is None and predict_dir is None:
        raise bad("predict_dir", "is required for mode 'predict' when dataset_dir is null (nothing to predict)")

    resume = typed("resume", (bool,), "true or false")
    if resume:
        if mode == "predict":
            raise bad("resume", "must be false for mode 'predict' (nothing is trained)")
        checkpoint = output / "checkpoint.pt"
        if not checkpoint.is_file():
            raise bad("resume", f"is true but there is no checkpoint to resume from: {checkpoint}")

    overrides = typed("overrides", (dict,), "an object of Config keys and values")
    from .config_checks import config_problems, override_problem

    try:
        problems = config_problems(make_preset(preset, **overrides))  # every value, as the CLI checks them
    except (ValueError, TypeError) as exc:
        raise bad("overrides", f"is invalid: {override_problem(preset, overrides, exc)}") from exc
    if problems:
        raise bad("overrides", f"is invalid: {problems[0]}")

    device = typed("device", (str,), "a string")
    if not _DEVICE_RE.match(device):
        raise bad("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    seed = typed("seed", (int,), "an integer")
    write_confidence = typed("write_confidence", (bool,), "true or false")
    predict_unlabeled = typed("predict_unlabeled", (bool,), "true or false")
    overwrite = typed("overwrite", (bool,), "true or false")
    if overwrite and resume:
        raise bad("overwrite", "and 'resume' are both true: choose one")

    return TrainingJob(
        version=version,
        mode=mode,
        preset=preset,
        output_dir=output,
        dataset_dir=dataset,
        predict_dir=predict_dir,
        model=model,
        resume=resume,
        overrides=dict(overrides),
        device=device,
        seed=seed,
        write_confidence=write_confidence,
        predict_unlabeled=predict_unlabeled,
        overwrite=overwrite,
    )
