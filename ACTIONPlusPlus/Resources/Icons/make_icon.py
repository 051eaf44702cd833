"""Draw ACTIONPlusPlus.png (128x128): a red heart with the left atrium highlighted, on a dark tile.

Developer tool, not installed with the module. Run: .venv/bin/python ACTIONPlusPlus/Resources/Icons/make_icon.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 128
SS = 4  # supersampling factor for smooth edges


def render() -> Image.Image:
    n = SIZE * SS
    v, u = np.mgrid[0:n, 0:n].astype(np.float64)
    x = (u + 0.5) / n * 2.6 - 1.3
    y = 1.2 - (v + 0.5) / n * 2.5

    rgba = np.zeros((n, n, 4))
    # rounded dark tile
    r, m = 0.22, 1.22
    dx = np.maximum(np.abs(x) - (m - r), 0)
    dy = np.maximum(np.abs(y + 0.05) - (m - r), 0)
    tile = dx**2 + dy**2 <= r**2
    rgba[tile] = (0.11, 0.12, 0.17, 1.0)

    # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled
    hx, hy = x / 0.86, (y + 0.02) / 0.86
    heart = (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0
    shade = 0.75 + 0.25 * np.clip(1 - np.hypot(hx + 0.35, hy - 0.35), 0, 1)
    rgba[heart, 0] = 0.80 * shade[heart]
    rgba[heart, 1] = 0.10 * shade[heart]
    rgba[heart, 2] = 0.13 * shade[heart]
    rgba[heart, 3] = 1.0

    # left atrium: orange lobe at the upper right of the heart (the viewer's right = patient's left)
    la = ((x - 0.40) / 0.30) ** 2 + ((y - 0.30) / 0.22) ** 2 <= 1
    rim = ((x - 0.40) / 0.36) ** 2 + ((y - 0.30) / 0.28) ** 2 <= 1
    rgba[rim & heart & ~la] = (0.98, 0.93, 0.85, 1.0)
    rgba[la & heart] = (221 / 255, 129 / 255, 37 / 255, 1.0)

    small = rgba.reshape(SIZE, SS, SIZE, SS, 4).mean(axis=(1, 3))
    return Image.fromarray((small * 255).round().astype(np.uint8), "RGBA")


if __name__ == "__main__":
    out = Path(__file__).with_name("ACTIONPlusPlus.png")
    render().save(out, optimize=True)
    print(out, out.stat().st_size, "bytes")
