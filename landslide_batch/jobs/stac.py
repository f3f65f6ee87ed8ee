"""STAC in and out: find new post-event scenes in a catalog; describe a finished job as an item.

Catalogs are static (a ``catalog.json`` tree: a local path, object storage or http(s)), so
the scheduler works offline. A search walks the whole tree; for catalogs with millions of
items a STAC API (pystac-client) would be the next step. A finished job's folder (and its
item) may be on object storage."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pystac
import rasterio
import shapely
from pyproj import Transformer
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.stac_io import DefaultStacIO
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform

from ..errors import InputError
from ..outputs.manifest import read_manifest
from ..outputs.metadata import MASK_CLASSES, manifest_scenes
from ..outputs.publish import product_names
from ..storage import Location, Where, is_uri, location, storage_env, storage_errors
from .storage import publish

log = logging.getLogger(__name__)

ITEM_FILE = "item.json"
COLLECTION_FILE = "collection.json"
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: A finished job's products (run.json's ``outputs`` keys) -> (media type, roles, title).
ASSETS = {
    "probability": (pystac.MediaType.COG, ["data"], "Landslide probability (ensemble, 0..1)"),
    "uncertainty": (pystac.MediaType.COG, ["data"], "Ensemble spread (uncertainty)"),
    "mask": (pystac.MediaType.COG, ["data"], "Landslide mask (0 no landslide, 1 landslide, 255 nodata)"),
    "zarr": ("application/vnd+zarr", ["data"], "Probability and spread (Zarr)"),
    "quicklook": (pystac.MediaType.PNG, ["overview"], "Quicklook"),
    "scenes": (pystac.MediaType.GEOPACKAGE, ["metadata"], "Footprints of the scenes mapped"),
    "probability_style": ("text/xml", ["style"], "QGIS style of the probability map"),
    "uncertainty_style": ("text/xml", ["style"], "QGIS style of the uncertainty map"),
    "mask_style": ("text/xml", ["style"], "QGIS style of the mask"),
    "mask_categories": ("text/xml", ["metadata"], "The mask's category names (GDAL PAM)"),
}
POLYGONS = {  # the polygons' asset by the file's suffix
    ".gpkg": (pystac.MediaType.GEOPACKAGE, ["data"], "Landslide polygons with attributes"),
    ".parquet": ("application/vnd.apache.parquet", ["data"], "Landslide polygons (GeoParquet)"),
    ".fgb": (pystac.MediaType.FLATGEOBUF, ["data"], "Landslide polygons (FlatGeobuf)"),
}
MANIFEST_ASSET = ("manifest", pystac.MediaType.JSON, ["metadata"], "Run manifest")


class LocationStacIO(DefaultStacIO):
    """Reads catalogs from object storage (s3://, gs://, az://) as ``Location``s; paths and
    http(s) as pystac does."""

    def read_text_from_href(self, href: str) -> str:
        if is_uri(href) and not href.startswith(("http://", "https://")):
            return location(href).read_text()
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


def raster_footprint(path: Where) -> tuple[BaseGeometry, dict, tuple[float, ...]]:
    """-> (WGS84 footprint, profile, native bounds) of a georeferenced raster (a path or URI)."""
    raster = location(path)
    with storage_env(), rasterio.open(raster.gdal_path()) as ds:
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


def catalog_items(catalog: str) -> Iterable[pystac.Item]:
    """Every item of a static ``catalog`` (InputError when it cannot be read)."""
    try:
        root = pystac.Catalog.from_file(catalog, stac_io=LocationStacIO())
    except (OSError, ValueError, pystac.STACError) as exc:
        raise InputError(f"cannot read STAC catalog {catalog}: {exc}") from None
    return root.get_items(recursive=True)


def select_scenes(
    items: Iterable[pystac.Item],
    *,
    asset: str | None,
    aois: dict[str, BaseGeometry],
    start: datetime,
    end: datetime | None = None,
    collection: str | None = None,
    max_cloud_cover: float | None = None,
) -> list[SceneItem]:
    """``items`` (of a static catalog or an API search) at or after ``start`` (and up to ``end``)
    intersecting any AOI, oldest first. ``asset``: the key of a 14-band scene asset; None: each
    item is the scene (Sentinel-2 L2A with one asset per band, assembled by ingest like any STAC item)."""
    found = []
    for item in items:
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
    out_dir: Where, *, item_id: str | None = None, when: datetime | None = None, derived_from: Sequence[str] = ()
) -> pystac.Item:
    """The STAC item of a finished job; asset hrefs are relative, so the folder can move as a whole.

    ``datetime``: ``when``, else the scenes' acquisition (``start_datetime``/``end_datetime`` over
    several); the processing time only where no scene is dated (``created`` is always it).
    ``derived_from``: links to the scenes' STAC items; without them, the scenes run.json lists."""
    out_dir = location(out_dir)
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("status") != "complete":
        raise InputError(f"{out_dir} holds no finished job (no complete run.json)")
    outputs = product_names(out_dir, manifest)
    geometry, profile, bounds = raster_footprint(out_dir / outputs.get("probability", "probability.tif"))
    finished = utc(datetime.fromisoformat(manifest["finished"]))
    summary = manifest["summary"]
    scenes = manifest_scenes(manifest)
    acquired, span = _acquisition(scenes, when)
    if acquired is None and span is None:
        log.warning("%s: no scene has an acquisition date; the item's datetime is the processing time", out_dir)
        acquired = finished
    item = pystac.Item(
        id=item_id or out_dir.name,
        geometry=mapping(geometry),
        bbox=list(geometry.bounds),
        datetime=acquired,
        start_datetime=span[0] if span else None,
        end_datetime=span[1] if span else None,
        properties={
            "created": finished.isoformat(),
            "landslide:job_hash": manifest["job_hash"],
            "landslide:objects": summary["objects"],
            "landslide:area_km2": summary["landslide_area_km2"],
            "landslide:mapped_area_km2": summary["area_mapped_km2"],
            "landslide:threshold": summary["threshold"],
            "landslide:implausible": bool(summary.get("implausible", False)),
            "landslide:models": [m["name"] for m in manifest.get("models", [])],
        },
    )
    _add_projection(item, profile, bounds)
    _add_processing(item, manifest, len(scenes))
    _add_assets(item, out_dir, outputs)
    for href in dict.fromkeys(derived_from or [s["source"] for s in scenes if s["source"]]):
        item.add_link(pystac.Link("derived_from", href, media_type=_media_type_of(href)))
    item.set_self_href((out_dir / ITEM_FILE).uri)
    return item


def _acquisition(scenes: list[dict], when: datetime | None) -> tuple[datetime | None, tuple[datetime, datetime] | None]:
    """-> (datetime, (start, end) or None) from ``when`` or the scenes' acquisition dates: one
    date gives the datetime, several their span (and datetime None, unless ``when`` is given)."""
    dates = sorted({_instant(s["date"]) for s in scenes if s.get("date")})
    span = (dates[0], dates[-1]) if len(dates) > 1 else None
    if when is not None:
        return utc(when), span
    return (dates[0] if len(dates) == 1 else None), span


def _instant(text: str) -> datetime:
    """An ISO date or datetime (a date means its midnight, UTC)."""
    return utc(datetime.fromisoformat(text))


def _add_projection(item: pystac.Item, profile: dict, bounds: tuple[float, ...]) -> None:
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = profile["crs"].to_epsg()
    if epsg:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = profile["crs"].to_wkt()
    proj.shape = [profile["height"], profile["width"]]
    proj.transform = list(profile["transform"])[:6]
    proj.bbox = list(bounds)


def _add_processing(item: pystac.Item, manifest: dict, n_scenes: int) -> None:
    """The processing extension: the software (from run.json's versions) and a lineage line."""
    item.stac_extensions.append(PROCESSING_SCHEMA)
    versions = manifest.get("versions", {})
    software = {name: v for name, v in versions.items() if v != "not installed" and name != "python"}
    item.properties["processing:software"] = software or {"landslide-batch": "unknown"}
    models = ", ".join(m["name"] for m in manifest.get("models", []))
    item.properties["processing:lineage"] = (
        f"landslide segmentation of {n_scenes} scene(s) by {models}; mask at probability >= "
        f"{manifest['summary']['threshold']}"
    )


def _add_assets(item: pystac.Item, out_dir: Location, outputs: dict[str, str]) -> None:
    """Every product that lies in ``out_dir``, run.json too; the rasters with ``raster:bands``,
    the mask with ``classification:classes``."""
    for key, name in {**outputs, MANIFEST_ASSET[0]: "run.json"}.items():
        if not (out_dir / name).exists():
            continue
        media_type, roles, title = _asset_kind(key, name)
        asset = pystac.Asset(f"./{name}", title=title, media_type=media_type, roles=roles)
        item.add_asset(key, asset)
        if media_type == pystac.MediaType.COG:
            _describe_raster(asset, out_dir / name, key)


def _asset_kind(key: str, name: str) -> tuple[str | None, list[str], str]:
    """-> (media type, roles, title) of the product ``key`` in file ``name``."""
    if key == MANIFEST_ASSET[0]:
        return MANIFEST_ASSET[1], MANIFEST_ASSET[2], MANIFEST_ASSET[3]
    if key == "polygons":
        return POLYGONS.get(Path(name).suffix, (None, ["data"], "Landslide polygons"))
    other = (pystac.MediaType.COG if name.endswith(".tif") else None, ["data"], key.replace("_", " "))
    return ASSETS.get(key, other)  # another product (an event map's layers): a COG by its suffix


def _describe_raster(asset: pystac.Asset, path: Location, key: str) -> None:
    with storage_env(), rasterio.open(path.gdal_path()) as ds:
        nodata, dtype, res = ds.nodata, ds.dtypes[0], abs(ds.res[0])
    band = RasterBand.create(nodata=nodata, data_type=DataType(dtype), spatial_resolution=res)
    RasterExtension.ext(asset, add_if_missing=True).bands = [band]
    if key == "mask":
        classes = [
            Classification.create(
                value, name=name.replace(" ", "_"), description=name, color_hint="".join(f"{c:02X}" for c in rgb)
            )
            for value, (name, rgb) in MASK_CLASSES.items()
        ]
        classes.append(Classification.create(int(nodata), name="nodata", description="no data", nodata=True))
        ClassificationExtension.ext(asset, add_if_missing=True).classes = classes


def _media_type_of(href: str) -> str | None:
    """A derived_from link's media type: a STAC item (JSON) or a GeoTIFF scene; else unknown."""
    suffix = Path(href.split("?", 1)[0]).suffix.lower()
    return {".json": pystac.MediaType.JSON, ".tif": pystac.MediaType.GEOTIFF, ".tiff": pystac.MediaType.GEOTIFF}.get(
        suffix
    )


def write_collection(root: Where, collection_id: str, description: str) -> pystac.Collection:
    """``ROOT/collection.json``: a Collection of the event items found in ``ROOT/*/item.json``
    (the scheduler's events), its extent their union; -> the collection."""
    root = location(root)
    names = [n for n in root.ls_names() if (root / n / ITEM_FILE).is_file()]
    items = [pystac.Item.from_dict(json.loads((root / n / ITEM_FILE).read_text())) for n in names]
    if not items:
        raise InputError(f"{root}: no event item (*/{ITEM_FILE}) to gather into a collection")
    times = [
        t for i in items for t in (i.datetime, i.common_metadata.start_datetime, i.common_metadata.end_datetime) if t
    ]
    bboxes = [i.bbox for i in items if i.bbox]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    collection = pystac.Collection(
        id=collection_id,
        description=description,
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[min(times), max(times)]])),
        license="other",
    )
    for name in names:
        collection.add_link(pystac.Link(pystac.RelType.ITEM, f"./{name}/{ITEM_FILE}"))
    collection.set_self_href((root / COLLECTION_FILE).uri)
    text = json.dumps(collection.to_dict(include_self_link=False, transform_hrefs=False), indent=2)
    (root / COLLECTION_FILE).write_text(text)
    return collection


def write_item(
    out_dir: Where,
    *,
    item_id: str | None = None,
    when: datetime | None = None,
    derived_from: Sequence[str] = (),
    publish_to: Where | None = None,
) -> pystac.Item:
    """Write ``OUT/item.json``; with ``publish_to``, copy the outputs there too, the item last
    (its presence marks a complete copy: a previous one is removed first)."""
    out_dir = location(out_dir)
    item = item_for_outputs(out_dir, item_id=item_id, when=when, derived_from=derived_from)
    text = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2)
    with storage_errors(out_dir, "STAC item"):
        (out_dir / ITEM_FILE).write_text(text)
    if publish_to:
        dest = location(publish_to)
        with storage_errors(dest, "--publish"):
            (dest / ITEM_FILE).rm()
        publish(out_dir, dest, skip=frozenset({".lock", ".work", ITEM_FILE}))
        with storage_errors(dest, "--publish"):
            (dest / ITEM_FILE).write_text(text)
    return item
