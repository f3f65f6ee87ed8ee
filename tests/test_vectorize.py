"""``landslide-batch vectorize``: a finished job's mask and polygons again, from its probability
map, with a new threshold, minimum area or polygon format, and no model.

Shows: the rebuilt mask is exactly ``probability >= T`` on valid pixels and the polygons equal a
fresh job's with the same settings (checked against an independent labelling, on a map that
varies, with objects cut by window edges), torch is never imported; GeoParquet and FlatGeobuf
read back with CRS and attributes; ``probability.zarr`` opens in xarray without a warning; bad
input fails clearly and replaces nothing, and a failure while swapping restores the old products;
a re-run of the job keeps the derived products; the same on S3.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from geopandas.testing import assert_geodataframe_equal
from scipy import ndimage

from landslide_batch.bands import BAND_INDEX
from landslide_batch.cli import main as cli_main
from landslide_batch.config import job_from_dict
from landslide_batch.outputs import derive
from landslide_batch.outputs.rasters import windows
from landslide_batch.outputs.vectorize import Derivation, vectorize
from landslide_batch.pipeline import run_job
from landslide_batch.synthetic import write_geotiff

JOB_THRESHOLD = 0.6
HEAVY = ("torch", "ray", "segmentation_models_pytorch", "timm", "torchvision")
# Runs the CLI in a fresh interpreter; prints, last, which heavy packages the process imported.
NO_MODEL_RUNNER = (
    "import json, sys\n"
    "from landslide_batch.cli import main\n"
    "code = main(sys.argv[1:])\n"
    f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    "sys.exit(code)\n"
)


def job(scene, out, model, **kw):
    return job_from_dict(
        {
            "scene": str(scene),
            "out": str(out),
            "models": [str(model)],
            "block": 128,
            "batch_size": 8,
            "threshold": JOB_THRESHOLD,
            **kw,
        }
    )


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` -> (sha256, mtime_ns): any replaced or touched file shows."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def components(mask: np.ndarray, prob: np.ndarray, min_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent oracle: 4-connected landslide regions of the whole mask with at least
    ``min_pixels`` pixels -> (sorted pixel counts, sorted mean probabilities)."""
    labels, n = ndimage.label(mask == 1)
    idx = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(prob), labels, idx)
    means = ndimage.mean(prob, labels, idx)
    keep = sizes >= min_pixels
    return np.sort(sizes[keep]), np.sort(means[keep])


def sorted_frame(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``gdf`` by place (size, then centroid), its ``object_id`` (1..n) dropped: a job numbers its
    objects in the order its blocks were finished, ``vectorize`` in the order of its windows."""
    assert (np.sort(gdf["object_id"].to_numpy()) == np.arange(1, len(gdf) + 1)).all()
    centre = gdf.geometry.centroid
    by_place = gdf.assign(_x=centre.x.round(6), _y=centre.y.round(6)).sort_values(["pixels", "_x", "_y"])
    return by_place.drop(columns=["_x", "_y", "object_id"]).reset_index(drop=True)


def assert_same_polygons(got: gpd.GeoDataFrame, want: gpd.GeoDataFrame) -> None:
    """The same objects with the same attributes, in any order."""
    got, want = sorted_frame(got), sorted_frame(want)
    assert len(got) == len(want) > 0
    assert got.crs == want.crs
    attrs = [c for c in want.columns if c != "geometry"]
    assert list(got[attrs].columns) == attrs
    assert_geodataframe_equal(got, want, normalize=True)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory, scene_arrays):
    bands = scene_arrays[0].copy()
    bands[:, 10:14, 20:30] = np.nan
    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", bands)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, scene_file, varying_model):
    """A finished job (GeoPackage polygons, no minimum area); tests work on copies of it."""
    out = tmp_path_factory.mktemp("finished") / "out"
    run_job(job(scene_file, out, varying_model))
    return out


@pytest.fixture
def out(tmp_path, finished):
    return Path(shutil.copytree(finished, tmp_path / "out"))


def test_vectorize_equals_a_fresh_job_and_imports_no_torch(tmp_path, out, scene_file, varying_model):
    prob = read(out / "probability.tif")
    valid = prob != -1
    assert prob[valid].std() >= 0.05, "the compared map must vary"
    untouched = {k: v for k, v in snapshot(out).items() if not k.startswith(("mask", "landslides", "run.json"))}
    T, A = 0.75, 1500.0  # stricter than the job (0.6, no minimum area); 15 pixels of 10 m
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_MODEL_RUNNER,
            "vectorize",
            str(out),
            "--threshold",
            str(T),
            "--min-area-m2",
            str(A),
            "--format",
            "parquet",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [], "vectorize imported a model framework"

    mask = read(out / "mask.tif")
    np.testing.assert_array_equal(mask, np.where(valid, prob >= T, 255).astype(np.uint8))
    fresh = run_job(
        job(scene_file, tmp_path / "fresh", varying_model, threshold=T, min_area_m2=A, polygon_format="parquet")
    )
    np.testing.assert_array_equal(mask, read(tmp_path / "fresh" / "mask.tif"))
    polygons = gpd.read_parquet(out / "landslides.parquet")
    assert_same_polygons(polygons, gpd.read_parquet(tmp_path / "fresh" / "landslides.parquet"))

    sizes, means = components(mask, prob, min_pixels=15)
    np.testing.assert_array_equal(np.sort(polygons["pixels"].to_numpy()), sizes)
    np.testing.assert_allclose(np.sort(polygons["mean_probability"].to_numpy()), means, rtol=1e-6)
    small, _ = components(mask, prob, min_pixels=4)
    assert len(small) > len(sizes), "the larger minimum area dropped objects the job's default keeps"

    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["threshold"] == T and run["summary"]["min_area_m2"] == A
    assert run["summary"]["objects"] == len(polygons) == fresh["summary"]["objects"]
    assert run["summary"]["landslide_pixels"] == int((mask == 1).sum())
    assert run["config"]["threshold"] == JOB_THRESHOLD, "the job's own config stays as it ran"
    assert run["outputs"]["polygons"] == "landslides.parquet" and not (out / "landslides.gpkg").exists()
    (d,) = run["derivations"]
    assert (d["threshold"], d["min_area_m2"], d["min_object_pixels"], d["polygons"]) == (T, A, 15, "landslides.parquet")
    assert d["replaced"] == {"threshold": JOB_THRESHOLD, "min_area_m2": 0.0, "polygons": "landslides.gpkg"}
    assert {k: v for k, v in snapshot(out).items() if k in untouched} == untouched
    assert not (out / ".vectorize").exists()


def test_objects_cut_by_window_edges_merge_as_in_the_job(tmp_path, out, scene_file, varying_model, monkeypatch):
    """Windows of 96 px cut the 300 x 260 scene into 12: job and vectorize merge the pieces alike,
    and the merged objects are the independent labelling's of the whole mask."""
    monkeypatch.setattr(derive, "windows", functools.partial(windows, size=96))
    T = 0.7
    vectorize(out, Derivation(threshold=T))
    run_job(job(scene_file, tmp_path / "fresh", varying_model, threshold=T))
    polygons = gpd.read_file(out / "landslides.gpkg")
    assert_same_polygons(polygons, gpd.read_file(tmp_path / "fresh" / "landslides.gpkg"))
    mask, prob = read(out / "mask.tif"), read(out / "probability.tif")
    sizes, means = components(mask, prob, min_pixels=4)
    np.testing.assert_array_equal(np.sort(polygons["pixels"].to_numpy()), sizes)
    np.testing.assert_allclose(np.sort(polygons["mean_probability"].to_numpy()), means, rtol=1e-6)
    labels, _ = ndimage.label(mask == 1)
    straddling = set()
    for e in (96, 192):  # one label on both sides of a window edge
        for a, b in ((labels[e - 1], labels[e]), (labels[:, e - 1], labels[:, e])):
            straddling |= set(a[(a == b) & (a > 0)].tolist())
    assert len(straddling) >= 3, "objects straddle window edges"


def test_geoparquet_and_flatgeobuf_read_back_with_crs_and_attributes(
    tmp_path, out, finished, scene_file, varying_model
):
    """A job writing FlatGeobuf (``run --format fgb``) and a GeoParquet re-derivation at the job's
    settings both equal the GeoPackage of the same job."""
    import pyarrow.parquet as pq

    want = gpd.read_file(finished / "landslides.gpkg")
    with rasterio.open(scene_file) as ds:
        crs = ds.crs
    code = cli_main(
        [
            "run",
            "--scene",
            str(scene_file),
            "--model",
            str(varying_model),
            "--out",
            str(tmp_path / "fgb"),
            "--block",
            "128",
            "--batch-size",
            "8",
            "--threshold",
            str(JOB_THRESHOLD),
            "--format",
            "fgb",
        ]
    )
    assert code == 0
    run = json.loads((tmp_path / "fgb" / "run.json").read_text())
    assert run["outputs"]["polygons"] == "landslides.fgb" and run["config"]["polygon_format"] == "fgb"
    assert not (tmp_path / "fgb" / "landslides.gpkg").exists()
    fgb = gpd.read_file(tmp_path / "fgb" / "landslides.fgb")
    assert fgb.crs == crs
    assert_same_polygons(fgb, want)

    vectorize(out, Derivation(polygon_format="parquet"))
    parquet = gpd.read_parquet(out / "landslides.parquet")
    assert parquet.crs == crs
    assert "crs" in json.loads(pq.read_metadata(out / "landslides.parquet").metadata[b"geo"])["columns"]["geometry"]
    assert_same_polygons(parquet, want)
    assert (parquet["mean_slope_deg"] > 0).all(), "the slope kept in the store gives the objects' slope"


def test_probability_zarr_opens_in_xarray_without_a_warning(finished, scene_arrays, scene_file):
    import rioxarray  # noqa: F401
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(finished / "probability.zarr")
        crs = ds["probability"].rio.crs
        prob, slope = ds["probability"].fillna(-1).values, ds["slope"].values  # nodata (-1) reads as NaN
    with rasterio.open(scene_file) as src:
        assert crs == src.crs
    np.testing.assert_array_equal(prob, read(finished / "probability.tif"))
    valid = prob != -1
    np.testing.assert_array_equal(slope[valid], scene_arrays[0][BAND_INDEX["slope"]][valid])


@pytest.mark.parametrize(
    "case", ["no job", "run.json removed", "threshold above 1", "threshold below 0", "unknown format", "negative area"]
)
def test_bad_input_fails_clearly_and_replaces_nothing(case, tmp_path, out, capsys):
    folder, args, message = {
        "no job": (tmp_path / "empty", [], "holds no finished job: expected a run.json with status 'complete'"),
        "run.json removed": (out, [], "holds no finished job"),
        "threshold above 1": (
            out,
            ["--threshold", "1.5"],
            r"threshold must be a probability within \[0, 1\], found 1.5",
        ),
        "threshold below 0": (out, ["--threshold", "-0.1"], r"within \[0, 1\], found -0.1"),
        "unknown format": (
            out,
            ["--format", "shp"],
            "unknown polygon format 'shp'; expected one of gpkg, parquet, fgb",
        ),
        "negative area": (out, ["--min-area-m2", "-5"], "minimum area must be >= 0 m², found -5.0"),
    }[case]
    folder.mkdir(exist_ok=True)
    if case == "run.json removed":
        (out / "run.json").unlink()
    before = snapshot(folder)
    names = sorted(p.name for p in folder.iterdir())
    assert cli_main(["vectorize", str(folder), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("landslide-batch vectorize: error:") and re.search(message, err), err
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == names, "no lock, no temporary folder left"


def test_failure_while_swapping_restores_the_old_products(out, monkeypatch):
    before = snapshot(out)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == out / "run.json":
            raise OSError(5, "Input/output error (simulated)")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        vectorize(out, Derivation(threshold=0.8, polygon_format="fgb"))
    monkeypatch.undo()
    assert {k: v[0] for k, v in snapshot(out).items()} == {k: v[0] for k, v in before.items()}
    assert not (out / "landslides.fgb").exists() and not (out / ".vectorize").exists()


def test_rerunning_the_job_keeps_the_derived_products_and_says_so(out, scene_file, varying_model, caplog):
    vectorize(out, Derivation(threshold=0.75, polygon_format="fgb"))
    derived = snapshot(out)
    caplog.set_level("INFO")
    again = run_job(job(scene_file, out, varying_model))  # the job's own settings: 0.6, GeoPackage
    assert again["blocks"]["computed"] == 0 and again["tiles"]["forward_passes"] == 0
    assert snapshot(out) == derived
    assert again["summary"]["threshold"] == 0.75 and again["outputs"]["polygons"] == "landslides.fgb"
    assert "mask and polygons were re-derived" in caplog.text and "polygons stay in landslides.fgb" in caplog.text
    second = vectorize(out, Derivation(min_area_m2=500.0))  # unset settings keep the current products'
    assert [d["threshold"] for d in second["derivations"]] == [0.75, 0.75]
    assert second["derivations"][1]["replaced"] == {"threshold": 0.75, "min_area_m2": 0.0, "polygons": "landslides.fgb"}
    assert second["outputs"]["polygons"] == "landslides.fgb" and second["summary"]["min_area_m2"] == 500.0
    rerun = run_job(job(scene_file, out, varying_model), overwrite=True)  # back to the job's own products
    assert "derivations" not in rerun and rerun["summary"]["threshold"] == JOB_THRESHOLD
    assert (out / "landslides.gpkg").exists() and not (out / "landslides.fgb").exists()


@pytest.mark.slow
def test_vectorize_on_s3_equals_vectorize_on_a_folder(tmp_path, out):
    """OUT as an s3:// prefix (moto's S3 server on loopback, the standard AWS_* variables)."""
    import s3fs
    from s3_server import moto_s3, s3_environment

    from landslide_batch.storage import location, storage_env

    with moto_s3(tmp_path / "moto.log") as env, s3_environment(env):
        fs = s3fs.S3FileSystem()
        fs.mkdir("maps")
        fs.put(str(out), "maps/job", recursive=True)
        uri = "s3://maps/job"
        local = vectorize(out, Derivation(threshold=0.72, min_area_m2=800.0, polygon_format="parquet"))
        assert cli_main(["vectorize", uri, "--threshold", "0.72", "--min-area-m2", "800", "--format", "parquet"]) == 0
        run = json.loads(fs.cat_file("maps/job/run.json"))
        assert run["summary"] == local["summary"] and run["outputs"] == local["outputs"]
        with storage_env(), rasterio.open(location(f"{uri}/mask.tif").gdal_path()) as ds:
            np.testing.assert_array_equal(ds.read(1), read(out / "mask.tif"))
        fs.get("maps/job/landslides.parquet", str(tmp_path / "s3.parquet"))
        assert_same_polygons(gpd.read_parquet(tmp_path / "s3.parquet"), gpd.read_parquet(out / "landslides.parquet"))
        listed = {p.rsplit("/", 1)[1] for p in fs.ls("maps/job", refresh=True)}
        assert "landslides.gpkg" not in listed and ".vectorize" not in listed and ".lock" not in listed
