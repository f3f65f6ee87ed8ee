import threading
import time

import numpy as np
import pytest

from landslide_batch.errors import InputError
from landslide_batch.ingest.scene import Scene, SceneWriter, reflect_index


@pytest.mark.parametrize("h,w,chunk", [(300, 260, 128), (40, 700, 64), (5, 3, 512)])
def test_read_reflected_equals_mirror_padding(tmp_path, h, w, chunk):
    rng = np.random.default_rng(0)
    bands = rng.random((14, h, w)).astype(np.float32)
    bands[:, 1, 2] = np.nan
    writer = SceneWriter(tmp_path / "s.zarr", h, w, crs_wkt=None, transform=(1, 0, 0, 0, -1, 0), chunk=chunk)
    writer.write(0, 0, bands)
    scene = writer.finish()
    for y0, y1, x0, x1 in [(-64, 200, -64, 100), (100, 364, 150, 324), (-64, 64 + h, -64, 64 + w), (0, 10, 0, 10)]:
        got, valid = scene.read_reflected(y0, y1, x0, x1)
        ri, ci = np.ix_(reflect_index(np.arange(y0, y1), h), reflect_index(np.arange(x0, x1), w))
        expected = bands[:, ri, ci]
        np.testing.assert_array_equal(got, expected)  # NaNs compare equal here
        np.testing.assert_array_equal(valid, np.isfinite(expected).all(0))


def test_nodata_and_nan_pixels_become_invalid(tmp_path):
    bands = np.ones((14, 8, 8), np.float32)
    bands[3, 0, 0] = np.nan
    bands[:, 1, 1] = -9999
    writer = SceneWriter(tmp_path / "s.zarr", 8, 8, crs_wkt=None, transform=(1, 0, 0, 0, -1, 0))
    writer.write(0, 0, bands, nodata=-9999)
    b, valid = writer.finish().read(0, 8, 0, 8)
    assert valid.sum() == 62 and not valid[0, 0] and not valid[1, 1]
    assert np.isnan(b[:, 0, 0]).all()


def test_incomplete_store_is_refused(tmp_path):
    SceneWriter(tmp_path / "s.zarr", 8, 8, crs_wkt=None, transform=(1, 0, 0, 0, -1, 0))
    with pytest.raises(InputError, match="incomplete"):
        Scene(tmp_path / "s.zarr")


def test_a_geotiff_ingested_windows_in_parallel_equals_one_window_at_a_time(tmp_path, monkeypatch):
    """Windows read and written by several threads at once (tiles aligned with the windows) give
    the store and the counts of one thread, and both what the file's pixels say."""
    import landslide_batch.ingest.geotiff as geotiff
    from landslide_batch.synthetic import write_geotiff

    rng = np.random.default_rng(3)
    bands = (rng.random((14, 600, 520)) * 0.3).astype(np.float32)
    bands[:, :256, :256] = -9999  # a whole window of nodata: never written
    bands[:, 300:310, 400:420] = -9999
    bands[5, 500, 10] = np.nan
    tif = write_geotiff(tmp_path / "s.tif", bands, nodata=-9999)
    expected_valid = np.isfinite(bands).all(0) & (bands != -9999).all(0)
    stores, writers = {}, set()
    write = SceneWriter.write

    def noting_thread(self, *args, **kwargs):
        writers.add(threading.get_ident())
        time.sleep(0.05)  # holds each window a moment, so the threads meet
        return write(self, *args, **kwargs)

    monkeypatch.setattr(SceneWriter, "write", noting_thread)
    for threads in (1, 4):
        monkeypatch.setattr(geotiff, "INGEST_THREADS", threads)
        writers.clear()
        writer = geotiff.ingest_geotiff(tif, tmp_path / f"t{threads}.zarr", chunk=256)
        assert len(writers) == threads  # 9 windows: every thread wrote some
        got, valid = writer.finish().read(0, 600, 0, 520)
        stores[threads] = (got, valid, writer.n_valid, writer.band_has_values.tolist())
        np.testing.assert_array_equal(valid, expected_valid)
        np.testing.assert_array_equal(got, np.where(expected_valid, bands, np.nan))
        assert writer.n_valid == expected_valid.sum() < expected_valid.size
    (one, one_valid, *one_counts), (par, par_valid, *par_counts) = stores[1], stores[4]
    np.testing.assert_array_equal(par, one)
    np.testing.assert_array_equal(par_valid, one_valid)
    assert par_counts == one_counts


def test_a_window_that_fails_to_read_in_a_worker_thread_fails_the_ingest_clearly(tmp_path):
    """A read error in one of the ingest's threads reaches the caller with the window it hit."""
    from landslide_batch.ingest.geotiff import ingest_geotiff
    from landslide_batch.synthetic import write_geotiff

    tif = write_geotiff(tmp_path / "s.tif", np.ones((14, 512, 512), np.float32))
    data = tif.read_bytes()
    tif.write_bytes(data[: len(data) * 3 // 4])  # the last tiles cut off
    with pytest.raises(InputError, match=r"read failed in window rows 256:512.*truncated or corrupt"):
        ingest_geotiff(tif, tmp_path / "t.zarr", chunk=256)
