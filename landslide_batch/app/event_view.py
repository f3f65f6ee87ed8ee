"""The event view of a region run on the runs map: where no post-event pass saw the ground, and
the polygons by ``status`` (new since the event, or pre-existing) with their attributes.

- ``unobserved``: the AOI's pixels that ``observed.tif`` counts 0 clear observations for (cloud,
  shadow, snow or no data on every pass), as grey polygons: no polygon there means "not seen",
  not "no landslide". Read downsampled to at most ``MAX_SIDE`` pixels a side, as the probability;
  no layer when every pixel was seen.
- ``new`` (red) and ``pre-existing`` (amber): the polygons of an event map (a run with
  ``new_probability.tif``: its polygons carry a ``status``), each with its attributes under the
  pointer (deck.gl's tooltip: status, confidence, area, probabilities, member agreement, spread,
  NDVI change, first clear view).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pydeck as pdk

from .map_data import MAX_SIDE, WGS84, geojson_layer, read_vectors, with_hover

STATUS_COLOURS = {"new": [230, 25, 25, 160], "pre-existing": [240, 160, 20, 120]}
UNOBSERVED_COLOUR = [110, 110, 110, 150]


def event_layers(files: dict[str, Path], max_side: int = MAX_SIDE) -> tuple[list[pdk.Layer], bool]:
    """The unobserved area (with ``observed``) and the polygons by status (when they have one);
    -> (layers, whether the polygons were drawn here: then the plain polygon layer is left out)."""
    layers = []
    if "observed" in files and (unobserved := unobserved_area(files["observed"], max_side))["features"]:
        hover = with_hover(unobserved, lambda _: "not observed clearly by any post-event pass")
        layers.append(geojson_layer("unobserved", hover, stroked=False, get_fill_color=UNOBSERVED_COLOUR))
    if "polygons" not in files or "new_probability" not in files:  # not an event map
        return layers, False
    polygons = with_hover(read_vectors(files["polygons"]), polygon_hover)
    for status, colour in STATUS_COLOURS.items():
        chosen = [f for f in polygons["features"] if f["properties"]["status"] == status]
        collection = {"type": "FeatureCollection", "features": chosen}
        layers.append(geojson_layer(status, collection, get_fill_color=colour, get_line_color=[90, 0, 0, 255]))
    return layers, True


def unobserved_area(path: Path, max_side: int = MAX_SIDE) -> dict[str, Any]:
    """The pixels of ``observed.tif`` with no clear observation (nodata, outside the AOI, left out),
    read at most ``max_side`` px a side, as GeoJSON polygons in EPSG:4326."""
    import geopandas as gpd
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.features import shapes
    from shapely.geometry import shape

    with rasterio.open(path) as ds:
        k = max(1.0, max(ds.height, ds.width) / max_side)
        h, w = max(1, round(ds.height / k)), max(1, round(ds.width / k))
        counts = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        unseen = (counts == 0) & (counts != ds.nodata)
        transform = ds.transform @ ds.transform.scale(ds.width / w, ds.height / h)
        crs = ds.crs
    geoms = [shape(g) for g, _ in shapes(unseen.astype(np.uint8), mask=unseen, transform=transform)]
    return gpd.GeoDataFrame(geometry=geoms, crs=crs).to_crs(WGS84).__geo_interface__


def polygon_hover(p: dict[str, Any]) -> str:
    """An event polygon's attributes, as the tooltip shows them."""

    def number(key: str, fmt: str) -> str | None:
        value = p.get(key)
        return None if value is None or not math.isfinite(value) else format(value, fmt)

    parts = [
        f"{p.get('status')} landslide {p.get('object_id', '')}, confidence {p.get('confidence')}",
        f"{number('area_m2', ',.0f')} m²",
        f"mean probability {number('mean_probability', '.2f')} (max {number('max_probability', '.2f')})",
        f"member agreement {number('member_agreement', '.2f')}",
        f"ensemble spread {number('uncertainty', '.2f')}",
        f"NDVI change {number('mean_dndvi', '+.2f')}",
        f"first clear view {p.get('first_observed')}",
    ]
    if (slope := number("mean_slope_deg", ".0f")) is not None:
        parts.append(f"mean slope {slope}°")
    return ", ".join(parts)
