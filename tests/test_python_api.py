"""The Python API for notebooks: ``landslide_batch.map_scene`` / ``map_region`` run the CLI's jobs
and return the output folder, run.json and an ``xarray.Dataset`` of the map; importing the
package loads none of it (nor torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from test_region import _job, region  # noqa: F401  (the region fixture: two scenes, two UTM zones)

import landslide_batch
from landslide_batch import api
from landslide_batch.errors import ConfigError, InputError
from landslide_batch.synthetic import write_geotiff


def test_importing_the_package_loads_neither_the_api_nor_torch():
    heavy = ("torch", "landslide_batch.api", "xarray")
    code = f"import sys, landslide_batch; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
    assert landslide_batch.map_scene is api.map_scene and landslide_batch.MappedResult is api.MappedResult
    with pytest.raises(AttributeError, match="no attribute 'map_everything'"):
        landslide_batch.map_everything  # noqa: B018


def test_map_scene_returns_the_folder_its_run_and_the_map(tmp_path, scene_arrays, varying_model):
    bands = scene_arrays[0].copy()
    bands[:, :20, :30] = np.nan
    scene = write_geotiff(tmp_path / "scene.tif", bands)
    result = landslide_batch.map_scene(scene, varying_model, tmp_path / "out", threshold=0.6, block=128)
    assert result.out == tmp_path / "out" and result.manifest == json.loads((tmp_path / "out" / "run.json").read_text())
    assert result.threshold == 0.6 == result.dataset.attrs["threshold"]
    with rasterio.open(tmp_path / "out" / "probability.tif") as ds:
        prob, crs = ds.read(1), ds.crs
    with rasterio.open(tmp_path / "out" / "mask.tif") as ds:
        mask = ds.read(1)
    valid = prob != -1
    assert float(result.dataset.probability.mean()) == pytest.approx(float(prob[valid].astype(float).mean()), rel=1e-6)
    assert result.dataset.rio.crs == crs
    np.testing.assert_array_equal(result.mask.fillna(255).values.astype(np.uint8), mask)
    written = (tmp_path / "out" / "probability.tif").stat().st_mtime_ns
    again = landslide_batch.map_scene(scene, [varying_model], tmp_path / "out", threshold=0.6, block=128)
    assert again.manifest == result.manifest, "a finished job is not run again"
    assert (tmp_path / "out" / "probability.tif").stat().st_mtime_ns == written
    with pytest.raises(ConfigError, match="threshold"):
        landslide_batch.map_scene(scene, varying_model, tmp_path / "bad", threshold=2)
    with pytest.raises(InputError, match="holds no finished job"):
        landslide_batch.open_result(tmp_path)


def test_map_region_over_two_utm_zones(region, tmp_path):  # noqa: F811
    d, model = region
    settings = {
        k: v for k, v in _job(d, model, tmp_path / "r", []).items() if k not in ("scenes", "aoi", "models", "out")
    }
    result = landslide_batch.map_region(
        [d / "A.tif", d / "B.tif"], d / "aoi.geojson", model, tmp_path / "r", **settings
    )
    assert result.manifest["kind"] == "region job" and len(result.manifest["scenes"]) == 2
    assert result.dataset.rio.crs.to_epsg() == 32645 and result.dataset.probability.notnull().any()
    assert landslide_batch.open_result(tmp_path / "r").manifest == result.manifest
