"""Blending windows: per-pixel weights of a tile's prediction when overlapping tiles are merged.

Each window is strictly positive, so every covered pixel has a defined weighted mean.
``cosine`` is the Hann window (at 50 % overlap its shifted copies sum to a constant);
``gaussian`` follows nnU-Net (sigma = tile / 8); ``mean`` weighs all pixels alike.
The predictor (``infer.predictor``) blends with them on the model's device.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BLENDS = ("mean", "cosine", "gaussian")


def blend_window(kind: str, tile: int) -> npt.NDArray[np.float32]:
    """A ``(tile, tile)`` float32 weight window, peak 1."""
    x = np.arange(tile, dtype=np.float64)
    if kind == "mean":
        w1 = np.ones(tile)
    elif kind == "cosine":
        w1 = np.sin(np.pi * (x + 0.5) / tile) ** 2
    elif kind == "gaussian":
        sigma = tile / 8
        w1 = np.exp(-((x - (tile - 1) / 2) ** 2) / (2 * sigma**2))
    else:
        raise ValueError(f"unknown blend {kind!r}; expected one of {BLENDS}")
    w: npt.NDArray[np.float64] = np.outer(w1, w1)
    peak: float = w.max()
    return (w / peak).astype(np.float32)
