"""Blending windows: per-pixel weights of a tile's prediction when overlapping tiles are merged.

Each window is strictly positive, so every covered pixel has a defined weighted mean.
``cosine`` is the Hann window (at 50 % overlap its shifted copies sum to a constant);
``gaussian`` follows nnU-Net (sigma = tile / 8); ``mean`` weighs all pixels alike.
"""

from __future__ import annotations

import numpy as np

BLENDS = ("mean", "cosine", "gaussian")


def blend_window(kind: str, tile: int) -> np.ndarray:
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
    w = np.outer(w1, w1)
    return (w / w.max()).astype(np.float32)


def tile_origins(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of a regular grid of tiles exactly covering a ``height x width`` window."""
    if (height - tile) % stride or (width - tile) % stride:
        raise ValueError(f"window {height}x{width} is not covered exactly by tiles {tile} at stride {stride}")
    return [(y, x) for y in range(0, height - tile + 1, stride) for x in range(0, width - tile + 1, stride)]


def blend_tiles(preds: np.ndarray, origins, shape: tuple[int, int], weights: np.ndarray) -> np.ndarray:
    """Weighted mean of tile predictions ``preds (N, T, T)`` placed at ``origins`` in ``shape``.

    Pixels no tile covers get NaN. Reference implementation in numpy; the predictor does
    the same accumulation on the model's device.
    """
    num = np.zeros(shape, np.float64)
    den = np.zeros(shape, np.float64)
    t = weights.shape[0]
    for p, (y, x) in zip(preds, origins):
        num[y : y + t, x : x + t] += weights * p
        den[y : y + t, x : x + t] += weights
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / den).astype(np.float32)
