"""DEM as users have it (issue 25): Copernicus GLO-30-style tiles (1 arc-second, EPSG:4326, the
pixel-is-point half-pixel shift of the published tiles; the real Planetary Computer
``cop-dem-glo-30`` item is the template of their STAC items) given as a list, a glob or a STAC
ItemCollection, mosaicked window by window; a DEM that leaves part of the scene uncovered."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer

from landslide_batch.bands import BAND_INDEX
from landslide_batch.errors import InputError
from landslide_batch.ingest import SceneInputs, ingest
from landslide_batch.synthetic import synthetic_scene, write_geotiff

PC_DEM = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "stac-items"
PC_DEM = PC_DEM / "pc-dem_Copernicus_DSM_COG_10_S90_00_W179_00_DEM.json"
ARCSEC = 1 / 3600
BOUNDARY = 85.0  # the tiles E084 and E085 meet here
#: Each stand-in tile: the 0.03° x 0.03° of its published 1° tile that touch 85°E near 28°N.
SPAN_PX = 108


def elevation(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Hills on a ramp, metres: slopes that vary, across the tile seam too."""
    return 1200 + 3000 * (lon - BOUNDARY) + 60 * np.sin(lon * 900) * np.cos(lat * 700)


def tile(folder: Path, west_deg: int) -> tuple[Path, dict]:
    """The part of GLO-30 tile ``E0{west_deg}`` (origin half a pixel west/north of its corner, as
    published) next to ``BOUNDARY``; -> (its GeoTIFF, its STAC item from the real template)."""
    x0 = west_deg - ARCSEC / 2
    col0 = 3600 - SPAN_PX if west_deg < BOUNDARY else 0
    left, top = x0 + col0 * ARCSEC, 28.03 + ARCSEC / 2
    cols, rows = np.meshgrid(np.arange(SPAN_PX) + 0.5, np.arange(SPAN_PX) + 0.5)
    z = elevation(left + cols * ARCSEC, top - rows * ARCSEC).astype(np.float32)
    name = f"Copernicus_DSM_COG_10_N28_00_E0{west_deg}_00_DEM"
    path = write_geotiff(folder / f"{name}.tif", z, crs="EPSG:4326", origin=(left, top), pixel=ARCSEC)
    item = copy.deepcopy(json.loads(PC_DEM.read_text()))
    item["id"] = name
    item["assets"]["data"]["href"] = f"{path.name}"  # relative: resolved against the collection's file
    right, bottom = left + SPAN_PX * ARCSEC, top - SPAN_PX * ARCSEC
    item["bbox"] = [left, bottom, right, top]
    item["geometry"]["coordinates"] = [[[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]]
    item["properties"] |= {"proj:shape": [SPAN_PX, SPAN_PX], "proj:transform": [ARCSEC, 0, left, 0, -ARCSEC, top]}
    return path, item


@pytest.fixture
def tiles(tmp_path) -> tuple[list[Path], Path]:
    """Two stand-in tiles and their ItemCollection; -> (tile files, collection file)."""
    if not PC_DEM.is_file():
        pytest.skip("../shared/data/stac-items not present")
    folder = tmp_path / "cop30"
    folder.mkdir()
    made = [tile(folder, w) for w in (84, 85)]
    collection = folder / "dem-items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": [item for _, item in made]}))
    return [p for p, _ in made], collection


def scene_across_the_seam(tmp_path: Path) -> Path:
    """A 14-band 10 m UTM 45N stack of 1.2 x 0.8 km straddling 85°E at 28.015°N."""
    x, y = Transformer.from_crs(4326, 32645, always_xy=True).transform(BOUNDARY, 28.015)
    bands, _ = synthetic_scene(80, 120, seed=5)
    return write_geotiff(tmp_path / "scene.tif", bands, origin=(round(x, -1) - 600, round(y, -1) + 400))


def ingested(scene: Path, dest: Path, dem, **kw):
    s = ingest(scene, dest, chunk=32, inputs=SceneInputs(dem=dem, **kw))
    bands, valid = s.read(0, s.shape[0], 0, s.shape[1])
    return s, bands[BAND_INDEX["DEM"]], bands[BAND_INDEX["slope"]], valid


def test_glo30_tiles_as_a_list_a_glob_and_an_item_collection_give_one_dem(tmp_path, tiles):
    """The same DEM and slope (<= 1e-6) whichever way the tiles are given, and as from one file
    holding both tiles: the seam leaves no trace."""
    files, collection = tiles
    scene = scene_across_the_seam(tmp_path)
    merged = tmp_path / "both.tif"
    with rasterio.open(files[0]) as a, rasterio.open(files[1]) as b:
        both = np.concatenate([a.read(1), b.read(1)], axis=1)
        write_geotiff(merged, both, crs="EPSG:4326", origin=(a.transform.c, a.transform.f), pixel=ARCSEC)
    _, want_z, want_slope, valid = ingested(scene, tmp_path / "one.zarr", str(merged))
    assert valid.all() and np.isfinite(want_z).all()
    for name, dem in (
        ("list", [str(p) for p in files]),
        ("glob", str(files[0].parent / "Copernicus_DSM_*.tif")),
        ("items", str(collection)),
    ):
        s, z, slope, ok = ingested(scene, tmp_path / f"{name}.zarr", dem)
        assert ok.all()
        assert np.abs(z - want_z).max() <= 1e-6, name
        assert np.abs(slope - want_slope).max() <= 1e-6, name
        assert s.attrs["ingest"]["coverage"]["dem_uncovered_share"] == 0
        assert s.attrs["ingest"]["layers"]["DEM"]["tiles"] == [str(p) for p in files]
    # and the DEM is the function the tiles sample (bilinear between 30 m samples: within a metre)
    to_deg = Transformer.from_crs(32645, 4326, always_xy=True)
    s = ingested(scene, tmp_path / "check.zarr", [str(p) for p in files])[0]
    t = s.attrs["ingest"]["grid"]["transform"]
    rows, cols = np.mgrid[: s.shape[0], : s.shape[1]] + 0.5
    lon, lat = to_deg.transform(t[2] + cols * t[0], t[5] + rows * t[4])
    assert np.abs(want_z - elevation(lon, lat)).max() < 1.5


def test_one_tile_of_two_is_an_error_naming_the_share_unless_partial_dem_is_allowed(tmp_path, tiles):
    files, _ = tiles
    scene = scene_across_the_seam(tmp_path)
    with pytest.raises(InputError, match=r"DEM \(inputs.dem\) does not cover 5\d\.\d\d% of the scene's valid area"):
        ingested(scene, tmp_path / "part.zarr", str(files[0]))
    assert not (tmp_path / "part.zarr").exists() and not (tmp_path / "part.zarr.partial").exists()
    s, z, _, valid = ingested(scene, tmp_path / "part.zarr", str(files[0]), allow_partial_dem=True)
    share = s.attrs["ingest"]["coverage"]["dem_uncovered_share"]
    assert 0.5 < share < 0.55 and share == pytest.approx(1 - valid.mean())
    assert any("does not cover" in w and "allow_partial_dem" in w for w in s.attrs["warnings"])


def test_dem_sources_that_are_not_there_fail_clearly(tmp_path, tiles):
    files, collection = tiles
    scene = scene_across_the_seam(tmp_path)
    with pytest.raises(InputError, match="the glob .*nothing_\\*.tif matches no file"):
        ingested(scene, tmp_path / "x.zarr", str(tmp_path / "nothing_*.tif"))
    with pytest.raises(InputError, match="a DEM tile is given twice"):
        ingested(scene, tmp_path / "x.zarr", [str(files[0]), str(files[0])])
    bad = json.loads(collection.read_text())
    for feature in bad["features"]:
        feature["assets"] = {"rendered_preview": feature["assets"]["rendered_preview"]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="has no elevation asset"):
        ingested(scene, tmp_path / "x.zarr", str(tmp_path / "bad.json"))


def test_a_region_from_a_stac_api_takes_each_scene_s_dem_tiles_from_its_dem_collection(tmp_path, tiles, tiny_model):
    """``stac_search.dem_collection``: the GLO-30 tiles over each scene's footprint, from the same
    API as the scenes, are its DEM (mosaicked as a list of the tiles would be)."""
    from shapely.geometry import mapping
    from test_stac_search import stac_api

    from landslide_batch.config import job_from_dict
    from landslide_batch.ingest import Scene
    from landslide_batch.jobs.stac import raster_footprint
    from landslide_batch.pipeline import run_job

    files, collection = tiles
    stack = scene_across_the_seam(tmp_path)
    with rasterio.open(stack) as ds:
        layers, origin = ds.read(), (ds.transform.c, ds.transform.f)
    assets = {}
    for i, key in enumerate(("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12")):
        dn = np.round(layers[i] * 10000 + 1000).clip(1, 65535).astype(np.uint16)
        path = write_geotiff(tmp_path / f"{key}.tif", dn, origin=origin, nodata=0)
        assets[key] = {"href": str(path), "roles": ["data"]}
    geom, _, _ = raster_footprint(tmp_path / "B02.tif")
    scene_item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2A_T45RUL_20150502",
        "collection": "sentinel-2-l2a",
        "geometry": mapping(geom),
        "bbox": list(geom.bounds),
        "properties": {"datetime": "2015-05-02T05:00:00Z", "eo:cloud_cover": 1.0, "s2:processing_baseline": "05.11"},
        "links": [],
        "assets": assets,
    }
    dem_tiles = json.loads(collection.read_text())["features"]
    for item, path in zip(dem_tiles, files):
        item["collection"] = "cop-dem-glo-30"
        item["properties"]["eo:cloud_cover"] = 0  # the test API's cloud filter reads it
        item["assets"]["data"]["href"] = str(path)  # an API serves absolute hrefs
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps(mapping(geom.buffer(-0.002))))
    with stac_api([scene_item, *dem_tiles]) as (api, searches):
        search = {"url": api, "collections": ["sentinel-2-l2a"], "dem_collection": "cop-dem-glo-30"}
        job = {"stac_search": search, "aoi": str(aoi), "models": [str(tiny_model)], "out": str(tmp_path / "out")}
        run_job(job_from_dict({**job, "tile": 64, "block": 128, "inputs": {"use_scl": False}}))
    assert [s["collections"] for s in searches] == [["sentinel-2-l2a"], ["cop-dem-glo-30"]]
    assert searches[1]["bbox"] == pytest.approx(list(geom.bounds))  # over the scene's footprint
    (store,) = (tmp_path / "out" / ".work" / "scenes").glob("*/scene.zarr")
    scene = Scene(store)
    assert scene.attrs["ingest"]["layers"]["DEM"]["tiles"] == [str(p) for p in files]
    _, want, _, _ = ingested(stack, tmp_path / "want.zarr", [str(p) for p in files])
    got = scene.read(0, scene.shape[0], 0, scene.shape[1])[0][BAND_INDEX["DEM"]]
    # (the region's store has other window bounds: GDAL's warper rounds differently, by < 1 cm)
    assert got.shape == want.shape and np.abs(got - want).max() <= 0.01


def test_run_takes_dem_tiles_on_the_command_line(tmp_path, tiles, tiny_model, capsys):
    """``run --dem`` (repeated: a list of tiles); one tile of two refused with exit 2 naming the share;
    ``--allow-partial-dem`` maps with a warning and the share in run.json."""
    from landslide_batch.cli import main

    files, _ = tiles
    scene = scene_across_the_seam(tmp_path)
    common = ["run", "--scene", str(scene), "--model", str(tiny_model), "--block", "128", "--tile", "64"]
    assert main([*common, "--out", str(tmp_path / "both"), "--dem", str(files[0]), "--dem", str(files[1])]) == 0
    run = json.loads((tmp_path / "both" / "run.json").read_text())
    assert run["config"]["inputs"]["dem"] == [str(p) for p in files]
    assert run["checks"]["coverage"]["dem_uncovered_share"] == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "one"), "--dem", str(files[0])]) == 2
    assert "does not cover 5" in capsys.readouterr().err and not (tmp_path / "one" / "run.json").exists()
    assert main([*common, "--out", str(tmp_path / "one"), "--dem", str(files[0]), "--allow-partial-dem"]) == 0
    run = json.loads((tmp_path / "one" / "run.json").read_text())
    assert 0.5 < run["checks"]["coverage"]["dem_uncovered_share"] < 0.55
    assert any("does not cover" in w for w in run["warnings"])
    assert "warning: the DEM (inputs.dem) does not cover" in capsys.readouterr().out


def test_a_list_of_dem_tiles_is_uploaded_tile_by_tile():
    """``submit --upload-to`` sees each tile of a list as one input file (not the list's text)."""
    from landslide_batch.jobs.upload import job_paths, label

    spec = {"scene": "s.json", "out": "s3://b/o", "inputs": {"dem": ["/d/E084.tif", "/d/E085.tif"]}}
    assert [(label(k), v) for k, v in job_paths(spec)][2:] == [
        ("inputs.dem[0]", "/d/E084.tif"),
        ("inputs.dem[1]", "/d/E085.tif"),
    ]
