"""What the runs map and the event view both draw from: vector files as GeoJSON in EPSG:4326
with hover text, their map layers, and the size cap of pictures sent to the browser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydeck as pdk
from rasterio.crs import CRS

from ..errors import InputError

#: Longest side, in pixels, of the probability picture sent to the browser.
MAX_SIDE = 1024
WGS84 = CRS.from_epsg(4326)


def read_vectors(path: Path, layer: str | None = None) -> dict[str, Any]:
    """A polygon file (GeoPackage, FlatGeobuf or GeoParquet) as a GeoJSON dict in EPSG:4326."""
    import geopandas as gpd
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        gdf = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path, layer=layer)
    except (OSError, ValueError, DataSourceError, DataLayerError) as exc:  # ValueError: pyarrow's too
        raise InputError(f"{path.name}: cannot read as polygons: {exc}") from exc
    if gdf.crs is None:
        raise InputError(f"{path.name}: polygons have no CRS, so they cannot be placed on the map")
    gdf = gdf.to_crs(WGS84)
    for col in gdf.columns.drop(gdf.geometry.name):  # dates and objects do not go through JSON as they are
        if gdf[col].dtype == object or str(gdf[col].dtype).startswith("datetime"):
            gdf[col] = gdf[col].astype(str)
    return gdf.__geo_interface__


def with_hover(collection: dict[str, Any], line) -> dict[str, Any]:
    """Each feature with ``hover``: ``line(properties)``, the text the map shows under the pointer
    (on the feature, where deck.gl's tooltip looks, and in its properties)."""
    for feature in collection["features"]:
        text = line(feature.get("properties") or {})
        feature["hover"] = text
        feature.setdefault("properties", {})["hover"] = text
    return collection


def geojson_layer(layer_id: str, collection: dict[str, Any], **style: Any) -> pdk.Layer:
    """A pickable ``GeoJsonLayer`` of ``collection`` (hover text from :func:`with_hover`), outlined
    and filled with 1 px lines unless ``style`` (deck.gl layer properties) says otherwise."""
    return pdk.Layer(
        "GeoJsonLayer",
        id=layer_id,
        data=collection,
        **{"stroked": True, "filled": True, "line_width_min_pixels": 1, "pickable": True, **style},
    )
