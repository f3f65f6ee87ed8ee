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


def make_varying_model(src, out, bands: np.ndarray, spread: float = 3.0, tile: int = 128) -> None:
    """Copy model folder ``src`` to ``out`` with its card normalised to ``bands``' statistics and
    its segmentation head rescaled so that logits on ``bands`` have median 0 and std ``spread``:
    probability maps that really vary (an untrained head gives near-constant maps, against which
    an equality test proves little)."""
    import torch

    from landslide_batch.models.card import Normalization, load_model_folder, save_model_folder

    model, card = load_model_folder(src)
    flat = bands.reshape(bands.shape[0], -1)
    flat = flat[:, np.isfinite(flat).all(axis=0)]
    mean, std = flat.mean(axis=1), flat.std(axis=1) + 1e-6
    card = card.model_copy(update={"normalization": Normalization(mean=mean.tolist(), std=std.tolist())})
    x = np.nan_to_num((bands[:, :tile, :tile] - mean[:, None, None]) / std[:, None, None])
    with torch.no_grad():
        logits = model(torch.from_numpy(x[None].astype(np.float32)))[0, 0]
        head = model.segmentation_head[0] if hasattr(model, "segmentation_head") else model.head  # smp | PlainUNet
        k = spread / float(logits.std())
        head.weight.mul_(k)
        head.bias.copy_(k * (head.bias - logits.median()))
    save_model_folder(model, card, out, overwrite=True)


@pytest.fixture(scope="session")
def varying_model(tmp_path_factory, tiny_model, scene_arrays):
    """``tiny_model`` normalised to the synthetic scene and with a rescaled head: its probability
    map over ``scene_tif`` spreads over (0, 1) (std well above 0.05)."""
    out = tmp_path_factory.mktemp("models") / "unet_varying"
    make_varying_model(tiny_model, out, scene_arrays[0])
    return out
