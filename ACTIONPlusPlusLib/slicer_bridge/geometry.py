"""Geometry of MRML volume nodes in SimpleITK's LPS terms, and grid / extent comparisons.

MRML arrays are (k, j, i) = SimpleITK (z, y, x); spacing is the same; ``origin_lps = diag(-1,-1,1) @
origin_ras`` and ``D_lps = diag(-1,-1,1) @ D_ras`` (the columns of D are the axis directions; SimpleITK
stores D row-major).  These sign flips are exact, so a volume -> Case -> volume round trip is bit-exact,
left-handed directions included (``shared/spec/SLICER.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import vtk

from ..data.types import Case

_RAS_LPS = np.diag([-1.0, -1.0, 1.0])


def node_label(node: Any) -> str:
    if node is None:
        return "<none>"
    return f"'{node.GetName()}' ({node.GetID() or node.GetClassName()})"


def _directions_ras(node: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)], dtype=float)


def _set_directions_ras(node: Any, directions: np.ndarray) -> None:
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(directions[r, c]))
    node.SetIJKToRASDirectionMatrix(matrix)


def geometry_lps(node: Any) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(spacing (x,y,z), origin LPS (x,y,z), direction LPS row-major 9)`` of a volume node."""
    spacing = tuple(float(v) for v in node.GetSpacing())
    origin = tuple(float(v) for v in _RAS_LPS @ np.asarray(node.GetOrigin(), dtype=float))
    direction = tuple(float(v) for v in (_RAS_LPS @ _directions_ras(node)).ravel())
    return spacing, origin, direction


def set_geometry_from_case(node: Any, case: Case) -> None:
    """Give ``node`` the Case's geometry (None parts: unit spacing, zero origin, identity)."""
    spacing = case.spacing if case.spacing is not None else (1.0, 1.0, 1.0)
    origin = np.asarray(case.origin if case.origin is not None else (0.0, 0.0, 0.0), dtype=float)
    direction = np.asarray(case.direction if case.direction is not None else np.eye(3).ravel(), dtype=float)
    node.SetSpacing(*[float(v) for v in spacing])
    node.SetOrigin(*[float(v) for v in _RAS_LPS @ origin])
    _set_directions_ras(node, _RAS_LPS @ direction.reshape(3, 3))


def same_grid(a: Any, b: Any, atol: float = 1e-6) -> bool:
    ia, ib = a.GetImageData(), b.GetImageData()
    if ia is None or ib is None or ia.GetDimensions() != ib.GetDimensions():
        return False
    ma, mb = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetIJKToRASMatrix(ma)
    b.GetIJKToRASMatrix(mb)
    for r in range(3):
        for c in range(4):
            x, y = ma.GetElement(r, c), mb.GetElement(r, c)
            if abs(x - y) > atol * max(1.0, abs(x), abs(y)):
                return False
    return True


def ras_bounds(node: Any) -> np.ndarray:
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return np.asarray(bounds, dtype=float)


def bounds_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    if a[0] > a[1] or b[0] > b[1]:  # invalid (empty) bounds
        return False
    return all(a[2 * k] < b[2 * k + 1] and b[2 * k] < a[2 * k + 1] for k in range(3))
