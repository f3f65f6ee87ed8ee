"""``inputs.dem`` as users have it -> the DEM file(s) to read: one file, several tiles, a glob, or
a STAC ItemCollection / item of DEM tiles (Copernicus GLO-30 is published as 1° x 1° tiles).

Tiles are not merged here: ``terrain.TerrainReader`` mosaics them window by window, so no
hand-made VRT is needed and nothing larger than a window is read.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..storage import is_uri, location, storage_errors
from .layer_source import LayerSource

_GLOB_CHARS = set("*?[")
#: Asset keys of a DEM item's elevation raster, when no single asset has role ``data``.
_DEM_ASSET_KEYS = ("data", "dem", "DEM", "elevation", "dtm")


def dem_source(spec: str | list[str]) -> LayerSource:
    """The DEM ``spec`` names -> a source whose ``tiles`` are every file to mosaic (in order)."""
    entries = spec if isinstance(spec, list) else [spec]
    tiles: list[str] = []
    kinds: list[str] = []
    for entry in entries:
        found, kind = _expand(str(entry))
        tiles += found
        kinds.append(kind)
    if len(set(tiles)) != len(tiles):
        raise InputError(f"inputs.dem: a DEM tile is given twice ({spec})")
    how = ", ".join(sorted(set(kinds))) + (" list" if len(entries) > 1 else "")
    origin = "inputs.dem" if tiles == [str(entries[0])] else f"inputs.dem ({len(tiles)} tile(s) from {how})"
    return LayerSource(tiles[0], origin=origin, tiles=tuple(tiles))


def _expand(entry: str) -> tuple[list[str], str]:
    """One ``inputs.dem`` entry -> (its files, what kind of entry it was)."""
    if not is_uri(entry) and _GLOB_CHARS & set(entry):
        found = sorted(glob.glob(str(Path(entry).expanduser())))
        if not found:
            raise InputError(f"inputs.dem: the glob {entry} matches no file")
        return found, "glob"
    if not _exists(entry):
        raise InputError(f"inputs.dem: file {entry} does not exist")
    if entry.lower().endswith(".json"):
        return _stac_tiles(entry), "STAC"
    return [entry], "file"


def _exists(value: str) -> bool:
    where = location(value)
    with storage_errors(where, "inputs.dem"):
        return where.is_file()


def _stac_tiles(path: str) -> list[str]:
    """The elevation asset of each item of a STAC ItemCollection (or of one item)."""
    import pystac

    try:
        doc = json.loads(location(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"inputs.dem: {path} is not readable JSON ({exc})") from None
    features = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
    if not features:
        raise InputError(f"inputs.dem: {path} holds no STAC item (expected an ItemCollection of DEM tiles)")
    tiles = []
    for feature in features:
        try:
            item = pystac.Item.from_dict(feature)
        except Exception as exc:  # pystac raises several types for a malformed item
            raise InputError(f"inputs.dem: {path}: not a STAC item ({type(exc).__name__}: {exc})") from None
        href = _elevation_href(item, path)
        if not (is_uri(href) or Path(href).is_absolute()):  # relative to the collection's own file
            href = f"{path.rsplit('/', 1)[0]}/{href}" if is_uri(path) else str(Path(path).parent / href)
        tiles.append(href)
    return tiles


def _elevation_href(item: Any, path: str) -> str:
    """The item's one data asset (GLO-30 on Planetary Computer: ``data``), else a DEM-named asset."""
    data = [k for k, a in item.assets.items() if "data" in (a.roles or []) and "image/" in (a.media_type or "image/")]
    key = data[0] if len(data) == 1 else next((k for k in _DEM_ASSET_KEYS if k in item.assets), None)
    if key is None:
        raise InputError(
            f"inputs.dem: STAC item {item.id} in {path} has no elevation asset (one asset with role 'data', "
            f"or a key among {list(_DEM_ASSET_KEYS)}); assets: {sorted(item.assets)}"
        )
    return item.assets[key].href
