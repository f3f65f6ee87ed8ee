"""Real-world inputs (issue 8): Sentinel-2 band files at 10/20/60 m, DEM in another CRS, SCL, AOI, STAC.

The fixture builds a small L2A-like SAFE folder: separate band GeoTIFFs named like L2A
files (``T45RUL_20250101T050000_B05_20m.tif``), DNs with the baseline >= 04.00 offset
(reflectance = (DN - 1000) / 10000), an SCL band with a cloud and a shadow, no B10, and a
DEM in EPSG:4326 that is a tilted plane in the scene's UTM metres.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from pyproj import Transformer
from rasterio.transform import from_origin

from landslide_batch.bands import BAND_INDEX, L4S_BANDS
from landslide_batch.config import JobConfig, job_from_dict
from landslide_batch.errors import InputError
from landslide_batch.ingest import SceneInputs, ingest, ingest_job
from landslide_batch.ingest.sentinel2 import canonical_band, classify_file, resolve_scaling
from landslide_batch.ingest.terrain import horn_slope, pixel_size_m
from landslide_batch.synthetic import write_geotiff, write_l2a_metadata

UTM = "EPSG:32645"
X0, Y0 = 500000.0, 3100000.0
H, W = 120, 180  # 10 m grid: 1.2 km x 1.8 km
PRODUCT = "S2B_MSIL2A_20250101T050000_N0511_R019_T45RUL_20250101T080000.SAFE"
PREFIX = "T45RUL_20250101T050000"
SLOPE_DEG, ASPECT_DEG = 25.0, 30.0
CLOUD = (slice(20, 40), slice(60, 80))  # 10 m rows/cols of SCL class 9 (20 m rows 10..20, cols 30..40)
SHADOW = (slice(80, 90), slice(10, 20))  # SCL class 3
NODATA_PX = (100, 150)  # DN 0 in B02


def plane_dn(res: int, base: int, gx: int, gy: int):
    """DN = base + gx*col + gy*row on a ``res`` m grid, and its exact bilinear values at 10 m centres."""
    k = res // 10
    rows, cols = H // k, W // k
    j, i = np.mgrid[0:rows, 0:cols]
    dn = (base + gx * i + gy * j).astype(np.uint16)
    r, c = np.mgrid[0:H, 0:W]
    at10 = base + gx * ((c + 0.5) / k - 0.5) + gy * ((r + 0.5) / k - 0.5)
    return dn, at10


def dem_plane(east, north, slope_deg=SLOPE_DEG, aspect_deg=ASPECT_DEG):
    t = math.tan(math.radians(slope_deg))
    a = math.radians(aspect_deg)
    return 1000.0 + t * (math.cos(a) * (east - X0 - 900) + math.sin(a) * (north - Y0 + 600))


def write_dem_4326(path, margin=0.004, res=1 / 3600):
    to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    to_geo = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    lons, lats = to_geo.transform([X0, X0 + W * 10, X0, X0 + W * 10], [Y0, Y0, Y0 - H * 10, Y0 - H * 10])
    west, east, south, north = min(lons) - margin, max(lons) + margin, min(lats) - margin, max(lats) + margin
    nx, ny = math.ceil((east - west) / res), math.ceil((north - south) / res)
    lon = west + (np.arange(nx) + 0.5) * res
    lat = north - (np.arange(ny) + 0.5) * res
    LON, LAT = np.meshgrid(lon, lat)
    e, n = to_utm.transform(LON, LAT)
    write_geotiff(path, dem_plane(e, n).astype(np.float32), crs="EPSG:4326", origin=(west, north), pixel=res)
    return path


@pytest.fixture(scope="module")
def l2a(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2")
    safe = root / PRODUCT
    img = safe / "GRANULE" / "L2A_T45RUL_A040000_20250101T050000" / "IMG_DATA"
    rng = np.random.default_rng(8)
    expected = {}
    for res in (10, 20, 60):
        (img / f"R{res}m").mkdir(parents=True)

    def put(band, res, dn, dtype="uint16"):
        write_geotiff(
            img / f"R{res}m" / f"{PREFIX}_{band}_{res}m.tif",
            dn,
            crs=UTM,
            origin=(X0, Y0),
            pixel=float(res),
            dtype=dtype,
        )

    def put_jp2(band, res, dn):  # as ESA ships them: lossless JPEG 2000
        import rasterio

        with rasterio.open(
            img / f"R{res}m" / f"{PREFIX}_{band}_{res}m.jp2",
            "w",
            driver="JP2OpenJPEG",
            height=dn.shape[0],
            width=dn.shape[1],
            count=1,
            dtype="uint16",
            crs=UTM,
            transform=from_origin(X0, Y0, res, res),
            QUALITY=100,
            REVERSIBLE="YES",
        ) as ds:
            ds.write(dn, 1)

    for band in ("B02", "B03", "B04", "B08"):
        dn = (1000 + rng.integers(300, 3000, (H, W))).astype(np.uint16)
        if band == "B02":
            dn[NODATA_PX] = 0
        (put_jp2 if band == "B03" else put)(band, 10, dn)
        expected[band] = (dn.astype(np.float64) - 1000) / 10000
    dn5, at10 = plane_dn(20, 3000, 4, 6)
    put("B05", 20, dn5)
    expected["B05"] = (at10 - 1000) / 10000
    for band in ("B06", "B07", "B8A", "B11", "B12", "B02"):  # B02_20m: a coarser copy that must not be used
        put(band, 20, (1000 + rng.integers(500, 4000, (H // 2, W // 2))).astype(np.uint16))
    dn1, at10 = plane_dn(60, 2000, 6, 12)
    put("B01", 60, dn1)
    expected["B01"] = (at10 - 1000) / 10000
    put("B09", 60, (1000 + rng.integers(200, 900, (H // 6, W // 6))).astype(np.uint16))
    scl = np.full((H // 2, W // 2), 4, np.uint8)
    scl[10:20, 30:40] = 9
    scl[40:45, 5:10] = 3
    put("SCL", 20, scl, dtype="uint8")
    qi = safe / "GRANULE" / "L2A_T45RUL_A040000_20250101T050000" / "QI_DATA"
    qi.mkdir()
    write_geotiff(qi / "MSK_CLDPRB_20m.tif", scl, crs=UTM, origin=(X0, Y0), pixel=20.0)
    write_l2a_metadata(safe / "MTD_MSIL2A.xml")
    dem = write_dem_4326(root / "dem_4326.tif")
    return {"root": root, "safe": safe, "img": img, "dem": dem, "expected": expected}


@pytest.fixture(scope="module")
def l2a_scene(l2a, tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "scene.zarr"
    return ingest(l2a["safe"], out, chunk=64, inputs=SceneInputs(dem=str(l2a["dem"])))


def _all(scene):
    return scene.read(0, scene.shape[0], 0, scene.shape[1])


# --------------------------------------------------------------------------- grid, layers, scaling


def test_l2a_folder_gives_14_layers_on_the_10m_grid(l2a, l2a_scene):
    scene = l2a_scene
    assert scene.shape == (H, W)
    assert scene.info.band_names == L4S_BANDS
    assert scene.info.transform == pytest.approx((10.0, 0.0, X0, 0.0, -10.0, Y0))
    assert scene.info.crs.to_epsg() == 32645
    bands, valid = _all(scene)
    assert bands.shape == (14, H, W)
    info = scene.attrs["ingest"]
    assert info["reflectance"] == "l2a"
    assert info["processing_baseline"] == "05.11"
    # B2 comes from the 10 m file (not the 20 m copy) and is scaled (DN - 1000) / 10000, exactly.
    assert info["layers"]["B2"]["path"].endswith("_B02_10m.tif")
    exp = l2a["expected"]["B02"]
    assert np.allclose(bands[BAND_INDEX["B2"]][valid], exp[valid], atol=1e-6)
    assert not valid[NODATA_PX]  # DN 0 is L2A no data
    assert "BOA_ADD_OFFSET in product metadata" in info["layers"]["B2"]["scaling"]
    assert info["product_level"] == "L2A" and info["acquired"] == "2025-01-01"
    # JPEG 2000 band files (as in a real SAFE product) read the same.
    assert info["layers"]["B3"]["path"].endswith("_B03_10m.jp2")
    assert np.allclose(bands[BAND_INDEX["B3"]][valid], l2a["expected"]["B03"][valid], atol=1e-6)
    # L4S layer 8 is B08 (10 m); B8A is not used.
    assert info["layers"]["B8"]["band"] == "B08"
    assert all(v.get("band") != "B8A" for v in info["layers"].values())


def test_20m_and_60m_bands_are_bilinear_on_the_10m_grid(l2a, l2a_scene):
    bands, valid = _all(l2a_scene)
    inner = (slice(2, -2), slice(2, -2))  # bilinear is exact away from the border
    b5 = bands[BAND_INDEX["B5"]][inner]
    exp5 = l2a["expected"]["B05"][inner]
    ok = valid[inner]
    assert np.abs(b5[ok] - exp5[ok]).max() < 1e-5
    inner60 = (slice(6, -6), slice(6, -6))
    b1 = bands[BAND_INDEX["B1"]][inner60]
    ok = valid[inner60]
    assert np.abs(b1[ok] - l2a["expected"]["B01"][inner60][ok]).max() < 1e-5
    assert l2a_scene.attrs["ingest"]["layers"]["B5"]["resampling"] == "bilinear"


def test_scl_masks_clouds_and_shadows(l2a_scene):
    _, valid = _all(l2a_scene)
    assert not valid[CLOUD].any()
    assert not valid[SHADOW].any()
    expected = np.ones((H, W), bool)
    expected[CLOUD] = expected[SHADOW] = False
    expected[NODATA_PX] = False
    assert np.array_equal(valid, expected)
    masked = l2a_scene.attrs["ingest"]["masked_pixels"]
    assert masked["scl"] == 20 * 20 + 10 * 10 and masked["nodata"] == 1


def test_missing_b10_is_zero_filled_valid_and_warned(l2a_scene):
    bands, valid = _all(l2a_scene)
    assert np.all(bands[BAND_INDEX["B10"]][valid] == 0.0)
    warnings = l2a_scene.attrs["warnings"]
    assert any("B10" in w and "zero-filled" in w for w in warnings)
    assert valid.sum() == H * W - 500 - 1  # B10 never makes a pixel invalid
    assert not any("outside the expected range" in w for w in warnings)


# --------------------------------------------------------------------------- terrain


def test_slope_from_a_geographic_dem_matches_the_plane(l2a, l2a_scene):
    bands, valid = _all(l2a_scene)
    slope = bands[BAND_INDEX["slope"]][valid]
    assert np.abs(slope - SLOPE_DEG).max() < 0.5
    assert abs(float(np.median(slope)) - SLOPE_DEG) < 0.1
    # The DEM itself is reprojected from EPSG:4326 onto the UTM grid.
    r, c = np.mgrid[0:H, 0:W]
    exp = dem_plane(X0 + (c + 0.5) * 10, Y0 - (r + 0.5) * 10)
    assert np.abs(bands[BAND_INDEX["DEM"]][valid] - exp[valid]).max() < 1.0
    assert l2a_scene.attrs["ingest"]["layers"]["DEM"]["reprojected"] is True


def test_slope_from_a_projected_dem_on_another_grid(l2a, tmp_path):
    ny, nx = 50, 70
    ox, oy = X0 - 85.0, Y0 + 47.0  # 30 m grid, not aligned with the 10 m one
    r, c = np.mgrid[0:ny, 0:nx]
    z = dem_plane(ox + (c + 0.5) * 30, oy - (r + 0.5) * 30, slope_deg=15.0, aspect_deg=200.0)
    dem = write_geotiff(tmp_path / "dem_utm.tif", z.astype(np.float32), crs=UTM, origin=(ox, oy), pixel=30.0)
    scene = ingest(l2a["safe"], tmp_path / "s.zarr", chunk=64, inputs=SceneInputs(dem=str(dem)))
    bands, valid = _all(scene)
    assert np.abs(bands[BAND_INDEX["slope"]][valid] - 15.0).max() < 0.5


def test_horn_slope_uses_true_metres_at_high_latitude():
    """A plane in UTM metres sampled on a 1 arcsec grid at 60 N: degrees must become metres per row."""
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    res = 1 / 3600
    t = from_origin(15.0, 60.05, res, res)
    lat = 60.05 - (np.arange(80) + 0.5) * res
    lon = 15.0 + (np.arange(90) + 0.5) * res
    e, n = to_utm.transform(*np.meshgrid(lon, lat))
    z = 0.5 * (e - e.min()) + 0.2 * (n - n.min())  # tan(slope) = hypot(0.5, 0.2)
    from rasterio.crs import CRS

    dx, dy = pixel_size_m(t, CRS.from_epsg(4326), z.shape[0])
    assert 14.5 < dx.mean() < 16.0 and 30.5 < dy.mean() < 31.5
    slope = horn_slope(z, dx, dy)
    expected = math.degrees(math.atan(math.hypot(0.5, 0.2)))
    assert np.abs(slope - expected).max() < 0.5


# --------------------------------------------------------------------------- AOI


def test_bbox_aoi_cuts_the_expected_window(l2a, l2a_scene, tmp_path):
    bbox = (X0 + 200, Y0 - 500, X0 + 700, Y0 - 100)  # cols 20..70, rows 10..50
    inputs = SceneInputs(dem=str(l2a["dem"]), bbox=bbox, aoi_crs=UTM)
    scene = ingest(l2a["safe"], tmp_path / "aoi.zarr", chunk=32, inputs=inputs)
    assert scene.shape == (40, 50)
    assert scene.info.transform == pytest.approx((10.0, 0.0, X0 + 200, 0.0, -10.0, Y0 - 100))
    bands, valid = _all(scene)
    full_bands, full_valid = l2a_scene.read(10, 50, 20, 70)
    assert np.array_equal(valid, full_valid)  # same SCL/nodata mask, cut
    assert np.allclose(bands[:12][:, valid], full_bands[:12][:, valid], atol=1e-6)
    assert np.allclose(bands[12:][:, valid], full_bands[12:][:, valid], atol=1e-3)


def test_polygon_aoi_in_another_crs_masks_outside_pixels(l2a, tmp_path):
    to_geo = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    corners_utm = [(X0 + 300, Y0 - 1000), (X0 + 1500, Y0 - 900), (X0 + 700, Y0 - 150)]
    ring = [list(to_geo.transform(x, y)) for x, y in corners_utm]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
                    }
                ],
            }
        )
    )
    scene = ingest(
        l2a["safe"],
        tmp_path / "poly.zarr",
        chunk=32,
        inputs=SceneInputs(dem=str(l2a["dem"]), aoi=str(aoi), use_scl=False),
    )
    a = scene.info.affine
    # Window = the triangle's bounds rounded out to whole pixels.
    assert a.c == pytest.approx(X0 + 300, abs=10.01) and a.f == pytest.approx(Y0 - 150, abs=10.01)
    assert scene.shape[1] == pytest.approx(120, abs=2) and scene.shape[0] == pytest.approx(85, abs=2)
    from shapely.geometry import Point, Polygon

    tri = Polygon(corners_utm)
    _, valid = _all(scene)
    r, c = np.mgrid[0 : scene.shape[0], 0 : scene.shape[1]]
    xs, ys = a @ (c + 0.5, r + 0.5)
    inside = np.array([tri.contains(Point(x, y)) for x, y in zip(xs.ravel(), ys.ravel())]).reshape(valid.shape)
    near_edge = np.array([tri.exterior.distance(Point(x, y)) < 2.0 for x, y in zip(xs.ravel(), ys.ravel())]).reshape(
        valid.shape
    )
    assert np.array_equal(valid[~near_edge], inside[~near_edge])
    assert 0.3 < valid.mean() < 0.7
    assert scene.attrs["ingest"]["masked_pixels"]["outside_aoi"] == int((~valid).sum())


def test_aoi_outside_the_scene_is_an_error(l2a, tmp_path):
    with pytest.raises(InputError, match="does not overlap"):
        ingest(l2a["safe"], tmp_path / "x.zarr", inputs=SceneInputs(dem=str(l2a["dem"]), bbox=(10.0, 10.0, 11.0, 11.0)))
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "x.zarr.partial").exists()


# --------------------------------------------------------------------------- STAC, job config


def _stac_item(l2a, path, keys):
    img = l2a["img"]
    files = {
        b: next(img.glob(f"R*/{PREFIX}_{b}_{r}m.*"))
        for b, r in [
            ("B01", 60),
            ("B02", 10),
            ("B03", 10),
            ("B04", 10),
            ("B05", 20),
            ("B06", 20),
            ("B07", 20),
            ("B08", 10),
            ("B8A", 20),
            ("B09", 60),
            ("B11", 20),
            ("B12", 20),
            ("SCL", 20),
        ]
    }
    assets = {}
    for band, key in keys.items():
        asset = {"href": str(files[band]), "type": "image/tiff; application=geotiff", "roles": ["data"]}
        if band != "SCL":
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]
        assets[key] = asset
    assets["visual"] = {"href": str(files["B04"]), "roles": ["visual"]}
    assets["dem"] = {"href": str(l2a["dem"]), "roles": ["data"]}
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": "S2B_45RUL_20250101_0_L2A",
        "geometry": {"type": "Polygon", "coordinates": [[[87, 28], [87.1, 28], [87.1, 28.1], [87, 28]]]},
        "bbox": [87, 28, 87.1, 28.1],
        "links": [],
        "assets": assets,
        "properties": {"datetime": "2025-01-01T05:00:00Z", "s2:processing_baseline": "05.11"},
    }
    path.write_text(json.dumps(item))
    return path


EARTH_SEARCH_KEYS = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
}


def test_stac_item_assets_give_the_same_scene(l2a, l2a_scene, tmp_path):
    item = _stac_item(l2a, tmp_path / "item.json", EARTH_SEARCH_KEYS)
    scene = ingest(item, tmp_path / "stac.zarr", chunk=64)  # DEM from the item's "dem" asset
    bands, valid = _all(scene)
    ref_bands, ref_valid = _all(l2a_scene)
    assert np.array_equal(valid, ref_valid)
    assert np.allclose(bands[:, valid], ref_bands[:, valid], atol=1e-5)
    assert "raster:bands" in scene.attrs["ingest"]["layers"]["B4"]["scaling"]


def test_job_yaml_with_inputs_and_ingest_job(l2a, tmp_path, scene_tif):
    text = f"""
scene: {l2a["safe"]}
out: out
models: [m]
inputs:
  bands: {{B08: B8A}}
  dem: {l2a["dem"]}
  bbox: [{X0 + 200}, {Y0 - 500}, {X0 + 700}, {Y0 - 100}]
  aoi_crs: "{UTM}"
  scl_mask: [0, 3, 8, 9, 10]
  reflectance: {{mode: l2a, processing_baseline: "05.11"}}
  b10: constant
  b10_value: 0.001
"""
    cfg = job_from_dict(yaml.safe_load(text), tmp_path)
    assert isinstance(cfg.inputs, SceneInputs) and cfg.inputs.bands == {"B8": "B8A"}
    scene = ingest_job(cfg.scene, tmp_path / "job.zarr", chunk=32, nodata=cfg.nodata, inputs=cfg.inputs)
    bands, valid = _all(scene)
    assert scene.shape == (40, 50)
    assert np.all(bands[BAND_INDEX["B10"]][valid] == np.float32(0.001))
    assert scene.attrs["ingest"]["layers"]["B8"]["band"] == "B8A"
    assert any("B10" in w and "0.001" in w for w in scene.attrs["warnings"])
    # Without inputs, ingest_job is plain ingest of the scene path.
    plain = JobConfig(scene=scene_tif, out=tmp_path / "o", models=[tmp_path / "m"], nodata=-9999.0)
    s = ingest_job(plain.scene, tmp_path / "plain.zarr", chunk=64, nodata=plain.nodata, inputs=plain.inputs)
    ref = ingest(scene_tif, tmp_path / "ref.zarr", chunk=64, nodata=-9999.0)
    assert np.array_equal(_all(s)[1], _all(ref)[1])
    assert s.attrs.get("warnings", []) == []


def test_b10_model_mean_uses_the_model_cards(l2a, tmp_path):
    from landslide_batch.checks.preflight import model_b10_means
    from landslide_batch.config import EnsembleConfig, EnsembleMember
    from landslide_batch.models.card import read_card

    models = []
    for name, b10 in (("m1", 0.0123), ("m2", 0.0323)):
        mean = [0.1] * 14
        mean[BAND_INDEX["B10"]] = b10
        models.append(_card(tmp_path / name, mean, name=name))
    members = EnsembleConfig(members=[EnsembleMember(model=models[0]), EnsembleMember(model=models[1], weight=3)])
    means = model_b10_means(members, [read_card(m.model) for m in members.members])
    assert [(m.model, m.mean, m.weight) for m in means] == [("m1", 0.0123, 1.0), ("m2", 0.0323, 3.0)]
    inputs = SceneInputs(dem=str(l2a["dem"]), b10="model_mean", bbox=(X0, Y0 - 200, X0 + 200, Y0), aoi_crs=UTM)
    scene = ingest_job(l2a["safe"], tmp_path / "mm.zarr", chunk=32, inputs=inputs, b10_means=means)
    bands, valid = _all(scene)
    assert np.allclose(bands[BAND_INDEX["B10"]][valid], (0.0123 + 3 * 0.0323) / 4)
    assert any("training mean" in w for w in scene.attrs["warnings"])
    assert any("differ between models" in w for w in scene.attrs["warnings"])
    # Ingest reads no model card: without the models' means, model_mean is refused, naming the rule.
    with pytest.raises(InputError, match="model_mean.*B10 training means"):
        ingest_job(l2a["safe"], tmp_path / "none.zarr", chunk=32, inputs=inputs)
    assert not (tmp_path / "none.zarr").exists()


# --------------------------------------------------------------------------- checks and errors


def test_unscaled_values_are_warned(l2a, tmp_path):
    inputs = SceneInputs(
        dem=str(l2a["dem"]), reflectance={"mode": "none"}, bbox=(X0, Y0 - 300, X0 + 300, Y0), aoi_crs=UTM
    )
    scene = ingest(l2a["safe"], tmp_path / "dn.zarr", chunk=32, inputs=inputs)
    warnings = scene.attrs["warnings"]
    assert any("B2" in w and "outside the expected range" in w for w in warnings)
    assert any("looks like digital numbers" in w for w in warnings)


def test_offset_from_acquisition_date_is_warned(tmp_path):
    from datetime import date

    from landslide_batch.ingest.inputs import ReflectanceScaling
    from landslide_batch.ingest.sentinel2 import LayerSource, SourcePlan

    plan = SourcePlan(
        kind="sentinel2-folder", root="x", layers={"B2": LayerSource("x", band="B02")}, acquired=date(2023, 5, 1)
    )
    warnings: list[str] = []
    s = resolve_scaling(plan, ReflectanceScaling(), {"B2": np.dtype("uint16")}, warnings)
    assert s.add["B2"] == pytest.approx(-0.1) and s.mul["B2"] == pytest.approx(1e-4)
    assert warnings and "acquisition date" in warnings[0]
    plan.acquired = None
    with pytest.raises(InputError, match="reflectance offset"):
        resolve_scaling(plan, ReflectanceScaling(), {"B2": np.dtype("uint16")}, [])


def test_band_file_names_and_errors(l2a, tmp_path):
    from pathlib import Path

    assert classify_file(Path("T45RUL_20250101T050000_B8A_20m.jp2")) == ("B8A", 20)
    assert classify_file(Path("T45RUL_20250101T050000_B02.jp2")) == ("B02", None)
    assert classify_file(Path("MSK_DETFOO_B02.jp2")) == (None, None)
    assert classify_file(Path("T45RUL_20250101T050000_SCL_20m.tif")) == ("SCL", 20)
    assert classify_file(Path("cop30_dem.tif"))[0] == "DEM"
    assert canonical_band("blue") == "B02" and canonical_band("8a") == "B8A" and canonical_band("B1") == "B01"
    with pytest.raises(InputError, match="no DEM"):
        ingest(l2a["safe"], tmp_path / "nodem.zarr")
    with pytest.raises(InputError, match="b10"):
        ingest(l2a["safe"], tmp_path / "e.zarr", inputs=SceneInputs(dem=str(l2a["dem"]), b10="error"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no file for it"):
        ingest(empty, tmp_path / "e2.zarr")
    with pytest.raises(ValueError):
        SceneInputs(bands={"B13": "B02"})
    with pytest.raises(ValueError):
        SceneInputs(aoi="a.geojson", bbox=(0, 0, 1, 1))


def test_stack_with_inputs_is_cut_to_the_aoi(scene_tif, tmp_path):
    full = ingest(scene_tif, tmp_path / "full.zarr", chunk=64)
    bbox = (X0 + 500, Y0 - 1500, X0 + 1200, Y0 - 100)  # rows 10..150, cols 50..120 of the stack
    cut = ingest(scene_tif, tmp_path / "cut.zarr", chunk=64, inputs=SceneInputs(bbox=bbox, aoi_crs=UTM))
    assert cut.shape == (140, 70)
    bands, valid = _all(cut)
    ref_bands, ref_valid = full.read(10, 150, 50, 120)
    assert np.array_equal(valid, ref_valid)
    assert np.allclose(bands[:, valid], ref_bands[:, valid])
    assert cut.attrs["ingest"]["reflectance"] == "none" and cut.attrs["warnings"] == []


def test_inputs_apply_only_to_raw_inputs_and_nothing_is_left_behind(scene_tif, tmp_path):
    from landslide_batch.synthetic import write_l4s_patch

    store = ingest(scene_tif, tmp_path / "store.zarr", chunk=64)
    assert ingest(store.path, tmp_path / "unused.zarr").shape == store.shape  # opened as it is
    assert not (tmp_path / "unused.zarr").exists()
    patch = tmp_path / "image_1.h5"
    write_l4s_patch(patch, np.ones((14, 32, 32), np.float32))
    cases = [
        (store.path, "is a scene store already"),
        (patch, "not to L4S .h5 patches or Zarr stores"),
        (tmp_path / "missing.tif", "does not exist"),
    ]
    for src, message in cases:
        with pytest.raises(InputError, match=message):
            ingest(src, tmp_path / "refused.zarr", inputs=SceneInputs())
        assert not (tmp_path / "refused.zarr").exists() and not (tmp_path / "refused.zarr.partial").exists()
    assert ingest(patch, tmp_path / "patch.zarr", chunk=32).shape == (32, 32)


def test_product_name_and_metadata_parsing(l2a):
    from landslide_batch.ingest.sentinel2 import baseline_from_name, date_from_name, parse_product_metadata

    assert baseline_from_name(PRODUCT) == "05.11"
    assert baseline_from_name("S2A_MSIL2A_20211231T050000_N0301_R019_T45RUL_20211231T080000") == "03.01"
    assert date_from_name(f"{PREFIX}_B02_10m") == __import__("datetime").date(2025, 1, 1)
    meta = parse_product_metadata(l2a["safe"] / "MTD_MSIL2A.xml")
    assert meta["baseline"] == "05.11" and meta["quantification"] == 10000
    assert meta["offsets"]["B8A"] == -1000 and len(meta["offsets"]) == 13


def test_rebase_makes_paths_relative_to_the_job(tmp_path):
    inputs = SceneInputs(dem="dem/cop30.tif", aoi="aoi.geojson", bands={"B8": "B8A", "B2": "x/b2.tif"}, slope="slope")
    rebased = inputs.rebase(tmp_path)
    assert rebased.dem == str(tmp_path / "dem/cop30.tif") and rebased.aoi == str(tmp_path / "aoi.geojson")
    assert rebased.bands == {"B8": "B8A", "B2": str(tmp_path / "x/b2.tif")}
    assert rebased.slope == "slope"  # an asset key, not a path


def _card(folder, mean, name="m"):
    folder.mkdir()
    card = {
        "name": name,
        "arch": "Unet",
        "encoder": "resnet34",
        "features": list(L4S_BANDS),
        "in_channels": 14,
        "normalization": {"mean": mean, "std": [1.0] * 14},
        "trained": True,
    }
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_l4s_units_and_the_units_guard_against_model_cards(l2a, l2a_scene, tmp_path):
    from landslide_batch.checks.units import sample_scene, units_guard
    from landslide_batch.errors import UnitsMismatchError
    from landslide_batch.ingest.inputs import L4S_IMG_MEAN
    from landslide_batch.models.card import read_card

    bbox = (X0, Y0 - 300, X0 + 300, Y0)
    l4s_like = read_card(_card(tmp_path / "l4s_model", [1.0] * 14, name="l4s_model"))
    assert l4s_like.input_units == "l4s"  # derived from its statistics: the card does not say
    common = dict(dem=str(l2a["dem"]), bbox=bbox, aoi_crs=UTM)
    cfg = JobConfig(
        scene=l2a["safe"],
        out=tmp_path / "o",
        models=[tmp_path / "l4s_model"],
        inputs=SceneInputs(units="physical", **common),
    )
    phys = ingest_job(cfg.scene, tmp_path / "phys.zarr", chunk=32, inputs=cfg.inputs)
    with pytest.raises(UnitsMismatchError, match=r"l4s_model.*reflectance 0-1.*set inputs.units: l4s"):
        units_guard(sample_scene(phys), [l4s_like], accept=False)
    cfg = JobConfig(
        scene=l2a["safe"],
        out=tmp_path / "o",
        models=[tmp_path / "l4s_model"],
        inputs=SceneInputs(units="l4s", **common),
    )
    l4s = ingest_job(cfg.scene, tmp_path / "l4s.zarr", chunk=32, inputs=cfg.inputs)
    verdicts, warnings = units_guard(sample_scene(l4s), [l4s_like], accept=False)
    assert warnings == [] and [v.refused for v in verdicts] == [False]
    pb, pv = _all(phys)
    lb, lv = _all(l4s)
    assert np.array_equal(pv, lv)
    i2, isl, idem = BAND_INDEX["B2"], BAND_INDEX["slope"], BAND_INDEX["DEM"]
    assert np.allclose(lb[i2][lv], pb[i2][pv] * 10000 / L4S_IMG_MEAN[i2], rtol=1e-5)
    assert np.allclose(lb[isl][lv], pb[isl][pv] / L4S_IMG_MEAN[isl], rtol=1e-5)
    assert np.allclose(lb[idem][lv], pb[idem][pv] / L4S_IMG_MEAN[idem], rtol=1e-5)
    assert np.all(lb[BAND_INDEX["B10"]][lv] == 0.0)
