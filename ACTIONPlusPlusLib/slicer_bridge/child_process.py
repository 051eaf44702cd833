"""How a background child (the worker, the device probe) is started: which Python, which platform
options, which environment (no slicer, no Qt)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

LIB_DIR = Path(__file__).resolve().parents[1]  # the ACTIONPlusPlusLib folder


def find_python() -> str:
    """The interpreter for the worker: ``PythonSlicer`` inside Slicer, else this interpreter.

    Inside the Slicer application ``sys.executable`` is the application itself, not a Python, and the
    child needs Slicer's Python environment: PythonSlicer sets it up.
    """
    slicer_module = sys.modules.get("slicer")
    if slicer_module is not None and getattr(slicer_module, "app", None) is not None:
        names = ["PythonSlicer.exe", "PythonSlicer"] if os.name == "nt" else ["PythonSlicer"]
        for folder in (Path(sys.executable).parent, Path(sys.executable).parent.parent / "bin"):
            for name in names:
                if (folder / name).is_file():
                    return str(folder / name)
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


# Windows process-creation constants (defined here too: the subprocess module has them only on Windows)
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0
BELOW_NORMAL_PRIORITY_CLASS = 0x00004000
WORKER_NICE = 10  # POSIX niceness of the worker: Slicer (nice 0) stays responsive during CPU training
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def popen_options(os_name: str | None = None, subprocess_module: Any = subprocess) -> dict[str, Any]:
    """Keyword arguments for ``subprocess.Popen`` that start a background child on this platform.

    Windows: no console window (``CREATE_NO_WINDOW`` and a hidden ``STARTUPINFO``, as
    ``slicer.util.launchConsoleProcess`` does; a visible console would kill training when closed) and a
    new process group (Ctrl+C in Slicer's console does not reach the child).  POSIX: a new session, for
    the same reason.  ``os_name`` and ``subprocess_module`` are parameters so that tests can ask for
    another platform's options.
    """
    os_name = os.name if os_name is None else os_name
    if os_name != "nt":
        return {"start_new_session": True}
    flags = getattr(subprocess_module, "CREATE_NEW_PROCESS_GROUP", CREATE_NEW_PROCESS_GROUP)
    flags |= getattr(subprocess_module, "CREATE_NO_WINDOW", CREATE_NO_WINDOW)
    options: dict[str, Any] = {"creationflags": flags}
    startupinfo_class = getattr(subprocess_module, "STARTUPINFO", None)
    if startupinfo_class is not None:
        info = startupinfo_class()
        info.dwFlags |= getattr(subprocess_module, "STARTF_USESHOWWINDOW", STARTF_USESHOWWINDOW)
        info.wShowWindow = getattr(subprocess_module, "SW_HIDE", SW_HIDE)
        options["startupinfo"] = info
    return options


def child_environment(extra: dict[str, str] | None = None, force_cpu: bool = False,
                      base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker or probe child: the Lib importable, unbuffered UTF-8 output, and
    ``PYTORCH_ENABLE_MPS_FALLBACK=1`` so that an operation Apple's MPS lacks runs on the CPU."""
    env = dict(os.environ if base is None else base)
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    # the worker stops (checkpoint first) when this process dies: Slicer, not the PythonSlicer launcher
    # between them, which outlives a crashed Slicer (worker.ParentWatch)
    env["ACTIONPP_PARENT_PID"] = str(os.getpid())
    parent = str(LIB_DIR.parent)  # so the child imports ACTIONPlusPlusLib from any interpreter
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parent not in paths:
        env["PYTHONPATH"] = os.pathsep.join([parent, *paths])
    if force_cpu:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def worker_threads(cpu_count: int | None = None) -> int:
    """CPU threads for the worker: every core but one, which is left to Slicer (at least 1)."""
    count = os.cpu_count() if cpu_count is None else cpu_count
    return max(1, int(count or 1) - 1)


def thread_environment(env: dict[str, str], cpu_count: int | None = None) -> dict[str, str]:
    """``env`` with the worker's thread count (OpenMP / MKL / OpenBLAS, which torch's CPU kernels read)
    set to :func:`worker_threads`, unless the user set them (their value is kept)."""
    threads = str(worker_threads(cpu_count))
    for name in THREAD_VARIABLES:
        env.setdefault(name, threads)
    return env


def lower_priority(pid: int, os_name: str | None = None, process_class: Any = None) -> bool:
    """Run the started child (and what it starts later) below Slicer's priority: niceness
    :data:`WORKER_NICE` on POSIX, BELOW_NORMAL_PRIORITY_CLASS on Windows.  Best effort: False when the
    system refused (the worker then runs at normal priority)."""
    os_name = os.name if os_name is None else os_name
    try:
        if process_class is None:
            import psutil

            process_class = psutil.Process
        proc = process_class(pid)
        if os_name == "nt":
            proc.nice(BELOW_NORMAL_PRIORITY_CLASS)
        else:
            proc.nice(max(proc.nice(), WORKER_NICE))
        return True
    except Exception:  # noqa: BLE001 - NoSuchProcess, AccessDenied, no psutil: priority is a nicety
        return False
