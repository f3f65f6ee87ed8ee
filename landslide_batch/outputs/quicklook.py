"""A small PNG for a first look: true-colour RGB with the probability map overlaid in red, and
below it a legend (the overlay's colour bar from the threshold to 1, nodata) and a scale bar."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..bands import BAND_INDEX, RGB_BANDS
from ..ingest.scene import SceneInfo
from .metadata import software

MAX_SIDE = 1024
PANEL_H = 64  # the legend's strip below the map, in pixels
MIN_W = 420  # narrower maps get a wider canvas, so that the legend fits
BAR_W = 160  # the colour bar's width
GREY = 128  # the colour bar shows the overlay over a mid grey


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


def scale_bar(metres_per_px: float, max_px: int) -> tuple[int, str]:
    """The longest round length (1, 2 or 5 x 10^k m) drawn in at most ``max_px`` pixels:
    -> (its length in pixels, its label)."""
    most = metres_per_px * max_px
    k = 10 ** math.floor(math.log10(most))
    metres = max(m * k for m in (1, 2, 5) if m * k <= most)
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    return round(metres / metres_per_px), label


def write_quicklook(dest: Path, scene_bands, prob_array, threshold: float, info: SceneInfo) -> None:
    """``scene_bands`` (C, H, W) and ``prob_array`` (H, W) are lazily sliced arrays (Zarr) on the
    grid ``info`` describes (its pixel size gives the scale bar; none without georeference)."""
    h, w = prob_array.shape
    step = max(1, -(-max(h, w) // MAX_SIDE))
    # One orthogonal selection: each chunk (all bands) is read once, not once per band.
    rgb = scene_bands.get_orthogonal_selection(
        ([BAND_INDEX[b] for b in RGB_BANDS], slice(None, None, step), slice(None, None, step))
    )
    prob = np.asarray(prob_array[::step, ::step], dtype=np.float32)
    prob[prob < 0] = np.nan
    picture = overlay(stretch(rgb), prob, threshold)
    pixel_m = math.sqrt(info.pixel_area_m2) * step if info.pixel_area_m2 else None
    canvas = _with_legend(picture, threshold, pixel_m)
    text = PngInfo()
    text.add_text("Title", "landslide quicklook")
    text.add_text("Description", f"true colour; red: landslide probability >= {threshold:g}")
    text.add_text("Software", software())
    canvas.save(dest, pnginfo=text)


def _with_legend(picture: np.ndarray, threshold: float, pixel_m: float | None) -> Image.Image:
    """``picture`` on a white canvas with the legend strip below it."""
    ph, pw = picture.shape[:2]
    canvas = Image.new("RGB", (max(pw, MIN_W), ph + PANEL_H), "white")
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=11)
    top = ph + 8
    draw.text((8, top), f"landslide probability (shown from {threshold:g})", fill="black", font=font)
    values = np.linspace(threshold, 1.0, BAR_W, dtype=np.float32)
    bar = overlay(np.full((1, BAR_W, 3), GREY, np.uint8), values[None, :], threshold)
    canvas.paste(Image.fromarray(np.repeat(bar, 12, axis=0)), (8, top + 16))
    draw.rectangle((8, top + 16, 8 + BAR_W - 1, top + 27), outline="black")
    draw.text((8, top + 30), f"{threshold:g}", fill="black", font=font)
    draw.text((8 + BAR_W - 14, top + 30), "1", fill="black", font=font)
    draw.rectangle((BAR_W + 24, top + 16, BAR_W + 35, top + 27), fill="black")
    draw.text((BAR_W + 40, top + 16), "no data", fill="black", font=font)
    right = canvas.width - 8
    if pixel_m is None:
        draw.text((right - 150, top + 16), "no scale: no georeference", fill="black", font=font)
        return canvas
    length, label = scale_bar(pixel_m, max_px=min(120, canvas.width - BAR_W - 120))
    draw.rectangle((right - length, top + 22, right, top + 27), fill="black")
    draw.text((right - length, top + 30), label, fill="black", font=font)
    return canvas
