"""Cloud-Optimized GeoTIFFs from the output store, written window by window."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from ..gdal_env import gdal_cache
from ..ingest.scene import SceneInfo
from .metadata import Band

WINDOW = 1024


def windows(info: SceneInfo, size: int = WINDOW):
    for y0 in range(0, info.height, size):
        for x0 in range(0, info.width, size):
            yield y0, min(y0 + size, info.height), x0, min(x0 + size, info.width)


#: Writes ``values`` into the window ``[y0, y1) x [x0, x1)`` of a raster being written.
WindowWriter = Callable[[int, int, int, int, np.ndarray], None]


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
    with scratch_raster(scratch, info, dtype=dtype, nodata=nodata, band=band, tags=tags) as write:
        for y0, y1, x0, x1 in windows(info):
            write(y0, y1, x0, x1, read(y0, y1, x0, x1))
    copy_cog(scratch, dest, dtype)


@contextmanager
def scratch_raster(
    path: Path,
    info: SceneInfo,
    *,
    dtype: str,
    nodata: float,
    band: Band | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[WindowWriter]:
    """An uncompressed tiled GeoTIFF written window by window, in any order, for
    :func:`copy_cog` to compress once the last window is in; its band and ``tags`` are set when
    the context closes without an error."""
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
    )
    if info.crs is not None:
        profile["crs"] = info.crs
    # No block cache: each block is written once and read once by the copy. GDAL's default, 5 % of
    # the machine's memory, filled with them: a finish's peak RSS grew with the map (1.2 GB more at 16384²).
    with gdal_cache(0), rasterio.open(path, "w", **profile) as ds:

        def write(y0: int, y1: int, x0: int, x1: int, values: np.ndarray) -> None:
            ds.write(values.astype(dtype), 1, window=Window(x0, y0, x1 - x0, y1 - y0))

        yield write
        _describe(ds, band, tags or {})


def copy_cog(scratch: Path, dest: Path, dtype: str) -> None:
    """The COG of a finished :func:`scratch_raster` (DEFLATE, overviews); the scratch goes."""
    predictor = 3 if np.dtype(dtype).kind == "f" else 2
    with gdal_cache(0):
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
