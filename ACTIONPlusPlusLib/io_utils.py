"""Atomic file writes: a crash or a kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    ``mkstemp`` creates the temporary file 0600; it gets the mode an ordinary new file would get
    (0666 minus the umask) before the rename, so that models, checkpoints and predictions are all
    shared the way the user's umask says.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        except (OSError, RuntimeError) as exc:  # RuntimeError: torch.save's stream writer
            failure = write_failure(path, exc)
            if failure is None:
                raise
            raise failure from exc
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def write_failure(path: Path, exc: BaseException) -> OSError | None:
    """A failed write as an OSError that names ``path`` (not the temporary file) and says when the disk
    is full: torch.save reports a full disk as a RuntimeError ('PytorchStreamWriter failed writing
    file data/3: file write failed').  None when ``exc`` is no write failure (a bug: re-raised as is)."""
    path = Path(path)
    code = getattr(exc, "errno", None)
    text = str(exc)
    if isinstance(exc, RuntimeError) and not any(w in text for w in ("write", "PytorchStreamWriter", "inline_container")):
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    where = f" ({free / 2**20:.0f} MiB free on the disk holding it)" if free is not None else ""
    kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
    if code in _FULL_ERRNOS or (free is not None and free < 64 * 2**20):
        return OSError(errno.ENOSPC, f"No space left on the disk: {path.name} could not be written{where}{kept}; "
                       "free some space and run again", str(path))
    if isinstance(exc, OSError):
        return OSError(code or errno.EIO, f"{exc.strerror or text}: {path.name} could not be written{kept}", str(path))
    return OSError(errno.EIO, f"{path.name} could not be written ({text.strip().splitlines()[-1][:200]}){kept}", str(path))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def check_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable, with an error that names the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise PermissionError(f"output folder {path} is not writable: {exc.strerror or exc}") from exc
    return path


def write_traceback_log(exc: BaseException, folders: Iterable[Path | None], name: str = "actionpp-error.log") -> Path | None:
    """Append ``exc``'s traceback to ``name`` in the first writable folder of ``folders`` (then the
    system temp folder); returns the log's path, or None when nothing could be written.

    Unexpected errors are reported to the user in one line that says where this log is.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for folder in [*folders, Path(tempfile.gettempdir())]:
        if folder is None:
            continue
        try:
            folder = Path(folder)
            if not folder.is_dir():
                continue
            log = folder / name
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"--- {stamp} pid {os.getpid()}\n{text}\n")
            return log
        except OSError:
            continue
    return None
