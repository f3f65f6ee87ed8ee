import numpy as np
import pytest

from landslide_batch.infer.blending import BLENDS, blend_window
from landslide_batch.ingest.scene import reflect_index
from landslide_batch.plan.tiling import TileGrid, plan_blocks


def tile_origins(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of a regular grid of tiles exactly covering a ``height x width`` window."""
    assert (height - tile) % stride == 0 and (width - tile) % stride == 0
    return [(y, x) for y in range(0, height - tile + 1, stride) for x in range(0, width - tile + 1, stride)]


def blend_tiles(preds: np.ndarray, origins, shape: tuple[int, int], weights: np.ndarray) -> np.ndarray:
    """Reference blend, a per-tile loop in float64: weighted mean of ``preds (N, T, T)`` placed at
    ``origins`` in ``shape``; NaN where no tile covers a pixel."""
    num = np.zeros(shape, np.float64)
    den = np.zeros(shape, np.float64)
    t = weights.shape[0]
    for p, (y, x) in zip(preds, origins):
        num[y : y + t, x : x + t] += weights * p
        den[y : y + t, x : x + t] += weights
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / den).astype(np.float32)


@pytest.mark.parametrize(
    "h,w,tile,stride", [(300, 260, 128, 64), (128, 128, 128, 64), (50, 700, 128, 96), (1000, 999, 64, 32)]
)
def test_grid_covers_scene_and_blocks_partition_it(h, w, tile, stride):
    grid = TileGrid(h, w, tile, stride)
    # Every scene pixel lies inside some tile, and the last tile does not start past the scene.
    assert grid.origin(0) <= 0 and grid.origin(grid.ny - 1) + tile >= h
    assert grid.origin(grid.nx - 1) + tile >= w and grid.origin(grid.ny - 1) < h
    for block_size in (stride * 2, stride * 5):
        blocks = plan_blocks(grid, block_size)
        cover = np.zeros((h, w), int)
        for b in blocks:
            cover[b.y0 : b.y1, b.x0 : b.x1] += 1
            # The block's tiles are exactly those overlapping its core.
            for i in range(grid.ny):
                o = grid.origin(i)
                assert (b.ty0 <= i < b.ty1) == (o < b.y1 and o + tile > b.y0)
        assert (cover == 1).all()


def test_reflect_index_mirrors_without_repeating_the_edge():
    np.testing.assert_array_equal(reflect_index(np.arange(-3, 8), 5), [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1])
    np.testing.assert_array_equal(reflect_index(np.arange(-2, 3), 1), [0, 0, 0, 0, 0])
    # Matches numpy's reflect padding.
    a = np.arange(7)
    np.testing.assert_array_equal(a[reflect_index(np.arange(-5, 12), 7)], np.pad(a, 5, mode="reflect"))


@pytest.mark.parametrize("kind", BLENDS)
def test_windows_positive_and_symmetric(kind):
    w = blend_window(kind, 128)
    assert w.shape == (128, 128) and w.min() > 0 and w.max() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    np.testing.assert_allclose(w, w.T)


def test_cosine_windows_at_half_overlap_sum_to_a_constant():
    w = blend_window("cosine", 64)[32]  # a row through the peak
    total = w[:32] + w[32:]
    np.testing.assert_allclose(total, total[0], rtol=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
def test_constant_tiles_blend_without_seams(kind):
    origins = tile_origins(256, 320, 64, 32)
    preds = np.full((len(origins), 64, 64), 0.37, np.float32)
    out = blend_tiles(preds, origins, (256, 320), blend_window(kind, 64))
    np.testing.assert_allclose(out, 0.37, atol=1e-6)


def test_blend_is_a_weighted_mean():
    origins = [(0, 0), (0, 2)]
    preds = np.stack([np.zeros((4, 4)), np.ones((4, 4))]).astype(np.float32)
    out = blend_tiles(preds, origins, (4, 6), blend_window("mean", 4))
    np.testing.assert_allclose(out[:, :2], 0)
    np.testing.assert_allclose(out[:, 2:4], 0.5)
    np.testing.assert_allclose(out[:, 4:], 1)


def test_tile_uses_counts_blocks_per_tile():
    from landslide_batch.plan.tiling import tile_uses

    grid = TileGrid(640, 384, 128, 64)
    blocks = plan_blocks(grid, 256)
    uses = tile_uses(grid, blocks)
    assert uses.shape == (grid.ny, grid.nx)
    assert uses.sum() == sum(b.n_tiles for b in blocks)
    # With a one-stride margin and 50 % overlap, one tile row/column straddles each block edge.
    assert set(np.unique(uses)) == {1, 2, 4}
    assert (uses[:, 0] == uses[:, 0].min()).sum() > 0 and uses[0, 0] == 1


def test_ndvi_is_nan_where_its_bands_are_missing():
    from landslide_batch.bands import BAND_INDEX, derive_features

    bands = np.ones((14, 2, 2), np.float32)
    bands[BAND_INDEX["B8"]] = 3.0
    bands[BAND_INDEX["B4"], 0, 0] = np.nan
    bands[BAND_INDEX["B4"], 1, 1] = -3.0  # B8 + B4 == 0
    ndvi = derive_features(bands, ["NDVI"])[0]
    assert np.isnan(ndvi[0, 0]) and ndvi[1, 1] == 0 and ndvi[0, 1] == pytest.approx(0.5)


def test_the_fourteen_bands_in_order_are_the_window_itself_other_features_a_copy():
    import torch

    from landslide_batch.bands import L4S_BANDS, derive_features

    bands = np.random.default_rng(0).random((14, 3, 4)).astype(np.float32)
    for window in (bands, torch.from_numpy(bands)):
        assert derive_features(window, list(L4S_BANDS)) is window  # no 74 MB copy per 1024² block
        reordered = derive_features(window, [*L4S_BANDS[1:], L4S_BANDS[0]])
        np.testing.assert_array_equal(np.asarray(reordered)[-1], bands[0])
        assert not np.shares_memory(np.asarray(reordered), bands)
