"""Checks that stand between bad input and a silently wrong map.

``preflight``: before anything is written (output folder, free space, model folders, inputs
units). ``units``: the scene's values against the models' training statistics, after ingest and
before any block is predicted. ``results``: a finished map's plausibility. ``output``: the
output folder and a full disk. Layer: above ingest and models (reads scenes and model cards),
below the pipeline that calls them.
"""
