"""GDAL settings for the pipeline's raster I/O."""

from __future__ import annotations

import os

import rasterio

from .storage import storage_env

#: GDAL's block cache defaults to 5 % of RAM and fills with blocks that are read once
#: (ingest, COG writing): cap it, unless the user chose a size (GDAL_CACHEMAX).
GDAL_CACHE_MB = 64


def bounded_gdal_cache() -> rasterio.Env:
    """The pipeline's GDAL environment: the bounded cache, and object-store access configured
    from the standard credential variables (``storage.gdal_options``)."""
    return storage_env(**({} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB}))
