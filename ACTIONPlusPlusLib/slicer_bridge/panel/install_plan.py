"""The dependency plan: what to install (step by step, with the command to run by hand when a step
fails), the torch version check, the message for headless runs, a lookup of Slicer's pip helpers that
works across Slicer versions, and the packages line of the panel's About box.

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .formatting import SEP


TORCH_REQUIREMENT = "torch>=2.1"

# What the panel's path (the runner and the worker's train / predict) needs beyond torch that Slicer does
# not ship (numpy, scipy and SimpleITK it does).  Only this is installed by the panel.
EXTRA_REQUIREMENTS = ("psutil>=5.9",)

# Needed elsewhere and imported lazily there: evaluation metrics (medpy, built from source in Slicer),
# the ACDC / LA benchmark loaders (h5py), the CLI's progress bar (tqdm).  Never installed by the panel.
OPTIONAL_REQUIREMENTS = {"h5py>=3.8": "the ACDC / LA .h5 benchmark loaders",
                         "medpy>=0.5": "evaluation metrics (actionpp evaluate)",
                         "tqdm>=4.60": "the command line's progress bar"}

ALL_REQUIREMENTS = (*EXTRA_REQUIREMENTS, *OPTIONAL_REQUIREMENTS)

# Never reinstall these under Slicer's feet (Slicer or other extensions pin them).
PROTECTED_PACKAGES = ("SimpleITK", "torch", "numpy", "scipy", "vtk")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        out.append(int(digits.group()))
    return tuple(out)


def requirement_satisfied(requirement: str, version_of: Callable[[str], str] | None = None) -> bool:
    """Whether ``requirement`` ("name>=x.y" or "name") is installed at an acceptable version."""
    version_of = version_of or importlib.metadata.version
    name = _requirement_name(requirement)
    try:
        installed = version_of(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    match = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    if match:
        return _version_tuple(installed) >= _version_tuple(match.group(1))
    return True


def missing_requirements(requirements: Iterable[str] = EXTRA_REQUIREMENTS, version_of: Callable[[str], str] | None = None,
                         find_spec: Callable[[str], Any] | None = None) -> list[str]:
    """The requirements not installed at an acceptable version.  With the default ``version_of`` a
    package must also be importable (``find_spec``, nothing imported): a broken or hidden install counts
    as missing."""
    if version_of is None and find_spec is None:
        find_spec = importlib.util.find_spec
    out = []
    for requirement in requirements:
        ok = requirement_satisfied(requirement, version_of)
        if ok and find_spec is not None:
            try:
                ok = find_spec(_requirement_name(requirement).lower()) is not None
            except (ImportError, ValueError):
                ok = False
        if not ok:
            out.append(requirement)
    return out


def batch_dependency_problem(in_slicer: bool, find_spec: Callable[[str], Any] | None = None,
                             version_of: Callable[[str], str] | None = None) -> str | None:
    """What the headless batch script says (before anything else) when torch or psutil is missing or torch
    is too old; None when it can run.  The same text as the panel's headless message inside Slicer, a
    ``pip install`` line under plain Python."""
    find_spec = find_spec or importlib.util.find_spec
    torch_missing = not torch_available(find_spec)
    extras = missing_requirements(EXTRA_REQUIREMENTS, version_of, find_spec)
    if not torch_missing:
        problem = torch_version_problem(version_of)
        if problem:
            return problem
    if not torch_missing and not extras:
        return None
    if in_slicer:
        return headless_install_message(torch_missing, extras)
    import sys

    todo = ([TORCH_REQUIREMENT] if torch_missing else []) + list(extras)
    return (f"Missing Python packages: {', '.join(todo)}. Install them into this Python and run again: "
            f"{sys.executable} -m pip install " + " ".join(f"'{r}'" for r in todo))


def torch_version_problem(version_of: Callable[[str], str] | None = None) -> str | None:
    """None when the installed torch satisfies :data:`TORCH_REQUIREMENT` (or torch is absent: that is
    the installer's case), else what is wrong and what to do.  Reads the package metadata only."""
    version_of = version_of or importlib.metadata.version
    try:
        installed = version_of("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    if requirement_satisfied(TORCH_REQUIREMENT, lambda name: installed):
        return None
    return (
        f"torch {installed} is installed, but ACTION++ needs {TORCH_REQUIREMENT}. Other extensions may rely on "
        "this torch, so ACTION++ does not replace it by itself. Update it in the PyTorch Utils module "
        "(Utilities > PyTorch Utils: uninstall, then install), or in Slicer's Python console run: "
        f"{manual_torch_command(force=True)}; then restart Slicer."
    )


def manual_torch_command(force: bool = False) -> str:
    """What a user types in Slicer's Python console to install (or, with ``force``, replace) torch."""
    extra = ", forceReinstall=True" if force else ""
    return ("import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, "
            f"torchVersionRequirement='{TORCH_REQUIREMENT[len('torch'):]}'{extra})")


def manual_pip_command(requirement: str) -> str:
    """What a user types in Slicer's Python console to install one requirement."""
    return f"slicer.util.pip_install({' '.join(pip_install_commands([requirement]))!r})"


@dataclass
class InstallStep:
    """One step of the dependency installation, as the panel's log shows it."""

    title: str  # "Installing torch>=2.1 through the PyTorch extension"
    requirement: str  # the requirement it installs
    method: str  # "pytorch-extension" | "pip_ensure" | "pip_install"
    manual: str  # the command to run by hand when the step fails


def install_steps(torch_missing: bool, extras: Sequence[str], torch_via_extension: bool = True,
                  has_pip_ensure: bool = False) -> list[InstallStep]:
    """The steps to install what is missing, each with the command a user can run by hand."""
    steps = []
    pip_method = "pip_ensure" if has_pip_ensure else "pip_install"
    if torch_missing:
        if torch_via_extension:
            steps.append(InstallStep(f"Installing {TORCH_REQUIREMENT} through the PyTorch extension (the build that "
                                     "matches your GPU driver; 1-3 GB, several minutes)", TORCH_REQUIREMENT,
                                     "pytorch-extension", manual_torch_command()))
        else:
            steps.append(InstallStep(f"Installing {TORCH_REQUIREMENT} from PyPI (1-3 GB, several minutes)",
                                     TORCH_REQUIREMENT, pip_method, manual_pip_command(TORCH_REQUIREMENT)))
    for requirement in extras:
        steps.append(InstallStep(f"Installing {requirement}", requirement, pip_method, manual_pip_command(requirement)))
    return steps


def install_failure_text(step: InstallStep, error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__ if isinstance(error, BaseException) else str(error)
    return (f"{step.title}: failed ({text}). To install it by hand, run in Slicer's Python console "
            f"(View > Python Console): {step.manual}")


def torch_available(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> bool:
    """Whether torch can be imported, without importing it."""
    try:
        return find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def install_confirmation_text(torch_missing: bool, extras: Sequence[str], torch_via_extension: bool = True) -> str:
    lines = ["ACTION++ needs Python packages that are not installed yet:", ""]
    if torch_missing:
        how = "via the PyTorch extension, the build that matches your GPU driver" if torch_via_extension else "from PyPI"
        lines.append(f"\u2022 {TORCH_REQUIREMENT} ({how}; about 1-3 GB)")
    lines += [f"\u2022 {req}" for req in extras]
    lines += ["", "SimpleITK and the other packages that Slicer ships are left untouched.",
              "Each step and its outcome is shown in the panel's log.", "Install them now? This can take several minutes."]
    return "\n".join(lines)


def headless_install_message(torch_missing: bool, extras: Sequence[str]) -> str:
    """What to tell a --no-main-window / batch user (they cannot be asked)."""
    todo = ([TORCH_REQUIREMENT] if torch_missing else []) + list(extras)
    steps = []
    if torch_missing:
        steps.append(
            "import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)"
        )
    if extras:
        steps.append(f"slicer.util.pip_install({' '.join(extras)!r})")
    return (
        f"Missing Python packages: {', '.join(todo)}. They are not installed in batch (--no-main-window) runs. "
        "Open ACTION++ once in the Slicer application (it offers to install them), or run in Slicer's Python console: "
        + "; ".join(steps)
    )


def find_pip_ensure(slicer_module: Any) -> Callable[..., Any] | None:
    """``pip_ensure`` from Slicer >= 5.12 (``slicer.packaging`` or ``slicer.pydeps``), else None."""
    for attribute in ("packaging", "pydeps", "util"):
        holder = getattr(slicer_module, attribute, None)
        func = getattr(holder, "pip_ensure", None) if holder is not None else None
        if callable(func):
            return func
    return None


def pip_install_commands(extras: Sequence[str], satisfied: Callable[[str], bool] | None = None) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` on Slicer < 5.12, one call per package.

    medpy depends on SimpleITK and scipy, which Slicer ships: it is installed with ``--no-deps`` so pip
    never replaces them; the rest have no protected dependencies.
    """
    commands = []
    for requirement in extras:
        if _requirement_name(requirement).lower() == "medpy":
            commands.append(f"{requirement} --no-deps")
        else:
            commands.append(requirement)
    return commands


def package_info_line(version_of: Callable[[str], str] | None = None, python_version: str | None = None,
                      info: Mapping[str, Any] | None = None) -> str:
    """'ACTION++ 0.1.0 · Python 3.12.4 · torch 2.13.0 (CUDA 12.8) · psutil 7.2.2', from package metadata
    (nothing imported) and, when known, the device probe's CUDA build."""
    import sys

    from ... import __version__

    version_of = version_of or importlib.metadata.version
    python_version = python_version or sys.version.split()[0]
    parts = [f"ACTION++ {__version__}", f"Python {python_version}"]
    for name in ("torch", *(_requirement_name(r) for r in EXTRA_REQUIREMENTS)):
        try:
            text = f"{name} {version_of(name)}"
        except importlib.metadata.PackageNotFoundError:
            text = f"{name} not installed"
        if name == "torch" and info and info.get("torch_cuda"):
            text += f" (CUDA {info['torch_cuda']})"
        parts.append(text)
    return SEP.join(parts)
