"""Pictures of a patch and its maps for the page: true colour, overlay, probability."""

from __future__ import annotations

import numpy as np

from ..bands import RGB_BANDS, derive_features
from .uploads import Patch


def rgb_composite(patch: Patch) -> np.ndarray:
    """uint8 (H, W, 3) true colour (B4, B3, B2), each band stretched 2-98 % over valid pixels."""
    rgb = np.moveaxis(derive_features(patch.bands, RGB_BANDS), 0, -1)
    lo, hi = np.percentile(rgb[patch.valid], [2, 98], axis=0)
    out = np.clip((rgb - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    out[~patch.valid] = 0
    return (out * 255).round().astype(np.uint8)


#: Tints of landslide pixels over the RGB composite: a model's (red) and the ground truth's (cyan).
PREDICTED, TRUTH = (255, 0, 0), (0, 255, 255)


def overlay(
    rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.55, colour: tuple[int, int, int] = PREDICTED
) -> np.ndarray:
    """Landslide pixels tinted ``colour`` over the RGB composite."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.array(colour, dtype=np.float32)
    return out.round().astype(np.uint8)


def probability_image(prob: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) viridis picture of a probability map; invalid pixels grey."""
    from matplotlib import colormaps

    rgb = colormaps["viridis"](np.nan_to_num(prob, nan=0.0), bytes=True)[..., :3]
    rgb[np.isnan(prob)] = 128
    return rgb


def enlarge(img: np.ndarray, target: int = 384) -> np.ndarray:
    """Nearest-neighbour upscaling, so the browser does not blur a 128 px patch into mush."""
    k = max(1, target // max(img.shape[:2]))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)
