"""Installing what ACTION++ needs inside Slicer: one confirmation, then step by step, each step and its
outcome in the panel's log (with the command to run by hand when a step fails).

Pure Python: Slicer's side (the PyTorch extension's logic, ``pip_ensure`` / ``pip_install``, the
confirmation dialog, the wait cursor, the event loop) comes in as an :class:`InstallHost`, so the whole
flow is tested without Slicer.  What to install and the texts are :mod:`.install_plan`'s.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ContextManager

from . import api_versions, install_plan


@dataclass
class InstallHost:
    """What the installation needs from Slicer (the module builds it; tests pass fakes)."""

    torch_logic: Any = None  # PyTorchUtils.PyTorchUtilsLogic(), or None without the PyTorch extension
    # whether torch is installed, decided WITHOUT importing it (never torch_logic.torchInstalled(): that
    # imports torch into Slicer's process, seconds of frozen GUI and torch's DLLs locked on Windows)
    torch_found: Callable[[], bool] = field(default=lambda: torch_installed())
    pip_ensure: Callable[..., Any] | None = None  # slicer.packaging.pip_ensure (Slicer >= 5.12)
    pip_install: Callable[[str], Any] | None = None  # slicer.util.pip_install
    confirm: Callable[[str], bool] = lambda text: False  # one OK / Cancel dialog
    interactive: bool = False  # False in --no-main-window runs and tests: never ask there
    busy: Callable[[], ContextManager[Any]] = field(default=contextlib.nullcontext)  # the wait cursor
    process_events: Callable[[], Any] = lambda: None


def torch_installed() -> bool:
    """Whether torch is installed, without importing it: its import spec, looked up afresh (the finders'
    caches are cleared first, so a torch installed a moment ago by the PyTorch extension counts)."""
    importlib.invalidate_caches()
    return install_plan.torch_available()


def missing(torch_found: Callable[[], bool] | None = None) -> tuple[bool, list[str]]:
    """(torch missing, other missing requirements), checked without importing anything.

    ``torch_found`` defaults to :func:`torch_installed`.  The PyTorch extension's ``torchInstalled()`` is
    deliberately not used: it imports torch into Slicer's process (this runs when the panel opens).
    """
    torch_missing = not (torch_found or torch_installed)()
    return torch_missing, install_plan.missing_requirements()


def ensure(host: InstallHost, log: Callable[[str], Any]) -> bool:
    """Install what is missing after one confirmation; True when something was installed.

    Raises RuntimeError with the message for the panel: an installed torch that is too old (never
    replaced: other extensions may rely on it), a headless run (never asks), a declined confirmation,
    a failed step (with its manual command), or packages still missing afterwards.
    """
    torch_missing, extras = missing(host.torch_found)
    problem = None if torch_missing else install_plan.torch_version_problem()
    if problem:
        raise RuntimeError(problem)
    if not torch_missing and not extras:
        return False
    if not host.interactive:
        raise RuntimeError(install_plan.headless_install_message(torch_missing, extras))
    via_extension = host.torch_logic is not None
    if not host.confirm(install_plan.install_confirmation_text(torch_missing, extras, torch_via_extension=via_extension)):
        raise RuntimeError("Installation declined: ACTION++ needs these packages to train or predict.")
    steps = install_plan.install_steps(torch_missing, extras, torch_via_extension=via_extension,
                                       has_pip_ensure=host.pip_ensure is not None)
    for step in steps:
        _logged_step(host, step, log)
    torch_missing, extras = missing(host.torch_found)
    if torch_missing or extras:
        message = install_plan.headless_install_message(torch_missing, extras)
        log(message)
        raise RuntimeError(message)
    return True


def _logged_step(host: InstallHost, step: install_plan.InstallStep, log: Callable[[str], Any]) -> None:
    log(step.title + "\u2026")
    host.process_events()
    try:
        with host.busy():
            run_step(host, step)
    except Exception as exc:  # noqa: BLE001 - shown with the manual command, then raised
        message = install_plan.install_failure_text(step, exc)
        log(message)
        raise RuntimeError(message) from exc
    log(f"{step.title}: done.")


def run_step(host: InstallHost, step: install_plan.InstallStep) -> None:
    """One step: through the PyTorch extension (the CUDA build that matches the driver), ``pip_ensure``
    (protected packages skipped) or ``pip_install`` (one call per package)."""
    if step.method == "pytorch-extension":
        torch = api_versions.call_with_supported(
            host.torch_logic.installTorch, askConfirmation=False,
            torchVersionRequirement=install_plan.TORCH_REQUIREMENT[len("torch"):],
        )
        if torch is None:
            raise RuntimeError("the PyTorch extension did not install torch")
    elif step.method == "pip_ensure":
        from packaging.requirements import Requirement

        api_versions.call_with_supported(
            host.pip_ensure, [Requirement(step.requirement)], skip_packages=list(install_plan.PROTECTED_PACKAGES),
            prompt_install=False, requester="ACTION++",
        )
    else:
        for command in install_plan.pip_install_commands([step.requirement]):
            host.pip_install(command)
