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
