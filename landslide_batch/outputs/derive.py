"""Mask and polygons from a probability map: the one step a job's finish and ``vectorize`` share.

Both read the map window by window (memory bounded by the window, whatever the scene size),
threshold it, and merge the objects cut by window edges with the same :class:`ObjectCollector`,
so a re-derivation gives exactly what a job run with the same settings gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ingest.scene import SceneInfo
from .areas import PixelAreas, pixel_areas
from .metadata import BANDS
from .polygons import ObjectCollector, Pieces, stream_polygons
from .rasters import windows, write_cog

MASK_NODATA = 255

WindowReader = Callable[[int, int, int, int], np.ndarray]  # (y0, y1, x0, x1) -> (h, w) array


@dataclass(frozen=True)
class ProbabilitySource:
    """Where the map is read from: a job's output store while it finishes, ``probability.zarr``
    afterwards. ``slope`` (degrees) gives the objects' mean slope; None when the scene has none."""

    info: SceneInfo
    probability: WindowReader
    slope: WindowReader | None


def window_reader(array) -> WindowReader:
    """Windows of a 2-D array that slices lazily (a Zarr array): only the window is read."""
    return lambda y0, y1, x0, x1: array[y0:y1, x0:x1]


def mask_window(prob: np.ndarray, threshold: float) -> np.ndarray:
    """1 where ``prob >= threshold``, 0 below, ``MASK_NODATA`` where the map is nodata (< 0)."""
    return np.where(prob < 0, MASK_NODATA, prob >= threshold).astype(np.uint8)


def min_object_pixels(info: SceneInfo, min_area_m2: float, min_pixels: int) -> int:
    """Smallest object kept, in pixels: ``min_pixels``, or more when ``min_area_m2`` asks for it."""
    areas = pixel_areas(info)
    return max(min_pixels, int(np.ceil(min_area_m2 / areas.nominal_m2)) if areas else 0)


def write_mask_and_polygons(
    source: ProbabilitySource,
    threshold: float,
    min_pixels: int,
    mask_dest: Path,
    polygons_dest: Path,
    scratch: Path,
    *,
    tags: dict[str, str] | None = None,
) -> dict:
    """Write the mask COG (with ``tags``, see :func:`.metadata.provenance_tags`) and the polygons
    (format from ``polygons_dest``'s suffix); returns the summary run.json records. The COG is
    written beside the polygons (GDAL runs without the GIL)."""
    info = source.info

    def mask_of(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return mask_window(source.probability(y0, y1, x0, x1), threshold)

    with ThreadPoolExecutor(1, "mask") as pool:
        mask_cog = pool.submit(
            write_cog,
            mask_dest,
            info,
            mask_of,
            dtype="uint8",
            nodata=MASK_NODATA,
            scratch=scratch,
            band=BANDS["mask"],
            tags=tags,
        )
        tally = _Tally(pixel_areas(info))
        n_objects = stream_polygons(
            polygons_dest, info, _objects(source, threshold, min_pixels, tally), min_pixels, source.slope is not None
        )
        mask_cog.result()
    areas = tally.areas
    return {
        "valid_pixels": tally.valid_px,
        "landslide_pixels": tally.slide_px,
        "objects": n_objects,
        "area_mapped_km2": tally.valid_m2 / 1e6 if areas else None,
        "landslide_area_km2": tally.slide_m2 / 1e6 if areas else None,
    }


@dataclass
class _Tally:
    """The mask's counts, added up window by window while its objects are written."""

    areas: PixelAreas | None
    valid_px: int = 0
    slide_px: int = 0
    valid_m2: float = 0.0
    slide_m2: float = 0.0

    def add(self, y0: int, mask: np.ndarray) -> None:
        self.valid_px += int((mask != MASK_NODATA).sum())
        self.slide_px += int((mask == 1).sum())
        if self.areas is not None:
            self.valid_m2 += self.areas.of_mask(y0, mask != MASK_NODATA)
            self.slide_m2 += self.areas.of_mask(y0, mask == 1)


def _objects(source: ProbabilitySource, threshold: float, min_pixels: int, tally: _Tally) -> Iterator[Pieces]:
    """The map's objects, window by window as they are finished (the file is written as they
    come: what is held is the pieces along the windows' open borders); counts the mask in ``tally``."""
    collector = ObjectCollector(source.info, min_pixels=min_pixels)
    for y0, y1, x0, x1 in windows(source.info):
        prob = source.probability(y0, y1, x0, x1)
        m = mask_window(prob, threshold)
        tally.add(y0, m)
        slope = source.slope(y0, y1, x0, x1) if source.slope is not None else None
        collector.add_window(y0, x0, m == 1, prob, slope)
        yield collector.pop_finished()
    yield collector.table()  # nothing is left once every window was added
