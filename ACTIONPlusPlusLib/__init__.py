"""ACTION++ semi-supervised segmentation trainer (no Slicer, no Qt).

The Slicer module, the CLI (``actionpp``), the background worker and torchrun all call into this
package.  Only ``scene.py`` (the scene bridge) imports ``slicer``, and only MRML.
"""

__version__ = "0.1.0"
