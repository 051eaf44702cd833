"""Our terminology context (every preset segment's SNOMED CT code, name and colour) in Slicer's
terminology logic: loaded once, from ``ACTIONPlusPlus/Resources/Terminology``.  Takes the logic as an
argument (``slicer.modules.terminologies.logic()`` in the application), like the rest of the bridge."""

from __future__ import annotations

import logging
from typing import Any, Optional

from .terminology import TERMINOLOGY_CONTEXT


def loaded_terminology_names(terminology_logic: Any) -> list[str]:
    import vtk

    names = vtk.vtkStringArray()
    terminology_logic.GetLoadedTerminologyNames(names)
    return [names.GetValue(i) for i in range(names.GetNumberOfValues())]


def load_terminology_context(terminology_logic: Any, path: str) -> Optional[str]:
    """Load the context file once; its name, or None (with a warning) when the file did not load."""
    if TERMINOLOGY_CONTEXT in loaded_terminology_names(terminology_logic):
        return TERMINOLOGY_CONTEXT
    name = terminology_logic.LoadTerminologyFromFile(path)
    if name != TERMINOLOGY_CONTEXT:
        logging.warning("ACTION++: could not load the terminology file (got %r)", name)
        return None
    return name
