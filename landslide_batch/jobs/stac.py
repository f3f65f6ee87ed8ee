"""STAC in and out: find new post-event scenes in a catalog; describe a finished job as an item.

Catalogs are static (a ``catalog.json`` tree, local or on any fsspec filesystem / http), so
the scheduler works offline. A search walks the whole tree; for catalogs with millions of
items a STAC API (pystac-client) would be the next step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import fsspec
import pystac
import rasterio
import shapely
from pyproj import Transformer
from pystac.extensions.projection import ProjectionExtension
from pystac.stac_io import DefaultStacIO
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform

from ..errors import InputError
from ..outputs.manifest import read_manifest
from ..storage import is_uri
from .storage import publish

log = logging.getLogger(__name__)

ITEM_FILE = "item.json"
#: Output files of a finished job -> (asset key, media type, roles, title).
ASSETS = {
    "probability.tif": ("probability", pystac.MediaType.COG, ["data"], "Landslide probability (ensemble, 0..1)"),
    "uncertainty.tif": ("uncertainty", pystac.MediaType.COG, ["data"], "Ensemble spread (uncertainty)"),
    "mask.tif": ("mask", pystac.MediaType.COG, ["data"], "Binary landslide mask (255 = nodata)"),
    "landslides.gpkg": ("polygons", pystac.MediaType.GEOPACKAGE, ["data"], "Landslide polygons with attributes"),
    "landslides.parquet": ("polygons", "application/vnd.apache.parquet", ["data"], "Landslide polygons (GeoParquet)"),
    "landslides.fgb": ("polygons", pystac.MediaType.FLATGEOBUF, ["data"], "Landslide polygons (FlatGeobuf)"),
    "probability.zarr": ("zarr", "application/vnd+zarr", ["data"], "Probability and spread (Zarr)"),
    "quicklook.png": ("quicklook", pystac.MediaType.PNG, ["overview"], "Quicklook"),
    "run.json": ("manifest", pystac.MediaType.JSON, ["metadata"], "Run manifest"),
}


class FsspecStacIO(DefaultStacIO):
    """Reads catalogs from any fsspec filesystem (s3://, gs://, memory://); paths and http(s) as pystac does."""

    def read_text_from_href(self, href: str) -> str:
        if is_uri(href) and not href.startswith(("http://", "https://")):
            with fsspec.open(href, "rt") as f:
                return f.read()
        return super().read_text_from_href(href)


def utc(dt: datetime) -> datetime:
    """Naive datetimes are taken as UTC so config dates and item dates compare."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def to_wgs84(geom: BaseGeometry, crs: str) -> BaseGeometry:
    """Reproject to lon/lat (STAC geometries are WGS84), densified so long edges follow the projection."""
    if crs.upper() in ("EPSG:4326", "OGC:CRS84"):
        return geom
    dense = shapely.segmentize(
        geom, max_segment_length=max(geom.bounds[2] - geom.bounds[0], geom.bounds[3] - geom.bounds[1]) / 8 or 1
    )
    return transform(Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform, dense)


def raster_footprint(path: Path) -> tuple[BaseGeometry, dict, tuple[float, ...]]:
    """-> (WGS84 footprint, profile, native bounds) of a georeferenced raster."""
    with rasterio.open(path) as ds:
        if ds.crs is None:
            raise InputError(f"{path} has no CRS: a STAC item needs a georeferenced raster")
        return to_wgs84(box(*ds.bounds), ds.crs.to_wkt()), ds.profile, tuple(ds.bounds)


@dataclass(frozen=True)
class SceneItem:
    """A catalog item the scheduler may map."""

    id: str
    datetime: datetime
    href: str  # the scene asset, absolute path or URI (the item itself for one asset per band)
    item_href: str  # the item itself, for the output's derived_from links
    aois: tuple[str, ...]
    #: The item with absolute asset hrefs, when the scene is the item (one asset per band).
    item: dict | None = field(default=None, compare=False)


def _item_time(item: pystac.Item) -> datetime | None:
    dt = item.datetime or item.common_metadata.start_datetime
    return utc(dt) if dt else None


def find_scenes(
    catalog: str,
    *,
    asset: str | None,
    aois: dict[str, BaseGeometry],
    start: datetime,
    end: datetime | None = None,
    collection: str | None = None,
    max_cloud_cover: float | None = None,
) -> list[SceneItem]:
    """Items at or after ``start`` (and up to ``end``) intersecting any AOI, oldest first.
    ``asset``: the key of a 14-band scene asset; None: each item is the scene (Sentinel-2 L2A
    with one asset per band, assembled by ingest like any STAC item)."""
    try:
        root = pystac.Catalog.from_file(catalog, stac_io=FsspecStacIO())
    except (OSError, ValueError, pystac.STACError) as exc:
        raise InputError(f"cannot read STAC catalog {catalog}: {exc}") from None
    found = []
    for item in root.get_items(recursive=True):
        when = _item_time(item)
        cloud = item.properties.get("eo:cloud_cover")
        if (
            when is None
            or when < start
            or (end is not None and when > end)
            or (collection is not None and item.collection_id != collection)
            or (max_cloud_cover is not None and cloud is not None and cloud > max_cloud_cover)
        ):
            continue
        footprint = shape(item.geometry) if item.geometry else box(*item.bbox) if item.bbox else None
        hits = tuple(name for name, aoi in aois.items() if footprint is not None and footprint.intersects(aoi))
        if not hits:
            continue
        if asset is None:
            item.make_asset_hrefs_absolute()
            self_href = _resolved(item.get_self_href(), item)
            found.append(SceneItem(item.id, when, self_href, self_href, hits, item.to_dict()))
            continue
        if asset not in item.assets:
            log.warning(
                "skipping STAC item %s: no asset %r (it has: %s); 'asset' in the schedule names the 14-band scene",
                item.id,
                asset,
                ", ".join(item.assets),
            )
            continue
        scene_href = _resolved(item.assets[asset].get_absolute_href(), item)
        found.append(SceneItem(item.id, when, scene_href, _resolved(item.get_self_href(), item), hits))
    return sorted(found, key=lambda s: (s.datetime, s.id))


def _resolved(href: str | None, item: pystac.Item) -> str:
    """An absolute href; pystac gives None for a relative one when the item has no self link."""
    if href is None:
        raise InputError(f"STAC item {item.id}: cannot resolve an absolute href (the item has no self link)")
    return href


def item_for_outputs(
    out_dir: Path, *, item_id: str | None = None, when: datetime | None = None, derived_from: Sequence[str] = ()
) -> pystac.Item:
    """The STAC item of a finished job; asset hrefs are relative, so the folder can move as a whole."""
    out_dir = Path(out_dir).absolute()
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("status") != "complete":
        raise InputError(f"{out_dir} holds no finished job (no complete run.json)")
    geometry, profile, bounds = raster_footprint(out_dir / "probability.tif")
    finished = utc(datetime.fromisoformat(manifest["finished"]))
    summary = manifest["summary"]
    item = pystac.Item(
        id=item_id or out_dir.name,
        geometry=mapping(geometry),
        bbox=list(geometry.bounds),
        datetime=utc(when) if when else finished,
        properties={
            "created": finished.isoformat(),
            "landslide:job_hash": manifest["job_hash"],
            "landslide:objects": summary["objects"],
            "landslide:area_km2": summary["landslide_area_km2"],
            "landslide:mapped_area_km2": summary["area_mapped_km2"],
            "landslide:threshold": summary["threshold"],
            "landslide:models": [m["name"] for m in manifest.get("models", [])],
        },
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = profile["crs"].to_epsg()
    if epsg:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = profile["crs"].to_wkt()
    proj.shape = [profile["height"], profile["width"]]
    proj.transform = list(profile["transform"])[:6]
    proj.bbox = list(bounds)
    for name, (key, media_type, roles, title) in ASSETS.items():
        if (out_dir / name).exists():
            item.add_asset(key, pystac.Asset(f"./{name}", title=title, media_type=media_type, roles=roles))
    for href in derived_from:
        item.add_link(pystac.Link("derived_from", href, media_type=pystac.MediaType.JSON))
    item.set_self_href(str(out_dir / ITEM_FILE))
    return item


def write_item(
    out_dir: Path,
    *,
    item_id: str | None = None,
    when: datetime | None = None,
    derived_from: Sequence[str] = (),
    publish_to: str | None = None,
) -> pystac.Item:
    """Write ``OUT/item.json``; with ``publish_to``, copy the outputs there too, the item last
    (its presence marks a complete copy)."""
    item = item_for_outputs(out_dir, item_id=item_id, when=when, derived_from=derived_from)
    text = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2)
    (Path(out_dir) / ITEM_FILE).write_text(text)
    if publish_to:
        publish(Path(out_dir), publish_to, skip=frozenset({".lock", ".work", ITEM_FILE}))
        with fsspec.open(f"{publish_to.rstrip('/')}/{ITEM_FILE}", "wt") as f:
            f.write(text)
    return item
