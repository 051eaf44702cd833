"""The Slicer panel's pure-Python helpers: everything the module (``ACTIONPlusPlus/``) needs beyond
wiring widgets, tested without Slicer (no Qt, no slicer, no torch at import time).

``budget_choice`` (training budget in the user's terms), ``job_options`` (settings -> run plan and job
options), ``output_folder`` (default folder, checks, free disk), ``selection_checks`` (the user's
selection before a job is written), ``run_progress`` (worker events -> progress line, loss history,
exit messages), ``active_run`` (the run the panel watches), ``install_plan`` (what to install and how),
``dependencies`` (the installation flow, Slicer's side passed in), ``remembered`` (settings kept between
sessions), ``formatting`` (small texts), ``api_versions`` (Slicer APIs that differ by version, whether a
dialog may be shown), ``self_test`` (Dice for the module's self-test).
This file imports nothing.
"""
