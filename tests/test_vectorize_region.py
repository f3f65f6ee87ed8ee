"""``landslide-batch vectorize`` on a region job's output (two scenes in two UTM zones merged
onto one grid): the mask and polygons equal those of a fresh region job run at the new settings,
and the region's own products (``scenes.gpkg``, the rasters) are left as they were."""

from __future__ import annotations

import json
import shutil

import geopandas as gpd
import numpy as np
import rasterio
from test_region import _job, region  # noqa: F401  (``region``: the module-scoped fixture)
from test_vectorize import assert_same_polygons, read, snapshot

from landslide_batch.cli import main as cli_main
from landslide_batch.config import job_from_dict
from landslide_batch.pipeline import run_job


def test_vectorize_on_a_region_equals_a_fresh_region_job(region, tmp_path, capsys):  # noqa: F811
    d, model = region
    run_job(job_from_dict(_job(d, model, tmp_path / "first", ["A.tif", "B.tif"])))
    out = shutil.copytree(tmp_path / "first", tmp_path / "out", ignore=shutil.ignore_patterns(".work", ".lock"))
    untouched = {k: v for k, v in snapshot(out).items() if not k.startswith(("mask", "landslides", "run.json"))}
    assert "scenes.gpkg" in untouched
    T, A = 0.65, 300.0  # the region ran at 0.5 and no minimum area; 3 pixels of 10 m

    code = cli_main(["vectorize", str(out), "--threshold", str(T), "--min-area-m2", str(A), "--format", "parquet"])
    assert code == 0
    assert "landslide objects" in capsys.readouterr().out

    fresh = run_job(
        job_from_dict(
            _job(d, model, tmp_path / "fresh", ["A.tif", "B.tif"], threshold=T, min_area_m2=A, polygon_format="parquet")
        )
    )
    mask, prob = read(out / "mask.tif"), read(out / "probability.tif")
    valid = prob != -1
    assert valid.any() and (prob[valid] >= T).any() and (prob[valid] < T).any()
    np.testing.assert_array_equal(mask, np.where(valid, prob >= T, 255).astype(np.uint8))
    np.testing.assert_array_equal(mask, read(tmp_path / "fresh" / "mask.tif"))
    with rasterio.open(out / "mask.tif") as got, rasterio.open(tmp_path / "fresh" / "mask.tif") as want:
        assert (got.crs, got.transform) == (want.crs, want.transform)
    polygons = gpd.read_parquet(out / "landslides.parquet")
    assert_same_polygons(polygons, gpd.read_parquet(tmp_path / "fresh" / "landslides.parquet"))
    assert polygons.crs.to_epsg() == 32645

    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "region job" and run["summary"]["objects"] == fresh["summary"]["objects"] == len(polygons)
    assert run["summary"]["threshold"] == T and run["summary"]["min_area_m2"] == A
    assert run["outputs"]["scenes"] == "scenes.gpkg" and run["outputs"]["polygons"] == "landslides.parquet"
    assert not (out / "landslides.gpkg").exists()
    assert {k: v for k, v in snapshot(out).items() if k in untouched} == untouched
