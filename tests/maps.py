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


def assert_same_map(got: np.ndarray, want: np.ndarray, atol: float = 0.0) -> None:
    """``got`` equals ``want`` within ``atol`` (0: bit for bit), and both maps vary."""
    assert_maps_vary(got, want)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
