"""GDAL settings for the pipeline's raster I/O."""

from __future__ import annotations

import os

import rasterio

#: GDAL's block cache defaults to 5 % of RAM and fills with blocks that are read once
#: (ingest, COG writing): cap it, unless the user chose a size (GDAL_CACHEMAX).
GDAL_CACHE_MB = 64


def bounded_gdal_cache() -> rasterio.Env:
    return rasterio.Env(**({} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB}))
