"""Areas on the ground, in m², for projected and geographic grids.

On a projected grid (metres or feet) every pixel has the same area. On a geographic grid
(EPSG:4326 and other longitude/latitude CRSs, common for DEMs and mosaics) a pixel's area
shrinks towards the poles: it depends on its row only, so it is computed once per row, on the
CRS's ellipsoid with pyproj's ``Geod`` (geodesic area of the pixel's four corners). Objects'
areas are the geodesic areas of their polygons. Grids without a CRS, rotated geographic grids
and angular units other than degrees have no areas (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..ingest.scene import SceneInfo


@dataclass(frozen=True)
class PixelAreas:
    """Pixel areas of a grid: one per row (``rows``, m², shape (H,))."""

    rows: np.ndarray

    def of_mask(self, y0: int, mask: np.ndarray) -> float:
        """Area (m²) of the True pixels of a window whose first row is ``y0``."""
        return float(mask.sum(axis=1) @ self.rows[y0 : y0 + mask.shape[0]])

    @property
    def nominal_m2(self) -> float:
        """A pixel's area at the grid's middle row: turns a minimum area into a pixel count."""
        return float(self.rows[len(self.rows) // 2])


def pixel_areas(info: SceneInfo) -> PixelAreas | None:
    """The grid's pixel areas, or None when they are unknown (no CRS, rotated geographic grid)."""
    return _pixel_areas(info.height, info.crs_wkt, tuple(info.transform[:6]))


@lru_cache(maxsize=8)
def _pixel_areas(height: int, crs_wkt: str | None, transform: tuple[float, ...]) -> PixelAreas | None:
    from pyproj import CRS

    if crs_wkt is None:
        return None
    crs = CRS.from_wkt(crs_wkt)
    a, b, _, d, e, f = transform
    if crs.is_projected:
        unit = crs.axis_info[0].unit_conversion_factor
        return PixelAreas(np.full(height, abs(a * e - b * d) * unit**2))
    if not crs.is_geographic or b or d or not np.isclose(np.degrees(crs.axis_info[0].unit_conversion_factor), 1):
        return None  # rotated, or in an angular unit other than degrees
    geod = crs.get_geod()
    if geod is None:
        return None  # no ellipsoid to measure on
    width = abs(a)
    rows = np.empty(height)
    for r in range(height):
        top, bottom = f + r * e, f + (r + 1) * e
        area, _ = geod.polygon_area_perimeter([0.0, width, width, 0.0], [top, top, bottom, bottom])
        rows[r] = abs(area)
    return PixelAreas(rows)


def object_areas_m2(info: SceneInfo, geoms: Sequence | np.ndarray, pixels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Area (m²) of each object: pixels x pixel area on a projected grid, the geodesic area of
    its polygon on a geographic one; NaN where areas are unknown."""
    areas = pixel_areas(info)
    if areas is None:
        return np.full(len(pixels), np.nan)
    crs = info.crs
    if crs is not None and crs.is_geographic:
        import shapely

        geod = _geod(info.crs_wkt)
        # pyproj subtracts a hole only when it winds against its shell: a union of pieces joined
        # across windows may wind both the same way, and its holes would add to its area.
        oriented = shapely.orient_polygons(np.asarray(geoms, dtype=object))
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in oriented], dtype=np.float64)
    return np.asarray(pixels, dtype=np.float64) * areas.rows[0]


@lru_cache(maxsize=8)
def _geod(crs_wkt: str):
    from pyproj import CRS

    return CRS.from_wkt(crs_wkt).get_geod()
