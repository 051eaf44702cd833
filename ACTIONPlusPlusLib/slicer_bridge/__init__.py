"""The scene bridge: the layer between the Slicer scene and the trainer (docs/ARCHITECTURE.md).

The only Lib code that imports ``slicer``, and only MRML (no Qt, no ``slicer.app``, no global
``slicer.mrmlScene``): every function takes its scene or nodes as arguments, so the same code runs in
the Slicer application and against the ``slicer-core`` wheel in the tests.  ``slicer.util`` functions
are called as ``slicer.util.*`` (slicer-core also exposes them as ``slicer.*``; real Slicer does not).

Scene -> trainer: ``volumes`` and ``segmentations`` turn nodes into Cases (``geometry`` keeps the
physical placement exact), ``job_folder`` writes them with ``job.json`` for the worker, which
``runner`` starts (``child_process``, ``device_probe``).  Trainer -> scene: ``results`` reads the
worker's prediction files back as new nodes (``prediction_nodes``); ``charts`` draws the live training
curves.  ``terminology`` names and codes the classes; ``node_files`` reads and writes node files;
``samples`` adds phantom data.  ``panel/`` holds the panel's pure-Python helpers (no slicer, no Qt).

This file imports nothing, so that importing one module (the panel helpers, the runner) does not pull
in ``slicer``.
"""
