"""Calls into Slicer APIs whose keyword arguments differ between Slicer versions, and whether the
application may show a dialog (which differs by version and command line).

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def adapt_options(options: Mapping[str, Any], accepted: Iterable[str] | None) -> tuple[dict[str, Any], list[str]]:
    """Keep the options a callee accepts; returns (kept, dropped names). ``accepted=None`` keeps all."""
    if accepted is None:
        return dict(options), []
    accepted = set(accepted)
    kept = {k: v for k, v in options.items() if k in accepted}
    dropped = sorted(k for k, v in options.items() if k not in accepted and v not in (None, False, {}, []))
    return kept, dropped


def accepted_keywords(func: Callable[..., Any]) -> set[str] | None:
    """Names of keyword arguments ``func`` accepts, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def call_with_supported(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` with only the keyword arguments its signature accepts (Slicer APIs differ by version)."""
    kept, _ = adapt_options(kwargs, accepted_keywords(func))
    return func(*args, **kept)


def is_interactive(app: Any, main_window: Any) -> bool:
    """Whether the application may show a dialog: not under ``--testing`` nor ``--no-main-window`` (older
    Slicers have no ``commandOptions().noMainWindow``), and only with a main window."""
    if app.testingEnabled():
        return False
    try:
        if app.commandOptions().noMainWindow:
            return False
    except AttributeError:
        pass
    return main_window is not None
