"""Real catalogs, right reflectance (issue 25): STAC items as Earth Search and Planetary Computer
write them (``../shared/data/stac-items/``, read-only), and items built here from the documented
traits of Earth Search ``sentinel-2-c1-l2a`` and CDSE, with stand-in rasters at the items' own
grids (cropped to a small window at the tile's corner) holding known digital numbers.

Every optical layer's stored reflectance is compared with the value the DN stands for, pixel by
pixel (nearest resampling, so 20/60 m blocks land exactly on the 10 m grid).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from landslide_batch.bands import BAND_INDEX
from landslide_batch.config import job_from_dict
from landslide_batch.errors import UnitsMismatchError
from landslide_batch.ingest import SceneInputs, ingest
from landslide_batch.ingest.inputs import S2_LAYERS
from landslide_batch.ingest.sentinel2 import COMMON_NAMES, NATIVE_RESOLUTION_M, canonical_band
from landslide_batch.synthetic import write_geotiff

ITEMS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "stac-items"
ES_L2A = ITEMS / "es-l2a_S2A_39QTA_20230628_0_L2A.json"
PC_L2A = ITEMS / "pc_S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458.json"
PC_DEM = ITEMS / "pc-dem_Copernicus_DSM_COG_10_S90_00_W179_00_DEM.json"
needs_items = pytest.mark.skipif(not ES_L2A.is_file(), reason="../shared/data/stac-items not present")

WINDOW_M = 1440  # the crop: 144 px at 10 m, 72 at 20 m, 24 at 60 m
#: Reflectance of three column thirds (dark, mid, bright), plus 0.001 per layer number.
THIRDS = (0.02, 0.08, 0.3)
L4S_OF = {
    f"B{int(b[1:]):02d}": f"B{int(b[1:])}" for b in ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B11", "B12")
}
NEAREST = {"resampling": "nearest"}


def truth(layer: str, width: int) -> np.ndarray:
    """The reflectance the stand-in DNs of ``layer`` stand for, along a row of ``width`` pixels."""
    third = np.minimum(np.arange(width) * 3 // width, 2)
    return np.asarray(THIRDS)[third] + 0.001 * int(layer[1:])


def _asset_grid(item: dict, asset: dict) -> tuple[str, tuple[float, float], float] | None:
    """(CRS, upper-left corner, pixel size) an asset declares, at the item or asset level."""
    t = asset.get("proj:transform")
    code = asset.get("proj:code") or item["properties"].get("proj:code")
    epsg = asset.get("proj:epsg") or item["properties"].get("proj:epsg")
    if not t:
        return None
    return (code or f"EPSG:{epsg}"), (t[2], t[5]), float(t[0])


def stand_in(src: dict, root: Path, dn_of, keys_done=None) -> dict:
    """``src`` (a STAC item dict, kept as written) with a GeoTIFF at each band/SCL data asset's grid,
    cropped to ``WINDOW_M``: DN ``dn_of(reflectance)`` for bands, SCL 4 (vegetation). Other assets
    (``-jp2`` twins, previews, visuals, metadata) keep their remote hrefs: reading one would fail."""
    item = copy.deepcopy(src)
    root.mkdir(parents=True, exist_ok=True)
    for key, asset in item["assets"].items():
        band = canonical_band(key.split("_")[0])
        grid = _asset_grid(item, asset)
        if band is None or grid is None or key.endswith("-jp2") or "data" not in asset.get("roles", []):
            continue
        crs, origin, pixel = grid
        n = round(WINDOW_M / pixel)
        if band == "SCL":
            data = np.full((n, n), 4, np.uint8)
        else:
            refl = np.tile(truth(L4S_OF.get(band, "B8"), n), (n, 1))
            data = np.round(dn_of(refl)).astype(np.uint16)
        path = write_geotiff(root / f"{key}.tif", data, crs=crs, origin=origin, pixel=pixel, nodata=0)
        asset["href"], asset["proj:shape"] = str(path), [n, n]
    return item


def write_dem(path: Path, item: dict, elevation: float = 800.0) -> Path:
    """A 30 m DEM (hills on an east-facing ramp) over the crop, in the scene's CRS."""
    crs, (x0, y0), _ = _asset_grid(item, item["assets"][_key_of(item, "B02")])
    y, x = np.mgrid[:60, :60]
    ramp = elevation + 0.5 * x + 20 * np.sin(x / 5) * np.cos(y / 7)
    return write_geotiff(path, ramp.astype(np.float32), crs=crs, origin=(x0 - 150, y0 + 150), pixel=30.0)


def _key_of(item: dict, band: str) -> str:
    return next(k for k in item["assets"] if canonical_band(k.split("_")[0]) == band and not k.endswith("-jp2"))


def _save(item: dict, path: Path) -> Path:
    path.write_text(json.dumps(item))
    return path


def assert_reflectance(scene, atol: float = 1e-4) -> None:
    """Every optical layer read from a file holds ``truth`` on every valid pixel."""
    bands, valid = scene.read(0, scene.shape[0], 0, scene.shape[1])
    assert valid.all()
    for layer in S2_LAYERS:
        if layer == "B10":
            continue
        expected = np.tile(truth(layer, scene.shape[1]), (scene.shape[0], 1))
        err = np.abs(bands[BAND_INDEX[layer]] - expected).max()
        assert err <= atol, f"layer {layer}: off by {err:.4g}"


def es_l2a() -> dict:
    return json.loads(ES_L2A.read_text())


def pc_l2a() -> dict:
    return json.loads(PC_L2A.read_text())


def harmonised(refl):  # Earth Search l2a with earthsearch:boa_offset_applied: DN = reflectance x 10000
    return refl * 10000


def with_offset(refl):  # baseline >= 04.00 as published: DN = reflectance x 10000 + 1000
    return refl * 10000 + 1000


# --------------------------------------------------------------------------- Must show 1


@needs_items
@pytest.mark.parametrize(
    "name, make, dn_of, source",
    [
        ("es-l2a", es_l2a, harmonised, "earthsearch:boa_offset_applied: true"),
        ("pc-l2a", pc_l2a, with_offset, "processing baseline 05.10 (STAC property s2:processing_baseline)"),
    ],
)
def test_real_items_give_the_reflectance_their_dns_stand_for(tmp_path, name, make, dn_of, source):
    item = stand_in(make(), tmp_path / name, dn_of)
    path = _save(item, tmp_path / f"{name}.json")
    inputs = SceneInputs(dem=str(write_dem(tmp_path / "dem.tif", item)), **NEAREST)
    scene = ingest(path, tmp_path / f"{name}.zarr", chunk=64, inputs=inputs)
    assert scene.shape == (144, 144)
    assert_reflectance(scene)
    layers = scene.attrs["ingest"]["layers"]
    assert all(source in layers[layer]["scaling"] for layer in S2_LAYERS if layer != "B10"), layers["B2"]
    if name == "es-l2a":  # the declared -0.1 is named as not applied: DN 850 is 0.085, not -0.015
        assert "declared offset -0.1 not applied" in layers["B4"]["scaling"]


def c1_item(es: dict) -> dict:
    """An Earth Search ``sentinel-2-c1-l2a`` item from its documented traits: the l2a item's keys and
    ``raster:bands`` (offset -0.1, now right: DNs carry +1000), no ``boa_offset_applied``, and a
    ``preview`` overview (320 m uint8, ``eo:bands`` B04/B03/B02) whose key sorts before ``red``."""
    item = copy.deepcopy(es)
    item["id"] = "S2A_T39QTA_20230628T070631_L2A"
    item["collection"] = "sentinel-2-c1-l2a"
    del item["properties"]["earthsearch:boa_offset_applied"]
    item["assets"] = {k: a for k, a in item["assets"].items() if not k.endswith("-jp2")}
    blue = item["assets"]["blue"]
    item["assets"]["preview"] = {
        "href": "https://e84-earth-search-sentinel-data.s3.us-west-2.amazonaws.com/preview.tif",
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["overview"],
        "proj:shape": [343, 343],
        "proj:transform": [320, 0, blue["proj:transform"][2], 0, -320, blue["proj:transform"][5]],
        "eo:bands": [{"name": "B04", "common_name": "red"}, {"name": "B03"}, {"name": "B02"}],
        "raster:bands": [{"data_type": "uint8"}] * 3,
    }
    for key in ("cloud", "snow"):
        item["assets"][key] = {"href": f"https://example.invalid/{key}.tif", "roles": ["data", "cloud"]}
    return item


def cdse_item(es: dict) -> dict:
    """A CDSE item (STAC 1.1) from its documented traits: keys ``B02_10m``/``B02_20m``/``B02_60m``...,
    ``SCL_20m`` (and ``SCL_60m``), asset-level ``raster:scale``/``raster:offset``, ``bands`` with
    ``eo:common_name``, ``proj:code``, ``processing:version``, ``s3://eodata`` hrefs, a ``TCI_10m``."""
    props = {k: v for k, v in es["properties"].items() if not k.startswith(("earthsearch:", "s2:", "proj:"))}
    t = es["assets"]["blue"]["proj:transform"]
    props |= {"processing:version": "05.09", "product:type": "S2MSI2A", "proj:code": "EPSG:32639"}
    assets = {}
    for band, native in NATIVE_RESOLUTION_M.items():
        for res in (10, 20, 60):
            if res < native and band != "B02" or band == "SCL" and res == 10:
                continue
            asset = {
                "href": f"s3://eodata/Sentinel-2/MSI/L2A/2023/06/28/S2A.SAFE/R{res}m/T39QTA_{band}_{res}m.jp2",
                "type": "image/jp2",
                "roles": ["data", "sampling:original" if res == native else "sampling:downsampled"],
                "proj:code": "EPSG:32639",
                "proj:transform": [res, 0, t[2], 0, -res, t[5]],
                "proj:shape": [109800 // res, 109800 // res],
                "gsd": res,
            }
            if band != "SCL":
                common = next((c for c, b in COMMON_NAMES.items() if b == band), None)
                asset |= {
                    "raster:scale": 0.0001,
                    "raster:offset": -0.1,
                    "bands": [{"name": band, "eo:common_name": common}],
                }
            assets[f"{band}_{res}m"] = asset
    assets["TCI_10m"] = {**assets["B04_10m"], "roles": ["visual"], "href": "s3://eodata/.../TCI_10m.jp2"}
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "id": "S2A_MSIL2A_20230628T070631_N0509_R106_T39QTA_20230628T113955.SAFE",
        "geometry": es["geometry"],
        "bbox": es["bbox"],
        "properties": props,
        "links": [],
        "assets": assets,
    }


# --------------------------------------------------------------------------- Must show 2


@needs_items
@pytest.mark.parametrize("make", [c1_item, cdse_item], ids=["earth-search-c1", "cdse"])
def test_data_assets_at_native_resolution_never_previews(tmp_path, make):
    """Layer B4 comes from the 10 m data asset, not the preview / TCI listing B04; each layer from
    its band's native resolution; CDSE's SCL_20m is found (clouds are masked)."""
    item = stand_in(make(es_l2a()), tmp_path / "files", with_offset)
    scl_key = next(k for k in item["assets"] if k.upper().startswith("SCL") and k.upper() != "SCL_60M")
    cloud = np.full((72, 72), 4, np.uint8)
    cloud[:36, :36] = 9  # a cloud over the first quarter
    write_geotiff(
        item["assets"][scl_key]["href"],
        cloud,
        crs="EPSG:32639",
        origin=_asset_grid(item, item["assets"][scl_key])[1],
        pixel=20.0,
        nodata=0,
    )
    path = _save(item, tmp_path / "item.json")
    inputs = SceneInputs(dem=str(write_dem(tmp_path / "dem.tif", item)), **NEAREST)
    scene = ingest(path, tmp_path / "scene.zarr", chunk=64, inputs=inputs)
    layers = scene.attrs["ingest"]["layers"]
    red = "red" if make is c1_item else "B04_10m"
    assert layers["B4"]["from"] == f"default mapping (asset {red!r})" and layers["B4"]["resolution"] == 10
    for layer in ("B1", "B5", "B9", "B11"):
        assert layers[layer]["resolution"] == NATIVE_RESOLUTION_M[f"B{int(layer[1:]):02d}"]
    assert scene.attrs["ingest"]["scl"]["path"].endswith(f"{scl_key}.tif")
    bands, valid = scene.read(0, 144, 0, 144)
    assert not valid[:72, :72].any() and valid[72:, :].all() and valid[:, 72:].all()
    expected = np.tile(truth("B4", 144), (144, 1))
    assert np.abs(bands[BAND_INDEX["B4"]][valid] - expected[valid]).max() <= 1e-4
    declared = "raster:bands" if make is c1_item else "raster:scale/offset"
    assert declared in layers["B2"]["scaling"] and "- 0.1" in layers["B2"]["scaling"]


@needs_items
def test_a_band_only_a_preview_carries_is_missing_not_read_from_the_preview(tmp_path):
    """Without its ``red`` asset, the c1 item's B04 is only in the 320 m uint8 ``preview`` (and the
    real items' visuals): a clear error, never the rendered image."""
    from landslide_batch.errors import InputError
    from landslide_batch.ingest.stac import plan_stac

    item = stand_in(c1_item(es_l2a()), tmp_path / "files", with_offset)
    del item["assets"]["red"]
    item["assets"]["visual"] = es_l2a()["assets"]["visual"]  # role visual, eo:bands red/green/blue
    path = _save(item, tmp_path / "item.json")
    with pytest.raises(InputError, match=r"layer B4 needs band B04, .* no data asset .*previews"):
        plan_stac(path, SceneInputs(dem=str(write_dem(tmp_path / "dem.tif", item))))
    pc = pc_l2a()  # Planetary Computer's "visual" has role data: its key still rules it out
    pc["assets"] = {k: a for k, a in pc["assets"].items() if k != "B04"}
    with pytest.raises(InputError, match="layer B4 needs band B04"):
        plan_stac(_save(pc, tmp_path / "pc.json"), SceneInputs(dem=str(tmp_path / "dem.tif")))


# --------------------------------------------------------------------------- Must show 3 and 4

SETTINGS = {"tile": 64, "overlap": 0.5, "block": 128, "batch_size": 8, "threshold": 0.5}


def moved_next_to(item: dict, es: dict, east_m: float) -> dict:
    """``item`` placed on the Earth Search tile's UTM grid, ``east_m`` east of its corner, so that
    both scenes fit one small region (every other field as written)."""
    item = copy.deepcopy(item)
    x0, y0 = es["assets"]["blue"]["proj:transform"][2], es["assets"]["blue"]["proj:transform"][5]
    item["properties"]["proj:epsg"] = es["properties"]["proj:epsg"]
    for asset in item["assets"].values():
        if t := asset.get("proj:transform"):
            asset["proj:transform"] = [t[0], 0, x0 + east_m, 0, t[4], y0]
    return item


def region_of(tmp_path: Path, items: list[dict], model: Path, **extra) -> dict:
    """A region job over ``items`` (stand-ins written), its AOI their union; -> the job dict."""
    from pyproj import Transformer

    paths = [_save(item, tmp_path / f"{item['id']}.json") for item in items]
    es = items[0]
    x0, y0 = es["assets"]["blue"]["proj:transform"][2], es["assets"]["blue"]["proj:transform"][5]
    to_deg = Transformer.from_crs(32639, 4326, always_xy=True)
    (w, e), (s, n) = zip(*(to_deg.transform(x0 + dx, y0 - dy) for dx, dy in ((100, 1340), (2060, 100))))
    aoi = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    dem = write_dem(tmp_path / "dem.tif", es)
    big_dem = tmp_path / "dem_wide.tif"
    with rasterio.open(dem) as ds:
        write_geotiff(
            big_dem,
            np.tile(ds.read(1), (1, 2)),
            crs=ds.crs.to_string(),
            origin=(ds.transform.c, ds.transform.f),
            pixel=30.0,
        )
    return {
        "scenes": [str(p) for p in paths],
        "aoi": str(tmp_path / "aoi.geojson"),
        "models": [str(model)],
        "out": str(tmp_path / "out"),
        "inputs": {"dem": str(big_dem), **NEAREST},
        **SETTINGS,
        **extra,
    }


def _scene_stores(out: Path):
    from landslide_batch.ingest import Scene

    return {p.parent.name: Scene(p) for p in sorted((out / ".work" / "scenes").glob("*/scene.zarr"))}


@needs_items
def test_a_region_of_earth_search_and_planetary_computer_scenes_is_right_without_settings(tmp_path, tiny_model):
    """Earth Search l2a (DNs harmonised, offset declared) beside Planetary Computer (baseline 05.10,
    DNs carry +1000), no offset setting: both scenes' reflectance is right, and run.json says why."""
    from landslide_batch.pipeline import run_job

    es = stand_in(es_l2a(), tmp_path / "es", harmonised)
    pc = stand_in(moved_next_to(pc_l2a(), es_l2a(), 720), tmp_path / "pc", with_offset)
    manifest = run_job(job_from_dict(region_of(tmp_path, [es, pc], tiny_model)))
    stores = _scene_stores(tmp_path / "out")
    assert len(stores) == 2
    for scene in stores.values():
        assert_reflectance(scene)
    records = [s["checks"]["reflectance"] for s in manifest["scenes"]]
    es_b2, pc_b2 = (r["scaling"]["B2"] for r in records)
    assert es_b2 == (
        "DN * 0.0001 + 0 from STAC earthsearch:boa_offset_applied: true "
        "(scale from raster:bands of asset 'blue'; declared offset -0.1 not applied)"
    )
    assert pc_b2 == "(DN - 1000) / 10000 from processing baseline 05.10 (STAC property s2:processing_baseline)"
    assert all(not r["mismatch"] and r["likely_cause"] is None for r in records)


def twice(es: dict) -> dict:
    """Harmonised DNs whose item still declares offset -0.1 and not ``boa_offset_applied``: the offset
    is applied twice, every reflectance 0.1 too low."""
    item = copy.deepcopy(es)
    del item["properties"]["earthsearch:boa_offset_applied"]
    return item


@needs_items
def test_offset_applied_twice_is_refused_before_inference_single_scene_and_region(tmp_path, tiny_model):
    from landslide_batch.pipeline import run_job

    item = stand_in(twice(es_l2a()), tmp_path / "es", harmonised)
    path = _save(item, tmp_path / "twice.json")
    dem = str(write_dem(tmp_path / "dem.tif", item))
    job = {
        "scene": str(path),
        "models": [str(tiny_model)],
        "out": str(tmp_path / "one"),
        "inputs": {"dem": dem},
        **SETTINGS,
    }
    with pytest.raises(
        UnitsMismatchError, match=r"B2 67%.*subtracted twice.*DN \* 0.0001 - 0.1 from STAC raster:bands of asset 'blue'"
    ):
        run_job(job_from_dict(job))
    assert not (tmp_path / "one" / "run.json").exists() and not (tmp_path / "one" / "probability.tif").exists()
    accepted = run_job(job_from_dict({**job, "accept_units_mismatch": True}))
    assert accepted["checks"]["reflectance"]["mismatch"] is True
    assert any(w.startswith("reflectance off by an offset, mapped anyway") for w in accepted["warnings"])

    pc = stand_in(moved_next_to(pc_l2a(), es_l2a(), 720), tmp_path / "pc", with_offset)
    (tmp_path / "r").mkdir()
    region = region_of(tmp_path / "r", [item, pc], tiny_model)
    with pytest.raises(UnitsMismatchError, match="subtracted twice"):
        run_job(job_from_dict(region))
    assert not (tmp_path / "r" / "out" / "run.json").exists()
    assert not list((tmp_path / "r" / "out" / ".work" / "scenes").glob("*/map"))  # no scene was mapped


@needs_items
def test_a_region_map_mostly_landslide_is_flagged_in_run_json_and_its_stac_item(tmp_path, tiny_model):
    from test_bad_inputs_2 import model_with_head_bias

    from landslide_batch.jobs.stac import item_for_outputs
    from landslide_batch.pipeline import run_job

    everywhere = model_with_head_bias(tiny_model, tmp_path / "everywhere", 20.0)
    es = stand_in(es_l2a(), tmp_path / "es", harmonised)
    pc = stand_in(moved_next_to(pc_l2a(), es_l2a(), 720), tmp_path / "pc", with_offset)
    manifest = run_job(job_from_dict(region_of(tmp_path, [es, pc], everywhere)))
    assert manifest["summary"]["implausible"] is True
    (warning,) = [w for w in manifest["warnings"] if w.startswith("implausible result")]
    assert "100% of the mapped area is classified as landslide" in warning
    assert json.loads((tmp_path / "out" / "run.json").read_text())["summary"]["implausible"] is True
    assert item_for_outputs(tmp_path / "out").properties["landslide:implausible"] is True
