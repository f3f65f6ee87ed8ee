"""Products that describe themselves to the field's own tools.

Shows: ``probability.zarr`` is CF-complete (``_FillValue``, units, long names, axis attributes,
a CF grid mapping) and xarray's statistics skip its nodata; its georeferencing equals what
rioxarray's own writers give.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio

from landslide_batch.config import job_from_dict
from landslide_batch.pipeline import run_job
from landslide_batch.synthetic import write_geotiff

THRESHOLD = 0.6


@pytest.fixture(scope="module")
def finished(tmp_path_factory, scene_arrays, varying_model):
    """A finished single-scene job over a scene with a nodata hole."""
    d = tmp_path_factory.mktemp("meta")
    bands = scene_arrays[0].copy()
    bands[:, 10:40, 20:60] = np.nan
    scene = write_geotiff(d / "scene.tif", bands)
    out = d / "out"
    cfg = {"scene": str(scene), "out": str(out), "models": [str(varying_model)], "block": 128, "batch_size": 8}
    manifest = run_job(job_from_dict({**cfg, "threshold": THRESHOLD}))
    return out, manifest


def test_zarr_statistics_skip_nodata_and_cf_attributes_are_present(finished):
    import rioxarray  # noqa: F401
    import xarray as xr

    out, _ = finished
    with rasterio.open(out / "probability.tif") as ds:
        prob, transform, crs = ds.read(1), ds.transform, ds.crs
    valid = prob != -1
    assert (~valid).sum() >= 30 * 40, "the compared map has nodata"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(out / "probability.zarr")
        mean = float(ds.probability.mean())
    assert mean == pytest.approx(float(prob[valid].astype(np.float64).mean()), rel=1e-6)
    assert mean != pytest.approx(float(prob.mean()), rel=1e-3), "nodata counted as data"
    assert int(ds.probability.notnull().sum()) == int(valid.sum())

    for name, units in (("probability", "1"), ("uncertainty", "1"), ("slope", "degree")):
        var = ds[name]
        assert var.attrs["units"] == units and var.attrs["long_name"]
        assert var.attrs["grid_mapping"] == "spatial_ref"
        assert "_FillValue" in var.encoding
    assert ds.probability.encoding["_FillValue"] == -1 and ds.probability.rio.encoded_nodata == -1
    assert np.isnan(ds.slope.encoding["_FillValue"])
    assert ds.probability.attrs["valid_range"] == [0.0, 1.0]
    for axis, name in (("X", "x"), ("Y", "y")):
        attrs = ds[name].attrs
        assert attrs["axis"] == axis and attrs["units"] == "metre"
        assert attrs["standard_name"] == f"projection_{name}_coordinate"
    ref = ds.spatial_ref.attrs
    assert ref["grid_mapping_name"] == "transverse_mercator"
    assert ref["longitude_of_central_meridian"] == 87.0  # UTM 45N
    assert ds.rio.crs == crs and ds.rio.transform() == transform

    # The same attributes as rioxarray's own writers give to the same grid.
    template = (
        xr.DataArray(np.zeros(prob.shape, np.float32), dims=("y", "x"), coords={"y": ds.y.values, "x": ds.x.values})
        .rio.write_crs(crs)
        .rio.write_transform(transform)
        .rio.write_coordinate_system()
    )
    rio_ref = template.spatial_ref.attrs
    assert {k: ref[k] for k in rio_ref} == {k: v for k, v in rio_ref.items()}
    assert {k: ds.x.attrs[k] for k in ("axis", "standard_name", "units")} == {
        k: template.x.attrs[k] for k in ("axis", "standard_name", "units")
    }


def _gdal_categories(path, tmp_path) -> list[str]:
    """The band's category names as GDAL reads them (a VRT copy spells out what GDAL sees)."""
    import xml.etree.ElementTree as ET

    import rasterio.shutil

    vrt = tmp_path / f"{path.stem}.vrt"
    rasterio.shutil.copy(path, vrt, driver="VRT")
    return [c.text or "" for c in ET.parse(vrt).getroot().iter("Category")]


def test_geotiffs_carry_descriptions_units_tags_and_the_mask_its_classes(finished, tmp_path):
    import json
    import xml.etree.ElementTree as ET
    from importlib.metadata import version

    out, manifest = finished
    models = [{"name": m["name"], "sha256": m["sha256"]} for m in manifest["models"]]
    scene = manifest["inputs"]["scene"]
    for name, description, unit in (
        ("probability", "landslide probability", "1"),
        ("uncertainty", "standard deviation", "1"),
        ("mask", "landslide mask", None),
    ):
        with rasterio.open(out / f"{name}.tif") as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert description in ds.descriptions[0] and ds.units == (unit,)
            tags = ds.tags()
        assert tags["TIFFTAG_SOFTWARE"] == f"landslide-batch {version('landslide-batch')}"
        assert json.loads(tags["MODELS"]) == models and len(models[0]["sha256"]) == 64
        assert float(tags["THRESHOLD"]) == THRESHOLD == manifest["summary"]["threshold"]
        assert json.loads(tags["SCENES"]) == [{"source": scene["path"], "sha256": scene["sha256"], "date": None}]
        assert tags["JOB_HASH"] == manifest["job_hash"]

    with rasterio.open(out / "mask.tif") as ds:
        colours = ds.colormap(1)
        assert colours[1][:3] == (220, 30, 30) and colours[0][:3] == (235, 235, 235)
        assert ds.nodata == 255
    assert _gdal_categories(out / "mask.tif", tmp_path) == ["no landslide", "landslide"]
    assert _gdal_categories(out / "probability.tif", tmp_path) == []

    for name in ("probability", "uncertainty", "mask"):
        assert manifest["outputs"][f"{name}_style"] == f"{name}.qml"
        root = ET.parse(out / f"{name}.qml").getroot()
        assert root.tag == "qgis"
        (renderer,) = root.iter("rasterrenderer")
        assert renderer.get("band") == "1"
    (mask_renderer,) = ET.parse(out / "mask.qml").getroot().iter("rasterrenderer")
    assert mask_renderer.get("type") == "paletted"
    palette = {e.get("value"): e.get("label") for e in mask_renderer.iter("paletteEntry")}
    assert palette == {"0": "no landslide", "1": "landslide"}
    (shader,) = ET.parse(out / "probability.qml").getroot().iter("colorrampshader")
    assert (shader.get("minimumValue"), shader.get("maximumValue")) == ("0", "1")


def test_quicklook_has_a_legend_a_colour_bar_and_a_scale(finished):
    from PIL import Image

    from landslide_batch.outputs.quicklook import PANEL_H, scale_bar

    out, _ = finished
    with Image.open(out / "quicklook.png") as img:
        pixels, text = np.asarray(img.convert("RGB")), dict(img.text)
    h, w = 300, 260  # the scene's size: one quicklook pixel per pixel
    assert pixels.shape == (h + PANEL_H, max(w, 420), 3)
    panel = pixels[h:].astype(int)
    reddish = (panel[..., 0] - panel[..., 1] > 60).sum()
    assert reddish >= 100, "the colour bar shows the red overlay"
    black = (panel.sum(axis=-1) == 0).sum()
    assert black >= 60, "the nodata swatch and the scale bar"
    assert text["Software"].startswith("landslide-batch") and "0.6" in text["Description"]
    # 10 m pixels, at most 120 px: 1 km in 100 px; 2.5 m pixels: 200 m in 80 px.
    assert scale_bar(10.0, 120) == (100, "1 km") and scale_bar(2.5, 120) == (80, "200 m")
    assert scale_bar(30.0, 120) == (67, "2 km")
