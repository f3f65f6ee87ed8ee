"""Region jobs: many scenes mapped one by one, merged onto one grid covering an area of interest.

``grid.py`` derives the region grid from the AOI, ``mosaic.py`` holds the pure reprojection and
weighting functions, ``scenes.py`` finds the scenes and describes them, ``job.py`` runs it all.
"""
