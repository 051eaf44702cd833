"""The panel's model list: every trained ``model.pt`` under the output folder with its card (preset,
date, labeled/unlabeled counts, budget, device, validation Dice when known, path), and what the user may
do with one (rename, delete, open its folder, pick it for prediction or as a warm start).

A card is read from the files a run leaves beside its model, never from ``model.pt`` itself (that needs
torch): the run's ``config.json`` (preset, budget, device), the job folder's ``job.json`` and
``nodes.json`` (device asked for, labeled and unlabeled cases), an ``evaluation.json`` written by
``actionpp evaluate --json`` (mean Dice), and ``model_card.json``, the only file this module writes:
the user's name for the model and what the panel learnt when the run finished (the device it ran on).

Deleting removes that model's own run folder and nothing else: a direct child of the listed output
folder, not a link, holding the model, with no training running in it. It is first renamed (one atomic
step, so a half-deleted run never looks like a model) and then removed.

Pure Python for the Slicer panel: no Qt, no slicer, no torch, so it is tested without Slicer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .model_cards import CONFIG_NAME, JOB_NAME

MODEL_NAME = "model.pt"
CARD_NAME = "model_card.json"  # beside model.pt: the user's name for it, facts the panel recorded
EVALUATION_NAME = "evaluation.json"  # ``actionpp evaluate --json RUN/evaluation.json``
NODES_NAME = "nodes.json"  # job_folder.NODES_FILE (not imported: that module imports slicer)
RUN_OUTPUT = "run"  # job_options.RUN_OUTPUT: a panel job folder's output sub-folder
LOCK_NAME = ".actionpp.lock"  # training.run_folder.LOCK_NAME: held while a training writes the folder
DELETING_PREFIX = ".deleting-"
MAX_NAME_LENGTH = 80


@dataclass
class ModelCard:
    """What the panel shows of one model (None: not known from its files)."""

    path: Path  # the model.pt
    name: str
    preset: Optional[str] = None
    modified: float = 0.0  # model.pt's modification time (epoch seconds)
    labeled: Optional[int] = None
    unlabeled: Optional[int] = None
    budget_iterations: Optional[int] = None
    device: Optional[str] = None
    validation_dice: Optional[float] = None  # mean over classes, 0-1
    run_folder: Optional[Path] = None  # what "Delete" removes; None: the model is not in a run folder of the list

    @property
    def date(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified)) if self.modified else ""

    @property
    def cases(self) -> str:
        """'3 + 10' (labeled + unlabeled), '?' where unknown."""
        def count(value: Optional[int]) -> str:
            return "?" if value is None else str(value)

        return f"{count(self.labeled)} + {count(self.unlabeled)}"

    @property
    def budget(self) -> str:
        return "" if self.budget_iterations is None else f"{self.budget_iterations} it"

    @property
    def dice(self) -> str:
        return "" if self.validation_dice is None else f"{100 * self.validation_dice:.1f}"

    def row(self) -> List[str]:
        """The table's cells, in :data:`COLUMNS` order."""
        return [self.name, (self.preset or "?").upper(), self.date, self.cases, self.budget, self.device or "",
                self.dice, str(self.path)]


COLUMNS = ("Name", "Preset", "Date", "Labeled + unlabeled", "Budget", "Device", "Val. Dice", "Path")


def _json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _budget(config: Dict[str, Any]) -> Optional[int]:
    """The run's iterations: its budget when one was set, else the sum of its phases (the paper's)."""
    budget = _int(config.get("budget_iterations"))
    if budget:
        return budget
    phases = [_int(config.get(k)) for k in ("pretrain_warmup_iterations", "pretrain_joint_iterations", "finetune_iterations")]
    known = [p for p in phases if p is not None]
    return sum(known) if known else None


def _case_counts(nodes: Dict[str, Any]) -> tuple:
    entries = nodes.get("entries")
    if not isinstance(entries, list):
        return None, None
    roles = [e.get("role") for e in entries if isinstance(e, dict)]
    return roles.count("labeled"), roles.count("unlabeled")


def _dice(card: Dict[str, Any], evaluation: Dict[str, Any]) -> Optional[float]:
    value = card.get("validation_dice")
    if value is None:
        summary = evaluation.get("summary")
        mean = summary.get("mean") if isinstance(summary, dict) else None
        value = mean.get("dice") if isinstance(mean, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def owned_folder(model_path: Path, root: Optional[Path]) -> Optional[Path]:
    """The run folder that belongs to ``model_path`` alone, inside the list's ``root``: the panel's job
    folder (``ROOT/run-*/run/model.pt`` -> ``ROOT/run-*``) or a CLI run folder (``ROOT/NAME/model.pt``).
    None for anything else (a model outside ``root``, or in ``root`` itself)."""
    if root is None:
        return None
    root, run = Path(root).resolve(), model_path.parent.resolve()
    folder = run.parent if run.name == RUN_OUTPUT and run.parent.parent == root else run
    return folder if folder.parent == root else None


def read_card(model_path: str | os.PathLike, root: Optional[str | os.PathLike] = None) -> ModelCard:
    """The card of ``model_path`` from the files beside it (see the module's docstring)."""
    path = Path(model_path)
    run = path.parent
    job_dir = run.parent if run.name == RUN_OUTPUT else run
    config, job, card = _json(run / CONFIG_NAME), _json(job_dir / JOB_NAME), _json(run / CARD_NAME)
    labeled, unlabeled = _case_counts(_json(job_dir / NODES_NAME))
    preset = config.get("preset") or job.get("preset")
    folder = owned_folder(path, Path(root) if root is not None else None)
    try:
        modified = path.stat().st_mtime
    except OSError:
        modified = 0.0
    name = card.get("name") if isinstance(card.get("name"), str) and card.get("name") else (folder or job_dir).name
    return ModelCard(
        path=path, name=name, preset=preset.lower() if isinstance(preset, str) else None, modified=modified,
        labeled=_int(card.get("labeled", labeled)), unlabeled=_int(card.get("unlabeled", unlabeled)),
        budget_iterations=_budget(config), device=card.get("device") or job.get("device") or config.get("device"),
        validation_dice=_dice(card, _json(run / EVALUATION_NAME)), run_folder=folder,
    )


def list_models(root: str | os.PathLike) -> List[ModelCard]:
    """Every model under ``root`` (the panel's ``run-*/run/model.pt`` and CLI ``NAME/model.pt``), newest first.
    Links and folders being deleted are not followed."""
    root = Path(root)
    if not root.is_dir():
        return []
    cards = []
    for child in root.iterdir():
        if child.is_symlink() or not child.is_dir() or child.name.startswith(DELETING_PREFIX):
            continue
        for candidate in (child / RUN_OUTPUT / MODEL_NAME, child / MODEL_NAME):
            if candidate.is_file():
                cards.append(read_card(candidate, root))
    return sorted(cards, key=lambda c: (-c.modified, str(c.path)))


def write_card(model_path: str | os.PathLike, **facts: Any) -> Path:
    """Merge ``facts`` into ``model_card.json`` beside ``model_path`` (atomic: the old card or the new one,
    never half of one)."""
    from ...io_utils import atomic_write_text

    target = Path(model_path).parent / CARD_NAME
    card = {**_json(target), **{k: v for k, v in facts.items() if v is not None}}
    atomic_write_text(target, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return target


def rename_model(card: ModelCard, name: str) -> ModelCard:
    """Give the model a name of the user's (kept in its card; no file or folder is moved, so every path
    that names it, job.json included, stays valid). ValueError for an empty or multi-line name."""
    name = (name or "").strip()
    if not name or "\n" in name or "\r" in name:
        raise ValueError("A model's name is one line of text.")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"A model's name has at most {MAX_NAME_LENGTH} characters.")
    write_card(card.path, name=name)
    card.name = name
    return card


def delete_problem(card: ModelCard, busy: Sequence[str | os.PathLike] = ()) -> Optional[str]:
    """Why ``card``'s run folder may not be deleted (None: it may). ``busy``: folders a run of this panel
    is using."""
    folder = card.run_folder
    if folder is None:
        return (f"{card.path} is not in a run folder of the output folder: delete it in your file manager "
                "if you are sure.")
    if folder.is_symlink() or not folder.is_dir():
        return f"{folder} is not a folder of its own (a link, or gone)."
    resolved = folder.resolve()
    if resolved not in card.path.resolve().parents:
        return f"{card.path} is not inside {folder}."
    for other in busy:
        other = Path(other).resolve()
        if other == resolved or resolved in other.parents or other in resolved.parents:
            return f"A run of this panel is using {folder}: wait for it to end, or cancel it."
    if any(lock.is_file() for lock in (folder / LOCK_NAME, folder / RUN_OUTPUT / LOCK_NAME)):
        return f"A training holds {folder} (its lock file is there): it is not deleted while it runs."
    return None


def folder_size(folder: Path) -> tuple:
    """(files, bytes) under ``folder``, links not followed."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def delete_question(card: ModelCard) -> str:
    """The confirmation the panel asks before :func:`delete_model`."""
    files, size = folder_size(card.run_folder) if card.run_folder is not None else (0, 0)
    return (f"Delete the model '{card.name}' and its run folder\n{card.run_folder}\n({files} files, "
            f"{size / 1024 ** 2:.1f} MB: model, checkpoints, the job's copy of the cases, predictions)?\n"
            "Your scene's nodes are not affected. This cannot be undone.")


def delete_model(card: ModelCard, busy: Sequence[str | os.PathLike] = ()) -> Path:
    """Remove ``card``'s run folder (see :func:`delete_problem`, raised as ValueError); returns it.

    The folder is renamed first, in the same parent (atomic), so that a failure part-way leaves a
    ``.deleting-*`` folder the list ignores, never a damaged model that still looks usable."""
    problem = delete_problem(card, busy)
    if problem:
        raise ValueError(problem)
    folder = card.run_folder
    doomed = folder.with_name(f"{DELETING_PREFIX}{folder.name}-{os.getpid()}-{time.time_ns()}")
    os.rename(folder, doomed)
    shutil.rmtree(doomed)
    return folder
