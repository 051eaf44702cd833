"""A training run folder as a unit: who may write into it, when, and on what data.

``train()`` opens a :class:`RunFolder` before it writes anything:

- a folder that already holds a run (``checkpoint.pt``, ``checkpoint_pretrain.pt`` or ``model.pt``) is
  refused unless the caller resumes it or asks to overwrite it; ``overwrite`` moves the old run into
  ``previous-<time>/`` inside the folder (it never deletes anything);
- a lock file (``.actionpp.lock``, JSON with the owner's pid, host and start time) is held for the run's
  life, so a second training into the same folder is refused while the first runs; a lock whose process
  is gone (same host) is stale and taken over;
- temporary files that a killed run left behind (``.checkpoint.pt.*.tmp`` ...) are removed once the
  lock is held (no live writer can own them then);
- ``config.json`` is written only by :meth:`RunFolder.accept`, i.e. once every check has passed, so a
  rejected run never changes the description of the run already in the folder;
- a fingerprint of the training data goes into every checkpoint, and ``--resume`` on other data is
  refused.

Under torchrun only rank 0 touches the folder; its verdict is shared with every rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import distributed as dist_utils
from ..config import Config
from ..data.types import Case
from ..errors import ActionError, DataError, TrainingError

LOCK_NAME = ".actionpp.lock"
CONFIG_NAME = "config.json"
#: the files that make a folder hold a run (config.json alone describes nothing that could be lost)
RUN_FILES = ("checkpoint.pt", "checkpoint_pretrain.pt", "model.pt")
#: what ``overwrite`` moves aside: the run files, its config and the worker's predictions
MOVED_ASIDE = (*RUN_FILES, CONFIG_NAME, "predictions")
FINGERPRINT_KEY = "dataset"


def existing_run_files(out_dir: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``out_dir``."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).exists()]


# --- lock ------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        import psutil

        return bool(psutil.pid_exists(pid))
    except ImportError:
        pass
    if os.name == "nt":  # pragma: no cover - without psutil there is no portable probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive lock file (created with O_EXCL) that records its owner."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False
        self._token = f"{os.getpid()}-{time.time_ns()}"

    def _owner(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None  # being written right now, or damaged: treat as held
        return data if isinstance(data, dict) else None

    def _is_stale(self, owner: dict[str, Any] | None) -> bool:
        if not owner:
            return False
        if owner.get("host") != socket.gethostname():  # another machine (shared file system): cannot tell
            return False
        try:
            pid = int(owner.get("pid", -1))
        except (TypeError, ValueError):
            return False
        return pid != os.getpid() and not _pid_alive(pid)

    def acquire(self) -> None:
        """Take the lock, or raise a DataError that says who holds it."""
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                              "token": self._token})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._owner()
                if owner == {}:  # released in between: try again
                    continue
                if self._is_stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                raise DataError(self._busy_message(owner)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
            self.held = True
            return
        raise DataError(self._busy_message(self._owner()))

    def _busy_message(self, owner: dict[str, Any] | None) -> str:
        if owner:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
            who = f"process {owner.get('pid')} on {owner.get('host')} (since {since})"
        else:
            who = "another process"
        return (f"run folder {self.path.parent} is in use by another training, {who}; wait for it to finish "
                f"or stop it, or choose another --out (if no such process runs, delete {self.path})")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner = self._owner()
        if owner and owner.get("token") == self._token:
            self.path.unlink(missing_ok=True)


# --- dataset fingerprint ---------------------------------------------------------------------------------


def dataset_fingerprint(labeled: Sequence[Case], unlabeled: Sequence[Case]) -> dict[str, Any]:
    """A digest of the training data as the trainer sees it (ids, shapes, voxels, labels, in order),
    with the case counts for the message when two differ."""
    digest = hashlib.blake2b(digest_size=16)
    for role, cases in (("labeled", labeled), ("unlabeled", unlabeled)):
        for case in cases:
            image = np.ascontiguousarray(case.image)
            digest.update(f"{role}|{case.id}|{image.shape}|{image.dtype}|".encode())
            digest.update(memoryview(image).cast("B"))
            if role == "labeled" and case.label is not None:
                label = np.ascontiguousarray(case.label)
                digest.update(f"|{label.dtype}|".encode())
                digest.update(memoryview(label).cast("B"))
    return {"digest": digest.hexdigest(), "labeled": len(labeled), "unlabeled": len(unlabeled)}


def check_resume_data(state: dict[str, Any], fingerprint: dict[str, Any], resume_path: Path) -> None:
    """Refuse to resume a checkpoint on data other than the data it was trained on.

    Checkpoints written before fingerprints existed carry none and are accepted.
    """
    saved = state.get(FINGERPRINT_KEY)
    if not isinstance(saved, dict) or "digest" not in saved:
        return
    if saved["digest"] == fingerprint["digest"]:
        return
    raise DataError(
        f"cannot resume from {resume_path}: it was trained on other data ({saved.get('labeled')} labeled + "
        f"{saved.get('unlabeled')} unlabeled cases) than given now ({fingerprint['labeled']} labeled + "
        f"{fingerprint['unlabeled']} unlabeled cases, or the same number with other images or labels); "
        "resume with the run's own data, or start a new run in another folder"
    )


# --- the folder ------------------------------------------------------------------------------------------


class RunFolder:
    """The run folder for the life of one ``train()`` call (see the module docstring)."""

    def __init__(self, out_dir: Path, resume: bool, overwrite: bool) -> None:
        self.out_dir = Path(out_dir)
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self.lock = RunLock(self.out_dir)
        self.moved_to: Path | None = None

    # every rank calls claim(); rank 0 decides
    def claim(self) -> None:
        """Refuse a folder holding a run (unless resume/overwrite), lock it, remove orphaned temp files."""
        error: str | None = None
        if dist_utils.is_main_process():
            try:
                self._claim_main()
            except ActionError as exc:
                error = str(exc)
        if dist_utils.is_distributed():
            error = dist_utils.all_gather_object(error)[0]
        if error is not None:
            raise DataError(error)

    def _claim_main(self) -> None:
        if self.resume and self.overwrite:
            raise DataError("--resume and --overwrite contradict each other: choose one")
        self.lock.acquire()
        try:
            present = existing_run_files(self.out_dir)
            if present and not self.resume and not self.overwrite:
                raise DataError(
                    f"{self.out_dir} already holds a run ({', '.join(present)}): add --resume to continue it, "
                    "or --overwrite to start a new one there (the old run is moved to a previous-<time> "
                    "folder inside it), or choose another --out")
            self._remove_orphaned_temp_files()
        except BaseException:
            self.lock.release()
            raise

    def _remove_orphaned_temp_files(self) -> None:
        """Temp files of atomic writes that a killed run left (we hold the lock: nobody is writing)."""
        for name in (*RUN_FILES, CONFIG_NAME):
            for pattern in (f".{name}.*.tmp", f".{name}.*.tmp.*"):
                for orphan in self.out_dir.glob(pattern):
                    try:
                        orphan.unlink()
                    except OSError:
                        pass

    def accept(self, cfg: Config) -> Path:
        """Every check passed: move the old run aside (``overwrite``) and write ``config.json``."""
        config_path = self.out_dir / CONFIG_NAME
        if not dist_utils.is_main_process():
            return config_path
        if self.overwrite:
            self._move_old_run_aside()
        cfg.save(config_path)
        return config_path

    def _move_old_run_aside(self) -> None:
        present = [name for name in MOVED_ASIDE if (self.out_dir / name).exists()]
        if not present:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.out_dir / f"previous-{stamp}"
        n = 2
        while target.exists():
            target = self.out_dir / f"previous-{stamp}-{n}"
            n += 1
        target.mkdir()
        for name in present:
            shutil.move(str(self.out_dir / name), str(target / name))
        self.moved_to = target

    def training_error(self, exc: TrainingError) -> TrainingError:
        """``exc`` with a message that does not promise a checkpoint when none was ever written."""
        checkpoint = self.out_dir / RUN_FILES[0]
        if checkpoint.is_file():
            return exc
        text = str(exc)
        kept = f"the last good checkpoint {checkpoint} was kept"
        fixed = text.replace(kept, "no checkpoint had been written yet, so there is nothing to resume")
        if fixed == text:
            fixed = f"{text} (no checkpoint had been written yet, so there is nothing to resume)"
        return TrainingError(fixed)

    def release(self) -> None:
        self.lock.release()
