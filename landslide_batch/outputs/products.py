"""A map's products, written from its probability store and scene store: the rasters, mask,
polygons, quicklook and their sidecars. Scene jobs and region jobs both write them with
:func:`write_products`; ``vectorize`` re-derives the mask and polygons the same way."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from ..config import JobConfig
from ..ingest import Scene
from ..ingest.scene import member_array
from ..storage import Location
from .derive import ProbabilitySource, min_object_pixels, window_reader, write_mask_and_polygons
from .metadata import BANDS, SIDECARS, write_sidecars
from .polygons import POLYGON_FILES
from .quicklook import write_quicklook
from .rasters import write_cog
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
    """Write the products (all but the store) into ``stage/final`` window by window; returns the
    summary. The mask and polygons come from the step ``vectorize`` repeats later, and the
    scene's slope goes into the store as that step reads it, for ``vectorize`` to read there.
    ``tags``: the rasters' provenance (:func:`.outputs.metadata.provenance_tags`)."""
    info = scene.info
    final = stage / "final"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    group = zarr.open_group(str(store_path), mode="r+")
    prob = group["probability"]

    def write_rasters() -> None:
        for key in ("probability", "uncertainty"):
            write_cog(
                final / outputs[key],
                info,
                window_reader(group[key]),
                dtype="float32",
                nodata=NODATA,
                scratch=stage / f"{key}.scratch.tif",
                band=BANDS[key],
                tags=tags,
            )

    kept = (
        member_array(group, SLOPE, store_path) if SLOPE in group else None
    )  # None: a store from before stores kept the slope

    def slope_kept(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        slope = scene.read_band(SLOPE, y0, y1, x0, x1)
        if kept is not None:
            kept[y0:y1, x0:x1] = slope
        return slope

    # GDAL writes the COGs without the GIL, beside the polygons (mostly Python) and the quicklook.
    with ThreadPoolExecutor(2, "rasters") as pool:
        rasters = pool.submit(write_rasters)
        bands = zarr.open_group(str(scene.path), mode="r")["bands"]
        quicklook = pool.submit(write_quicklook, final / outputs["quicklook"], bands, prob, threshold, info)
        source = ProbabilitySource(info, window_reader(prob), slope_kept if SLOPE in info.band_names else None)
        summary = write_mask_and_polygons(
            source,
            threshold,
            min_object_pixels(info, cfg.min_area_m2, cfg.min_pixels),
            final / outputs["mask"],
            final / outputs["polygons"],
            scratch=stage / "mask.scratch.tif",
            tags=tags,
        )
        write_sidecars(final, outputs)
        quicklook.result()
        rasters.result()
    return {
        **summary,
        "min_area_m2": cfg.min_area_m2,
        "assumed_pixel_m": assumed_pixel_m(scene.attrs.get("source", {}).get("kind"), info.pixel_area_m2),
    }
