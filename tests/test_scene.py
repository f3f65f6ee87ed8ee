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
