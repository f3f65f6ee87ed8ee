"""Shared fixtures: tiny synthetic scenes and model folders made on the fly."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Keep tests light on a 2-core machine; set before torch spins up its pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An untrained, small U-Net (mobilenet_v2 encoder) on the 14 raw bands."""
    from landslide_batch.models.card import init_model_folder

    out = tmp_path_factory.mktemp("models") / "unet_mobilenet_v2"
    init_model_folder("Unet", "mobilenet_v2", out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_plain_model(tmp_path_factory):
    """An untrained plain U-Net on the six derived features (R, G, B, NDVI, slope, DEM)."""
    from landslide_batch.models.card import init_model_folder

    out = tmp_path_factory.mktemp("models") / "unet_plain"
    init_model_folder("PlainUnet", None, out, seed=1)
    return out


@pytest.fixture(scope="session")
def scene_arrays():
    from landslide_batch.synthetic import synthetic_scene

    return synthetic_scene(300, 260, seed=3)


@pytest.fixture
def scene_tif(tmp_path, scene_arrays):
    """A 14-band 300 x 260 GeoTIFF in UTM 45N with a few NaN pixels."""
    from landslide_batch.synthetic import write_geotiff

    bands = scene_arrays[0].copy()
    bands[:, 10:14, 20:30] = np.nan
    return write_geotiff(tmp_path / "scene.tif", bands)
