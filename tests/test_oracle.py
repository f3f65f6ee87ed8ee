"""The region pipeline against an independent oracle: a naive per-tile loop written here.

The oracle reads the GeoTIFF with rasterio, mirror-pads it, cuts every tile of the grid, normalises
and runs the model tile by tile, and blends with windows computed here from their documented
formulas. Nothing of the pipeline's tiling, blending, reading or batching is reused, so a wrong
tile placement, a window off by one or a mis-blended block edge shows up as a difference.
"""

import math

import numpy as np
import pytest
import rasterio
import torch
from maps import KERNEL_ATOL, assert_shift_caught

from landslide_batch.config import job_from_dict
from landslide_batch.models.card import load_model_folder
from landslide_batch.pipeline import run_job

TILE, STRIDE = 128, 64  # overlap 0.5


def window(kind: str, t: int) -> np.ndarray:
    x = np.arange(t, dtype=np.float64)
    w1 = {
        "mean": np.ones(t),
        "cosine": np.sin(np.pi * (x + 0.5) / t) ** 2,  # Hann
        "gaussian": np.exp(-((x - (t - 1) / 2) ** 2) / (2 * (t / 8) ** 2)),
    }[kind]  # nnU-Net, sigma t/8
    return np.outer(w1, w1)


def oracle(scene_tif, members: list[tuple[str, float]], blend: str) -> np.ndarray:
    """Naive map: every tile of the grid (origin -margin, step stride, until the scene is covered)."""
    with rasterio.open(scene_tif) as ds:
        bands = ds.read().astype(np.float64)
    h, w = bands.shape[1:]
    valid = np.isfinite(bands).all(axis=0)
    bands[:, ~valid] = np.nan  # an invalid pixel is invalid in every layer
    margin = STRIDE * (TILE // (2 * STRIDE))  # tiles start a whole number of strides before pixel 0
    n_y = max(1, math.ceil((h + margin - TILE) / STRIDE) + 1)
    n_x = max(1, math.ceil((w + margin - TILE) / STRIDE) + 1)
    pad_y, pad_x = -margin + (n_y - 1) * STRIDE + TILE - h, -margin + (n_x - 1) * STRIDE + TILE - w
    padded = np.pad(bands, ((0, 0), (margin, pad_y), (margin, pad_x)), mode="reflect")
    pvalid = np.pad(valid, ((margin, pad_y), (margin, pad_x)), mode="reflect")
    win = window(blend, TILE)
    total = np.zeros(padded.shape[1:])
    for path, weight in members:
        model, card = load_model_folder(path)
        mean = np.array(card.normalization.mean)[:, None, None]
        std = np.array(card.normalization.std)[:, None, None]
        num, den = np.zeros(padded.shape[1:]), np.zeros(padded.shape[1:])
        for i in range(n_y):
            for j in range(n_x):
                ys, xs = slice(i * STRIDE, i * STRIDE + TILE), slice(j * STRIDE, j * STRIDE + TILE)
                if not pvalid[ys, xs].any():
                    continue
                x = np.nan_to_num((padded[:, ys, xs] - mean) / std)
                with torch.no_grad():
                    p = torch.sigmoid(model(torch.from_numpy(x[None].astype(np.float32))))[0, 0].numpy()
                num[ys, xs] += win * p
                den[ys, xs] += win
        with np.errstate(invalid="ignore"):
            total += weight * num / den
    prob = (total / sum(wt for _, wt in members))[margin : margin + h, margin : margin + w]
    return np.where(valid, prob, -1.0)


def run_pipeline(scene_tif, out, members, blend, block):
    models = (
        {"models": [str(members[0][0])]}
        if len(members) == 1
        else {"ensemble": str(_ensemble_yaml(out.parent, members))}
    )
    run_job(
        job_from_dict(
            {"scene": str(scene_tif), "out": str(out), "block": block, "blend": blend, "batch_size": 5, **models}
        )
    )
    with rasterio.open(out / "probability.tif") as ds:
        return ds.read(1)


def _ensemble_yaml(folder, members):
    import yaml

    path = folder / "ensemble.yaml"
    path.write_text(yaml.safe_dump({"members": [{"model": str(p), "weight": w} for p, w in members]}))
    return path


@pytest.mark.parametrize("blend,block", [("gaussian", 128), ("cosine", 192), ("mean", 1024)])
def test_region_map_equals_naive_per_tile_loop(tmp_path, scene_tif, varying_model, blend, block):
    # 300 x 260 px: a multiple of neither the stride (64) nor any block size used here.
    members = [(str(varying_model), 1.0)]
    got = run_pipeline(scene_tif, tmp_path / "out", members, blend, block)
    want = oracle(scene_tif, members, blend)
    valid = want >= 0
    assert valid.sum() > 0.99 * valid.size
    assert got[valid].std() >= 0.05, "the compared map must vary, or equality proves little"
    np.testing.assert_array_equal(got < 0, ~valid)
    assert_shift_caught(want, KERNEL_ATOL)
    np.testing.assert_allclose(got, want, atol=KERNEL_ATOL, rtol=0)


def test_weighted_ensemble_equals_naive_loop(tmp_path, scene_tif, varying_model, tiny_model, scene_arrays):
    from conftest import make_varying_model

    other = tmp_path / "varying2"  # a second member with another map: its head scaled and offset otherwise
    make_varying_model(tiny_model, other, scene_arrays[0][:, ::-1].copy(), spread=2.0)
    members = [(str(varying_model), 2.0), (str(other), 1.0)]
    got = run_pipeline(scene_tif, tmp_path / "out", members, "gaussian", 128)
    want = oracle(scene_tif, members, "gaussian")
    assert got[want >= 0].std() >= 0.05
    assert_shift_caught(want, KERNEL_ATOL)
    np.testing.assert_allclose(got, want, atol=KERNEL_ATOL, rtol=0)
