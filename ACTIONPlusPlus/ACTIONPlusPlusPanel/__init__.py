"""The Slicer panel's Qt code beyond the module file, split by responsibility: ``case_lists`` (the
labeled and unlabeled case lists) and ``run_watch`` (a running worker, its progress and results).
GUI layer: these import qt and slicer; their pure-Python helpers are ``ACTIONPlusPlusLib.slicer_bridge.panel``."""
