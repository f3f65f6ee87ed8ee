"""Objects' areas on a geographic grid: geodesic, holes subtracted however the rings wind."""

from __future__ import annotations

import pytest
from pyproj import Geod
from rasterio.crs import CRS
from shapely.geometry import Polygon

from landslide_batch.ingest.scene import SceneInfo
from landslide_batch.outputs.areas import object_areas_m2

WEST, NORTH, PIXEL = 85.3, 28.0, 1e-4


def box(x0: int, y0: int, x1: int, y1: int) -> list[tuple[float, float]]:
    """A pixel box's ring (lon, lat), counter-clockwise."""
    w, e, n, s = WEST + x0 * PIXEL, WEST + x1 * PIXEL, NORTH - y0 * PIXEL, NORTH - y1 * PIXEL
    return [(w, s), (e, s), (e, n), (w, n)]


@pytest.mark.parametrize("hole_winding", ["against the shell", "with the shell"])
def test_a_hole_is_subtracted_from_the_geodesic_area_whichever_way_it_winds(hole_winding):
    """A union of pieces joined across windows may wind its holes as its shell: still subtracted."""
    info = SceneInfo(100, 100, ("slope",), CRS.from_epsg(4326).to_wkt(), (PIXEL, 0, WEST, 0, -PIXEL, NORTH), 64)
    shell, hole = box(0, 0, 40, 30), box(10, 10, 30, 20)
    polygon = Polygon(shell, [hole[::-1] if hole_winding == "against the shell" else hole])
    geod = Geod(ellps="WGS84")

    def ring_m2(ring):
        lons, lats = zip(*ring)
        return abs(geod.polygon_area_perimeter(lons, lats)[0])

    expected = ring_m2(shell) - ring_m2(hole)  # independent: each ring's geodesic area
    (got,) = object_areas_m2(info, [polygon], [40 * 30 - 20 * 10])
    assert got == pytest.approx(expected, rel=1e-9)
    assert 100 < got / (40 * 30 - 20 * 10) < 120  # ~ 9.8 m x 11.1 m pixels at 28° N
