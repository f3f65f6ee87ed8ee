"""Mask and polygons from a probability map: the one step a job's finish and ``vectorize`` share.

Both read the map window by window (memory bounded by the window, whatever the scene size; a
local job's windows are its blocks, as they are predicted), threshold it, and merge the objects
cut by window edges with the same :class:`ObjectCollector`, so a re-derivation gives the objects
a job run with the same settings gives (numbered in the order their windows came).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ingest.scene import SceneInfo
from .areas import PixelAreas, pixel_areas
from .metadata import BANDS
from .polygons import ObjectCollector, Pieces, stream_polygons
from .rasters import WindowWriter, copy_cog, scratch_raster, windows

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
    (format from ``polygons_dest``'s suffix), window by window; returns the summary run.json records."""
    with mask_and_polygons(source, threshold, min_pixels, scratch, tags) as parts:
        n_objects = stream_polygons(
            polygons_dest, source.info, parts.objects(windows(source.info)), min_pixels, source.slope is not None
        )
    copy_cog(scratch, mask_dest, "uint8")
    return parts.summary(n_objects)


@contextmanager
def mask_and_polygons(
    source: ProbabilitySource, threshold: float, min_pixels: int, scratch: Path, tags: dict[str, str] | None
) -> Iterator[MaskAndPolygons]:
    """The windowed part of the mask and polygons, its mask written into ``scratch`` (a
    :func:`.rasters.scratch_raster`, for :func:`.rasters.copy_cog` once every window is in)."""
    with scratch_raster(scratch, source.info, dtype="uint8", nodata=MASK_NODATA, band=BANDS["mask"], tags=tags) as w:
        collector = ObjectCollector(source.info, min_pixels=min_pixels)
        yield MaskAndPolygons(source, threshold, collector, _Tally(pixel_areas(source.info), source.info.height), w)


@dataclass
class _Tally:
    """The mask's counts per row, added up window by window (in any order, exactly: the areas are
    summed from the rows' counts once every window is in)."""

    areas: PixelAreas | None
    height: int
    valid: np.ndarray = field(init=False)
    slide: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.valid = np.zeros(self.height, np.int64)
        self.slide = np.zeros(self.height, np.int64)

    def add(self, y0: int, mask: np.ndarray) -> None:
        self.valid[y0 : y0 + len(mask)] += (mask != MASK_NODATA).sum(axis=1)
        self.slide[y0 : y0 + len(mask)] += (mask == 1).sum(axis=1)

    def summary(self, n_objects: int) -> dict:
        areas = self.areas
        return {
            "valid_pixels": int(self.valid.sum()),
            "landslide_pixels": int(self.slide.sum()),
            "objects": n_objects,
            "area_mapped_km2": float(self.valid @ areas.rows) / 1e6 if areas else None,
            "landslide_area_km2": float(self.slide @ areas.rows) / 1e6 if areas else None,
        }


@dataclass
class MaskAndPolygons:
    """The mask and the objects of a map, window by window as windows are finished (in any
    order): each window's mask is written and counted, its objects added to ``collector``;
    what is held is the pieces along the windows' open borders."""

    source: ProbabilitySource
    threshold: float
    collector: ObjectCollector
    tally: _Tally
    write_mask: WindowWriter

    def window(self, y0: int, y1: int, x0: int, x1: int) -> Pieces:
        """Add one window; -> the objects it finished (to be written and dropped)."""
        prob = self.source.probability(y0, y1, x0, x1)
        m = mask_window(prob, self.threshold)
        self.write_mask(y0, y1, x0, x1, m)
        self.tally.add(y0, m)
        slope = self.source.slope(y0, y1, x0, x1) if self.source.slope is not None else None
        self.collector.add_window(y0, x0, m == 1, prob, slope)
        return self.collector.pop_finished()

    def objects(self, regions: Iterable[tuple[int, int, int, int]]) -> Iterator[Pieces]:
        """The objects of ``regions`` (which together cover the map), as they are finished."""
        for region in regions:
            yield self.window(*region)
        yield self.collector.table()  # nothing is left once every window was added

    def summary(self, n_objects: int) -> dict:
        """run.json's summary of the map, once every window is in and ``n_objects`` written."""
        return self.tally.summary(n_objects)
