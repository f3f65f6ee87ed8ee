"""DEM -> elevation and slope on the scene grid, window by window.

Slope is the slope *angle in degrees* (L4S layer 13: slope derived from the ALOS PALSAR
DEM), computed with Horn's 3x3 method (the default of ``gdaldem slope`` and of ArcGIS) on
the DEM's own grid, with true pixel sizes in metres: a projected CRS uses its linear unit,
a geographic CRS uses the metres per degree of longitude and latitude of each row's
latitude on the CRS's ellipsoid. The slope is then resampled onto the scene grid, as L4S
resampled its 12.5 m slope to 10 m. Elevations are taken to be metres. Distances in a
projected CRS are grid distances (UTM: within 0.04 % of true ones; negligible in degrees).

Each window of the scene grid reads only the DEM window it needs, plus a margin for the
3x3 kernel and the resampling kernel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.merge import merge
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from ..errors import InputError
from .resample import RESAMPLING, Grid, open_raster, require_north_up

log = logging.getLogger(__name__)

_WGS84 = (6378137.0, 1 / 298.257223563)


def _ellipsoid(crs: CRS) -> tuple[float, float]:
    """(semi-major axis m, flattening) of a geographic CRS; WGS84 if unknown."""
    return _ellipsoid_of(crs.to_wkt())


@lru_cache(maxsize=16)
def _ellipsoid_of(wkt: str) -> tuple[float, float]:
    try:
        import pyproj

        ell = pyproj.CRS.from_wkt(wkt).ellipsoid
        if ell is not None and ell.semi_major_metre:
            inv_f = ell.inverse_flattening
            return ell.semi_major_metre, (1.0 / inv_f) if inv_f else 0.0
    except Exception as exc:  # pyproj raises its own types for unknown or damaged definitions
        log.warning(
            "DEM CRS %s: cannot read its ellipsoid (%s: %s); slope uses WGS84's", wkt[:80], type(exc).__name__, exc
        )
        return _WGS84
    log.warning("DEM CRS %s names no ellipsoid; slope uses WGS84's", wkt[:80])
    return _WGS84


def metres_per_degree(lat_deg: np.ndarray, a: float = _WGS84[0], f: float = _WGS84[1]) -> tuple[np.ndarray, np.ndarray]:
    """(metres per degree of longitude, of latitude) at geodetic latitude ``lat_deg`` on an ellipsoid."""
    phi = np.radians(np.asarray(lat_deg, dtype=np.float64))
    e2 = f * (2 - f)
    w = np.sqrt(1 - e2 * np.sin(phi) ** 2)
    per_lon = np.pi / 180 * a * np.cos(phi) / w
    per_lat = np.pi / 180 * a * (1 - e2) / w**3
    return per_lon, per_lat


def pixel_size_m(transform: Affine, crs: CRS | None, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (dx, dy) pixel sizes in metres of a north-up grid."""
    dx, dy = abs(transform.a), abs(transform.e)
    if crs is not None and crs.is_geographic:
        lat = transform.f + transform.e * (np.arange(n_rows) + 0.5)
        per_lon, per_lat = metres_per_degree(lat, *_ellipsoid(crs))
        return dx * per_lon, dy * per_lat
    factor = crs.linear_units_factor[1] if crs is not None and crs.is_projected else 1.0
    return np.full(n_rows, dx * factor), np.full(n_rows, dy * factor)


def horn_slope(dem: np.ndarray, dx_m: np.ndarray | float, dy_m: np.ndarray | float) -> np.ndarray:
    """Slope angle in degrees of a north-up DEM (metres) with per-row pixel sizes in metres.

    Horn (1981): dz/dx = ((c + 2f + i) - (a + 2d + g)) / 8dx, dz/dy likewise over rows.
    Edges are extended linearly (odd reflection), so a plane keeps its slope up to the border.
    NaN (no data) spreads to the 3x3 neighbourhood.
    """
    z = np.asarray(dem, dtype=np.float64)
    p = np.pad(z, 1, mode="reflect", reflect_type="odd") if min(z.shape) >= 2 else np.pad(z, 1, mode="edge")
    dx = np.broadcast_to(np.asarray(dx_m, dtype=np.float64).reshape(-1, 1) if np.ndim(dx_m) else dx_m, (z.shape[0], 1))
    dy = np.broadcast_to(np.asarray(dy_m, dtype=np.float64).reshape(-1, 1) if np.ndim(dy_m) else dy_m, (z.shape[0], 1))
    a, b, c = p[:-2, :-2], p[:-2, 1:-1], p[:-2, 2:]
    d, f = p[1:-1, :-2], p[1:-1, 2:]
    g, h, i = p[2:, :-2], p[2:, 1:-1], p[2:, 2:]
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * dx)
    dzdy = ((g + 2 * h + i) - (a + 2 * b + c)) / (8 * dy)
    return np.degrees(np.arctan(np.hypot(dzdx, dzdy))).astype(np.float32)


class TerrainReader:
    """Elevation (and slope, when ``compute_slope``) of a DEM on windows of ``grid``. The DEM is one
    file or several tiles (``paths``), mosaicked per window on the first tile's pixel grid, so
    slope is computed across tile seams as on one file."""

    def __init__(
        self,
        paths: str | Sequence[str],
        grid: Grid,
        *,
        bidx: int = 1,
        compute_slope: bool = True,
        resampling: str = "bilinear",
        what: str = "DEM",
        nodata: float | None = None,
    ):
        self.tiles: list = []
        try:
            for path in [paths] if isinstance(paths, str) else paths:
                self.tiles.append(open_raster(path, what))
                require_north_up(self.tiles[-1], what)
            self.ds = self.tiles[0]
            if crss := {str(t.crs) for t in self.tiles if t.crs != self.ds.crs}:
                raise InputError(f"{what}: tiles in different CRSs ({self.ds.crs}, {sorted(crss)}); warp them to one")
        except InputError:
            self.close()
            raise
        self.grid, self.bidx, self.compute_slope = grid, bidx, compute_slope
        self.resampling = RESAMPLING[resampling]
        self.what = what
        self.nodata = nodata  # an extra no-data value besides the file's own
        self.same_crs = self.ds.crs == grid.crs

    def close(self) -> None:
        for tile in self.tiles:
            tile.close()

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """-> (elevation float32 (h, w), slope degrees float32 (h, w) or None); NaN where not covered."""
        h, w = y1 - y0, x1 - x0
        dst_t = self.grid.window_transform(y0, x0)
        elev = np.full((h, w), np.nan, np.float32)
        slope = np.full((h, w), np.nan, np.float32) if self.compute_slope else None
        left, top = dst_t @ (0, 0)
        right, bottom = dst_t @ (w, h)
        bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
        if not self.same_crs:
            bounds = transform_bounds(self.grid.crs, self.ds.crs, *bounds, densify_pts=21)
        src_t = self.ds.transform
        inv = ~src_t
        c_a, r_a = inv @ (bounds[0], bounds[3])
        c_b, r_b = inv @ (bounds[2], bounds[1])
        ratio = max((c_b - c_a) / max(w, 1), (r_b - r_a) / max(h, 1), 1e-9)
        pad = 3 + 2 * math.ceil(ratio)  # Horn kernel + resampling kernel (wider when downsampling)
        cols, rows = (math.floor(c_a) - pad, math.ceil(c_b) + pad), (math.floor(r_a) - pad, math.ceil(r_b) + pad)
        z, win_t = self._read_dem(cols, rows)
        if z is None:
            return elev, slope  # the DEM does not reach this window
        if self.nodata is not None and not np.isnan(self.nodata):
            z[z == self.nodata] = np.nan
        layers = [z.astype(np.float32)]
        if self.compute_slope:
            dx, dy = pixel_size_m(win_t, self.ds.crs, z.shape[0])
            layers.append(horn_slope(z, dx, dy))
        src = np.stack(layers)
        dst = np.full((len(layers), h, w), np.nan, np.float32)
        reproject(
            source=src,
            destination=dst,
            src_transform=win_t,
            src_crs=self.ds.crs,
            dst_transform=dst_t,
            dst_crs=self.grid.crs,
            resampling=self.resampling,
            src_nodata=np.nan,
            dst_nodata=np.nan,
        )
        elev[:] = dst[0]
        if slope is not None:
            slope[:] = dst[1]
        return elev, slope

    def _read_dem(self, cols: tuple[int, int], rows: tuple[int, int]) -> tuple[np.ndarray | None, Affine]:
        """Elevations (float64, NaN for no data) of columns/rows ``[c0, c1)``, ``[r0, r1)`` of the first
        tile's pixel grid: a windowed read of one file (cut to it), or the tiles merged there."""
        (c0, c1), (r0, r1) = cols, rows
        if len(self.tiles) == 1:
            c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, self.ds.width), min(r1, self.ds.height)
            if c1 - c0 < 1 or r1 - r0 < 1:
                return None, self.ds.transform
        win = Window(c0, r0, c1 - c0, r1 - r0)
        try:
            if len(self.tiles) == 1:
                z = self.ds.read(self.bidx, window=win, out_dtype="float64", masked=True).filled(np.nan)
                return z, self.ds.window_transform(win)
            t = self.ds.transform
            z, win_t = merge(
                self.tiles,
                bounds=self.ds.window_bounds(win),
                res=(abs(t.a), abs(t.e)),
                nodata=np.nan,
                dtype="float64",
                indexes=[self.bidx],
            )
        except RasterioError as exc:
            raise InputError(f"{self.what}: read failed in window {win} of {self.ds.name}: {exc}") from None
        return z[0], win_t
