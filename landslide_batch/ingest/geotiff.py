"""GeoTIFF (or any single multi-band raster GDAL reads) -> scene store, window by window."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError

from ..bands import L4S_BANDS, N_BANDS
from ..errors import InputError
from ..gdal_env import gdal_cache, read_cache_mb
from .scene import INGEST_THREADS, Blank, SceneWriter

#: A raster without a nodata tag: zero in every Sentinel-2 layer is a border or fill, not ground
#: (no surface reflects nothing in all 12 bands, and 0 is the L2A products' no-data number).
UNTAGGED_ZEROS = Blank(
    0.0,
    "the file has no nodata tag",
    "A nodata tag on the file (gdal_edit.py -a_nodata VALUE) replaces this rule",
)


def ingest_geotiff(
    src: Path | str, dest: Path | str, *, chunk: int, nodata: float | None = None, require_crs: bool = True
) -> SceneWriter:
    try:
        ds = rasterio.open(src)
    except RasterioError as exc:
        raise InputError(f"{src}: cannot open as a raster (corrupt, truncated or not a GeoTIFF): {exc}") from None
    with ds:
        if ds.count != N_BANDS:
            raise InputError(
                f"{src}: expected {N_BANDS} bands in Landslide4Sense order ({', '.join(L4S_BANDS)}), found {ds.count}"
            )
        kinds = {np.dtype(d).kind for d in ds.dtypes}
        if not kinds <= {"u", "i", "f"}:
            raise InputError(f"{src}: expected integer or float bands, found dtypes {sorted(set(ds.dtypes))}")
        if ds.crs is None and require_crs:
            raise InputError(
                f"{src}: raster has no CRS; outputs could not be georeferenced. "
                "Set the CRS in the file (gdal_edit.py -a_srs EPSG:XXXX) first"
            )
        if ds.transform.is_identity and ds.crs is not None:
            raise InputError(f"{src}: raster has a CRS but an identity geotransform; its pixels have no location")
        nodata = ds.nodata if nodata is None else nodata
        writer = SceneWriter(
            dest,
            ds.height,
            ds.width,
            crs_wkt=ds.crs.to_wkt() if ds.crs else None,
            transform=tuple(ds.transform)[:6],
            chunk=chunk,
            source={"path": str(src), "kind": "geotiff", "nodata": nodata},
            blank=UNTAGGED_ZEROS if nodata is None else None,
        )
        cache_mb = read_cache_mb(writer.chunk, (ds.height, ds.width), [(ds, Affine.identity())])
        # Windows in parallel only where they share no block (each thread's handle decodes its own
        # blocks: a strip two windows share would be decoded twice, the cache sized for one), and
        # only from a local file: rasterio's environment (an object store's endpoint and keys) is
        # the calling thread's, which the pool's threads do not see.
        threads = INGEST_THREADS if cache_mb == 0 and os.path.isfile(src) else 1
        with gdal_cache(cache_mb), _window_reader(src) as read:
            writer.fill(read, nodata=nodata, threads=threads)
    return writer


@contextmanager
def _window_reader(src: Path | str) -> Iterator[Callable[[int, int, int, int], np.ndarray]]:
    """``SceneWriter.fill``'s reader of ``src``: a dataset per thread (a GDAL handle is not shared
    between threads), all closed at the end."""
    local, opened = threading.local(), []

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if (ds := getattr(local, "ds", None)) is None:
            ds = local.ds = rasterio.open(src)
            opened.append(ds)
        try:
            return ds.read(window=rasterio.windows.Window(x0, y0, x1 - x0, y1 - y0))
        except RasterioError as exc:
            raise InputError(
                f"{src}: read failed in window rows {y0}:{y1}, cols {x0}:{x1} (file truncated or corrupt): {exc}"
            ) from None

    try:
        yield read
    finally:
        for ds in opened:
            ds.close()
