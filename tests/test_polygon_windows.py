"""Objects cut by window edges come out exactly as a one-window build of the same map gives them:
the same count, polygons (holes too), areas and attributes. The map has large many-holed objects
across every border, a ring whose hole only closes across a border, a diagonal pair that touches
at a corner across a border (two objects, 4-connectivity) and windows cut short at the map's edge."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from scipy import ndimage

from landslide_batch.ingest.scene import SceneInfo
from landslide_batch.outputs.polygons import POLYGON_FILES, ObjectCollector, write_polygons

SIDE, WINDOW, MIN_PIXELS = 100, 32, 3
LAYERS = {"spread": "sum", "first": "min"}


def crossing_map() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """-> (probability, mask, extra layers)."""
    rng = np.random.default_rng(7)
    prob = ndimage.gaussian_filter(rng.random((SIDE, SIDE)), 1.5)
    prob = ((prob - prob.min()) / np.ptp(prob)).astype(np.float32)
    mask = prob >= 0.45  # most of the map: large objects with holes across the borders
    mask[54:72, 0:20] = False
    mask[56:70, 2:18] = True  # a ring around (63, 10) across the border at y = 64: each window
    mask[59:67, 5:15] = False  # holds a U, the hole closes only once the two are merged
    mask[56:70, 25:40] = False
    mask[60:63, 31] = True  # two objects corner to corner across the border at x = 32:
    mask[63, 32:35] = True  # (62, 31) and (63, 32) touch at a corner only
    extra = {"spread": rng.random((SIDE, SIDE)), "first": rng.integers(20240501, 20240531, (SIDE, SIDE)).astype(float)}
    return prob, mask, extra


def collect(window: int) -> tuple[SceneInfo, ObjectCollector]:
    prob, mask, extra = crossing_map()
    crs = rasterio.crs.CRS.from_epsg(32645).to_wkt()
    info = SceneInfo(SIDE, SIDE, ("slope",), crs, (10.0, 0.0, 500000.0, 0.0, -10.0, 3100000.0), window)
    collector = ObjectCollector(info, min_pixels=MIN_PIXELS, reductions=LAYERS)
    slope = np.linspace(0, 40, SIDE * SIDE).reshape(SIDE, SIDE)
    for y0 in range(0, SIDE, window):
        for x0 in range(0, SIDE, window):
            w = (slice(y0, y0 + window), slice(x0, x0 + window))
            collector.add_window(y0, x0, mask[w], prob[w], slope[w], {k: v[w] for k, v in extra.items()})
    return info, collector


def by_place(objects):
    """The written objects in a fixed order (representative point), to compare two builds row by row."""
    return sorted((o for o in objects if o.pixels >= MIN_PIXELS), key=lambda o: o.geom.representative_point().coords[0])


def at(row: float, col: float):
    """The map point at the centre of pixel (row, col)."""
    from shapely import Point

    return Point(500000 + (col + 0.5) * 10, 3100000 - (row + 0.5) * 10)


def test_windows_give_the_objects_of_one_window():
    _, windowed = collect(WINDOW)
    _, whole = collect(SIDE)
    got, want = by_place(windowed.objects()), by_place(whole.objects())
    assert len(got) == len(want) >= 10
    assert sum(p.on_edge for p in windowed.pieces) > len(got)  # many pieces were merged
    for g, w in zip(got, want):
        assert g.geom.geom_type == "Polygon" and g.geom.is_valid
        assert g.geom.equals(w.geom) and g.geom.area == w.geom.area
        assert len(g.geom.interiors) == len(w.geom.interiors)
        assert g.pixels == w.pixels and g.prob_max == w.prob_max
        assert g.prob_sum == pytest.approx(w.prob_sum, rel=1e-9) and g.slope_sum == pytest.approx(w.slope_sum)
        assert g.extra["spread"] == pytest.approx(w.extra["spread"]) and g.extra["first"] == w.extra["first"]
    # The whole mask labelled at once gives the same objects.
    labels, _ = ndimage.label(crossing_map()[1])
    sizes = np.bincount(labels.ravel())[1:]
    assert sorted(o.pixels for o in got) == sorted(s for s in sizes if s >= MIN_PIXELS)
    assert any(len(o.geom.interiors) > 3 for o in got)  # large objects with many holes
    ring = next(o for o in got if o.geom.intersects(at(56, 2)))
    assert ring.pixels == 14 * 16 - 8 * 10 and len(ring.geom.interiors) == 1
    assert ring.geom.interiors[0].envelope.contains(at(63, 10))  # the hole closed across the border
    a, b = (next(o for o in got if o.geom.contains(at(r, c))) for r, c in ((61, 31), (63, 33)))
    assert a is not b and a.pixels == b.pixels == 3  # corner to corner: two objects


@pytest.mark.parametrize("fmt", sorted(POLYGON_FILES))
def test_written_polygons_do_not_depend_on_the_windows(tmp_path, fmt):
    written = []
    for window in (WINDOW, SIDE):
        info, collector = collect(window)
        dest = tmp_path / f"{window}" / POLYGON_FILES[fmt]
        dest.parent.mkdir()
        n = write_polygons(dest, info, collector.table(), MIN_PIXELS, True)
        table = gpd.read_parquet(dest) if fmt == "parquet" else gpd.read_file(dest)
        assert len(table) == n
        order = np.lexsort(np.array([table.geometry.representative_point().x, table.geometry.representative_point().y]))
        written.append(table.iloc[order].reset_index(drop=True))
    windowed, whole = written
    assert len(windowed) == len(whole) > 10 and (windowed.pixels >= MIN_PIXELS).all()
    for column in ("pixels", "area_m2", "mean_probability", "max_probability", "mean_slope_deg"):
        np.testing.assert_allclose(windowed[column], whole[column], rtol=1e-9)
    assert windowed.geometry.geom_equals(whole.geometry).all()


def test_a_window_of_specks_only_keeps_nothing():
    """Objects below the minimum, inside the window: nothing to polygonise, nothing kept."""
    info = SceneInfo(8, 8, (), None, (10.0, 0.0, 0.0, 0.0, -10.0, 80.0), 8)
    collector = ObjectCollector(info, min_pixels=3)
    mask = np.zeros((8, 8), bool)
    mask[2, 2] = mask[5, 5] = True
    collector.add_window(0, 0, mask, np.full((8, 8), 0.9), None)
    assert collector.pieces == [] and collector.objects() == []
