"""A small PNG for a first look: true-colour RGB with the probability map overlaid in red."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..bands import BAND_INDEX, RGB_BANDS

MAX_SIDE = 1024


def stretch(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) reflectance -> (H, W, 3) uint8, 2-98 % percentile stretch per band, NaN -> black."""
    out = np.zeros(rgb.shape[1:] + (3,), np.uint8)
    for i, band in enumerate(rgb):
        finite = band[np.isfinite(band)]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, [2, 98])
        scaled = np.clip((band - lo) / max(hi - lo, 1e-9), 0, 1)
        out[..., i] = np.nan_to_num(scaled * 255).astype(np.uint8)
    return out


def overlay(rgb8: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """Red wash where ``prob >= threshold``, stronger with higher probability."""
    alpha = np.where(np.isfinite(prob) & (prob >= threshold), 0.35 + 0.5 * np.nan_to_num(prob), 0.0)[..., None]
    red = np.array([255, 30, 30], np.float32)
    return (rgb8 * (1 - alpha) + red * alpha).astype(np.uint8)


def write_quicklook(dest: Path, scene_bands, prob_array, threshold: float) -> None:
    """``scene_bands`` (C, H, W) and ``prob_array`` (H, W) are lazily sliced arrays (Zarr)."""
    h, w = prob_array.shape
    step = max(1, -(-max(h, w) // MAX_SIDE))
    # One orthogonal selection: each chunk (all bands) is read once, not once per band.
    rgb = scene_bands.get_orthogonal_selection(
        ([BAND_INDEX[b] for b in RGB_BANDS], slice(None, None, step), slice(None, None, step))
    )
    prob = np.asarray(prob_array[::step, ::step], dtype=np.float32)
    prob[prob < 0] = np.nan
    Image.fromarray(overlay(stretch(rgb), prob, threshold)).save(dest)
