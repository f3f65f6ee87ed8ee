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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import CRS, Transformer
from scipy import ndimage

#: Pixels over which a scene's weight ramps up from its edge.
FEATHER_PX = 32
#: How far (in pixels) two grids may be from whole-pixel alignment to be sampled by slicing.
ALIGN_TOLERANCE = 1e-6


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


@lru_cache(maxsize=64)
def _same_crs(a_wkt: str, b_wkt: str) -> bool:
    return a_wkt == b_wkt or CRS.from_wkt(a_wkt).equals(CRS.from_wkt(b_wkt))


def aligned_offset(dst_transform: Affine, dst_wkt: str, src_transform: Affine, src_wkt: str) -> tuple[int, int] | None:
    """``(rows, cols)`` from a destination pixel to the source pixel it coincides with, when both
    grids share their CRS, pixel size and orientation and lie whole pixels apart (scenes of one
    UTM zone on a region grid aligned to its resolution); None otherwise. There, bilinear
    sampling at the pixel centres reads exactly one source pixel: ``shifted`` does it by slicing."""
    if not _same_crs(src_wkt, dst_wkt):
        return None
    rel = ~src_transform @ dst_transform  # destination (col, row) -> source (col, row)
    scale = np.array([rel.a, rel.b, rel.d, rel.e])
    shift = np.array([rel.f, rel.c])
    if np.abs(scale - [1, 0, 0, 1]).max() > ALIGN_TOLERANCE or np.abs(shift - np.round(shift)).max() > ALIGN_TOLERANCE:
        return None
    return int(round(rel.f)), int(round(rel.c))


def shifted(
    read: Callable[[Window], tuple[np.ndarray, np.ndarray]],
    height: int,
    width: int,
    window: Window,
    offset: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray] | None:
    """What ``sample`` gives on an aligned source (``aligned_offset``): the source's layers and
    validity at ``window`` moved by ``offset``, 0 and invalid where the source is invalid or
    absent; None when the window misses the source."""
    dy, dx = offset
    src = Window(
        max(window.y0 + dy, 0), min(window.y1 + dy, height), max(window.x0 + dx, 0), min(window.x1 + dx, width)
    )
    if src.y1 <= src.y0 or src.x1 <= src.x0:
        return None
    layers, valid = read(src)
    at = (
        slice(src.y0 - dy - window.y0, src.y1 - dy - window.y0),
        slice(src.x0 - dx - window.x0, src.x1 - dx - window.x0),
    )
    out_layers = np.zeros((layers.shape[0], *window.shape))
    out_valid = np.zeros(window.shape, bool)
    out_layers[(slice(None), *at)] = np.where(valid, layers, 0.0)
    out_valid[at] = valid
    return out_layers, out_valid


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
    if valid_grown.all():  # every distance exceeds the margin, so every weight is 1
        return np.ones((valid_grown.shape[0] - 2 * margin, valid_grown.shape[1] - 2 * margin))
    # A ring of zeros: pixels beyond the margin count as invalid, which changes no capped
    # distance inside the window (they lie more than ``feather`` away).
    d = ndimage.distance_transform_edt(np.pad(valid_grown, 1))[1 + margin : -1 - margin, 1 + margin : -1 - margin]
    return np.minimum(d, feather) / feather


def overlap_weights(valids_grown: list[np.ndarray], margin: int, feather: int = FEATHER_PX) -> list[np.ndarray]:
    """The weights the merge needs for scenes whose validity on a window grown by ``margin`` is
    ``valids_grown``: ``feather_weights`` over the bounding box of the pixels where two or more
    scenes are valid, elsewhere the validity itself (1 or 0). Where at most one scene is valid
    its weight does not change the merge (the weighted mean of one value is that value), so only
    the overlap, grown by ``feather``, needs a distance transform."""
    core = (slice(margin, -margin), slice(margin, -margin))
    weights = [v[core].astype(np.float64) for v in valids_grown]
    if len(valids_grown) < 2:
        return weights
    shared = np.stack([v[core] for v in valids_grown]).sum(axis=0, dtype=np.int32) >= 2
    if not shared.any():
        return weights
    rows, cols = np.nonzero(shared.any(axis=1))[0], np.nonzero(shared.any(axis=0))[0]
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = (slice(y0 + margin - feather, y1 + margin + feather), slice(x0 + margin - feather, x1 + margin + feather))
    for w, v in zip(weights, valids_grown):
        w[y0:y1, x0:x1] = feather_weights(v[crop], feather, feather)
    return weights


def merge(
    contributions: Iterable[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int], n_layers: int
) -> tuple[np.ndarray, np.ndarray]:
    """``contributions``: (weights (H, W), layers (C, H, W)) per scene, taken one at a time ->
    (weighted mean layers (C, H, W) float64, covered (H, W) bool: some scene has weight there)."""
    acc = np.zeros((n_layers, *shape))
    wsum = np.zeros(shape)
    for weights, layers in contributions:
        acc += weights * layers
        wsum += weights
        del weights, layers  # before the next contribution is made: one held at a time
    covered = wsum > 0
    return acc / np.where(covered, wsum, 1.0), covered
