"""The output grid (the reference band's 10 m grid, cut to the AOI) and warped views onto it.

Every source raster is seen through a ``WarpedVRT`` on the output grid: reading a window of
the VRT makes GDAL read, reproject and resample only the source blocks that window needs,
so memory is bounded by the window, never by the scene. A source already on the grid (the
10 m bands, up to a whole-pixel shift) is read directly, unchanged. GDAL's warper honours
``GDAL_NUM_THREADS`` (e.g. ``ALL_CPUS``) for multi-threaded resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import InputError

RESAMPLING = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "cubic_spline": Resampling.cubic_spline,
    "lanczos": Resampling.lanczos,
    "average": Resampling.average,
}
_EPS = 1e-6


@dataclass(frozen=True)
class Grid:
    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> float:
        return abs(self.transform.a)

    def res_m(self) -> float | None:
        if not self.crs.is_projected:
            return None
        return self.res * self.crs.linear_units_factor[1]

    def window_transform(self, y0: int, x0: int) -> Affine:
        return self.transform @ Affine.translation(x0, y0)

    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return min(left, right), min(top, bottom), max(left, right), max(top, bottom)

    def subgrid(self, row0: int, row1: int, col0: int, col1: int) -> Grid:
        return Grid(self.crs, self.window_transform(row0, col0), col1 - col0, row1 - row0)

    def pixel_window(self, bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """Bounds in this grid's CRS -> (row0, row1, col0, col1) of the pixels they touch, unclipped."""
        minx, miny, maxx, maxy = bounds
        inv = ~self.transform
        cols, rows = zip(*(inv @ (x, y) for x, y in ((minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy))))
        return (
            math.floor(min(rows) + _EPS),
            math.ceil(max(rows) - _EPS),
            math.floor(min(cols) + _EPS),
            math.ceil(max(cols) - _EPS),
        )


def open_raster(path: str, what: str):
    try:
        return rasterio.open(path)
    except RasterioError as exc:
        raise InputError(f"{what}: cannot open {path} as a raster ({exc})") from None


def require_north_up(ds, what: str) -> None:
    t = ds.transform
    if ds.crs is None:
        raise InputError(f"{what}: {ds.name} has no CRS; band files must be georeferenced")
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise InputError(
            f"{what}: {ds.name} is not on a north-up grid (transform {tuple(t)[:6]}); warp it north-up first (gdalwarp)"
        )


def reference_grid(ds) -> Grid:
    require_north_up(ds, "reference band")
    return Grid(ds.crs, ds.transform, ds.width, ds.height)


def warped(
    ds, grid: Grid, *, resampling: str = "bilinear", src_nodata=None, dtype: str = "float32", nodata=np.nan
) -> WarpedVRT:
    """A VRT of all bands of ``ds`` on ``grid``; pixels outside the source (or nodata) read as ``nodata``."""
    kwargs = dict(
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=RESAMPLING[resampling],
        dtype=dtype,
        nodata=nodata,
        src_nodata=src_nodata,
    )
    try:
        return WarpedVRT(ds, **kwargs)
    except RasterioError as exc:
        raise InputError(f"cannot warp {ds.name} onto the scene grid ({exc})") from None


def grid_offset(ds, grid: Grid, tol: float = 1e-6) -> tuple[int, int] | None:
    """(row, col) of ``grid``'s origin in ``ds``'s pixels when ``ds`` shares its CRS, pixel size and
    pixel alignment (a plain windowed read then gives the grid's pixels); else None."""
    t, g = ds.transform, grid.transform
    if ds.crs != grid.crs or t.b or t.d or abs(t.a - g.a) > tol * abs(g.a) or abs(t.e - g.e) > tol * abs(g.e):
        return None
    col, row = (g.c - t.c) / t.a, (g.f - t.f) / t.e
    if abs(col - round(col)) > tol or abs(row - round(row)) > tol:
        return None
    return int(round(row)), int(round(col))


class View:
    """A source raster seen on the output grid: ``read(bidx, y0, y1, x0, x1)`` -> (h, w) array."""

    same_grid = False

    def read(self, bidx: int, y0: int, y1: int, x0: int, x1: int, what: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class WarpedView(View):
    def __init__(self, ds, grid: Grid, **kw):
        self.vrt = warped(ds, grid, **kw)

    def read(self, bidx, y0, y1, x0, x1, what):
        return read_window(self.vrt, bidx, y0, y1, x0, x1, what)

    def close(self) -> None:
        self.vrt.close()


class AlignedView(View):
    """Same grid (up to a whole-pixel shift): windowed reads, no resampling; outside -> ``nodata``."""

    same_grid = True

    def __init__(self, ds, offset: tuple[int, int], *, src_nodata=None, dtype: str = "float32", nodata=np.nan):
        self.ds, (self.dr, self.dc) = ds, offset
        self.src_nodata, self.dtype, self.nodata = src_nodata, dtype, nodata

    def read(self, bidx, y0, y1, x0, x1, what):
        h, w = y1 - y0, x1 - x0
        out = np.full((h, w), self.nodata, dtype=self.dtype)
        r0, c0 = y0 + self.dr, x0 + self.dc
        rr0, rr1 = max(r0, 0), min(r0 + h, self.ds.height)
        cc0, cc1 = max(c0, 0), min(c0 + w, self.ds.width)
        if rr1 <= rr0 or cc1 <= cc0:
            return out
        try:
            a = self.ds.read(bidx, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
        except RasterioError as exc:
            raise InputError(
                f"{what}: read failed in rows {rr0}:{rr1}, cols {cc0}:{cc1} of {self.ds.name} "
                f"(file truncated or corrupt?): {exc}"
            ) from None
        part = a.astype(self.dtype, copy=False)
        if self.src_nodata is not None:
            bad = (
                np.isnan(a)
                if isinstance(self.src_nodata, float) and np.isnan(self.src_nodata)
                else a == self.src_nodata
            )
            part = np.where(bad, np.asarray(self.nodata, dtype=self.dtype), part)
        out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = part
        return out


def view(
    ds, grid: Grid, *, resampling: str = "bilinear", src_nodata=None, dtype: str = "float32", nodata=np.nan
) -> View:
    """The cheapest exact view of ``ds`` on ``grid``: a plain read when the grids coincide, else a WarpedVRT."""
    offset = grid_offset(ds, grid)
    if offset is not None:
        return AlignedView(ds, offset, src_nodata=src_nodata, dtype=dtype, nodata=nodata)
    return WarpedView(ds, grid, resampling=resampling, src_nodata=src_nodata, dtype=dtype, nodata=nodata)


def read_window(vrt: WarpedVRT, bidx: int, y0: int, y1: int, x0: int, x1: int, what: str) -> np.ndarray:
    try:
        return vrt.read(bidx, window=Window(x0, y0, x1 - x0, y1 - y0))
    except RasterioError as exc:
        raise InputError(
            f"{what}: read failed in rows {y0}:{y1}, cols {x0}:{x1} of the scene grid "
            f"(file truncated or corrupt?): {exc}"
        ) from None
