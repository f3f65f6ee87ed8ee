"""The region grid: north-up pixels of ``resolution`` metres covering the AOI in the target CRS."""

from __future__ import annotations

import math

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from ..bands import L4S_BANDS
from ..errors import ConfigError
from ..ingest.aoi import aoi_in_crs
from ..ingest.scene import SceneInfo


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 / UTM zone holding ``(lon, lat)`` (EPSG:326zz north, 327zz south)."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def target_crs(aoi_geom, aoi_crs: CRS, crs: str | None) -> CRS:
    """``crs`` when given, else the UTM zone of the AOI's centroid."""
    if crs is not None:
        try:
            found = CRS.from_user_input(crs)
        except CRSError as exc:
            raise ConfigError(f"crs: unknown CRS {crs!r} ({exc})") from None
        if not found.is_projected:
            raise ConfigError(f"crs: the region grid needs a projected CRS in metres, found {found.to_string()}")
        return found
    centre = aoi_in_crs(aoi_geom, aoi_crs, CRS.from_epsg(4326)).centroid
    return utm_crs(centre.x, centre.y)


def region_grid(aoi_geom, crs: CRS, resolution: float, chunk: int) -> SceneInfo:
    """The smallest grid of ``resolution`` pixels, aligned to multiples of ``resolution``, that
    holds ``aoi_geom`` (already in ``crs``); described like a scene (L4S band names)."""
    minx, miny, maxx, maxy = aoi_geom.bounds
    x0, y1 = math.floor(minx / resolution) * resolution, math.ceil(maxy / resolution) * resolution
    width = max(1, math.ceil((maxx - x0) / resolution))
    height = max(1, math.ceil((y1 - miny) / resolution))
    transform = Affine(resolution, 0.0, x0, 0.0, -resolution, y1)
    return SceneInfo(
        height=height,
        width=width,
        band_names=tuple(L4S_BANDS),
        crs_wkt=crs.to_wkt(),
        transform=tuple(transform)[:6],
        chunk=chunk,
    )
