"""A run folder on an interactive map: probability, landslide polygons and scene footprints.

Built for ``st.pydeck_chart``: deck.gl ships inside Streamlit's frontend, so the map works with
no network. The probability goes in as one ``BitmapLayer`` (a PNG data URL on EPSG:4326 bounds),
read downsampled to at most ``MAX_SIDE`` pixels a side, so a region of any size costs the page
a bounded amount of memory; vectors go in as ``GeoJsonLayer``s reprojected to EPSG:4326.
Without a basemap style (the default) the map has no basemap and fetches nothing: pydeck's
``map_provider=None`` (``map_style=None`` instead would make Streamlit fetch a CARTO basemap).
"""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydeck as pdk
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

from . import BASEMAP_ENV
from .event_view import event_layers
from .map_data import MAX_SIDE, WGS84, geojson_layer, read_vectors, with_hover

#: What each map layer shows, for the caption under the map.
LAYER_LEGEND = {
    "probability": "probability (viridis, 0 → 1)",
    "scenes": "scene footprints (blue outlines)",
    "landslides": "landslide polygons (red)",
    "unobserved": "not observed clearly by any post-event pass (grey)",
    "new": "new landslides since the event (red)",
    "pre-existing": "landslides already there before the event (amber)",
}
POLYGON_COLOUR = [230, 25, 25, 140]
FOOTPRINT_COLOUR = [30, 90, 230, 255]


@dataclass
class ProbabilityPicture:
    png: bytes
    bounds: tuple[float, float, float, float]  # west, south, east, north in degrees
    shape: tuple[int, int]  # (height, width) of the picture

    @property
    def data_url(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


def basemap() -> dict[str, Any]:
    """``pdk.Deck`` basemap arguments: the style URL the server was started with (online), else none."""
    style = os.environ.get(BASEMAP_ENV)
    return {"map_provider": "carto", "map_style": style} if style else {"map_provider": None}


def probability_picture(path: Path, max_side: int = MAX_SIDE) -> ProbabilityPicture:
    """The probability COG, read at most ``max_side`` px a side (its overviews), warped to
    EPSG:4326 and coloured viridis; nodata and NaN transparent."""
    from matplotlib import colormaps
    from PIL import Image

    with rasterio.open(path) as ds:
        k = max(1.0, max(ds.height, ds.width) / max_side)
        h, w = max(1, round(ds.height / k)), max(1, round(ds.width / k))
        # nearest: never blends a valid probability with the nodata value at the map's edge
        src = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest, masked=True).astype(np.float32)
        src = src.filled(np.nan)
        src_t = ds.transform @ ds.transform.scale(ds.width / w, ds.height / h)
        left, bottom, right, top = ds.bounds
        dst_t, dw, dh = calculate_default_transform(ds.crs, WGS84, w, h, left, bottom, right, top)
        dst = np.full((dh, dw), np.nan, np.float32)
        reproject(
            src,
            dst,
            src_transform=src_t,
            src_crs=ds.crs,
            dst_transform=dst_t,
            dst_crs=WGS84,
            src_nodata=np.nan,
            dst_nodata=np.nan,
            resampling=Resampling.nearest,
        )
    valid = np.isfinite(dst) & (dst >= 0)
    rgba = colormaps["viridis"](np.clip(np.nan_to_num(dst, nan=0.0), 0, 1), bytes=True)
    rgba[..., 3] = np.where(valid, 200, 0)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=True)
    west, north = dst_t @ (0, 0)
    east, south = dst_t @ (dw, dh)
    return ProbabilityPicture(buf.getvalue(), (west, south, east, north), (dh, dw))


def view_state(bounds: tuple[float, float, float, float], width_px: int = 900) -> pdk.ViewState:
    """Centre on ``bounds`` at the web-mercator zoom that fits their width into ``width_px``."""
    west, south, east, north = bounds
    span = max(east - west, (north - south) / max(math.cos(math.radians((north + south) / 2)), 0.1), 1e-6)
    zoom = math.log2(360 * width_px / 512 / span)
    return pdk.ViewState(longitude=(west + east) / 2, latitude=(south + north) / 2, zoom=round(zoom, 2))


@dataclass
class RunMap:
    layers: list[pdk.Layer]
    bounds: tuple[float, float, float, float]  # of the probability, west, south, east, north

    @property
    def names(self) -> list[str]:
        return [layer.id for layer in self.layers]

    def deck(self) -> pdk.Deck:
        """The layers over the basemap the server was started with (none offline); hovering a
        polygon or footprint shows its ``hover`` line (see :func:`with_hover`)."""
        return pdk.Deck(
            layers=self.layers,
            initial_view_state=view_state(self.bounds),
            tooltip={"text": "{hover}"},
            **basemap(),
        )


def run_map(folder: Path, outputs: dict[str, str], max_side: int = MAX_SIDE) -> RunMap | None:
    """The map layers of a run folder, or None when it has no probability COG.

    ``outputs`` is the manifest's name -> file map; only files inside ``folder`` are read.
    """
    files = {
        label: p
        for label, rel in outputs.items()
        if (p := (folder / str(rel)).resolve()).is_relative_to(folder.resolve()) and p.is_file()
    }
    if "probability" not in files:
        return None
    picture = probability_picture(files["probability"], max_side)
    # A plain ``str`` would be taken by pydeck for a JavaScript expression, hence ``String``.
    image = pdk.types.String(picture.data_url, quote_type="")
    layers = [pdk.Layer("BitmapLayer", id="probability", image=image, bounds=list(picture.bounds), opacity=0.9)]
    if "scenes" in files:
        footprints = with_hover(read_vectors(files["scenes"], "scenes"), _scene_hover)
        style = {"filled": False, "get_line_color": FOOTPRINT_COLOUR, "line_width_min_pixels": 2}
        layers.append(geojson_layer("scenes", footprints, **style))
    event, by_status = event_layers(files, max_side)  # unobserved area; an event map's polygons by status
    layers += event
    if "polygons" in files and not by_status:
        polygons = with_hover(read_vectors(files["polygons"]), _landslide_hover)
        layers.append(
            geojson_layer("landslides", polygons, get_fill_color=POLYGON_COLOUR, get_line_color=[120, 0, 0, 255])
        )
    return RunMap(layers, picture.bounds)


def _landslide_hover(p: dict[str, Any]) -> str:
    parts = [f"landslide {p.get('object_id', '')}"]
    if p.get("area_m2") is not None:
        parts.append(f"{p['area_m2']:,.0f} m²")
    if p.get("mean_probability") is not None:
        parts.append(f"mean probability {p['mean_probability']:.2f}")
    if p.get("mean_slope_deg") is not None and math.isfinite(p["mean_slope_deg"]):
        parts.append(f"mean slope {p['mean_slope_deg']:.0f}°")
    return ", ".join(parts)


def _scene_hover(p: dict[str, Any]) -> str:
    return f"scene {p.get('scene_id', '')}" + (f", {p['date']}" if p.get("date") not in (None, "None") else "")


def legend_png(names: list[str]) -> bytes:
    """The map's legend as a PNG: the probability's colour bar (0 to 1), the polygons' fill and
    the footprints' outline, for the layers in ``names``."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    rows = [n for n in ("probability", "landslides", "scenes") if n in names]
    img = Image.new("RGB", (360, 8 + 34 * len(rows)), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=12)
    for i, name in enumerate(rows):
        y = 8 + 34 * i
        if name == "probability":
            bar = colormaps["viridis"](np.linspace(0, 1, 200), bytes=True)[:, :3]
            img.paste(Image.fromarray(np.repeat(bar[None], 12, axis=0)), (8, y))
            for value in (0.0, 0.5, 1.0):
                draw.text((8 + round(value * 199) - 6 * (value > 0), y + 13), f"{value:g}", fill="black", font=font)
            draw.text((220, y), "probability", fill="black", font=font)
        elif name == "landslides":
            draw.rectangle((8, y, 40, y + 14), fill=tuple(POLYGON_COLOUR[:3]), outline=(120, 0, 0))
            draw.text((50, y), "landslide polygons", fill="black", font=font)
        else:
            draw.rectangle((8, y, 40, y + 14), outline=tuple(FOOTPRINT_COLOUR[:3]), width=2)
            draw.text((50, y), "scene footprints", fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def region_details(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) rows of a region run, as ``run_folders.run_details`` gives a single scene's:
    provenance, the region grid, work done and time taken."""
    from .run_folders import fmt

    region, t = run.get("region") or {}, run.get("timings") or {}
    blocks, merged = run.get("blocks") or {}, run.get("merge_blocks") or {}
    scenes, skipped = run.get("scenes") or [], run.get("skipped_scenes") or []
    return [
        ("Status", fmt(run.get("status"))),
        ("Job hash", fmt(run.get("job_hash"))),
        ("Started", fmt(run.get("started"))),
        ("Finished", fmt(run.get("finished"))),
        ("Scenes", f"{len(scenes)} mapped, {len(skipped)} skipped (no overlap with the AOI)"),
        (
            "Region grid",
            f"{fmt(region.get('height'))} x {fmt(region.get('width'))} px at {fmt(region.get('resolution_m'))} m, "
            f"EPSG:{fmt(region.get('epsg'))}",
        ),
        ("AOI", fmt(region.get("aoi"))),
        (
            "Blocks (over the scenes)",
            ", ".join(
                f"{k.replace('_', ' ')} {fmt(blocks.get(k))}"
                for k in ("total", "computed", "skipped_nodata", "resumed")
            ),
        ),
        ("Merge blocks", f"total {fmt(merged.get('total'))}, computed {fmt(merged.get('computed'))}"),
        (
            "Timings",
            ", ".join(f"{k[:-2]} {fmt(t.get(k), ' s')}" for k in ("map_s", "merge_s", "finish_s", "total_s")),
        ),
    ]


def scene_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A region run's scenes with their provenance, one row each (empty for a single-scene run)."""
    return [
        {
            "scene": s.get("id"),
            "date": s.get("date"),
            "cloud cover %": s.get("cloud_cover"),
            "CRS": s.get("crs"),
            "blocks computed": (s.get("blocks") or {}).get("computed"),
            "source": s.get("source"),
        }
        for s in run.get("scenes") or []
    ]
