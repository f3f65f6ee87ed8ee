"""A map's products, written from its probability store and scene store: the rasters, mask,
polygons, quicklook and their sidecars. Scene jobs and region jobs both write them with
:func:`write_products`; ``vectorize`` re-derives the mask and polygons the same way."""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import zarr

from ..config import JobConfig
from ..ingest import Scene
from ..ingest.scene import member_array
from ..plan.tiling import Block
from ..storage import Location
from .derive import ProbabilitySource, WindowReader, mask_and_polygons, min_object_pixels, window_reader
from .metadata import BANDS, SIDECARS, write_sidecars
from .polygons import POLYGON_FILES, stream_polygons
from .quicklook import write_quicklook
from .rasters import copy_cog, scratch_raster, windows
from .store import NODATA, SLOPE
from .summary import assumed_pixel_m

OUTPUTS = {  # the polygons' name follows the job's polygon_format: see outputs_for
    "probability": "probability.tif",
    "uncertainty": "uncertainty.tif",
    "mask": "mask.tif",
    "polygons": POLYGON_FILES["gpkg"],
    "quicklook": "quicklook.png",
    "zarr": "probability.zarr",
    **SIDECARS,  # QGIS styles, the mask's category names
}


def outputs_for(polygon_format: str) -> dict[str, str]:
    """The products of a job writing its polygons as ``polygon_format`` (gpkg, parquet or fgb)."""
    return {**OUTPUTS, "polygons": POLYGON_FILES[polygon_format]}


def write_products(
    cfg: JobConfig,
    scene: Scene,
    store_path: Path | Location,
    stage: Path,
    threshold: float,
    outputs: dict[str, str],
    tags: dict[str, str],
) -> dict:
    """Write the products (all but the store) into ``stage/final`` from a finished store, window
    by window; returns the summary (see :class:`ProductsWriter`, which a local scene job feeds
    block by block while it predicts)."""
    with ProductsWriter(cfg, scene, store_path, stage, threshold, outputs, tags) as writer:
        for y0, y1, x0, x1 in windows(scene.info):
            writer.add_window(y0, y1, x0, x1)
        return writer.finish()


class ProductsWriter:
    """A map's products written into ``stage/final`` region by region as the output store's
    regions are finished (in any order, together covering the map), in one background thread:
    each region's probability, uncertainty and mask windows go into their scratch GeoTIFFs, the
    scene's slope into the store (as ``vectorize`` reads it there), its objects into the polygon
    file as they are finished. :meth:`finish` then does what needs the whole map (the COGs'
    compression and overviews, the quicklook, the sidecars). The mask and polygons come from the
    step ``vectorize`` repeats later. ``tags``: the rasters' provenance
    (:func:`.outputs.metadata.provenance_tags`).

    The thread's error is raised by the next :meth:`add` and by :meth:`finish`; leaving the
    context waits for the thread, stopped first if the context is left with an error (the job
    failed): no write outlives the caller's lock. The store is opened with the first region (a
    job creates it later)."""

    def __init__(
        self,
        cfg: JobConfig,
        scene: Scene,
        store_path: Path | Location,
        stage: Path,
        threshold: float,
        outputs: dict[str, str],
        tags: dict[str, str],
    ) -> None:
        self.cfg, self.scene, self.store_path, self.stage = cfg, scene, store_path, stage
        self.threshold, self.outputs, self.tags = threshold, outputs, tags
        self.final = stage / "final"
        shutil.rmtree(self.final, ignore_errors=True)
        self.final.mkdir()
        self.min_pixels = min_object_pixels(scene.info, cfg.min_area_m2, cfg.min_pixels)
        self._regions: queue.SimpleQueue[tuple[int, int, int, int] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._summary: dict | None = None
        self._thread = threading.Thread(target=self._run, name="products", daemon=True)
        self._thread.start()

    def __enter__(self) -> ProductsWriter:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        self.close(stop=error_type is not None)

    def add(self, block: Block) -> None:
        """Write the products of ``block``'s core (finished in the store): ``map_scene``'s ``on_block``."""
        self.add_window(block.y0, block.y1, block.x0, block.x1)

    def add_window(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Write the products of the store's finished region ``[y0, y1) x [x0, x1)``."""
        self._raise()
        self._regions.put((y0, y1, x0, x1))

    def close(self, stop: bool = True) -> None:
        """Wait for the thread: ``stop``ped after its current region (the caller failed), or
        once it has written every region added (a :meth:`finish` may still be running)."""
        if stop:
            self._stop.set()
        self._regions.put(None)
        self._thread.join()

    def finish(self) -> dict:
        """Once every region was added: the windowed part ends, then the COGs, quicklook and
        sidecars; -> the summary ``run.json`` records."""
        self._regions.put(None)
        self._thread.join()
        self._raise()
        assert self._summary is not None, "finish() after close()"
        info, final = self.scene.info, self.final
        group = zarr.open_group(str(self.store_path), mode="r")
        bands = zarr.open_group(str(self.scene.path), mode="r")["bands"]
        # GDAL compresses the COGs without the GIL, beside each other and the quicklook.
        with ThreadPoolExecutor(4, "cogs") as pool:
            done = [
                pool.submit(copy_cog, self.stage / f"{key}.scratch.tif", final / self.outputs[key], dtype)
                for key, dtype in (("probability", "float32"), ("uncertainty", "float32"), ("mask", "uint8"))
            ]
            quicklook = final / self.outputs["quicklook"]
            done.append(pool.submit(write_quicklook, quicklook, bands, group["probability"], self.threshold, info))
            write_sidecars(final, self.outputs)
            for f in done:
                f.result()
        kind = self.scene.attrs.get("source", {}).get("kind")
        return {
            **self._summary,
            "min_area_m2": self.cfg.min_area_m2,
            "assumed_pixel_m": assumed_pixel_m(kind, info.pixel_area_m2),
        }

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._summary = self._write()
        except BaseException as e:  # raised in the caller's thread by add() or finish()
            self._error = e

    def _write(self) -> dict | None:
        """The thread: wait for the first region, then write every region until the last."""
        if (first := self._regions.get()) is None:
            return None
        group = zarr.open_group(str(self.store_path), mode="r+")
        info = self.scene.info
        source = ProbabilitySource(
            info, window_reader(group["probability"]), self._slope_kept(group) if SLOPE in info.band_names else None
        )
        with ExitStack() as files:
            rasters = {
                key: (
                    window_reader(group[key]),
                    files.enter_context(
                        scratch_raster(
                            self.stage / f"{key}.scratch.tif",
                            info,
                            dtype="float32",
                            nodata=NODATA,
                            band=BANDS[key],
                            tags=self.tags,
                        )
                    ),
                )
                for key in ("probability", "uncertainty")
            }
            mask = self.stage / "mask.scratch.tif"
            parts = files.enter_context(mask_and_polygons(source, self.threshold, self.min_pixels, mask, self.tags))

            def regions() -> Iterator[tuple[int, int, int, int]]:
                region: tuple[int, int, int, int] | None = first
                while region is not None and not self._stop.is_set():
                    for read, write in rasters.values():
                        write(*region, read(*region))
                    yield region
                    region = self._regions.get()
                if self._stop.is_set():
                    raise _Stopped

            polygons = self.final / self.outputs["polygons"]
            n_objects = stream_polygons(
                polygons, info, parts.objects(regions()), self.min_pixels, source.slope is not None
            )
        return parts.summary(n_objects)

    def _slope_kept(self, group) -> WindowReader:
        """The scene's slope, read window by window and kept in the store as it is read."""
        kept = member_array(group, SLOPE, self.store_path) if SLOPE in group else None  # None: an older store

        def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            slope = self.scene.read_band(SLOPE, y0, y1, x0, x1)
            if kept is not None:
                kept[y0:y1, x0:x1] = slope
            return slope

        return read


class _Stopped(Exception):
    """The writer was closed before its last region: the job left (its products are not published)."""
