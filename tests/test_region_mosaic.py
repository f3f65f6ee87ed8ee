"""The merge's shortcuts give what the general rule gives: sampling an aligned scene by slicing
equals bilinear sampling at its pixel centres, and a fully valid window weighs 1 everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from pyproj import CRS
from scipy import ndimage

from landslide_batch.region.mosaic import (
    FEATHER_PX,
    Window,
    aligned_offset,
    feather_weights,
    merge,
    needed_window,
    overlap_weights,
    sample,
    shifted,
    source_pixels,
)

UTM45 = CRS.from_epsg(32645).to_wkt()
UTM44 = CRS.from_epsg(32644).to_wkt()
REGION = Affine(10, 0, 500000, 0, -10, 3100000)


def _scene(seed: int, h: int = 90, w: int = 70) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    layers = rng.random((4, h, w))
    valid = rng.random((h, w)) > 0.2
    valid[:, :7] = False  # a band of nodata, as at a scene's edge
    return layers, valid


def _reader(layers: np.ndarray, valid: np.ndarray):
    return lambda s: (layers[:, s.y0 : s.y1, s.x0 : s.x1], valid[s.y0 : s.y1, s.x0 : s.x1])


def _bilinear(layers, valid, src_t, window):
    rows, cols = source_pixels(REGION, UTM45, window, src_t, UTM45)
    src = needed_window(rows, cols, *valid.shape)
    if src is None:
        return None
    return sample(*_reader(layers, valid)(src), rows - src.y0, cols - src.x0)


@pytest.mark.parametrize(
    "window", [Window(-30, 60, -30, 50), Window(10, 40, 20, 130), Window(70, 200, 40, 100), Window(500, 520, 0, 10)]
)
def test_an_aligned_scene_sampled_by_slicing_equals_bilinear_sampling(window):
    layers, valid = _scene(1)
    src_t = REGION @ Affine.translation(-13, 21)  # the scene's origin 13 columns left, 21 rows down
    offset = aligned_offset(REGION, UTM45, src_t, UTM45)
    assert offset == (-21, 13)
    fast = shifted(_reader(layers, valid), *valid.shape, window, offset)
    slow = _bilinear(layers, valid, src_t, window)
    if slow is None or not slow[1].any():  # the window misses the scene: no weight either way
        assert fast is None or not fast[1].any()
        return
    assert fast is not None and fast[1].sum() > 0
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-9)


def test_grids_that_are_not_aligned_are_interpolated():
    half = REGION @ Affine.translation(0.5, 0)
    assert aligned_offset(REGION, UTM45, half, UTM45) is None
    assert aligned_offset(REGION, UTM45, REGION @ Affine.scale(1.01), UTM45) is None
    assert aligned_offset(REGION, UTM45, REGION, UTM44) is None
    assert aligned_offset(REGION, UTM45, REGION, CRS.from_epsg(32645).to_wkt(version="WKT1_GDAL")) == (0, 0)


def test_a_fully_valid_window_weighs_one_and_others_follow_the_distance_rule():
    margin = FEATHER_PX + 3
    full = np.ones((40 + 2 * margin, 50 + 2 * margin), bool)
    np.testing.assert_array_equal(feather_weights(full, margin), np.ones((40, 50)))
    holed = full.copy()
    holed[margin + 20, margin + 10] = False
    got = feather_weights(holed, margin)
    d = ndimage.distance_transform_edt(np.pad(holed, 1))[1 + margin : -1 - margin, 1 + margin : -1 - margin]
    np.testing.assert_array_equal(got, np.minimum(d, FEATHER_PX) / FEATHER_PX)
    assert got.min() == 0 and got.std() > 0.05


def _scene_validity(shape: tuple[int, int], x0: int, x1: int, seed: int) -> np.ndarray:
    """A scene covering columns x0:x1 of the window, with clouds (invalid blobs) inside."""
    rng = np.random.default_rng(seed)
    valid = np.zeros(shape, bool)
    valid[:, x0:x1] = True
    clouds = ndimage.binary_dilation(rng.random(shape) > 0.999, iterations=4)
    return valid & ~clouds


@pytest.mark.parametrize("scenes", [[(0, 150), (110, 200)], [(0, 150), (110, 200), (60, 130)], [(0, 90), (120, 200)]])
def test_weights_limited_to_the_overlap_give_the_merge_of_the_full_rule(scenes):
    margin = FEATHER_PX
    shape = (120 + 2 * margin, 200 + 2 * margin)
    valids = [_scene_validity(shape, x0, x1, seed) for seed, (x0, x1) in enumerate(scenes)]
    rng = np.random.default_rng(7)
    layers = [rng.random((3, shape[0] - 2 * margin, shape[1] - 2 * margin)) for _ in scenes]
    full = [feather_weights(v, margin) for v in valids]
    fast = overlap_weights(valids, margin)
    want, want_covered = merge(list(zip(full, layers)), full[0].shape, 3)
    got, got_covered = merge(list(zip(fast, layers)), fast[0].shape, 3)
    np.testing.assert_array_equal(got_covered, want_covered)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    shared = np.sum([v[margin:-margin, margin:-margin] for v in valids], axis=0) >= 2
    for f, w in zip(fast, full):
        np.testing.assert_array_equal(f[shared], w[shared])  # the full rule wherever scenes overlap
    assert want[0][want_covered].std() > 0.05 and (0 < np.concatenate(full)).mean() > 0.3
