"""The ingest benchmark (issue 29) runs and reports both sides, for a GeoTIFF and for a Sentinel-2
band folder laid out as real products are; and what its speed-up rests on
keeps the store as it was: a window without a valid pixel is not written (its chunks read as the
fill values), a partly valid one is, every other chunk is written without zarr's emptiness check,
and the GeoTIFF is read under a bounded GDAL block cache."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

from landslide_batch.bands import BAND_INDEX
from landslide_batch.gdal_env import MIN_READ_CACHE_MB, gdal_cache, read_cache_mb
from landslide_batch.ingest import SceneInputs, ingest_job
from landslide_batch.ingest import assemble as assemble_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("source", ["geotiff", "bands"])
def test_the_ingest_benchmark_runs_both_sides_and_prints_its_table(tmp_path, source):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--source", source, "--size", "256"]
    cmd += ["--repeats", "1", "--baseline", "HEAD", "--cache", "64", "--work", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| baseline HEAD") or "| this tree" in line]
    assert len(rows) == 3 and "this tree / baseline" in proc.stdout and "GDAL_CACHEMAX=64" in rows[2]
    assert ("JPEG 2000" in proc.stdout) == (source == "bands")
    assert not (tmp_path / "scene.zarr").exists()  # each run's store is removed


def test_the_bands_benchmark_makes_a_product_laid_out_as_sentinel2(tmp_path, monkeypatch):
    """JPEG 2000 bands in 1024² tiles at their native 10/20/60 m, SCL, metadata and a tiled
    EPSG:4326 DEM: the ingest finds every layer and scales the L2A numbers to reflectance; its
    cache is sized from all 13 sources, and the store is the one written without that cache."""
    spec = importlib.util.spec_from_file_location("ingest_benchmark", ROOT / "benchmarks" / "ingest.py")
    bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclass looks itself up
    spec.loader.exec_module(bench)
    product, dem = bench.make_product(tmp_path, 1200)
    files = {p.name: p for p in product.rglob("*.jp2")}
    assert len(files) == 12 and (product / "MTD_MSIL2A.xml").exists()
    for name, side in (("B02_10m", 1200), ("B05_20m", 600), ("B01_60m", 200), ("SCL_20m", 600)):
        with rasterio.open(files[f"T45RUL_20250101T050000_{name}.jp2"]) as ds:
            assert ds.driver == "JP2OpenJPEG" and (ds.width, ds.height) == (side, side)
            assert ds.block_shapes[0] == (min(side, 1024), min(side, 1024))
    with rasterio.open(dem) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.block_shapes[0] == (1024, 1024)
    sized: list[int] = []
    monkeypatch.setattr(assemble_module, "read_cache_mb", lambda c, shape, reads: sized.append(len(reads)) or 80)
    scene = ingest_job(product, tmp_path / "scene.zarr", chunk=256, inputs=SceneInputs(dem=str(dem)))
    monkeypatch.setattr(assemble_module, "gdal_cache", lambda mb: contextlib.nullcontext())  # as before it
    before = ingest_job(product, tmp_path / "before.zarr", chunk=256, inputs=SceneInputs(dem=str(dem)))
    assert sized == [21, 21]  # 13 files (11 bands: no B10 in L2A; SCL; DEM), 8 warped views (20/60 m, SCL)
    for got, want in zip(scene.read(0, 1200, 0, 1200), before.read(0, 1200, 0, 1200)):
        np.testing.assert_array_equal(got, want)
    bands, valid = scene.read(0, 512, 0, 512)
    with rasterio.open(files["T45RUL_20250101T050000_B02_10m.jp2"]) as ds:
        dn = ds.read(1, window=rasterio.windows.Window(0, 0, 512, 512)).astype(np.float64)
    assert 0.95 < valid.mean() < 1  # the SCL's scattered clouds masked
    np.testing.assert_allclose(bands[BAND_INDEX["B2"]][valid], ((dn - 1000) / 10000)[valid], atol=1e-6)


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


def _layout(path: Path, side: int, res: float, dtype: str = "uint16", count: int = 1, **blocks) -> Path:
    """An unwritten raster of ``side``² pixels: only its block layout matters to the cache's size."""
    profile = dict(driver="GTiff", height=side, width=side, count=count, dtype=dtype, crs="EPSG:32645", **blocks)
    with rasterio.open(path, "w", transform=from_origin(500000, 3100000, res, res), **profile):
        pass
    return path


def _mb(held_bytes: float) -> int:
    return max(MIN_READ_CACHE_MB, int(1.25 * held_bytes / 2**20))


def test_the_read_cache_holds_no_tile_aligned_with_the_windows_and_a_windows_strips(tmp_path):
    """Tiles that divide the window: no block is read by two windows, none is held; strips as wide
    as the file: every window of a row reads them, so a window's rows of them are held."""
    tiled = _layout(tmp_path / "t.tif", 4096, 10, "float32", 14, tiled=True, blockxsize=256, blockysize=256)
    strips = _layout(tmp_path / "s.tif", 4096, 10, "float32", 14)
    with rasterio.open(tiled) as t, rasterio.open(strips) as s:
        assert t.block_shapes[0] == (256, 256) and s.block_shapes[0][1] == 4096
        assert read_cache_mb(1024, (4096, 4096), [(t, Affine.identity())]) == 0
        assert read_cache_mb(512, (4096, 4096), [(s, Affine.identity())]) == _mb(512 * 4096 * 14 * 4) == 140


def test_the_read_cache_holds_a_row_of_sentinel2_tiles_for_every_band(tmp_path):
    """Sentinel-2's 1024² JPEG 2000 tiles are taller than a 512² window (and than its 20 and 60 m
    footprints): the next row of windows comes back to them, so a whole row of tiles is held per
    band, and a row of every other dataset read. Misaligned windows (an AOI cut) straddle two rows
    of tiles."""
    tile = dict(tiled=True, blockxsize=1024, blockysize=1024)
    bands = [(10, 10980), (20, 5490), (60, 1830)]
    opened = [rasterio.open(_layout(tmp_path / f"b{res}.tif", side, res, **tile)) for res, side in bands]
    try:
        reads = [(ds, Affine.scale(10 / res)) for ds, (res, _) in zip(opened, bands)]
        row_of_tiles = [math.ceil(ds.width / 1024) * 1024 * 1024 * 2 for ds in opened]  # one row of tiles, 2 B
        assert row_of_tiles == [11 * 2**21, 6 * 2**21, 2 * 2**21]
        assert read_cache_mb(512, (10980, 10980), reads) == _mb(sum(row_of_tiles)) == MIN_READ_CACHE_MB  # 38 MiB
        product = [reads[0]] * 4 + [reads[1]] * 5 + [reads[2]] * 2  # L2A: 4 bands at 10 m, 5 at 20 m, 2 at 60 m
        want = 4 * row_of_tiles[0] + 5 * row_of_tiles[1] + 2 * row_of_tiles[2]
        assert read_cache_mb(512, (10980, 10980), product) == _mb(want) == 195
        # a warped view's VRT (float32, 512x128 blocks) is read once, but its row passes in the
        # least-recently-used cache between two reads of a tile row: counted too
        vrt = rasterio.open(
            _layout(tmp_path / "vrt.tif", 10980, 10, "float32", tiled=True, blockxsize=512, blockysize=128)
        )
        opened.append(vrt)
        vrt_row = 512 * math.ceil(10980 / 512) * 512 * 4
        assert read_cache_mb(512, (10980, 10980), [*product, (vrt, Affine.identity())]) == _mb(want + vrt_row) == 222
        cut = [(opened[0], Affine.translation(300, 700))]  # grid (row 0, col 0) at 10 m pixel (700, 300)
        blocks_across = (300 + 4096 - 1) // 1024 - 300 // 1024 + 1
        assert read_cache_mb(512, (4096, 4096), cut * 4) == _mb(4 * 2 * blocks_across * 2**21) == 100
    finally:
        for ds in opened:
            ds.close()


def test_the_cache_is_set_in_bytes():
    """rasterio hands GDAL_CACHEMAX to GDALSetCacheMax64, in bytes: 64 through rasterio.Env is 64 B."""
    with gdal_cache(80):
        assert rasterio.env.get_gdal_config("GDAL_CACHEMAX") == 80 * 2**20
