"""The ingest benchmark (issue 29) runs and reports both sides; and what its speed-up rests on
keeps the store as it was: a window without a valid pixel is not written (its chunks read as the
fill values), a partly valid one is, every other chunk is written without zarr's emptiness check,
and the GeoTIFF is read under a bounded GDAL block cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from landslide_batch.ingest import ingest_job
from landslide_batch.ingest.geotiff import read_cache_mb

ROOT = Path(__file__).resolve().parents[1]


def test_the_ingest_benchmark_runs_both_sides_and_prints_its_table(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--size", "256", "--repeats", "1"]
    proc = subprocess.run([*cmd, "--baseline", "HEAD", "--work", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| baseline HEAD", "| this tree"))]
    assert len(rows) == 2 and "this tree / baseline" in proc.stdout
    assert not (tmp_path / "scene.zarr").exists()  # each run's store is removed


def test_a_window_without_valid_pixels_is_not_written_and_reads_as_nodata(tmp_path):
    rng = np.random.default_rng(5)
    bands = rng.random((14, 512, 1024)).astype(np.float32)
    bands[:, :, :512] = -9999  # the first 512² window: no valid pixel
    bands[:, 100:300, 600:700] = -9999  # the second: partly valid
    src = tmp_path / "s.tif"
    profile = dict(driver="GTiff", height=512, width=1024, count=14, dtype="float32", nodata=-9999)
    with rasterio.open(src, "w", crs="EPSG:32645", transform=from_origin(500000, 3100000, 10, 10), **profile) as ds:
        ds.write(bands)
    scene = ingest_job(src, tmp_path / "scene.zarr", chunk=512)
    files = (p.relative_to(scene.path).as_posix() for p in Path(scene.path).rglob("*") if p.is_file())
    assert {f for f in files if "/c/" in f} == {"bands/c/0/0/1", "valid/c/0/1"}  # the empty window's: never written
    got, valid = scene.read(0, 512, 0, 1024)
    expected_valid = bands[0] != -9999
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(got[:, expected_valid], bands[:, expected_valid])
    assert np.isnan(got[:, ~expected_valid]).all()


def test_the_read_cache_holds_a_row_of_windows_blocks_not_the_file(tmp_path):
    """Tiles as wide as a window: a window and its neighbours' blocks; strips as wide as the
    scene: a row of windows; both far below GDAL's default of 5 % of memory for large scenes."""
    layouts = {"tiled": dict(tiled=True, blockxsize=256, blockysize=256), "strips": {}}
    # tiled: (512 + 2 x 256)² px x 14 bands x 4 B x 1.25 = 70 MiB; strips of one row: (512 + 2) x 4096 px: 140 MiB
    for (name, layout), want in zip(layouts.items(), (70, 140)):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", height=4096, width=4096, count=14, dtype="float32", **layout):
            pass
        with rasterio.open(path) as ds:
            assert read_cache_mb(ds, 512) == want, (name, ds.block_shapes[0])
