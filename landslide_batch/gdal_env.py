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

#: GDAL's block cache defaults to 5 % of RAM and keeps every block read (a 4096² GeoTIFF ingest
#: peaked at 1061 MB RSS instead of 150 MB). Where each block is read once (windows aligned with
#: a raster's tiles, COGs written then copied) the pipeline keeps none; where windows come back to
#: blocks, ``read_cache_mb`` sizes it, at least this many MB. Unless the user set GDAL_CACHEMAX.
MIN_READ_CACHE_MB = 64
_EPS = 1e-6


def bounded_gdal_cache() -> rasterio.Env:
    """The pipeline's GDAL environment: no block cache (each block read or written once), and
    object-store access configured from the standard credential variables (``storage.gdal_options``)."""
    return storage_env(**_cache_option(0))


def gdal_cache(mb: int) -> rasterio.Env:
    """GDAL's block cache set to ``mb`` MB (0: none kept), unless the user chose a size."""
    return rasterio.Env(**_cache_option(mb * 2**20))


def _cache_option(nbytes: int) -> dict[str, int]:
    """``GDAL_CACHEMAX`` in bytes: rasterio hands a number to ``GDALSetCacheMax64``, which takes
    bytes (``GDAL_CACHEMAX=64`` through ``rasterio.Env`` is a 64-byte cache: only the environment
    variable reads MB). Nothing where the user set the variable."""
    return {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": nbytes}


def read_cache_mb(chunk: int, shape: tuple[int, int], reads: Iterable[tuple[Any, Affine]]) -> int:
    """GDAL's block cache (MB) for reading rasters in chunk² windows of a grid of ``shape``, row of
    windows after row: ``reads`` pairs each dataset read (warped views' VRTs too) with the affine
    from grid pixels to its pixels. When the next row of windows comes back to some blocks (blocks
    taller than a window, as Sentinel-2's 1024² JPEG 2000 tiles in 512² windows, or not aligned
    with the windows), the cache is least-recently-used: it must hold every block a row of windows
    reads, of every dataset; when only the next window across does (strips as wide as the
    raster), a window's; when no block is read twice (tiles aligned with the windows), none: 0.
    1.25x for GDAL's overhead; at least ``MIN_READ_CACHE_MB``. Smaller, GDAL decodes a block again
    for each window that touches it."""
    blocks = [_blocks_read(ds, to_ds, chunk, shape) for ds, to_ds in reads]
    if not any(across or down for *_, across, down in blocks):
        return 0
    row = any(down for *_, down in blocks)
    held = sum(in_row if row else in_window for in_window, in_row, _, _ in blocks)
    return max(MIN_READ_CACHE_MB, int(1.25 * held / 2**20))


def _blocks_read(ds, to_ds: Affine, chunk: int, shape: tuple[int, int]) -> tuple[int, int, bool, bool]:
    """Bytes of ``ds``'s blocks one window reads, and one row of windows; whether the next window
    across reads some of the same, and whether the next row of windows does."""
    (bh, bw), (height, width) = ds.block_shapes[0], shape
    rows, down = _blocks_along(to_ds.f, to_ds.e, height, chunk, bh, ds.height)
    cols, across = _blocks_along(to_ds.c, to_ds.a, width, chunk, bw, ds.width)
    in_row, _ = _blocks_along(to_ds.c, to_ds.a, width, width, bw, ds.width)
    block = bh * bw * ds.count * max(np.dtype(d).itemsize for d in ds.dtypes)
    return rows * cols * block, rows * in_row * block, across, down


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
