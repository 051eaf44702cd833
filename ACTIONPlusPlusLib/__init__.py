"""ACTION++ semi-supervised segmentation: the trainer and, in ``slicer_bridge/``, the scene bridge.

The Slicer module, the CLI (``actionpp``), the background worker and torchrun all call into this
package.  Only ``slicer_bridge/`` imports ``slicer``, and only MRML; nothing here imports Qt, and no
module outside ``slicer_bridge/`` imports it (docs/ARCHITECTURE.md, Testing/test_architecture.py).
"""

__version__ = "0.1.0"
