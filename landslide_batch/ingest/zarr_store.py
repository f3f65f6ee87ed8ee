"""A generic Zarr/xarray raster (a variable with dims band, y, x) -> scene store.

Georeferencing comes from rioxarray (the ``spatial_ref`` variable its ``write_crs`` adds, which
the data variable names in ``grid_mapping``: read with ``decode_coords="all"``) or from ``crs`` /
``transform`` attributes. Read window by window through xarray's lazy indexing.

Missing values: a ``_FillValue`` (Zarr v2, CF) is decoded to NaN by xarray. A Zarr v3 array's
``fill_value`` is what its chunks never written read as; xarray does not mask it, so a pixel
holding it in all 12 Sentinel-2 layers is taken as missing (with a warning), like the zero
borders of an untagged GeoTIFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..bands import L4S_BANDS, N_BANDS
from ..errors import InputError
from .scene import Blank, SceneWriter


def ingest_zarr(src: Path | str, dest: Path | str, *, chunk: int, nodata: float | None = None) -> SceneWriter:
    try:
        ds = xr.open_zarr(src, consolidated=False, chunks=None, decode_coords="all")
    except Exception as exc:
        raise InputError(f"{src}: cannot open as a Zarr dataset ({type(exc).__name__}: {exc})") from None
    candidates = [v for v in ds.data_vars.values() if v.ndim == 3]
    if len(candidates) != 1:
        raise InputError(f"{src}: expected one 3-D (band, y, x) variable, found {list(ds.data_vars)}")
    da = candidates[0]
    if da.shape[0] != N_BANDS:
        raise InputError(
            f"{src}: variable {da.name!r} should have {N_BANDS} bands "
            f"({', '.join(L4S_BANDS)}) on its first axis, found shape {da.shape}"
        )
    if da.dtype.kind not in "uif":  # bool would pass as 0/1 and complex lose its imaginary part, silently
        raise InputError(f"{src}: variable {da.name!r} should hold integer or float values, found dtype {da.dtype}")
    import rioxarray  # noqa: F401  (registers .rio)

    crs = da.rio.crs or (ds.attrs.get("crs") and _crs_from(ds.attrs["crs"]))
    if crs is None:
        raise InputError(
            f"{src}: no CRS found (no spatial_ref / grid_mapping variable and no 'crs' attribute); write one "
            "with rioxarray (da.rio.write_crs('EPSG:XXXX')) before to_zarr, or set the store's 'crs' attribute"
        )
    transform = tuple(ds.attrs["transform"])[:6] if "transform" in ds.attrs else tuple(da.rio.transform())[:6]
    nodata = da.rio.nodata if nodata is None else nodata
    writer = SceneWriter(
        dest,
        da.shape[1],
        da.shape[2],
        crs_wkt=crs.to_wkt(),
        transform=transform,
        chunk=chunk,
        source={"path": str(src), "kind": "zarr", "variable": str(da.name)},
        blank=_unwritten(da.encoding.get("fill_value")),
    )
    for y0, y1, x0, x1 in writer.windows():
        writer.write(y0, x0, np.asarray(da[:, y0:y1, x0:x1].values), nodata=nodata)
    return writer


def _unwritten(fill_value) -> Blank | None:
    """The rule for a Zarr v3 array's ``fill_value`` (None when absent or NaN: NaN is invalid anyway)."""
    if fill_value is None or not np.isfinite(float(fill_value)):
        return None
    return Blank(
        float(fill_value),
        "equal the array's fill value (what chunks never written read as)",
        "Write every chunk of the store, or use NaN as its fill value",
    )


def _crs_from(value):
    from rasterio.crs import CRS

    return CRS.from_user_input(value)
