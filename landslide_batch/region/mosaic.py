"""Scenes onto the region grid, and the rule that merges them where they overlap.

The rule (``README.md``, "Region jobs"): at each region pixel centre a scene gives

- its layers (probability, uncertainty, slope, RGB) by bilinear interpolation over its *valid*
  pixels (the four neighbours' weights renormalised over the valid ones);
- its validity by nearest neighbour;
- a weight ``valid * min(d, F) / F``, ``d`` the Euclidean distance (in region pixels) to the
  nearest region pixel where the scene is invalid or absent, ``F`` = :data:`FEATHER_PX`.

Merged layer = sum(w * layer) / sum(w); nodata where no scene is valid. Weights ramp up from
each scene's edge (and from its clouds and nodata) over ``F`` pixels, so the map fades from one
scene to the next without a seam, and a pixel's value depends only on the scenes, never on how
the region is cut into blocks: ``d`` is capped at ``F``, so a block with a margin of ``F`` pixels
knows it exactly. Everything here is pure: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import Transformer
from scipy import ndimage

#: Pixels over which a scene's weight ramps up from its edge.
FEATHER_PX = 32


@dataclass(frozen=True)
class Window:
    """Rows ``y0:y1`` and columns ``x0:x1`` of a grid (may reach beyond it)."""

    y0: int
    y1: int
    x0: int
    x1: int

    def grown(self, margin: int) -> Window:
        return Window(self.y0 - margin, self.y1 + margin, self.x0 - margin, self.x1 + margin)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


@lru_cache(maxsize=64)
def _transformer(src_wkt: str, dst_wkt: str) -> Transformer:
    return Transformer.from_crs(src_wkt, dst_wkt, always_xy=True)


def source_pixels(
    dst_transform: Affine, dst_wkt: str, window: Window, src_transform: Affine, src_wkt: str
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (row, col) on the source grid (pixel ``i`` spans ``[i, i + 1)``) of the centres
    of ``window``'s pixels on the destination grid."""
    rows, cols = np.mgrid[window.y0 : window.y1, window.x0 : window.x1].astype(np.float64) + 0.5
    x = dst_transform.c + dst_transform.a * cols + dst_transform.b * rows
    y = dst_transform.f + dst_transform.d * cols + dst_transform.e * rows
    if src_wkt != dst_wkt:
        x, y = _transformer(dst_wkt, src_wkt).transform(x, y)
    inv = ~src_transform
    return inv.d * x + inv.e * y + inv.f, inv.a * x + inv.b * y + inv.c


def needed_window(rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> Window | None:
    """The source window bilinear sampling at ``(rows, cols)`` reads, clipped to the source;
    None when no sample touches it."""
    r0, r1 = int(np.floor(rows.min() - 0.5)), int(np.floor(rows.max() - 0.5)) + 2
    c0, c1 = int(np.floor(cols.min() - 0.5)), int(np.floor(cols.max() - 0.5)) + 2
    r0, r1, c0, c1 = max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)
    return Window(r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def sample(layers: np.ndarray, valid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``layers`` (C, h, w) and ``valid`` (h, w) of a source window, sampled at window-local
    ``(rows, cols)`` -> (bilinear layers (C, H, W) float64, nearest validity (H, W) bool).
    Bilinear uses valid neighbours only; where none is valid its value is 0 (and weightless)."""
    h, w = valid.shape
    rr, cc = rows - 0.5, cols - 0.5
    r0, c0 = np.floor(rr).astype(np.int64), np.floor(cc).astype(np.int64)
    fr, fc = rr - r0, cc - c0
    acc = np.zeros((layers.shape[0], *rows.shape))
    wsum = np.zeros(rows.shape)
    for dr, dc, wk in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        y, x = r0 + dr, c0 + dc
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        yc, xc = np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)
        ok &= valid[yc, xc]
        wk = np.where(ok, wk, 0.0)
        acc += wk * np.where(ok, layers[:, yc, xc], 0.0)
        wsum += wk
    ny, nx = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    nearest = inside & valid[np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)]
    return acc / np.where(wsum > 0, wsum, 1.0), nearest & (wsum > 0)


def feather_weights(valid_grown: np.ndarray, margin: int, feather: int = FEATHER_PX) -> np.ndarray:
    """Weights of a window from its validity grown by ``margin`` >= ``feather`` pixels on each
    side: ``valid * min(d, feather) / feather`` on the window (the margin cropped off)."""
    if margin < feather:
        raise ValueError(f"margin {margin} < feather {feather}: distances would be cut short")
    # A ring of zeros: pixels beyond the margin count as invalid, which changes no capped
    # distance inside the window (they lie more than ``feather`` away).
    d = ndimage.distance_transform_edt(np.pad(valid_grown, 1))[1 + margin : -1 - margin, 1 + margin : -1 - margin]
    return np.minimum(d, feather) / feather


def merge(
    contributions: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int], n_layers: int
) -> tuple[np.ndarray, np.ndarray]:
    """``contributions``: (weights (H, W), layers (C, H, W)) per scene -> (weighted mean layers
    (C, H, W) float64, covered (H, W) bool: some scene has weight there)."""
    acc = np.zeros((n_layers, *shape))
    wsum = np.zeros(shape)
    for weights, layers in contributions:
        acc += weights * layers
        wsum += weights
    covered = wsum > 0
    return acc / np.where(covered, wsum, 1.0), covered
