"""Event maps responders can act on: where the region has been looked at, what is new since the event.

A synthetic world (built here) of vegetated hills with bare-soil scars, seen by Sentinel-2
L2A-like STAC items (band files at 10/20/60 m and an SCL), is mapped by a plain U-Net whose
weights are set by hand to map low NDVI as landslide: a model that finds every scar, so what
the tests see comes from the observations, not from a model's whims.

Shows (issue 28, Must show 3): a pass with SCL cloud over a scar gives ``observed`` 0 there, no
polygon there and the unobserved share in ``run.json``; adding a later clear pass makes the
polygon appear, ``observed`` counts 1 there and 2 where both passes were clear, and
``first_clear`` gives the second pass's date there and the first's elsewhere.
Must show 1: with a pre-event pass (old scars) and a post-event pass (old and new scars), the
polygons with status ``new`` recover the new scars and none of the old ones, scored by
``compare`` against the new-scar inventory and recounted here. Must show 2: the same scene as
pre and post gives no ``new`` polygon and ``new_probability`` <= 0.05 everywhere. Also: the
change rule, the event-date checks, and the pre-event settings on the command line. Must show
4: ``pre_event: auto`` over a loopback STAC API picks the item the documented rule names.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.windows import from_bounds
from shapely.geometry import box
from test_region import _l2a_item

from landslide_batch.bands import BAND_INDEX, N_BANDS
from landslide_batch.config import job_from_dict
from landslide_batch.pipeline import run_job
from landslide_batch.region.observed import NO_DATE, OBSERVED_NODATA
from landslide_batch.synthetic import make_dem, slope_degrees

H, W = 120, 180  # 10 m pixels; a multiple of 6 so that the 60 m bands tile it
SETTINGS = {"tile": 64, "overlap": 0.5, "block": 128, "batch_size": 8, "threshold": 0.5, "min_pixels": 4}
# Reflectance B1..B12 of vegetation (NDVI ~0.78) and of bare soil (NDVI ~0.16).
VEG = np.array([0.03, 0.04, 0.07, 0.04, 0.10, 0.25, 0.30, 0.32, 0.33, 0.005, 0.16, 0.08])
SOIL = np.array([0.08, 0.10, 0.14, 0.18, 0.21, 0.23, 0.24, 0.25, 0.26, 0.01, 0.32, 0.26])
# Scars as (row, col, height, width) in 10 m pixels.
OLD_SCARS = [(12, 20, 10, 14), (70, 120, 12, 10), (90, 30, 8, 16)]
NEW_SCARS = [(30, 60, 12, 12), (14, 130, 10, 10), (60, 20, 8, 14), (96, 80, 10, 12)]
CLOUD_SCAR = NEW_SCARS[0]
CLOUD_SCL = (slice(12, 24), slice(27, 39))  # 20 m SCL pixels: rows 24..48, cols 54..78 at 10 m, over CLOUD_SCAR
PASSES = [
    ("S2A_45RUL_20240502", "2024-05-02T05:00:00Z", CLOUD_SCL),
    ("S2B_45RUL_20240507", "2024-05-07T05:00:00Z", None),
]


def world(scars: list[tuple[int, int, int, int]], seed: int = 5) -> np.ndarray:
    """14 L4S layers: vegetation with a little noise, bare soil on ``scars``, hills (DEM, slope)."""
    rng = np.random.default_rng(seed)
    soil = np.zeros((H, W), bool)
    for r, c, h, w in scars:
        soil[r : r + h, c : c + w] = True
    bands = np.empty((N_BANDS, H, W), np.float32)
    for i in range(12):
        bands[i] = np.where(soil, SOIL[i], VEG[i]) * (1 + rng.normal(0, 0.03, (H, W)))
    dem = make_dem(H, W, np.random.default_rng(7))  # the same hills before and after
    bands[BAND_INDEX["slope"]] = slope_degrees(dem)
    bands[BAND_INDEX["DEM"]] = dem
    return bands


@pytest.fixture(scope="module")
def ndvi_model(tmp_path_factory):
    """A plain U-Net on NDVI alone whose weights pass NDVI through one channel of its top level:
    logit = 20 * relu(0.45 - NDVI) - 2, so vegetation (NDVI ~0.78) maps to p ~0.12 and bare soil
    (NDVI ~0.16) to p ~0.98."""
    import torch

    from landslide_batch.models.card import init_model_folder, load_model_folder, save_model_folder

    folder = tmp_path_factory.mktemp("models") / "ndvi_unet"
    init_model_folder("PlainUnet", None, folder, seed=0, features=["NDVI"])
    model, card = load_model_folder(folder)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
        top = model.down[0]
        top[0].weight[0, 0, 1, 1] = -1.0  # -NDVI
        top[1].bias[0] = 0.45  # BatchNorm (identity statistics) adds the offset
        top[3].weight[0, 0, 1, 1] = 1.0
        last = model.merge[-1]  # its input: the upsampled path (zero), then the top level's skip
        last[0].weight[0, top[3].out_channels, 1, 1] = 1.0
        last[3].weight[0, 0, 1, 1] = 1.0
        model.head.weight[0, 0, 0, 0] = 20.0
        model.head.bias[0] = -2.0
    save_model_folder(model, card, folder, overwrite=True)
    return folder


def _utm_origin() -> tuple[float, float]:
    x, y = Transformer.from_crs(4326, 32645, always_xy=True).transform(84.3, 28.2)
    x, y = round(x, -1), round(y, -1)
    return x - x % 60, y - y % 60


def _aoi(path: Path, origin: tuple[float, float]) -> Path:
    """The AOI: the world less a 30 m margin, in WGS 84."""
    x0, y0 = origin
    to_degrees = Transformer.from_crs(32645, 4326, always_xy=True)
    west, north = to_degrees.transform(x0 + 30, y0 - 30)
    east, south = to_degrees.transform(x0 + W * 10 - 30, y0 - H * 10 + 30)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    return path


def _catalog(root: Path, bands: np.ndarray, origin, passes) -> Path:
    """An ItemCollection of L2A-like items of ``bands``, one per ``(name, date, SCL cloud)``,
    each published in the catalog 4 hours after its acquisition."""
    root.mkdir(parents=True, exist_ok=True)
    items = [
        _l2a_item(
            root,
            name,
            bands,
            slice(0, W),
            origin,
            cloud,
            {"datetime": date, "eo:cloud_cover": 1.0, "published": date.replace("T05:", "T09:")},
        )
        for name, date, cloud in passes
    ]
    path = root / f"{'_'.join(p[0][-8:] for p in passes)}.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def _read(path: Path, origin) -> np.ndarray:
    """A region product on the world's grid (the region covers the AOI; nodata beyond it)."""
    x0, y0 = origin
    with rasterio.open(path) as ds:
        window = from_bounds(x0, y0 - H * 10, x0 + W * 10, y0, ds.transform)
        return ds.read(1, window=window, boundless=True, fill_value=ds.nodata)


def _pixel_box(origin, scar):
    (x0, y0), (r, c, h, w) = origin, scar
    return box(x0 + c * 10, y0 - (r + h) * 10, x0 + (c + w) * 10, y0 - r * 10)


def test_clouds_leave_a_scar_unobserved_until_a_clear_pass_shows_it(tmp_path, ndvi_model):
    origin = _utm_origin()
    post = world(OLD_SCARS + NEW_SCARS)
    aoi = _aoi(tmp_path / "aoi.geojson", origin)
    cloudy = _catalog(tmp_path / "catalog", post, origin, PASSES[:1])
    both = tmp_path / "catalog" / "both.json"
    items = json.loads(cloudy.read_text())["features"]
    both.write_text(json.dumps({"type": "FeatureCollection", "features": items + _second_pass(tmp_path, post, origin)}))
    out = tmp_path / "out"
    job = {"aoi": str(aoi), "models": [str(ndvi_model)], "out": str(out), **SETTINGS}

    first = run_job(job_from_dict({**job, "scenes": str(cloudy)}))
    observed, first_clear = _read(out / "observed.tif", origin), _read(out / "first_clear.tif", origin)
    r, c, h, w = CLOUD_SCAR
    inside = observed != OBSERVED_NODATA
    assert (observed[r : r + h, c : c + w] == 0).all()
    assert (first_clear[r : r + h, c : c + w] == NO_DATE).all()
    polygons = gpd.read_file(out / "landslides.gpkg")
    assert not polygons.intersects(_pixel_box(origin, CLOUD_SCAR)).any()  # no polygon under the cloud
    assert polygons.intersects(_pixel_box(origin, NEW_SCARS[1])).any()  # the model does map clear scars
    cloud_px = np.zeros((H, W), bool)
    cloud_px[CLOUD_SCL[0].start * 2 : CLOUD_SCL[0].stop * 2, CLOUD_SCL[1].start * 2 : CLOUD_SCL[1].stop * 2] = True
    assert (observed[inside & ~cloud_px] == 1).all() and (first_clear[inside & ~cloud_px] == 20240502).all()
    share = 1 - (cloud_px & inside).sum() / inside.sum()  # the cloud's SCL pixels, at 10 m
    assert first["summary"]["observed_share"] == pytest.approx(share) and share < 1
    assert json.loads((out / "run.json").read_text())["summary"]["observed_share"] == pytest.approx(share)

    second = run_job(job_from_dict({**job, "scenes": str(both)}))
    observed, first_clear = _read(out / "observed.tif", origin), _read(out / "first_clear.tif", origin)
    assert (observed[r : r + h, c : c + w] == 1).all()
    assert (first_clear[r : r + h, c : c + w] == 20240507).all()
    clear_both = inside & ~cloud_px
    assert (observed[clear_both] == 2).all() and (first_clear[clear_both] == 20240502).all()
    polygons = gpd.read_file(out / "landslides.gpkg")
    scar = _pixel_box(origin, CLOUD_SCAR)
    found = polygons[polygons.intersects(scar)]
    assert len(found) == 1 and found.geometry.iloc[0].intersection(scar).area >= 0.9 * scar.area
    assert json.loads((out / "run.json").read_text())["summary"]["observed_share"] == 1.0

    # Time to map: from each item's `published` to the first polygons that used it.
    def seconds(start: str, end: str) -> float:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()

    one, two = second["scenes"]
    assert one["polygons_published"] == first["finished"] and two["polygons_published"] == second["finished"]
    assert one["time_to_map_s"] == pytest.approx(seconds("2024-05-02T09:00:00Z", first["finished"]))
    assert two["time_to_map_s"] == pytest.approx(seconds("2024-05-07T09:00:00Z", second["finished"]))
    assert second["time_to_map"] == {
        "scenes": 2,
        "median_s": pytest.approx((one["time_to_map_s"] + two["time_to_map_s"]) / 2),
    }


def test_snow_is_not_a_clear_observation(tmp_path, ndvi_model):
    """SCL snow (11) over a scar counts as cloud does by default: ``observed`` 0 there and no
    polygon there (the ground is not seen), while the rest of the pass observes and maps."""
    origin = _utm_origin()
    catalog = _catalog(tmp_path / "catalog", world(OLD_SCARS + NEW_SCARS), origin, PASSES[1:])
    with rasterio.open(tmp_path / "catalog" / PASSES[1][0] / "SCL.tif", "r+") as ds:
        scl = ds.read(1)
        scl[CLOUD_SCL] = 11
        ds.write(scl, 1)
    out = tmp_path / "out"
    run_job(
        job_from_dict(
            {
                "scenes": str(catalog),
                "aoi": str(_aoi(tmp_path / "aoi.geojson", origin)),
                "models": [str(ndvi_model)],
                "out": str(out),
                **SETTINGS,
            }
        )
    )
    observed = _read(out / "observed.tif", origin)
    r, c, h, w = CLOUD_SCAR
    assert (observed[r : r + h, c : c + w] == 0).all() and (observed[5:15, 5:15] == 1).all()
    polygons = gpd.read_file(out / "landslides.gpkg")
    assert not polygons.intersects(_pixel_box(origin, CLOUD_SCAR)).any()
    assert polygons.intersects(_pixel_box(origin, NEW_SCARS[1])).any()


def _second_pass(tmp_path: Path, post: np.ndarray, origin) -> list[dict]:
    """The clear second pass's item, its files beside the first's."""
    return json.loads(_catalog(tmp_path / "catalog", post, origin, PASSES[1:]).read_text())["features"]


POLYGON_COLUMNS = [
    "object_id",
    "pixels",
    "area_m2",
    "mean_probability",
    "max_probability",
    "mean_slope_deg",
    "status",
    "member_agreement",
    "uncertainty",
    "mean_dndvi",
    "first_observed",
    "confidence",
]
PRE_PASS = ("S2A_45RUL_20240420", "2024-04-20T05:00:00Z", None)
POST_PASS = ("S2B_45RUL_20240502", "2024-05-02T05:00:00Z", None)


def _event_job(tmp_path: Path, ndvi_model, pre_bands, post_bands, **extra):
    """A region job over one post-event pass with one pre-event pass; -> (manifest, OUT, origin)."""
    origin = _utm_origin()
    pre = _catalog(tmp_path / "pre", pre_bands, origin, [PRE_PASS])
    post = pre if post_bands is None else _catalog(tmp_path / "post", post_bands, origin, [POST_PASS])
    out = tmp_path / "out"
    job = {
        "scenes": str(post),
        "pre_scenes": str(pre),
        "aoi": str(_aoi(tmp_path / "aoi.geojson", origin)),
        "models": [str(ndvi_model)],
        "out": str(out),
        **SETTINGS,
        **extra,
    }
    return run_job(job_from_dict(job)), out, origin


def test_change_aware_polygons_find_new_scars_not_old_ones(tmp_path, ndvi_model):
    from landslide_batch.outputs.compare_job import compare_job

    manifest, out, origin = _event_job(
        tmp_path, ndvi_model, world(OLD_SCARS, seed=1), world(OLD_SCARS + NEW_SCARS, seed=2), event_date="2024-05-01"
    )
    assert {"pre_probability", "dndvi", "new_probability"} <= set(manifest["outputs"])
    assert manifest["event"]["event_date"] == "2024-05-01" and (out / "pre_event" / "run.json").is_file()
    polygons = gpd.read_file(out / "landslides.gpkg")
    assert list(polygons.columns) == [*POLYGON_COLUMNS, "geometry"]
    new = polygons[polygons["status"] == "new"]
    # new scars: bare soil after vegetation, seen clearly on the post-event pass, sure
    assert (new["mean_dndvi"] < -0.4).all() and (new["first_observed"] == "2024-05-02").all()
    assert (new["confidence"] == "high").all() and (new["max_probability"] >= new["mean_probability"]).all()
    assert (new["member_agreement"] == 1).all()  # one member: a new object's pixels are all above its threshold
    old_boxes = [_pixel_box(origin, s) for s in OLD_SCARS]
    assert all(polygons[polygons["status"] == "pre-existing"].intersects(b).any() for b in old_boxes)
    # the model maps old scars as landslide too: the post-event map alone would call them all
    prob = _read(out / "probability.tif", origin)
    assert all((prob[r : r + h, c : c + w] >= 0.5).mean() > 0.9 for r, c, h, w in OLD_SCARS)
    new_prob = _read(out / "new_probability.tif", origin)
    assert all((new_prob[r : r + h, c : c + w] <= 0.05).mean() > 0.9 for r, c, h, w in OLD_SCARS)

    inventory = tmp_path / "new_scars.geojson"
    gpd.GeoDataFrame(geometry=[_pixel_box(origin, s) for s in NEW_SCARS], crs="EPSG:32645").to_crs(4326).to_file(
        inventory
    )
    result = compare_job(out, inventory, report=tmp_path / "report")
    assert result["objects"]["all"]["recall"] >= 0.9
    old_as_new = sum(new.intersects(b).any() for b in old_boxes) / len(old_boxes)
    assert old_as_new <= 0.1
    # compare's figures, counted here: any overlap with IoU >= 0.1, over the `new` polygons
    new_boxes = [_pixel_box(origin, s) for s in NEW_SCARS]

    def matches(a, b):
        return a.intersection(b).area > 0 and a.intersection(b).area / a.union(b).area >= 0.1

    recall = np.mean([any(matches(p, b) for p in new.geometry) for b in new_boxes])
    precision = np.mean([any(matches(p, b) for b in new_boxes) for p in new.geometry])
    assert result["objects"]["all"]["recall"] == pytest.approx(recall)
    assert result["objects"]["all"]["precision"] == pytest.approx(precision)
    mask = _read(out / "mask.tif", origin)
    truth = np.zeros((H, W), bool)
    for r, c, h, w in NEW_SCARS:
        truth[r : r + h, c : c + w] = True
    seen = mask != 255
    tp = (mask == 1) & truth & seen
    assert result["pixels"]["all"]["iou"] == pytest.approx(tp.sum() / (((mask == 1) | truth) & seen).sum())
    _vectorize_follows_new_probability(out, polygons)


def _vectorize_follows_new_probability(out: Path, polygons) -> None:
    """``vectorize`` on an event map: at the job's threshold the same polygons and statuses; at 0.9
    (above new_probability on the new scars, ~0.86, below both maps on the old ones) no new object
    and the old ones still pre-existing. Without the working stores, or through the library without
    the event rule, a clear refusal."""
    import shutil

    from landslide_batch.cli import main
    from landslide_batch.errors import InputError
    from landslide_batch.outputs.vectorize import Derivation, vectorize

    assert main(["vectorize", str(out), "--threshold", "0.5"]) == 0
    again = gpd.read_file(out / "landslides.gpkg")
    assert sorted(again["status"]) == sorted(polygons["status"])
    assert again.geometry.union_all().symmetric_difference(polygons.geometry.union_all()).area == 0
    assert main(["vectorize", str(out), "--threshold", "0.9"]) == 0
    high = gpd.read_file(out / "landslides.gpkg")
    assert list(high.columns) == [*POLYGON_COLUMNS, "geometry"]
    assert (high["status"] == "pre-existing").sum() == len(OLD_SCARS) and (high["status"] == "new").sum() == 0
    assert json.loads((out / "run.json").read_text())["summary"]["objects"] == 0
    with pytest.raises(InputError, match="event map"):
        vectorize(out, Derivation(threshold=0.5))
    shutil.rmtree(out / "pre_event" / ".work")
    assert main(["vectorize", str(out), "--threshold", "0.5"]) == 2
    assert (gpd.read_file(out / "landslides.gpkg")["status"] == "new").sum() == 0  # nothing half-written


def test_the_same_scene_before_and_after_shows_nothing_new(tmp_path, ndvi_model):
    manifest, out, origin = _event_job(tmp_path, ndvi_model, world(OLD_SCARS + NEW_SCARS), None)
    new_prob = _read(out / "new_probability.tif", origin)
    valid = new_prob != -1
    assert (valid == (_read(out / "observed.tif", origin) != OBSERVED_NODATA)).all()  # the whole AOI
    assert new_prob[valid].max() <= 0.05
    polygons = gpd.read_file(out / "landslides.gpkg")
    assert len(polygons) > 0 and (polygons["status"] == "pre-existing").all()
    assert manifest["summary"]["objects"] == 0
    dndvi = _read(out / "dndvi.tif", origin)
    assert np.abs(dndvi[valid]).max() < 1e-6


def test_pre_event_settings_from_the_command_line_and_yaml(tmp_path):
    from datetime import date

    from landslide_batch.cli import build_parser
    from landslide_batch.commands.run import _overrides
    from landslide_batch.errors import ConfigError

    args = build_parser().parse_args(
        ["run", "--scene", "a.tif", "--aoi", "aoi.geojson", "--model", "m", "--out", "o"]
        + ["--pre-scene", "p1.tif", "--pre-scene", "p2.json", "--event-date", "2024-05-01"]
    )
    cfg = job_from_dict(_overrides(args), tmp_path)
    assert cfg.pre_scenes == [str(tmp_path / "p1.tif"), str(tmp_path / "p2.json")]
    assert cfg.event_date == date(2024, 5, 1) and cfg.change_ndvi
    base = {"models": ["m"], "out": "o"}
    with pytest.raises(ConfigError, match="'pre_scenes' belong to region jobs"):
        job_from_dict({**base, "scene": "a.tif", "pre_scenes": ["p.tif"]})
    with pytest.raises(ConfigError, match="event_date"):
        job_from_dict({**base, "scenes": ["a.tif"], "aoi": "x", "event_date": "May first"})


def test_change_rule_and_event_date_checks():
    from datetime import date

    from landslide_batch.errors import InputError
    from landslide_batch.ingest.scene import SceneInfo
    from landslide_batch.region.event import check_pre_event, confidence, new_probability

    p_post = np.array([0.9, 0.9, 0.9, 0.9, -1.0])
    p_pre = np.array([0.1, 0.9, 0.1, 0.1, 0.1])
    dndvi = np.array([-0.5, -0.5, -0.05, 0.2, -0.5])
    np.testing.assert_allclose(new_probability(p_post, p_pre, dndvi, True), [0.81, 0.09, 0.2025, 0.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(new_probability(p_post, p_pre, dndvi, False), [0.81, 0.09, 0.81, 0.81, -1.0], atol=1e-6)

    mean_p = np.array([0.9, 0.9, 0.7, 0.9, 0.55, 0.9, np.nan])
    spread = np.array([0.05, 0.05, 0.05, 0.25, 0.05, 0.05, 0.05])
    mean_dndvi = np.array([-0.3, -0.1, -0.3, -0.3, -0.3, np.nan, -0.3])
    assert list(confidence(mean_p, spread, mean_dndvi, True)) == [
        *("high", "medium", "medium", "low", "low"),
        *("medium", "medium"),  # a NaN meets no bound
    ]
    # pre-existing, or the NDVI term left out: no loss needed
    assert list(confidence(mean_p, spread, mean_dndvi, False))[:2] == ["high", "high"]

    grid = SceneInfo(10, 10, (), "WKT", (10.0, 0, 0, 0, -10.0, 0), 8)
    pre = {
        "region": {"height": 10, "width": 10, "transform": [10.0, 0, 0, 0, -10.0, 0], "crs": "WKT"},
        "scenes": [{"source": "pre#A", "date": "2024-04-20T05:00:00Z"}],
    }
    check_pre_event(pre, grid, date(2024, 5, 1), ["2024-05-02T05:00:00Z", None])
    with pytest.raises(InputError, match="1 post-event scene"):
        check_pre_event(pre, grid, date(2024, 5, 1), ["2024-04-30T05:00:00Z"])
    with pytest.raises(InputError, match="found pre-event pre#A"):
        check_pre_event(pre, grid, date(2024, 4, 20), [])
    with pytest.raises(InputError, match="not on the region's grid"):
        check_pre_event({**pre, "region": {**pre["region"], "width": 11}}, grid, None, [])


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "fgb"])
def test_change_aware_columns_read_back_alike_in_every_format(tmp_path, fmt):
    """Objects cut by a window edge merge their statistics (sum, max, min); the columns and their
    values read back the same from GeoPackage, GeoParquet and FlatGeobuf."""
    from affine import Affine

    from landslide_batch.ingest.scene import SceneInfo
    from landslide_batch.outputs.polygons import POLYGON_FILES, ObjectCollector, stream_polygons
    from landslide_batch.region.event import OBJECT_LAYERS, object_columns

    info = SceneInfo(8, 8, (), rasterio.crs.CRS.from_epsg(32645).to_wkt(), tuple(Affine(10, 0, 0, 0, -10, 80)), 4)
    collector = ObjectCollector(info, reductions=OBJECT_LAYERS)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 1:7] = True  # one object across the window edge at column 4
    prob = np.linspace(0.7, 1.0, 64).reshape(8, 8)  # over the object: mean 0.85
    first = np.where(np.arange(8) < 4, 20240507.0, 20240502.0)[None].repeat(8, 0)
    agreement = np.where(np.arange(8) < 3, 0.5, 1.0)[None].repeat(8, 0)  # over the object: 2 of 6 columns at 0.5
    extra = {"uncertainty": np.full((8, 8), 0.05), "dndvi": np.full((8, 8), -0.5), "first_clear": first}
    extra["agreement"] = agreement
    for x0 in (0, 4):
        w = (slice(None), slice(x0, x0 + 4))
        collector.add_window(0, x0, mask[w], prob[w], None, {k: v[w] for k, v in extra.items()})
    objects = collector.pop_finished()
    assert len(objects) == 1 and objects.prob_max[0] == prob[mask].max() and collector.held == 0
    dest = tmp_path / POLYGON_FILES[fmt]
    assert stream_polygons(dest, info, [(objects, object_columns(objects, "new", True))], 1, False) == 1
    got = gpd.read_parquet(dest) if fmt == "parquet" else gpd.read_file(dest)
    assert list(got.columns) == [*POLYGON_COLUMNS, "geometry"]
    row = got.iloc[0]
    assert (row["status"], row["first_observed"], row["confidence"]) == ("new", "2024-05-02", "high")
    assert row["mean_dndvi"] == pytest.approx(-0.5) and row["uncertainty"] == pytest.approx(0.05)
    assert row["mean_probability"] == pytest.approx(prob[mask].mean())
    assert row["member_agreement"] == pytest.approx(agreement[mask].mean()) and agreement[mask].mean() < 1


def test_member_agreement_is_the_weighted_share_of_members_above_their_own_threshold(tmp_path, ndvi_model):
    """Two copies of the NDVI model, one with its card's threshold at 0.999 (above what it gives bare
    soil, ~0.98), weighted 3 : 1: on the scars only the first agrees (0.75), on vegetation neither
    (0); equal, pixel by pixel, to the members' own maps thresholded here."""
    from landslide_batch.config import EnsembleConfig, EnsembleMember
    from landslide_batch.infer.predictor import EnsemblePredictor
    from landslide_batch.models.card import load_model_folder, save_model_folder

    model, card = load_model_folder(ndvi_model)
    strict = tmp_path / "strict"
    save_model_folder(model, card.model_copy(update={"threshold": 0.999}), strict)
    bands = world(NEW_SCARS)[:, :96, :128]
    valid = np.isfinite(bands).all(0)
    members = [EnsembleMember(model=ndvi_model, weight=3.0), EnsembleMember(model=strict, weight=1.0)]

    def predictor(chosen):
        return EnsemblePredictor(EnsembleConfig(members=chosen), tile=64, stride=32, device="cpu")

    prob, _, agreement = predictor(members).predict_maps(bands, valid)
    alone = [predictor([m]).predict_window(bands, valid)[0] for m in members]
    expected = (3.0 * (alone[0] >= 0.5) + 1.0 * (alone[1] >= 0.999)) / 4.0
    np.testing.assert_array_equal(agreement, expected.astype(np.float32))
    r, c, h, w = NEW_SCARS[0]
    assert (agreement[r + 2 : r + h - 2, c + 2 : c + w - 2] == 0.75).all() and (agreement[:10, :10] == 0).all()
    assert prob.shape == agreement.shape


def test_pre_event_auto_picks_the_most_recent_of_the_clearest_items(tmp_path, ndvi_model):
    """Must show 4: a loopback STAC API with four candidate pre-event items. The rule (README,
    "Event maps"): items in the 120 days before the event; clear share over the AOI from each
    item's SCL; of those within 0.05 of the clearest, the most recent. Not the lowest
    eo:cloud_cover (C: 0.5 % claimed, half the AOI under cloud), not the clearest alone (A),
    not one outside the window (D)."""
    from test_region import _range_server
    from test_stac_search import stac_api

    origin = _utm_origin()
    pre, post = world(OLD_SCARS, seed=1), world(OLD_SCARS + NEW_SCARS, seed=2)
    root = tmp_path / "files"
    root.mkdir()
    dated = [  # name, bands, SCL cloud (20 m pixels), datetime, eo:cloud_cover
        ("A_20240301", pre, (slice(0, 1), slice(0, 90)), "2024-03-01T05:00:00Z", 30.0),  # cloud outside the AOI
        ("B_20240410", pre, (slice(20, 23), slice(20, 26)), "2024-04-10T05:00:00Z", 12.0),  # a little cloud
        ("C_20240425", pre, (slice(0, 30), slice(0, 90)), "2024-04-25T05:00:00Z", 0.5),  # half the AOI
        ("D_20231101", pre, None, "2023-11-01T05:00:00Z", 0.0),  # 182 days before the event
        ("POST_20240502", post, None, "2024-05-02T05:00:00Z", 1.0),
    ]
    with _range_server(root, tmp_path / "requests.log") as files:
        items = []
        for name, bands, cloud, when, cover in dated:
            item = _l2a_item(root, name, bands, slice(0, W), origin, cloud, {"datetime": when, "eo:cloud_cover": cover})
            for asset in item["assets"].values():
                asset["href"] = f"{files}/{asset['href']}"
            items.append({**item, "collection": "sentinel-2-l2a"})
        with stac_api(items) as (api, searches):
            search = {"url": api, "collections": ["sentinel-2-l2a"], "datetime": "2024-05-01/2024-05-31"}
            job = {
                "stac_search": search,
                "pre_event": "auto",
                "event_date": "2024-05-01",
                "aoi": str(_aoi(tmp_path / "aoi.geojson", origin)),
                "models": [str(ndvi_model)],
                "out": str(tmp_path / "out"),
                **SETTINGS,
            }
            manifest = run_job(job_from_dict(job))
    auto = manifest["event"]["pre_event_auto"]
    shares = {c["id"]: c["clear_share"] for c in auto["candidates"]}
    assert set(shares) == {"A_20240301", "B_20240410", "C_20240425"}  # D lies outside the window
    assert shares["A_20240301"] == 1.0 and 0.95 <= shares["B_20240410"] < 1.0 and shares["C_20240425"] < 0.7
    assert auto["picked"] == "B_20240410"
    assert [s["id"].split("-")[0] for s in manifest["event"]["pre_event"]["scenes"]] == ["B_20240410"]
    assert [s["date"] for s in manifest["scenes"]] == ["2024-05-02T05:00:00Z"]
    assert any(s.get("datetime", "").startswith("2024-01-02T00:00:00Z/2024-04-30") for s in searches)
    polygons = gpd.read_file(tmp_path / "out" / "landslides.gpkg")
    assert (polygons["status"] == "new").sum() == len(NEW_SCARS)


EVENT_LAYERS = ("probability", "pre_probability", "dndvi", "new_probability", "observed", "first_clear", "mask")


@pytest.mark.slow
def test_local_and_ray_give_the_same_event_layers(tmp_path, ndvi_model):
    """Must show 6: the change-aware event map on Ray equals the local one (<= 1e-5), and so do
    its polygons' statuses."""
    from ray_nodes import local_cluster

    origin = _utm_origin()
    pre = _catalog(tmp_path / "pre", world(OLD_SCARS, seed=1), origin, [PRE_PASS])
    post = _catalog(tmp_path / "post", world(OLD_SCARS + NEW_SCARS, seed=2), origin, [PASSES[0], POST_PASS])
    job = {
        "scenes": str(post),
        "pre_scenes": str(pre),
        "aoi": str(_aoi(tmp_path / "aoi.geojson", origin)),
        "models": [str(ndvi_model)],
        **SETTINGS,
    }
    run_job(job_from_dict({**job, "out": str(tmp_path / "local")}))
    with local_cluster(1, num_cpus=2):
        run_job(
            job_from_dict(
                {**job, "out": str(tmp_path / "ray"), "executor": "ray", "threads": 1, "ray": {"num_actors": 1}}
            )
        )
    for name in EVENT_LAYERS:
        local, ray = (_read(tmp_path / o / f"{name}.tif", origin).astype(np.float64) for o in ("local", "ray"))
        np.testing.assert_allclose(ray, local, rtol=0, atol=1e-5, err_msg=name)
    assert (_read(tmp_path / "local" / "new_probability.tif", origin) > 0.5).sum() > 0  # a map with new scars
    statuses = [sorted(gpd.read_file(tmp_path / o / "landslides.gpkg")["status"]) for o in ("local", "ray")]
    assert statuses[0] == statuses[1] and statuses[0].count("new") == len(NEW_SCARS)
