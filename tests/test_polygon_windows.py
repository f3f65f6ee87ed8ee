"""Objects cut by window edges come out exactly as a one-window build of the same map gives them:
the same count, polygons (holes too), areas and attributes. The map has large many-holed objects
across every border, a ring whose hole only closes across a border, a diagonal pair that touches
at a corner across a border (two objects, 4-connectivity) and windows cut short at the map's edge.
Objects streamed to the file window by window give the file a one-window build writes, and what
the collector holds at once stays bounded by the pieces along the open borders (issue 29)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from scipy import ndimage

from landslide_batch.ingest.scene import SceneInfo
from landslide_batch.outputs import polygons
from landslide_batch.outputs.polygons import POLYGON_FILES, ObjectCollector, Pieces, stream_polygons

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


def grid(window: int) -> SceneInfo:
    crs = rasterio.crs.CRS.from_epsg(32645).to_wkt()
    return SceneInfo(SIDE, SIDE, ("slope",), crs, (10.0, 0.0, 500000.0, 0.0, -10.0, 3100000.0), window)


def windows_of(collector: ObjectCollector, window: int, maps=None, order=None):
    """Add the map's windows (row by row, or in ``order``), yielding after each one."""
    prob, mask, extra = maps or crossing_map()
    side = len(prob)
    slope = np.linspace(0, 40, side * side).reshape(side, side)
    places = [(y0, x0) for y0 in range(0, side, window) for x0 in range(0, side, window)]
    for y0, x0 in order(places) if order else places:
        w = (slice(y0, y0 + window), slice(x0, x0 + window))
        collector.add_window(y0, x0, mask[w], prob[w], slope[w], {k: v[w] for k, v in extra.items()})
        yield


def collect(window: int, order=None) -> tuple[SceneInfo, ObjectCollector]:
    info = grid(window)
    collector = ObjectCollector(info, min_pixels=MIN_PIXELS, reductions=LAYERS)
    for _ in windows_of(collector, window, order=order):
        pass
    return info, collector


def by_place(collector: ObjectCollector) -> Pieces:
    """The objects written in a fixed order (representative point), to compare two builds row by row."""
    table = collector.table()
    table = table.take(table.pixels >= MIN_PIXELS)
    point = shapely.get_coordinates(shapely.point_on_surface(table.geom))
    return table.take(np.lexsort((point[:, 1], point[:, 0])))


def at(row: float, col: float):
    """The map point at the centre of pixel (row, col)."""
    from shapely import Point

    return Point(500000 + (col + 0.5) * 10, 3100000 - (row + 0.5) * 10)


def test_windows_give_the_objects_of_one_window():
    _, windowed = collect(WINDOW)
    _, whole = collect(SIDE)
    got, want = by_place(windowed), by_place(whole)
    assert len(got) == len(want) >= 10
    assert windowed.kept > whole.kept  # many pieces were joined
    assert (shapely.get_type_id(got.geom) == shapely.GeometryType.POLYGON).all() and shapely.is_valid(got.geom).all()
    assert shapely.equals(got.geom, want.geom).all() and (shapely.area(got.geom) == shapely.area(want.geom)).all()
    holes = shapely.get_num_interior_rings(got.geom)
    assert (holes == shapely.get_num_interior_rings(want.geom)).all()
    assert (got.pixels == want.pixels).all() and (got.prob_max == want.prob_max).all()
    np.testing.assert_allclose(got.prob_sum, want.prob_sum, rtol=1e-9)
    np.testing.assert_allclose(got.slope_sum, want.slope_sum, rtol=1e-6)
    np.testing.assert_allclose(got.extra["spread"], want.extra["spread"], rtol=1e-6)
    assert (got.extra["first"] == want.extra["first"]).all()
    # The whole mask labelled at once gives the same objects.
    labels, _ = ndimage.label(crossing_map()[1])
    sizes = np.bincount(labels.ravel())[1:]
    assert sorted(got.pixels) == sorted(s for s in sizes if s >= MIN_PIXELS)
    assert (holes > 3).any()  # large objects with many holes
    ring = got.take(shapely.intersects(got.geom, at(56, 2)))
    assert list(ring.pixels) == [14 * 16 - 8 * 10] and len(ring.geom[0].interiors) == 1
    assert ring.geom[0].interiors[0].envelope.contains(at(63, 10))  # the hole closed across the border
    a, b = (np.flatnonzero(shapely.contains(got.geom, at(r, c))) for r, c in ((61, 31), (63, 33)))
    assert len(a) == len(b) == 1 and a != b and got.pixels[a] == got.pixels[b] == 3  # corner to corner: two objects


def test_windows_added_in_any_order_give_the_same_objects():
    """Groups are finished when no window still to come borders them, whatever the order."""
    _, whole = collect(SIDE)
    want = by_place(whole)
    for order in (lambda p: p[::-1], lambda p: sorted(p, key=lambda yx: (yx[1], yx[0]))):
        _, windowed = collect(WINDOW, order)
        got = by_place(windowed)
        assert list(got.pixels) == list(want.pixels)
        assert shapely.equals(got.geom, want.geom).all() and (got.prob_max == want.prob_max).all()


def read_table(dest):
    """A written polygon file, rows in a fixed order (representative point), ids checked."""
    table = gpd.read_parquet(dest) if dest.suffix == ".parquet" else gpd.read_file(dest)
    assert sorted(table.object_id) == list(range(1, len(table) + 1))
    point = table.geometry.representative_point()
    return table.iloc[np.lexsort(np.array([point.x, point.y]))].reset_index(drop=True)


@pytest.mark.parametrize("fmt", sorted(POLYGON_FILES))
def test_polygons_written_window_by_window_equal_a_one_window_build(tmp_path, fmt, monkeypatch):
    """The windowed build streams its finished objects to the file in several batches (row groups);
    the one-window build writes its table at once: the same file, rows in another order."""
    monkeypatch.setattr(polygons, "BATCH_ROWS", 4)
    info = grid(WINDOW)
    collector = ObjectCollector(info, min_pixels=MIN_PIXELS, reductions=LAYERS)
    parts = (collector.pop_finished() for _ in windows_of(collector, WINDOW))
    streamed = tmp_path / "windows" / POLYGON_FILES[fmt]
    streamed.parent.mkdir()
    n = stream_polygons(streamed, info, parts, MIN_PIXELS, True)
    assert collector.held == 0 and collector.table().pixels.size == 0  # everything went to the file
    info_whole, whole = collect(SIDE)
    one = tmp_path / "one" / POLYGON_FILES[fmt]
    one.parent.mkdir()
    assert stream_polygons(one, info_whole, [whole.table()], MIN_PIXELS, True) == n
    windowed, reference = read_table(streamed), read_table(one)
    assert len(windowed) == len(reference) == n > 10 and (windowed.pixels >= MIN_PIXELS).all()
    assert windowed.crs == reference.crs == "EPSG:32645"
    for column in ("pixels", "area_m2", "mean_probability", "max_probability", "mean_slope_deg"):
        np.testing.assert_allclose(windowed[column], reference[column], rtol=1e-9)
    assert windowed.geometry.geom_equals(reference.geometry).all()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.ParquetFile(streamed).num_row_groups > 2  # written as the windows came
        geo = pq.read_schema(streamed).metadata[b"geo"]
        assert b'"Polygon"' in geo and b'"bbox"' in geo


def speckled_map(side: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Many small objects all over the map, a few cut by window borders."""
    rng = np.random.default_rng(11)
    prob = ndimage.gaussian_filter(rng.random((side, side)), 1.0).astype(np.float32)
    prob = (prob - prob.min()) / np.ptp(prob)
    extra = {"spread": rng.random((side, side)), "first": np.zeros((side, side))}
    return prob, prob >= 0.6, extra


def window_bound(mask: np.ndarray, window: int = WINDOW, min_pixels: int = MIN_PIXELS) -> int:
    """What a collector may hold at once over ``mask`` in row-major windows: the pieces touching
    the borders of the last two rows of windows, and one window's whole objects."""
    edge, whole, side = [], [], len(mask)
    for y0 in range(0, side, window):
        for x0 in range(0, side, window):
            labels, k = ndimage.label(mask[y0 : y0 + window, x0 : x0 + window])
            on_border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
            sizes = np.bincount(labels.ravel(), minlength=k + 1)
            edge.append(len(on_border[on_border > 0]))
            whole.append(int(((sizes >= min_pixels)[1:] & ~np.isin(np.arange(1, k + 1), on_border)).sum()))
    per_row = side // window
    rows = [sum(edge[r * per_row : (r + 1) * per_row]) for r in range(per_row)]
    return max(a + b for a, b in zip(rows, rows[1:])) + max(whole)


def test_objects_held_at_once_are_bounded_by_the_edge_pieces_of_the_open_borders(tmp_path):
    """Streaming, the collector holds the pieces along the borders still open (the last two rows
    of windows, the most) and one window's finished objects, not the map's objects; counted by
    the collector itself, checked against the pieces each window has along its borders."""
    side = 256
    maps = speckled_map(side)
    info = SceneInfo(side, side, ("slope",), grid(WINDOW).crs_wkt, (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), WINDOW)
    streaming, holding = (ObjectCollector(info, min_pixels=MIN_PIXELS, reductions=LAYERS) for _ in range(2))
    parts = (streaming.pop_finished() for _ in windows_of(streaming, WINDOW, maps))
    n = stream_polygons(tmp_path / "p.gpkg", info, parts, MIN_PIXELS, True)
    for _ in windows_of(holding, WINDOW, maps):
        pass
    bound = window_bound(maps[1])
    assert n == len(holding.table().take(holding.table().pixels >= MIN_PIXELS)) > 500
    assert streaming.peak_held <= bound < n / 4  # here: 47 <= 180 of 934 objects
    assert holding.peak_held >= n  # without popping, every object stays held
    assert streaming.kept == holding.kept


@pytest.mark.parametrize("fmt", sorted(POLYGON_FILES))
def test_a_failure_while_streaming_leaves_no_file_and_keeps_its_cause(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(polygons, "BATCH_ROWS", 2)
    info, collector = collect(WINDOW)
    table = collector.table()

    def parts():
        yield table.take(np.arange(5))
        raise OSError(28, "No space left on device")

    dest = tmp_path / POLYGON_FILES[fmt]
    with pytest.raises(OSError, match="No space left"):
        stream_polygons(dest, info, parts(), MIN_PIXELS, True)
    assert not dest.exists()


def test_a_window_of_specks_only_keeps_nothing():
    """Objects below the minimum, inside the window: nothing to polygonise, nothing kept."""
    info = SceneInfo(8, 8, (), None, (10.0, 0.0, 0.0, 0.0, -10.0, 80.0), 8)
    collector = ObjectCollector(info, min_pixels=3)
    mask = np.zeros((8, 8), bool)
    mask[2, 2] = mask[5, 5] = True
    collector.add_window(0, 0, mask, np.full((8, 8), 0.9), None)
    assert collector.kept == 0 and len(collector.table()) == 0
