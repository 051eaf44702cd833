"""What the panel remembers between sessions: the last output folder and the speed each preset
trained at on each device (for the next estimate).

Pure Python: ``settings`` is Slicer's ``qt.QSettings()`` in the module, or any object with
``value(key)`` and ``setValue(key, value)`` (a dict-backed fake in the tests).
"""

from __future__ import annotations

from typing import Any

from .budget_choice import speed_key
from .output_folder import OUTPUT_FOLDER_SETTING


class PanelMemory:
    """The panel's remembered settings, read and written through ``settings``."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings

    def output_folder(self) -> str | None:
        value = self._settings.value(OUTPUT_FOLDER_SETTING)
        return str(value) if value else None

    def remember_output_folder(self, folder: str) -> None:
        self._settings.setValue(OUTPUT_FOLDER_SETTING, str(folder))

    def measured_speed(self, preset: str, device: str) -> float | None:
        """Seconds per iteration of the last run of ``preset`` on ``device`` (None: not measured yet)."""
        value = self._settings.value(speed_key(preset, device))
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    def remember_speed(self, preset: str, device: str, seconds_per_iteration: float) -> None:
        self._settings.setValue(speed_key(preset, device), float(seconds_per_iteration))
