"""An event map's polygons are streamed window by window, like a job's (issue 29): each window's
finished new and pre-existing objects go to the file with their change-aware columns, computed
column by column. The file holds what the in-memory build of the same map gave (every object of
both kinds collected over the whole map, then its columns one object at a time, written at the
end), whatever the format; object ids follow the write order, so the two are compared by place.
What the two collectors hold at once stays bounded by the pieces along the open borders."""

from __future__ import annotations

import functools
import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from scipy import ndimage
from test_polygon_windows import window_bound

from landslide_batch.ingest.scene import SceneInfo
from landslide_batch.outputs import polygons
from landslide_batch.outputs.areas import object_areas_m2
from landslide_batch.outputs.polygons import POLYGON_FILES, ObjectCollector, stream_polygons
from landslide_batch.outputs.rasters import windows
from landslide_batch.region import event
from landslide_batch.region.event import ChangeSource, write_change_mask_and_polygons

SIDE, WINDOW, MIN_PIXELS, THRESHOLD = 256, 32, 3, 0.5
LAYERS = ("p_post", "p_pre", "dndvi", "agreement", "uncertainty", "first_clear", "slope")
DATES = np.array([0, 20240502, 20240511, 20240603], np.uint32)  # 0: no dated clear view
COLUMNS = [
    *("object_id", "pixels", "area_m2", "mean_probability", "max_probability", "mean_slope_deg", "status"),
    *("member_agreement", "uncertainty", "mean_dndvi", "first_observed", "confidence", "geometry"),
]


def smooth(rng: np.random.Generator, side: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.random((side, side)), sigma)
    return (field - field.min()) / np.ptp(field)


def event_map(side: int = SIDE) -> dict[str, np.ndarray]:
    """Post- and pre-event probability, dNDVI and the per-pixel layers of an event map: large new
    and pre-existing objects across the window borders beside many small ones, nodata in both
    maps and in dNDVI, and a band with no dated clear view."""
    rng = np.random.default_rng(29)
    p_post = np.clip(smooth(rng, side, 1.2) * 1.6 - 0.3, 0, 1).astype(np.float32)  # sure cores: high confidence
    p_post[100:104, 20:200] = -1.0  # nodata in the post-event map
    x = np.arange(side)[None].repeat(side, 0) / side  # pre-event scars on the right: new objects on the left
    p_pre = np.clip((x - 0.4) / 0.22 + (smooth(rng, side, 4.0) - 0.5) * 0.4, 0, 1).astype(np.float32)
    p_pre[200:210, 90:140] = -1.0
    dndvi = (smooth(rng, side, 3.0) * 0.8 - 0.6).astype(np.float32)  # mostly a loss: many new objects
    dndvi[30:34, 40:230] = np.nan  # no pre-event view: not new; pre-existing objects get a NaN mean
    first = DATES[rng.integers(1, len(DATES), (side, side))]
    first[:, 150:170] = 0
    return {
        "p_post": p_post,
        "p_pre": p_pre,
        "dndvi": dndvi,
        "agreement": rng.random((side, side)).astype(np.float32),
        "uncertainty": (smooth(rng, side, 3.0) * 0.3).astype(np.float32),
        "first_clear": first,
        "slope": np.linspace(0, 45, side * side, dtype=np.float32).reshape(side, side),
    }


def grid(side: int, window: int = WINDOW) -> SceneInfo:
    crs = rasterio.crs.CRS.from_epsg(32645).to_wkt()
    return SceneInfo(side, side, ("slope",), crs, (10.0, 0.0, 500000.0, 0.0, -10.0, 3100000.0), window)


def source(layers: dict[str, np.ndarray]) -> ChangeSource:
    def reader(name: str):
        return lambda y0, y1, x0, x1: layers[name][y0:y1, x0:x1]

    zero = np.zeros_like(layers["dndvi"])  # dNDVI as post-event NDVI minus a zero pre-event one
    r = {name: reader(name) for name in LAYERS}
    return ChangeSource(
        grid(len(zero)), r["p_post"], r["p_pre"], r["dndvi"], lambda y0, y1, x0, x1: zero[y0:y1, x0:x1], r["slope"],
        r["uncertainty"], r["agreement"], r["first_clear"], True,
    )  # fmt: skip


def masks(layers: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(new, pre-existing) of the whole map, by the documented rule, written out here."""
    p_post, p_pre, dndvi = layers["p_post"], layers["p_pre"], layers["dndvi"]
    valid = (p_post >= 0) & (p_pre >= 0) & np.isfinite(dndvi)
    new = valid & (p_post * (1 - p_pre) * np.clip(-np.nan_to_num(dndvi) / 0.2, 0, 1) >= THRESHOLD)
    return new, (p_post >= THRESHOLD) & (p_pre >= THRESHOLD) & ~new


def old_confidence(p: float, u: float, d: float, needs_loss: bool) -> str:
    """The per-object rule as the in-memory build applied it."""
    if p < 0.6 or u > 0.2:
        return "low"
    lost = not needs_loss or d <= -0.2
    return "high" if p >= 0.8 and u <= 0.1 and lost else "medium"


def in_memory_build(layers: dict[str, np.ndarray]) -> pd.DataFrame:
    """The previous build: every object of the map collected (one window: nothing streamed), then
    its columns one object at a time, new objects before pre-existing ones."""
    info = grid(SIDE, SIDE)
    first = layers["first_clear"].astype(np.float64)
    extra = {"agreement": layers["agreement"], "uncertainty": layers["uncertainty"], "dndvi": layers["dndvi"]}
    extra["first_clear"] = np.where(first == 0, np.inf, first)
    rows = []
    for status, mask in zip(("new", "pre-existing"), masks(layers)):
        collector = ObjectCollector(info, min_pixels=MIN_PIXELS, reductions=event.OBJECT_LAYERS)
        collector.add_window(0, 0, mask, layers["p_post"], layers["slope"], extra)
        table = collector.table()
        table = table.take(table.pixels >= MIN_PIXELS)
        areas = object_areas_m2(info, table.geom, table.pixels)
        for i in range(len(table)):
            n, x = int(table.pixels[i]), {k: float(v[i]) for k, v in table.extra.items()}
            p, u, d = float(table.prob_sum[i]) / n, x["uncertainty"] / n, x["dndvi"] / n
            day = None if not math.isfinite(x["first_clear"]) else int(x["first_clear"])
            rows.append(
                {
                    "pixels": n,
                    "area_m2": areas[i],
                    "mean_probability": p,
                    "max_probability": float(table.prob_max[i]),
                    "mean_slope_deg": float(table.slope_sum[i]) / n,
                    "status": status,
                    "member_agreement": x["agreement"] / n,
                    "uncertainty": u,
                    "mean_dndvi": d,
                    "first_observed": None
                    if day is None
                    else f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}",
                    "confidence": old_confidence(p, u, d, status == "new"),
                    "geometry": table.geom[i],
                }
            )
    return by_place(gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32645"))


def by_place(table: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Rows in a fixed order: by size and centroid (which, unlike a representative point, does not
    depend on where a polygon's rings start or on points along a straight edge)."""
    centroid = table.geometry.centroid
    keys = [centroid.x.round(3), centroid.y.round(3), table.pixels]  # the last is sorted on first
    return table.iloc[np.lexsort(np.array(keys))].reset_index(drop=True)


def streamed_build(
    tmp_path, fmt: str, monkeypatch, layers: dict[str, np.ndarray]
) -> tuple[dict, gpd.GeoDataFrame, list[ObjectCollector]]:
    """The event path over the map in 32² windows, a file batch every 50 objects; -> (summary,
    the file as written, the two collectors it used)."""
    made: list[ObjectCollector] = []

    class Recorded(ObjectCollector):
        def __post_init__(self) -> None:
            super().__post_init__()
            made.append(self)

    monkeypatch.setattr(event, "windows", functools.partial(windows, size=WINDOW))
    monkeypatch.setattr(event, "ObjectCollector", Recorded)
    monkeypatch.setattr(polygons, "BATCH_ROWS", 50)
    dest = tmp_path / POLYGON_FILES[fmt]
    summary = write_change_mask_and_polygons(
        source(layers), THRESHOLD, MIN_PIXELS, tmp_path / "mask.tif", dest, tmp_path / "scratch.tif"
    )
    table = gpd.read_parquet(dest) if fmt == "parquet" else gpd.read_file(dest)
    return summary, table, made


@pytest.mark.parametrize("fmt", sorted(POLYGON_FILES))
def test_streamed_event_polygons_equal_the_in_memory_build(tmp_path, fmt, monkeypatch):
    layers = event_map()
    summary, written, _ = streamed_build(tmp_path, fmt, monkeypatch, layers)
    want = in_memory_build(layers)
    new, old = masks(layers)
    assert list(written.columns) == COLUMNS and written.crs == "EPSG:32645"
    assert sorted(written.object_id) == list(range(1, len(written) + 1))
    status_runs = (written.status != written.status.shift()).sum()
    assert status_runs > 4  # written as the windows came: new and pre-existing interleave
    got = by_place(written)
    assert len(got) == len(want) > 250
    assert summary["objects"] == (want.status == "new").sum() > 100
    assert summary["pre_existing_objects"] == (want.status == "pre-existing").sum() > 100
    assert summary["landslide_pixels"] == new.sum() and summary["landslide_area_km2"] == pytest.approx(new.sum() / 1e4)
    assert got.geometry.geom_equals(want.geometry).all()
    assert (shapely.get_num_interior_rings(got.geometry.values) > 2).any()  # large objects, many holes
    x = got.geometry.bounds - grid(SIDE).transform[2]  # window columns of an object's first and last pixel
    assert ((x.minx // (WINDOW * 10)) != ((x.maxx - 1) // (WINDOW * 10))).sum() > 50  # joined across borders
    for column in ("pixels", "area_m2", "mean_probability", "max_probability", "mean_slope_deg"):
        np.testing.assert_allclose(got[column], want[column], rtol=1e-9)
    for column in ("member_agreement", "uncertainty", "mean_dndvi"):
        np.testing.assert_allclose(got[column].astype(float), want[column].astype(float), rtol=1e-9)
    for column in ("status", "first_observed", "confidence"):
        assert [None if pd.isna(v) else v for v in got[column]] == [None if pd.isna(v) else v for v in want[column]]
    assert got.mean_dndvi.isna().any() and got.first_observed.isna().any()  # the NaN and no-date cases occur
    assert set(got.confidence) == {"high", "medium", "low"}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.ParquetFile(tmp_path / POLYGON_FILES[fmt]).num_row_groups > 2


def test_the_event_path_holds_the_open_borders_not_the_map(tmp_path, monkeypatch):
    """Both collectors hold what the open borders of the last two rows of windows cut, and one
    window's whole objects: far below the map's objects (a 512² map, 16 rows of windows)."""
    layers = event_map(512)
    summary, _, made = streamed_build(tmp_path, "gpkg", monkeypatch, layers)
    assert len(made) == 2 and all(c.held == 0 for c in made)  # everything went to the file
    for collector, mask, n in zip(made, masks(layers), (summary["objects"], summary["pre_existing_objects"])):
        assert collector.peak_held <= window_bound(mask) < n / 4


@pytest.mark.parametrize("fmt", sorted(POLYGON_FILES))
def test_parts_carry_their_columns_through_full_batches_and_through_none(tmp_path, fmt, monkeypatch):
    """Parts that fill their batches exactly, then an empty one: one batch schema throughout, the
    values in write order; with no object at all the file still has the parts' columns."""
    monkeypatch.setattr(polygons, "BATCH_ROWS", 4)
    layers, info = event_map(), grid(SIDE, SIDE)
    collector = ObjectCollector(info, min_pixels=MIN_PIXELS)
    collector.add_window(0, 0, masks(layers)[0], layers["p_post"], None)
    table = collector.pop_finished().take(np.arange(8))
    label, share = np.array([f"o{i}" for i in range(8)], object), np.linspace(0, 1, 8)

    def part(rows: np.ndarray):
        return table.take(rows), {"label": label[rows], "share": share[rows]}

    (tmp_path / "full").mkdir(), (tmp_path / "none").mkdir()
    full, none = tmp_path / "full" / POLYGON_FILES[fmt], tmp_path / "none" / POLYGON_FILES[fmt]
    parts = [part(np.arange(0, 4)), part(np.arange(4, 8)), part(np.arange(0))]
    assert stream_polygons(full, info, parts, MIN_PIXELS, False) == 8
    got = (gpd.read_parquet(full) if fmt == "parquet" else gpd.read_file(full)).sort_values("object_id")
    assert list(got.label) == list(label) and np.allclose(got.share, share)
    assert list(got.pixels) == list(table.pixels)
    assert stream_polygons(none, info, [part(np.arange(0))], MIN_PIXELS, False) == 0
    got = gpd.read_parquet(none) if fmt == "parquet" else gpd.read_file(none)
    assert len(got) == 0 and list(got.columns)[-3:] == ["label", "share", "geometry"]
