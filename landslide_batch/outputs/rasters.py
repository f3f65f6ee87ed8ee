"""Cloud-Optimized GeoTIFFs from the output store, written window by window."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from ..ingest.scene import SceneInfo
from .metadata import Band

WINDOW = 1024
#: GDAL's block cache while a COG is written (MB). Its default, 5 % of the machine's memory, fills
#: with the raster's blocks: a finish's peak RSS grew with the map (1.2 GB more at 16384², issue 29).
COG_CACHE_MB = 128


def windows(info: SceneInfo, size: int = WINDOW):
    for y0 in range(0, info.height, size):
        for x0 in range(0, info.width, size):
            yield y0, min(y0 + size, info.height), x0, min(x0 + size, info.width)


def write_cog(
    dest: Path,
    info: SceneInfo,
    read: Callable[[int, int, int, int], np.ndarray],
    *,
    dtype: str,
    nodata: float,
    scratch: Path,
    band: Band | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """``read(y0, y1, x0, x1)`` gives each window; GDAL's COG driver then adds overviews.
    ``band``: its description, unit and colour table; ``tags``: dataset metadata (provenance)."""
    profile = dict(
        driver="GTiff",
        height=info.height,
        width=info.width,
        count=1,
        dtype=dtype,
        nodata=nodata,
        transform=info.affine,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        BIGTIFF="IF_SAFER",
    )  # uncompressed scratch: compressed once, by the COG driver
    if info.crs is not None:
        profile["crs"] = info.crs
    with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_MB):
        with rasterio.open(scratch, "w", **profile) as ds:
            for y0, y1, x0, x1 in windows(info):
                ds.write(read(y0, y1, x0, x1).astype(dtype), 1, window=Window(x0, y0, x1 - x0, y1 - y0))
            _describe(ds, band, tags or {})
        predictor = 3 if np.dtype(dtype).kind == "f" else 2
        rasterio.shutil.copy(
            scratch,
            dest,
            driver="COG",
            compress="DEFLATE",
            level=1,
            predictor=predictor,
            num_threads="ALL_CPUS",
            blocksize=512,
            overview_resampling="average" if predictor == 3 else "nearest",
            BIGTIFF="IF_SAFER",
        )
    scratch.unlink()


def _describe(ds, band: Band | None, tags: dict[str, str]) -> None:
    """Band description, unit, colour table and tags, kept by the COG copy (in the TIFF itself)."""
    ds.update_tags(**tags)
    if band is None:
        return
    ds.set_band_description(1, band.description)
    if band.units is not None:
        ds.set_band_unit(1, band.units)
    if band.colormap is not None:
        ds.write_colormap(1, band.colormap)
