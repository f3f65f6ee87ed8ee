"""Area of interest: a polygon (vector file) or a bbox, in any CRS -> window + mask on the scene grid.

The scene is cut to the smallest pixel window of the reference grid that holds the AOI's
bounds; pixels of that window whose centre lies outside the AOI polygon are invalid.
A bbox in another CRS is a polygon there (its edges are densified before transforming).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom

from ..errors import InputError
from ..storage import location, storage_errors
from .inputs import SceneInputs
from .resample import Grid

_DENSIFY = 64


def _crs(value, what: str) -> CRS:
    try:
        return CRS.from_user_input(value)
    except CRSError as exc:
        raise InputError(f"{what}: unknown CRS {value!r} ({exc})") from None


def _geojson_geometries(data: dict, path: Path | str) -> list[dict]:
    kind = data.get("type")
    if kind == "FeatureCollection":
        geoms = [f.get("geometry") for f in data.get("features", [])]
    elif kind == "Feature":
        geoms = [data.get("geometry")]
    elif kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
        geoms = [data]
    else:
        raise InputError(f"{path}: expected a GeoJSON FeatureCollection, Feature or Polygon, found type {kind!r}")
    return [g for g in geoms if g]


def load_aoi(inputs: SceneInputs):
    """-> (shapely geometry, its CRS, description), or None when the job has no AOI."""
    import shapely
    from shapely.geometry import box, shape

    if inputs.bbox is not None:
        crs = _crs(inputs.aoi_crs or "EPSG:4326", "inputs.aoi_crs")
        return _in_range(box(*inputs.bbox), crs, "inputs.bbox"), crs, f"bbox {list(inputs.bbox)} ({crs.to_string()})"
    if inputs.aoi is None:
        return None
    where = location(inputs.aoi)  # a local path or a URI
    path = where.path if where.is_local else where.uri
    with storage_errors(where, "inputs.aoi"):
        found = where.is_file()
    if not found:
        raise InputError(f"inputs.aoi: file {path} does not exist")
    if Path(where.name).suffix.lower() in (".json", ".geojson"):
        try:
            with storage_errors(where, "inputs.aoi"):
                text = where.read_text()
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid GeoJSON ({exc})") from None
        geoms = [shape(g) for g in _geojson_geometries(data, path)]
        legacy = (data.get("crs") or {}).get("properties", {}).get("name")
        crs = _crs(inputs.aoi_crs or legacy or "EPSG:4326", f"CRS of {path}")
    else:
        import geopandas as gpd

        try:
            # A remote file is read whole: pyogrio's GDAL is not the one rasterio configures.
            gdf = gpd.read_file(where.path if where.is_local else io.BytesIO(where.read_bytes()))
        except Exception as exc:
            raise InputError(f"{path}: cannot read as a vector file ({type(exc).__name__}: {exc})") from None
        geoms = [g for g in gdf.geometry if g is not None]
        crs = _crs(inputs.aoi_crs or gdf.crs or "EPSG:4326", f"CRS of {path}")
    polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    if not polys:
        kinds = sorted({g.geom_type for g in geoms}) or "nothing"
        raise InputError(f"{path}: no polygon in the AOI file (found {kinds})")
    geom = shapely.union_all([shapely.make_valid(g) for g in polys])
    return _in_range(geom, crs, str(path)), crs, f"{path} ({crs.to_string()})"


def _in_range(geom, crs: CRS, what: str):
    """``geom``, unless its CRS is geographic (as a file without one is taken to be) and its
    coordinates are not longitudes and latitudes: metres in a file that names no CRS."""
    minx, miny, maxx, maxy = geom.bounds
    if crs.is_geographic and not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise InputError(
            f"{what}: coordinates x {minx:.6g}..{maxx:.6g}, y {miny:.6g}..{maxy:.6g} are not longitude/latitude "
            f"as its CRS {crs.to_string()} says (projected metres without a CRS?); set the file's CRS (a .prj beside a "
            "shapefile, a 'crs' member in GeoJSON) or name it with inputs.aoi_crs (e.g. EPSG:32645)"
        )
    return geom


def aoi_in_crs(geom, src_crs: CRS, dst_crs: CRS):
    """Transform a shapely geometry, densifying its edges first so they stay true in the new CRS."""
    import shapely
    from shapely.geometry import mapping, shape

    if src_crs == dst_crs:
        return geom
    minx, miny, maxx, maxy = geom.bounds
    step = max(maxx - minx, maxy - miny) / _DENSIFY
    if step > 0:
        geom = shapely.segmentize(geom, step)
    return shape(transform_geom(src_crs, dst_crs, mapping(geom)))


class AOI:
    """The AOI on a scene grid: the window to keep and a per-window inside mask."""

    def __init__(self, inputs: SceneInputs, grid: Grid):
        loaded = load_aoi(inputs)
        if loaded is None:
            raise ValueError("no AOI in inputs")
        geom, crs, self.description = loaded
        self.geom = aoi_in_crs(geom, crs, grid.crs)
        if self.geom.is_empty:
            raise InputError(f"AOI {self.description} is empty")
        r0, r1, c0, c1 = grid.pixel_window(self.geom.bounds)
        self.partial = r0 < 0 or c0 < 0 or r1 > grid.height or c1 > grid.width
        r0, c0 = max(r0, 0), max(c0, 0)
        r1, c1 = min(r1, grid.height), min(c1, grid.width)
        if r1 <= r0 or c1 <= c0:
            b = grid.bounds()
            raise InputError(
                f"AOI {self.description} does not overlap the scene: AOI bounds "
                f"{tuple(round(v, 6) for v in self.geom.bounds)} vs scene bounds "
                f"{tuple(round(v, 6) for v in b)} in {grid.crs.to_string()}"
            )
        self.window = (r0, r1, c0, c1)
        self.grid = grid.subgrid(r0, r1, c0, c1)
        from shapely.geometry import mapping

        self._shapes = [mapping(self.geom)]
        self.rectangular = bool(self.geom.equals(_window_box(self.grid)))

    def inside(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Bool (h, w): pixel centres inside the AOI, for a window of the AOI grid."""
        if self.rectangular:
            return np.ones((y1 - y0, x1 - x0), bool)
        return geometry_mask(
            self._shapes, out_shape=(y1 - y0, x1 - x0), transform=self.grid.window_transform(y0, x0), invert=True
        )


def _window_box(grid: Grid):
    from shapely.geometry import box

    return box(*grid.bounds())
