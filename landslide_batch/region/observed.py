"""Where a region has been looked at: clear observations per pixel and the date of the first.

A scene observes a region pixel clearly where it is valid there (nearest neighbour, as the
merge samples validity): inside the AOI, finite in every band and not of a masked SCL class
(``inputs.scl_mask``, by default no data 0, saturated 1, cloud shadow 3, clouds 8 and 9,
cirrus 10 and snow 11; one validity for the map and this record, so that the merge takes the
clear pass where another is snowy). So a pixel under cloud or snow on every pass has
no valid scene, no probability and no polygon, and ``observed`` 0 tells it apart from a pixel
seen clearly with no landslide. The merge already weights only valid pixels: where a pass is
cloudy, the clear passes make the map.

- ``observed.tif`` (uint16): how many of the region's scenes observe the pixel clearly;
  ``OBSERVED_NODATA`` outside the AOI.
- ``first_clear.tif`` (uint32): the date of the first clear observation as ``YYYYMMDD`` (the
  scene's STAC ``datetime``, in UTC); 0 where no dated scene observes the pixel clearly (scenes
  given as files carry no date).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import zarr
from affine import Affine
from rasterio.features import geometry_mask
from shapely.geometry import mapping

from ..ingest.scene import SceneInfo, member_array
from ..outputs.derive import window_reader
from ..outputs.rasters import windows, write_cog
from ..storage import Location

OBSERVED = "observed"
FIRST_CLEAR = "first_clear"
OUTPUTS = {OBSERVED: "observed.tif", FIRST_CLEAR: "first_clear.tif"}
OBSERVED_NODATA = 65535
NO_DATE = 0


def date_code(iso: str | None) -> int:
    """``YYYYMMDD`` of an ISO 8601 date-time (UTC as written), ``NO_DATE`` for None."""
    if not iso:
        return NO_DATE
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y%m%d"))


def observation_layers(valids: list[np.ndarray], dates: list[int], inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scenes' validity on a window and their date codes -> (observed count, first clear date)
    on the pixels ``inside`` the AOI (``OBSERVED_NODATA`` / ``NO_DATE`` outside)."""
    observed = np.zeros(inside.shape, np.uint16)
    first = np.full(inside.shape, np.iinfo(np.uint32).max, np.uint32)
    for valid, date in zip(valids, dates):
        clear = valid & inside
        observed += clear
        if date != NO_DATE:
            first = np.where(clear, np.minimum(first, date), first)
    first[first == np.iinfo(np.uint32).max] = NO_DATE
    return np.where(inside, observed, OBSERVED_NODATA).astype(np.uint16), np.where(inside, first, NO_DATE)


def create_layers(group: zarr.Group, info: SceneInfo) -> None:
    """The two layers in the merge's region scene store (chunked as its other layers)."""
    c = info.chunk
    for name, dtype, fill in ((OBSERVED, "uint16", OBSERVED_NODATA), (FIRST_CLEAR, "uint32", NO_DATE)):
        group.create_array(
            name,
            shape=(info.height, info.width),
            chunks=(c, c),
            dtype=dtype,
            fill_value=fill,
            dimension_names=("y", "x"),
        )


def aoi_inside(aoi, grid: SceneInfo, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels of a window of ``grid`` whose centre lies inside ``aoi`` (shapely, grid CRS)."""
    transform = grid.affine @ Affine.translation(x0, y0)
    return geometry_mask([mapping(aoi)], out_shape=(y1 - y0, x1 - x0), invert=True, transform=transform)


def write_observation_products(store: Location, grid: SceneInfo, dest: Path, scratch: Path) -> dict:
    """``observed.tif`` and ``first_clear.tif`` from the merge's region scene store ``store`` into
    ``dest``; -> the summary's figures: AOI pixels, those observed, the share observed, km² unobserved."""
    group = zarr.open_group(str(store), mode="r")
    observed = member_array(group, OBSERVED, store)
    first = member_array(group, FIRST_CLEAR, store)
    write_cog(
        dest / OUTPUTS[OBSERVED], grid, window_reader(observed), dtype="uint16", nodata=OBSERVED_NODATA, scratch=scratch
    )
    write_cog(dest / OUTPUTS[FIRST_CLEAR], grid, window_reader(first), dtype="uint32", nodata=NO_DATE, scratch=scratch)
    aoi_px = seen_px = 0
    for y0, y1, x0, x1 in windows(grid):
        counts = np.asarray(observed[y0:y1, x0:x1])
        aoi_px += int((counts != OBSERVED_NODATA).sum())
        seen_px += int(((counts != OBSERVED_NODATA) & (counts > 0)).sum())
    area = grid.pixel_area_m2
    return {
        "aoi_pixels": aoi_px,
        "observed_pixels": seen_px,
        "observed_share": seen_px / aoi_px if aoi_px else None,
        "unobserved_km2": (aoi_px - seen_px) * area / 1e6 if area else None,
    }
