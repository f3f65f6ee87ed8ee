"""GDAL settings for the pipeline's raster I/O."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from .storage import storage_env

#: GDAL's block cache defaults to 5 % of RAM and fills with blocks that are read once
#: (ingest, COG writing): cap it, unless the user chose a size (GDAL_CACHEMAX).
GDAL_CACHE_MB = 64
_EPS = 1e-6


def bounded_gdal_cache() -> rasterio.Env:
    """The pipeline's GDAL environment: the bounded cache, and object-store access configured
    from the standard credential variables (``storage.gdal_options``)."""
    return storage_env(**({} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB}))


def gdal_cache(mb: int) -> rasterio.Env:
    """GDAL's block cache set to ``mb`` MB, unless the user chose a size (GDAL_CACHEMAX). In
    bytes: rasterio hands a number to ``GDALSetCacheMax64``, which takes bytes (``GDAL_CACHEMAX=64``
    through ``rasterio.Env`` is a 64-byte cache; only the environment variable reads MB)."""
    return rasterio.Env(**({} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": mb * 2**20}))


def read_cache_mb(chunk: int, shape: tuple[int, int], reads: Iterable[tuple[Any, Affine]]) -> int:
    """GDAL's block cache (MB) for reading rasters in chunk² windows of a grid of ``shape``, row of
    windows after row: ``reads`` pairs each dataset read (warped views' VRTs too) with the affine
    from grid pixels to its pixels. When the next row of windows comes back to some blocks (blocks
    taller than a window, as Sentinel-2's 1024² JPEG 2000 tiles in 512² windows, or not aligned
    with the windows), the cache is least-recently-used: it must hold every block a row of windows
    reads, of every dataset; else a window's. 1.25x for GDAL's overhead; at least
    ``GDAL_CACHE_MB``. Smaller, GDAL decodes a block again for each window that touches it."""
    blocks = [_blocks_read(ds, to_ds, chunk, shape) for ds, to_ds in reads]
    row = any(shared for *_, shared in blocks)
    held = sum(in_row if row else in_window for in_window, in_row, _ in blocks)
    return max(GDAL_CACHE_MB, int(1.25 * held / 2**20))


def _blocks_read(ds, to_ds: Affine, chunk: int, shape: tuple[int, int]) -> tuple[int, int, bool]:
    """Bytes of ``ds``'s blocks one window reads, and one row of windows; whether the next row of
    windows reads some of the same."""
    (bh, bw), (height, width) = ds.block_shapes[0], shape
    rows, shared = _blocks_along(to_ds.f, to_ds.e, height, chunk, bh, ds.height)
    cols, _ = _blocks_along(to_ds.c, to_ds.a, width, chunk, bw, ds.width)
    across, _ = _blocks_along(to_ds.c, to_ds.a, width, width, bw, ds.width)
    block = bh * bw * ds.count * max(np.dtype(d).itemsize for d in ds.dtypes)
    return rows * cols * block, rows * across * block, shared


def _blocks_along(start: float, scale: float, length: int, chunk: int, block: int, size: int) -> tuple[int, bool]:
    """Along one axis (grid pixel g at source pixel ``start + scale * g``; windows of ``chunk``
    grid pixels over ``length``; a raster of ``size`` pixels in blocks of ``block``): the most
    blocks one window touches, and whether two neighbouring windows touch the same block."""
    edges = [start + scale * g for g in (*range(0, length, chunk), length)]
    most = 0
    for a, b in zip(edges, edges[1:]):
        lo, hi = max(min(a, b), 0.0), min(max(a, b), float(size))
        if hi > lo:
            most = max(most, math.ceil(hi / block - _EPS) - math.floor(lo / block + _EPS))
    shared = any(0 < e < size and abs(e / block - round(e / block)) > _EPS for e in edges[1:-1])
    return most, shared
