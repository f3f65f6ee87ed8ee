"""A landslide inventory to score a map against: read, checked, repaired where it is safe, and
placed in the map's CRS (``landslide-batch compare``).

Read: GeoPackage (its first layer), GeoParquet, Shapefile or GeoJSON, in any CRS the file
declares (GeoJSON without one is WGS 84, as its specification says). Refused with an InputError:
another format, an unreadable file, no CRS, a map without a CRS, or geometries that are not
polygons (points, lines: an inventory of outlines is needed to score by overlap). Null and empty
geometries are dropped; invalid polygons (self-intersecting rings, ...) are repaired with
``shapely.make_valid``, keeping their polygonal parts, and dropped if nothing of area remains;
both counted in the record ``compare.json`` keeps. ``area_m2`` is each object's area measured
as the map measures its own objects: planar in a projected map CRS, geodesic (on the CRS's
ellipsoid) in a geographic one, so both sides fall into size classes alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

FORMATS = {
    ".gpkg": "GeoPackage",
    ".parquet": "GeoParquet",
    ".shp": "Shapefile",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
}
POLYGONAL = ("Polygon", "MultiPolygon")


def read_inventory(path: Path, crs) -> tuple:
    """-> (the inventory's polygons in ``crs`` with ``area_m2``, a record of what was read,
    dropped and repaired)."""
    if path.suffix.lower() not in FORMATS:
        raise InputError(
            f"inventory {path}: unknown format {path.suffix or '(no suffix)'!r}; expected one of "
            f"{', '.join(sorted(FORMATS))} ({', '.join(sorted(set(FORMATS.values())))})"
        )
    if not path.is_file():
        raise InputError(f"inventory {path} does not exist")
    if crs is None:
        raise InputError("the map has no CRS: an inventory cannot be placed on it")
    gdf = _read(path)
    if gdf.crs is None:
        raise InputError(
            f"inventory {path} declares no CRS; expected one (a Shapefile needs its .prj, a "
            "GeoPackage or GeoParquet its layer's CRS)"
        )
    gdf, record = _clean(gdf, path)
    record = {"file": str(path), "crs": gdf.crs.to_string(), **record}
    gdf = gdf.to_crs(crs)
    gdf["area_m2"] = _areas_m2(gdf)
    return gdf.reset_index(drop=True), record


def _read(path: Path):
    import geopandas as gpd

    try:
        if path.suffix.lower() == ".parquet":
            return gpd.read_parquet(path)
        return gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # pyogrio, pyarrow and GDAL raise many kinds; all mean "cannot read it"
        raise InputError(
            f"inventory {path} cannot be read as {FORMATS[path.suffix.lower()]} ({type(exc).__name__}: {exc})"
        ) from None


def _clean(gdf, path: Path):
    """Drop null/empty geometries, refuse non-polygons, repair invalid polygons."""
    import shapely

    geoms = gdf.geometry.values
    empty = np.asarray(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    kinds = set(shapely.get_type_id(geoms[~empty]).tolist())
    polygonal_ids = {shapely.GeometryType.POLYGON.value, shapely.GeometryType.MULTIPOLYGON.value}
    if kinds - polygonal_ids:
        found = sorted({shapely.GeometryType(k).name.title() for k in kinds - polygonal_ids})
        raise InputError(
            f"inventory {path}: expected polygon outlines ({' or '.join(POLYGONAL)}), found {', '.join(found)}"
        )
    invalid = ~empty & ~np.asarray(shapely.is_valid(geoms))
    repaired = geoms.copy()
    if invalid.any():
        # make_valid may return a collection of polygons and lines: keep what has an area
        repaired[invalid] = [_areal_part(g) for g in shapely.make_valid(geoms[invalid])]
    no_area = ~empty & ~(np.asarray(shapely.area(repaired)) > 0)
    keep = ~empty & ~no_area
    out = gdf.set_geometry(repaired)[keep]
    return out, {
        "read": len(gdf),
        "objects": int(keep.sum()),
        "dropped_empty": int(empty.sum()),
        "repaired_invalid": int(invalid.sum()),
        "dropped_without_area": int(no_area.sum()),
    }


def _areal_part(geom):
    import shapely

    parts = shapely.get_parts(geom)
    return shapely.union_all(parts[shapely.area(parts) > 0])


def _areas_m2(gdf) -> np.ndarray:
    """Areas in the frame's (the map's) CRS: planar when projected, geodesic when geographic."""
    crs = gdf.crs
    if crs.is_projected:
        return gdf.geometry.area.to_numpy() * crs.axis_info[0].unit_conversion_factor ** 2
    geod = crs.get_geod()
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in gdf.geometry], np.float64)
