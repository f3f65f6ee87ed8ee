"""Region jobs: scenes in two UTM zones merged onto one map covering an AOI given in EPSG:4326.

The region map is checked against independent code: each scene mapped alone by the plain
single-scene pipeline, then reprojected and merged here with the documented rule (README,
"Region jobs"), using GDAL's coordinate transform and scipy's interpolation instead of the
implementation's pyproj + numpy gathering.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import make_varying_model
from maps import KERNEL_ATOL, assert_same_map
from pyproj import Transformer
from rasterio.warp import Resampling, reproject
from rasterio.warp import transform as gdal_transform
from scipy import ndimage

from landslide_batch.config import job_from_dict
from landslide_batch.errors import ConfigError, InputError
from landslide_batch.pipeline import run_job
from landslide_batch.region.mosaic import FEATHER_PX
from landslide_batch.synthetic import synthetic_scene, write_geotiff

WORLD_H, WORLD_W = 300, 420
SETTINGS = {"tile": 64, "overlap": 0.5, "block": 128, "batch_size": 8, "threshold": 0.5}


def _utm(epsg: int, lon: float, lat: float) -> tuple[float, float]:
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    return round(x, -1), round(y, -1)


@pytest.fixture(scope="module")
def region(tmp_path_factory, tiny_model):
    """A 'world' in UTM 45N near 84°E / 28°N; scene B (EPSG:32645) is a crop of it, scene A
    (EPSG:32644) the world reprojected into zone 44 (rotated by ~3°); they overlap by ~1 km.
    Scene C, a small crop at the east end, is the scene added later."""
    d = tmp_path_factory.mktemp("region")
    world, _ = synthetic_scene(WORLD_H, WORLD_W, seed=11)
    wx, wy = _utm(32645, 83.985, 28.012)
    world_t = Affine(10, 0, wx, 0, -10, wy)
    write_geotiff(d / "B.tif", world[:, :, 150:], origin=(wx + 1500, wy))
    write_geotiff(d / "C.tif", world[:, 60:200, 340:], origin=(wx + 3400, wy - 600))
    ax, ay = _utm(32644, 83.985, 28.012)
    a = np.full((14, 260, 250), np.nan, np.float32)
    reproject(
        world,
        a,
        src_transform=world_t,
        src_crs="EPSG:32645",
        dst_transform=Affine(10, 0, ax, 0, -10, ay),
        dst_crs="EPSG:32644",
        resampling=Resampling.bilinear,
        src_nodata=np.nan,
        dst_nodata=np.nan,
    )
    write_geotiff(d / "A.tif", a, crs="EPSG:32644", origin=(ax, ay))
    aoi = {
        "type": "Feature",
        "properties": {},
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[83.99, 27.994], [84.024, 27.994], [84.024, 28.008], [83.99, 28.008], [83.99, 27.994]]],
        },
    }
    (d / "aoi.geojson").write_text(json.dumps(aoi))
    model = d / "model"
    make_varying_model(tiny_model, model, world)
    return d, model


def _job(d, model, out, scenes, **extra) -> dict:
    return {
        "scenes": [str(d / s) for s in scenes],
        "aoi": str(d / "aoi.geojson"),
        "models": [str(model)],
        "out": str(d / out),
        **SETTINGS,
        **extra,
    }


def _expected_mosaic(maps: list, dst_t: Affine, shape: tuple[int, int], dst_crs, aoi_inside: np.ndarray):
    """The documented rule, written independently: GDAL transforms the coordinates, scipy
    interpolates (bilinear over valid pixels, nearest validity), the distance is one EDT over
    the whole (padded) region."""
    pad = FEATHER_PX + 1
    h, w = shape[0] + 2 * pad, shape[1] + 2 * pad
    rows, cols = np.mgrid[0:h, 0:w] + 0.5 - pad
    xs, ys = dst_t * (cols.ravel(), rows.ravel())
    num, den = np.zeros(shape), np.zeros(shape)
    for path in maps:
        with rasterio.open(path) as ds:
            prob, src_t, src_crs = ds.read(1).astype(np.float64), ds.transform, ds.crs
        valid = prob >= 0
        sx, sy = gdal_transform(dst_crs, src_crs, xs, ys)
        c, r = ~src_t * (np.asarray(sx), np.asarray(sy))
        coords = [r.reshape(h, w) - 0.5, c.reshape(h, w) - 0.5]
        top = ndimage.map_coordinates(np.where(valid, prob, 0), coords, order=1, mode="grid-constant", cval=0)
        bottom = ndimage.map_coordinates(valid.astype(float), coords, order=1, mode="grid-constant", cval=0)
        near = ndimage.map_coordinates(valid.astype(float), coords, order=0, mode="grid-constant", cval=0) > 0.5
        weight = np.minimum(ndimage.distance_transform_edt(near), FEATHER_PX) / FEATHER_PX
        value = top / np.where(bottom > 0, bottom, 1)
        core = (slice(pad, -pad), slice(pad, -pad))
        num += (weight * value)[core]
        den += weight[core]
    return np.where((den > 0) & aoi_inside, num / np.where(den > 0, den, 1), -1.0), den


def test_two_utm_zones_make_one_seamless_region_map(region, caplog):
    import geopandas as gpd
    from rasterio.features import geometry_mask
    from shapely.geometry import box

    d, model = region
    with caplog.at_level(logging.INFO, logger="landslide_batch.region.progress"):
        manifest = run_job(job_from_dict(_job(d, model, "region", ["A.tif", "B.tif"])))
    # Progress over the whole region on the local executor too: blocks done / total, km²/h, ETA.
    total = sum(s["blocks"]["total"] for s in manifest["scenes"])
    done = [tuple(map(int, m.groups())) for m in re.finditer(r"region: (\d+)/(\d+) blocks", caplog.text)]
    assert done[-1] == (total, total) and [n for n, _ in done] == sorted(n for n, _ in done)
    assert re.search(r"\d+\.\d km²/h, ETA \d+:\d\d:\d\d", caplog.text)
    singles = [
        run_job(job_from_dict({"scene": str(d / f"{s}.tif"), "models": [str(model)], "out": str(d / s), **SETTINGS}))
        for s in "AB"
    ]
    out = d / "region"
    with rasterio.open(out / "probability.tif") as ds:
        got, t, crs = ds.read(1), ds.transform, ds.crs
    assert crs.to_epsg() == 32645  # the UTM zone of the AOI's centroid (84.007°E)
    assert manifest["region"]["epsg"] == 32645 and manifest["models_loaded"] == 1
    assert not np.isnan(got).any()
    aoi = gpd.read_file(d / "aoi.geojson").segmentize(1e-4).to_crs(crs).geometry.iloc[0]
    left, bottom, right, top = rasterio.transform.array_bounds(*got.shape, t)
    assert box(left, bottom, right, top).contains(aoi)  # the map covers the AOI
    inside = geometry_mask([aoi], out_shape=got.shape, transform=t, invert=True)
    # Pixel centres within a metre of the AOI's edge may fall either way (its edges are curves here).
    near_edge = ~geometry_mask([aoi.boundary.buffer(1.0)], out_shape=got.shape, transform=t, invert=False)
    assert (got[inside & ~near_edge] >= 0).all() and (got[~inside & ~near_edge] == -1).all()
    assert near_edge.sum() < 0.01 * inside.sum()

    expected, _ = _expected_mosaic([d / s / "probability.tif" for s in "AB"], t, got.shape, crs, inside)
    assert_same_map(got[~near_edge], expected[~near_edge], atol=KERNEL_ATOL)
    assert [s["crs"] for s in manifest["scenes"]] == ["EPSG:32644", "EPSG:32645"]
    assert [s["blocks"]["total"] for s in manifest["scenes"]] == [m["blocks"]["total"] for m in singles]

    # No seam: where scene A's validity ends inside B, the map moves no more than elsewhere.
    _, weight_a = _expected_mosaic([d / "A" / "probability.tif"], t, got.shape, crs, inside)
    edge_a = np.zeros_like(inside)
    edge_a[:, 1:] = (weight_a[:, 1:] > 0) != (weight_a[:, :-1] > 0)
    jumps = np.zeros_like(got)
    jumps[:, 1:] = np.abs(np.diff(got, axis=1))
    pairs = inside.copy()
    pairs[:, 1:] &= inside[:, :-1]
    pairs[:, 0] = False
    assert (edge_a & pairs).sum() > 50
    assert jumps[edge_a & pairs].max() <= jumps[pairs & ~edge_a].max()

    # Objects are dissolved across the seam: objects straddling A's edge (inside B) are single
    # polygons with area on both sides, sharing no edge with another polygon (4-connected
    # objects may meet at a corner point).
    from rasterio.features import shapes
    from shapely.geometry import shape as to_shape

    polygons = gpd.read_file(out / "landslides.gpkg")
    a_side = [to_shape(g) for g, v in shapes((weight_a > 0).astype(np.uint8), transform=t) if v]
    assert len(a_side) == 1
    crossing = [
        p for p in polygons.geometry if p.intersection(a_side[0]).area > 100 and p.difference(a_side[0]).area > 100
    ]
    assert crossing
    for p in crossing:
        assert not any(p.intersection(q).length > 0 or p.overlaps(q) for q in polygons.geometry if q is not p)

    scenes = gpd.read_file(out / "scenes.gpkg", layer="scenes")
    assert len(scenes) == 2 and scenes.crs.to_epsg() == 32645


def _counting(monkeypatch, module, name: str) -> list[str]:
    """Calls of ``module.name`` (still made): where each one wrote its store."""
    calls: list[str] = []
    real = getattr(module, name)

    def counted(scene, dest, **kw):
        calls.append(str(dest))
        return real(scene, dest, **kw)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_adding_a_scene_maps_only_it_and_merges_only_where_it_lies(region, monkeypatch):
    import landslide_batch.region.job as region_job
    import landslide_batch.scene_job as scene_job

    d, model = region
    region_ingests = _counting(monkeypatch, region_job, "ingest_job")
    scene_job_ingests = _counting(monkeypatch, scene_job, "ingest_job")
    first = run_job(job_from_dict(_job(d, model, "grow", ["A.tif", "B.tif"])))
    # Each scene is ingested once, by the region; its job maps that store (no copy, no products:
    # the region writes those of the merged map), and its run.json lists what it keeps.
    assert sorted(Path(p).parent.name[0] for p in region_ingests) == ["A", "B"] and scene_job_ingests == []
    for folder in (d / "grow" / ".work" / "scenes").iterdir():
        kept = sorted(p.name for p in (folder / "map").iterdir())
        assert kept == [".lock", "probability.zarr", "run.json"]  # .work (and its scene copy) gone
        scene_run = json.loads((folder / "map" / "run.json").read_text())
        assert scene_run["outputs"] == {"zarr": "probability.zarr"} and "objects" not in scene_run["summary"]
    assert first["merge_blocks"]["computed"] == first["merge_blocks"]["total"] > 2
    again = run_job(job_from_dict(_job(d, model, "grow", ["A.tif", "B.tif"])))
    assert again["blocks"]["computed"] == 0  # nothing to do
    redone = run_job(job_from_dict(_job(d, model, "grow", ["A.tif", "B.tif"])), overwrite=True)
    assert redone["blocks"]["computed"] == redone["blocks"]["total"]  # --overwrite maps every scene again
    assert redone["merge_blocks"]["computed"] == redone["merge_blocks"]["total"]  # ... and merges every block
    grown = run_job(job_from_dict(_job(d, model, "grow", ["A.tif", "B.tif", "C.tif"])))
    by_source = {s["source"].rsplit("/", 1)[-1]: s["blocks"] for s in grown["scenes"]}
    assert by_source["A.tif"]["computed"] == by_source["B.tif"]["computed"] == 0
    assert by_source["A.tif"]["resumed"] == by_source["A.tif"]["total"]
    assert by_source["C.tif"]["computed"] == by_source["C.tif"]["total"] > 0
    merged = grown["merge_blocks"]
    assert 0 < merged["computed"] < merged["total"] and merged["kept"] == merged["total"] - merged["computed"]
    with rasterio.open(d / "grow" / "probability.tif") as ds:
        grown_map = ds.read(1)
    fresh = run_job(job_from_dict(_job(d, model, "fresh", ["A.tif", "B.tif", "C.tif"])))
    with rasterio.open(d / "fresh" / "probability.tif") as ds:
        assert_same_map(ds.read(1), grown_map, atol=KERNEL_ATOL)  # the same map as computing all at once
    assert fresh["summary"]["objects"] == grown["summary"]["objects"]

    # A changed scene is detected: ingested and mapped again, the others resumed.
    with rasterio.open(d / "C.tif") as ds:
        profile, bands = ds.profile, ds.read()
    with rasterio.open(d / "C.tif", "w", **profile) as ds:
        ds.write(bands[:, :, ::-1])
    region_ingests.clear()
    changed = run_job(job_from_dict(_job(d, model, "grow", ["A.tif", "B.tif", "C.tif"])))
    by_source = {s["source"].rsplit("/", 1)[-1]: s["blocks"] for s in changed["scenes"]}
    assert by_source["C.tif"]["computed"] == by_source["C.tif"]["total"] > 0
    assert by_source["A.tif"]["computed"] == by_source["B.tif"]["computed"] == 0 and scene_job_ingests == []


def test_a_merged_block_holds_one_scenes_layers_at_a_time(region, monkeypatch):
    """The merge's memory per block does not grow with the scenes touching it: each scene's
    layers on the block are made (and freed) one after another; only the validity of all is held
    at once."""
    import threading
    import weakref

    import landslide_batch.region.merge as merge

    d, model = region
    held: dict[int, int] = {}  # merge thread -> a scene's sampled layers alive
    most_held, layer_samples, validity_samples = [0], [0], [0]
    lock = threading.Lock()
    real = merge.sample_scene

    def watched(*args):
        out = real(*args)
        if out is None or out[0].shape[0] == 0:  # missed the block, or the validity alone
            validity_samples[0] += out is not None
            return out
        me = threading.get_ident()
        with lock:
            layer_samples[0] += 1
            held[me] = held.get(me, 0) + 1
            most_held[0] = max(most_held[0], held[me])
        weakref.finalize(out[0], lambda: held.__setitem__(me, held[me] - 1))
        return out

    monkeypatch.setattr(merge, "sample_scene", watched)
    m = run_job(job_from_dict(_job(d, model, "held", ["A.tif", "B.tif", "C.tif"])))
    assert most_held[0] == 1  # each merge thread held one scene's layers at a time ...
    blocks = m["merge_blocks"]["computed"]
    assert layer_samples[0] == validity_samples[0] > blocks  # ... though two or more touched a block


def test_region_bad_inputs_fail_clearly_and_write_nothing(region, tmp_path, caplog):
    from landslide_batch.cli import main

    d, model = region
    with pytest.raises(InputError, match="matches no file"):
        run_job(job_from_dict(_job(d, model, tmp_path / "glob", ["nothing_*.tif"])))
    bands, _ = synthetic_scene(64, 64, seed=1)
    write_geotiff(tmp_path / "nocrs.tif", bands, crs=None)
    with pytest.raises(InputError, match="has no CRS"):
        run_job(job_from_dict(_job(tmp_path, model, "nocrs_out", ["nocrs.tif"], aoi=str(d / "aoi.geojson"))))
    write_geotiff(tmp_path / "coarse.tif", bands, origin=_utm(32645, 84.01, 28.0), pixel=20.0)
    with pytest.raises(InputError, match="mixed resolutions are refused"):
        run_job(job_from_dict(_job(tmp_path, model, "coarse_out", ["coarse.tif"], aoi=str(d / "aoi.geojson"))))
    write_geotiff(tmp_path / "far.tif", bands, origin=_utm(32645, 85.0, 28.0))
    with pytest.raises(InputError, match="overlaps the AOI"):
        run_job(job_from_dict(_job(tmp_path, model, "far_out", ["far.tif"], aoi=str(d / "aoi.geojson"))))
    for name in ("nocrs_out", "coarse_out", "far_out"):
        assert not (tmp_path / name / "run.json").exists() and not (tmp_path / name / "probability.tif").exists()
    # A scene off the AOI next to good ones: a warning, skipped, listed in run.json. CLI: repeated --scene.
    caplog.set_level(logging.WARNING)
    rc = main(
        [
            "run",
            "--scene",
            str(d / "B.tif"),
            "--scene",
            str(tmp_path / "far.tif"),
            "--aoi",
            str(d / "aoi.geojson"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "cli"),
            "--tile",
            "64",
            "--block",
            "128",
            "--batch-size",
            "8",
            "--threshold",
            "0.5",
        ]
    )
    assert rc == 0
    manifest = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert [s["source"] for s in manifest["skipped_scenes"]] == [str(tmp_path / "far.tif")]
    assert "does not overlap the AOI" in caplog.text
    assert (
        main(
            [
                "run",
                "--scene",
                str(tmp_path / "nocrs.tif"),
                "--aoi",
                str(d / "aoi.geojson"),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "cli2"),
            ]
        )
        == 2
    )


def test_scenes_from_globs_and_item_collections(tmp_path):
    """``scenes:`` entries: a glob expands in order; an ItemCollection gives one item JSON per
    item (relative hrefs made absolute) with its date and cloud cover."""
    from landslide_batch.region.scenes import find_scenes

    for name in ("b.tif", "a.tif"):
        (tmp_path / name).write_bytes(b"")
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2B_45RUL_20150430",
        "geometry": None,
        "properties": {"datetime": "2015-04-30T05:00:00Z", "eo:cloud_cover": 12.5},
        "assets": {"B02": {"href": "bands/B02.tif"}, "B03": {"href": "https://example.org/B03.tif"}},
        "links": [],
    }
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    found = find_scenes([str(tmp_path / "*.tif"), str(tmp_path / "items.json")], tmp_path / "work")
    assert [s.source for s in found[:2]] == [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    assert found[2].date == "2015-04-30T05:00:00Z" and found[2].cloud_cover == 12.5
    written = json.loads(Path(found[2].source).read_text())
    assert written["assets"]["B02"]["href"] == str(tmp_path / "bands" / "B02.tif")
    assert written["assets"]["B03"]["href"] == "https://example.org/B03.tif"
    assert len({s.id for s in found}) == 3
    with pytest.raises(InputError, match="empty"):
        find_scenes([], tmp_path / "work")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match="server cannot be reached"):
        find_scenes([f"http://127.0.0.1:{port}/collection.json"], tmp_path / "work")


SIGNED = "sig=loopback"


def sign_href(href: str) -> str:
    """The test's href signer (``href_signer: test_region:sign_href``): a query string, as SAS tokens are."""
    return f"{href}?{SIGNED}"


def _serve_ranges(root: Path, log: Path, port) -> None:
    """Serve ``root`` over HTTP, answering HEAD and ``Range: bytes=a-b`` as object stores do;
    every request path goes to ``log``. Runs in its own process: GDAL's reads hold the GIL."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes | None:
            with log.open("a") as f:
                f.write(self.path + "\n")
            target = root / self.path.split("?")[0].lstrip("/")
            if not target.is_file():
                self.send_error(404)
                return None
            return target.read_bytes()

        def do_HEAD(self) -> None:
            if (data := self._body()) is not None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

        def do_GET(self) -> None:
            if (data := self._body()) is None:
                return
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            start, end = (int(rng.group(1)), int(rng.group(2) or len(data) - 1)) if rng else (0, len(data) - 1)
            end = min(end, len(data) - 1)
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(end - start + 1))
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(data[start : end + 1])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port.value = server.server_address[1]
    server.serve_forever()


@contextmanager
def _range_server(root: Path, log: Path):
    """-> the base URL of :func:`_serve_ranges` running in a child process (stopped on exit)."""
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("fork")
    port = ctx.Value("i", 0)
    proc = ctx.Process(target=_serve_ranges, args=(root, log, port), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while not port.value and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port.value}"
    finally:
        proc.terminate()
        proc.join(10)


#: Earth Search asset keys -> (product band, resolution in m); one asset (file) per band, no B10.
BAND_ASSETS = {
    "coastal": ("B01", 60),
    "blue": ("B02", 10),
    "green": ("B03", 10),
    "red": ("B04", 10),
    "rededge1": ("B05", 20),
    "rededge2": ("B06", 20),
    "rededge3": ("B07", 20),
    "nir": ("B08", 10),
    "nir08": ("B8A", 20),
    "nir09": ("B09", 60),
    "swir16": ("B11", 20),
    "swir22": ("B12", 20),
}
L4S_OF = {
    "B01": "B1",
    "B02": "B2",
    "B03": "B3",
    "B04": "B4",
    "B05": "B5",
    "B06": "B6",
    "B07": "B7",
    "B08": "B8",
    "B8A": "B8",
    "B09": "B9",
    "B11": "B11",
    "B12": "B12",
}


def _l2a_item(
    root: Path,
    name: str,
    world: np.ndarray,
    cols: slice,
    origin: tuple[float, float],
    cloud: tuple[slice, slice] | None,
    props: dict,
) -> dict:
    """Band files of an L2A-like item (DN = reflectance x 10000 + 1000 at 10/20/60 m, SCL at 20 m,
    a DEM) cut from ``world``; -> the STAC item, hrefs relative to ``root``."""
    from landslide_batch.bands import BAND_INDEX

    (root / name).mkdir()
    part = world[:, :, cols]
    assets = {}
    for key, (band, res) in BAND_ASSETS.items():
        k = res // 10
        refl = part[BAND_INDEX[L4S_OF[band]]]
        coarse = refl.reshape(refl.shape[0] // k, k, refl.shape[1] // k, k).mean(axis=(1, 3))
        write_geotiff(
            root / name / f"{band}.tif",
            np.round(coarse * 10000 + 1000),
            origin=origin,
            pixel=float(res),
            dtype="uint16",
            nodata=0,
        )
        assets[key] = {
            "href": f"{name}/{band}.tif",
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}],
        }
    scl = np.full((part.shape[1] // 2, part.shape[2] // 2), 4, np.uint8)
    if cloud is not None:
        scl[cloud] = 9
    write_geotiff(root / name / "SCL.tif", scl, origin=origin, pixel=20.0, dtype="uint8")
    write_geotiff(root / name / "dem.tif", part[BAND_INDEX["DEM"]], origin=origin)
    assets["scl"] = {"href": f"{name}/SCL.tif", "roles": ["data"]}
    assets["dem"] = {"href": f"{name}/dem.tif", "roles": ["data"]}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": name,
        "links": [],
        "geometry": None,
        "properties": {"s2:processing_baseline": "05.11", **props},
        "assets": assets,
    }


def l2a_world(tmp_path: Path):
    """The synthetic world the L2A-like items are cut from (EPSG:32645 near 84.3°E 28.2°N, origin
    on the 60 m grid) and an AOI over both its halves; -> (world, (x0, y0), AOI file, AOI bounds
    west, south, east, north in degrees)."""
    world, _ = synthetic_scene(120, 300, seed=21)
    x0, y0 = _utm(32645, 84.3, 28.2)
    x0, y0 = x0 - x0 % 60, y0 - y0 % 60
    to_degrees = Transformer.from_crs(32645, 4326, always_xy=True)
    west, north = to_degrees.transform(x0 + 300, y0 - 200)
    east, south = to_degrees.transform(x0 + 2700, y0 - 1000)
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(
        json.dumps(
            {
                "type": "Polygon",
                "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
            }
        )
    )
    return world, (x0, y0), aoi, (west, south, east, north)


def test_stac_item_collection_over_http_gives_a_region_map(region, tmp_path):
    """Two Sentinel-2 L2A-like items, one asset per band (10/20/60 m, SCL, DEM), in an
    ItemCollection served over loopback HTTP with relative hrefs, signed by the job's signer."""
    import geopandas as gpd

    _, model = region
    world, (x0, y0), aoi, _ = l2a_world(tmp_path)
    root = tmp_path / "catalog"
    root.mkdir()
    items = [
        _l2a_item(
            root,
            "S2A_45RUL_20150502",
            world,
            slice(0, 180),
            (x0, y0),
            (slice(10, 30), slice(70, 85)),
            {"datetime": "2015-05-02T05:00:00Z", "eo:cloud_cover": 8.0},
        ),
        _l2a_item(
            root,
            "S2B_45RUL_20150507",
            world,
            slice(120, 300),
            (x0 + 1200, y0),
            None,
            {"datetime": "2015-05-07T05:00:00Z", "eo:cloud_cover": 0.5},
        ),
    ]
    (root / "collection.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with _range_server(root, tmp_path / "requests.log") as url:
        manifest = run_job(
            job_from_dict(
                {
                    "scenes": f"{url}/collection.json",
                    "aoi": str(aoi),
                    "models": [str(model)],
                    "out": str(tmp_path / "out"),
                    "href_signer": "test_region:sign_href",
                    **SETTINGS,
                }
            )
        )
    seen = (tmp_path / "requests.log").read_text().split()
    bands_read = {p.split("?")[0] for p in seen if p.endswith(".tif?" + SIGNED)}
    used = [b for b, _ in BAND_ASSETS.values() if b != "B8A"] + ["SCL", "dem"]  # L4S's B8 is B08, not B8A
    assert bands_read == {f"/{i['id']}/{f}.tif" for i in items for f in used}
    assert not [p for p in seen if p.endswith(".tif")]  # every band file was read with its signature
    assert [(s["date"], s["cloud_cover"]) for s in manifest["scenes"]] == [
        ("2015-05-02T05:00:00Z", 8.0),
        ("2015-05-07T05:00:00Z", 0.5),
    ]
    scenes = gpd.read_file(tmp_path / "out" / "scenes.gpkg", layer="scenes")
    assert list(scenes["date"]) == ["2015-05-02T05:00:00Z", "2015-05-07T05:00:00Z"]
    with rasterio.open(tmp_path / "out" / "probability.tif") as ds:
        prob = ds.read(1)
        assert ds.crs.to_epsg() == 32645
    assert (prob >= 0).mean() > 0.9 and prob[prob >= 0].std() >= 0.05


def test_region_job_config_is_validated(tmp_path):
    from landslide_batch.errors import ConfigError

    base = {"models": ["m"], "out": str(tmp_path / "o")}
    cfg = job_from_dict({**base, "scenes": "scenes/*.tif", "aoi": "aoi.geojson"}, tmp_path)
    assert cfg.scenes == [str(tmp_path / "scenes" / "*.tif")] and cfg.aoi == tmp_path / "aoi.geojson"
    for bad, message in (
        ({"scene": "a.tif", "scenes": ["b.tif"], "aoi": "x"}, "exactly one of 'scene'"),
        ({}, "exactly one of 'scene'"),
        ({"scenes": ["b.tif"]}, "needs 'aoi'"),
        ({"scene": "a.tif", "crs": "EPSG:32645"}, "belong to region jobs"),
    ):
        with pytest.raises(ConfigError, match=message):
            job_from_dict({**base, **bad}, tmp_path)


def test_a_model_failing_beside_the_ingest_stops_the_region_before_its_next_scene(region, tmp_path, monkeypatch):
    """The model fails while the first scene is ingested: that scene's ingest ends, the second is
    never ingested, and the job raises the model's own error (no map, no run.json)."""
    import threading
    import time

    import landslide_batch.models.card as card_module
    from landslide_batch.errors import ModelError
    from landslide_batch.ingest.scene import SceneWriter

    d, model = region
    writing, write = threading.Event(), SceneWriter.write
    ingested: list[str] = []

    def noted_write(self, y0, x0, *args, **kwargs):
        writing.set()
        ingested.append(str(self.source_path))
        write(self, y0, x0, *args, **kwargs)
        time.sleep(0.05)  # the model's failure lands while this scene is still being ingested

    def failing_build(arch: str, encoder: str, in_channels: int):
        assert writing.wait(60), "no scene was being ingested"
        raise ModelError("weights.pt does not fit its card (planted)")

    monkeypatch.setattr(SceneWriter, "write", noted_write)
    monkeypatch.setattr(card_module, "build_model", failing_build)
    with pytest.raises(ModelError, match="planted"):
        run_job(job_from_dict(_job(d, model, tmp_path / "out", ["A.tif", "B.tif"], executor="local")))
    assert {Path(p).name for p in ingested} == {"A.tif"}  # B was never started
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_region_run_again_with_a_setting_that_changes_the_map_is_mapped_again(region, monkeypatch):
    """The region's identity is a scene job's (models, device and precision, every map setting,
    TTA included) plus its grid, AOI and merge: changing any of them maps the region again."""
    from landslide_batch.checks.preflight import resolve_job
    from landslide_batch.region import job as region_job

    d, model = region
    first = run_job(job_from_dict(_job(d, model, "settings", ["C.tif"])))
    assert first["blocks"]["computed"] == first["blocks"]["total"] > 0
    assert run_job(job_from_dict(_job(d, model, "settings", ["C.tif"])))["blocks"]["computed"] == 0
    with pytest.raises(ConfigError, match="another"):  # another job's map, not "nothing to do"
        run_job(job_from_dict(_job(d, model, "settings", ["C.tif"], tta=True)))
    tta = run_job(job_from_dict(_job(d, model, "settings", ["C.tif"], tta=True)), overwrite=True)
    assert tta["blocks"]["computed"] == tta["blocks"]["total"] and tta["region_hash"] != first["region_hash"]
    cfg = job_from_dict(_job(d, model, "settings", ["C.tif"]))
    setup = region_job._setup_region(resolve_job(cfg))
    hashes = {
        device: region_job.region_hash(setup.job.on_device(device), setup.grid, setup.aoi)
        for device in ("cpu", "cuda", "auto")
    }
    assert hashes["cpu"] == first["region_hash"] and len(set(hashes.values())) == 3
