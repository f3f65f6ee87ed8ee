"""Small jobs and their maps, shared by the fault and cluster tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from landslide_batch.config import job_from_dict


def job(scene, out, model, **kw):
    """A one-model job in blocks of 128 px (many blocks on a small scene), batches of 8."""
    return job_from_dict(
        {"scene": str(scene), "out": str(out), "models": [str(model)], "block": 128, "batch_size": 8, **kw}
    )


def read_prob(out: Path) -> np.ndarray:
    with rasterio.open(out / "probability.tif") as ds:
        return ds.read(1)


MIN_SPREAD = 0.05  # an untrained model's map spreads ~0.001: equality of such maps proves little


def assert_maps_vary(*maps: np.ndarray, nodata: float = -1.0) -> None:
    """Each map's valid pixels spread with a standard deviation of at least ``MIN_SPREAD``."""
    for i, m in enumerate(maps):
        valid = m[m != nodata]
        spread = float(valid.std()) if valid.size else 0.0
        assert spread >= MIN_SPREAD, (
            f"map {i} is near-constant (std {spread:.4f} < {MIN_SPREAD}): a model whose map varies"
        )


#: Tolerance between two float32 computations of one map that take different kernels: batched vs
#: per tile, another batch make-up (resume, Ray, another actor), another CPU (AVX-512 or AVX2).
#: Each convolution reorders a float32 sum of K = C_in * 3 * 3 terms (576 for the test U-Net's
#: 64-channel layers); its rounding is bounded by about K * eps = 576 * 1.19e-7 = 6.9e-5 of the
#: magnitudes summed, and the sigmoid's slope (<= 1/4) keeps the depth's sum of such errors near
#: that in probability. Measured on the test model: 1.08e-5 (AVX-512) and 7.5e-6 (AVX2, forced
#: with ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA). A one-pixel shift of the compared maps moves them
#: by a median of 0.13: three orders of magnitude above, and `assert_same_map` checks it does.
KERNEL_ATOL = 1e-4


def assert_shift_caught(want: np.ndarray, atol: float, nodata: float = -1.0) -> None:
    """A one-pixel shift of ``want`` along any axis would fail a comparison within ``atol`` (pixels
    picked out of a map by a mask count as one axis: mostly row neighbours)."""
    valid = np.isfinite(want) & (want != nodata)
    for axis in range(want.ndim):
        both = np.logical_and(
            np.take(valid, range(1, valid.shape[axis]), axis), np.take(valid, range(valid.shape[axis] - 1), axis)
        )
        step = np.abs(np.diff(np.where(valid, want, 0.0), axis=axis))[both]
        assert step.size and step.max() > 10 * atol, f"a one-pixel shift along axis {axis} would pass atol={atol}"


def assert_same_map(got: np.ndarray, want: np.ndarray, atol: float = 0.0) -> None:
    """``got`` equals ``want`` within ``atol`` (0: bit for bit), both maps vary, and the tolerance
    is tight enough that a one-pixel shift of ``want`` would fail."""
    assert_maps_vary(got, want)
    if atol:
        assert_shift_caught(want, atol)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
