"""Re-threshold and re-polygonise a finished job without inference (``landslide-batch vectorize``).

The mask and polygons are rebuilt from ``probability.zarr`` (probability, and the slope the job
kept there) by the very step the job's finish runs (:func:`.derive.write_mask_and_polygons`),
window by window. No model is loaded: nothing here imports torch.

Replacement: the new products are written in ``OUT/.vectorize`` (a local temporary folder when
``OUT`` is on object storage), then swapped in with ``run.json`` last, all or nothing
(:func:`.publish.replace_products`).
An event map (``run.json`` with ``event``: a region job with a pre-event reference) has its mask
and polygons from ``new_probability``, with a ``status``, which ``probability.zarr`` alone cannot
give: they are rebuilt by ``rederive_event`` (``region.event``, handed in by the command), else refused.
``run.json`` then describes the products in the folder (``summary`` with ``threshold`` and
``min_area_m2``, ``outputs`` naming the polygons' file) and its ``derivations`` list records each
re-derivation (parameters, what it replaced, when) beside the job's own ``config``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import zarr

from ..checks.output import check_writable
from ..errors import ConfigError, InputError
from ..ingest.scene import SceneInfo, member_array
from ..storage import Location, location, storage_errors
from .derive import ProbabilitySource, min_object_pixels, window_reader, write_mask_and_polygons
from .folder import finished_result, output_lock, stage_folder
from .manifest import REGION_JOB, job_kind, write_json_atomic
from .metadata import manifest_scenes, provenance_tags
from .polygons import POLYGON_FILES
from .publish import replace_products
from .store import SLOPE

log = logging.getLogger(__name__)

STAGE = ".vectorize"  # new products and the replaced ones, while they are swapped

#: An event map's mask and polygons: (out, run.json, grid, threshold, min pixels, mask, polygons,
#: scratch) -> the summary's figures (``region.event.rederive_event``).
EventProducts = Callable[[Location, dict, SceneInfo, float, int, Path, Path, Path], dict]


@dataclass(frozen=True)
class Derivation:
    """The settings of a re-derivation; None keeps what the folder's products use now."""

    threshold: float | None = None
    min_area_m2: float | None = None
    polygon_format: str | None = None

    def check(self) -> None:
        """Bad settings fail before anything in the folder is touched."""
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be a probability within [0, 1], found {self.threshold}")
        if self.min_area_m2 is not None and not self.min_area_m2 >= 0:
            raise ConfigError(f"minimum area must be >= 0 m², found {self.min_area_m2}")
        if self.polygon_format is not None and self.polygon_format not in POLYGON_FILES:
            raise ConfigError(
                f"unknown polygon format {self.polygon_format!r}; expected one of {', '.join(POLYGON_FILES)}"
            )


def vectorize(out: str | Path | Location, settings: Derivation, event_products: EventProducts | None = None) -> dict:
    """Rebuild ``mask.tif`` and the polygons of the finished job in ``out`` (a folder or an
    object-store prefix); returns the new run.json. An event map needs ``event_products``."""
    settings.check()
    out = location(out)
    with storage_errors(out, "out"):  # first contact: a bad bucket, key or endpoint fails here
        manifest = finished_result(out)[0]  # before the lock: no lock is left where there is no job
    if "event" in manifest and event_products is None:
        raise InputError(
            f"{out} is an event map: its mask and polygons follow new_probability, with a status, which "
            "probability.zarr alone does not give; hand in region.event.rederive_event as `landslide-batch "
            "vectorize` does"
        )
    if out.is_local:
        check_writable(out.path)  # a read-only folder: one clear line, not the lock's OSError
    with ExitStack() as held:
        held.enter_context(output_lock(out))  # the lock a job holds: neither runs while the other writes
        stage = stage_folder(held, out, ".") / STAGE
        shutil.rmtree(stage, ignore_errors=True)  # what an interrupted vectorize left
        stage.mkdir()
        try:
            return _rederive(out, finished_result(out)[0], settings, stage, event_products)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _rederive(
    out: Location, manifest: dict, settings: Derivation, stage: Path, event_products: EventProducts | None
) -> dict:
    """Write the new products into ``stage``, swap them in; -> the new run.json."""
    t0 = time.perf_counter()
    outputs, summary = manifest["outputs"], manifest["summary"]
    threshold = summary["threshold"] if settings.threshold is None else settings.threshold
    min_area = (
        summary.get("min_area_m2", manifest["config"]["min_area_m2"])
        if settings.min_area_m2 is None
        else settings.min_area_m2
    )
    fmt = settings.polygon_format or Path(outputs["polygons"]).suffix[1:]
    source = _store_source(out / outputs["zarr"], manifest)
    min_pixels = min_object_pixels(source.info, min_area, manifest["config"]["min_pixels"])

    products = {"mask": outputs["mask"], "polygons": POLYGON_FILES[fmt]}
    mask, polygons, scratch = stage / products["mask"], stage / products["polygons"], stage / "mask.scratch.tif"
    if "event" in manifest and event_products is not None:
        new_summary = event_products(out, manifest, source.info, threshold, min_pixels, mask, polygons, scratch)
    else:
        tags = provenance_tags(manifest["models"], manifest_scenes(manifest), threshold, manifest["job_hash"])
        new_summary = write_mask_and_polygons(source, threshold, min_pixels, mask, polygons, scratch, tags=tags)
    derivation = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "threshold": threshold,
        "min_area_m2": min_area,
        "min_object_pixels": min_pixels,
        "polygons": products["polygons"],
        "replaced": {
            "threshold": summary["threshold"],
            "min_area_m2": summary.get("min_area_m2"),
            "polygons": outputs["polygons"],
        },
        "duration_s": round(time.perf_counter() - t0, 3),
    }
    updated = {
        **manifest,
        "summary": {**summary, **new_summary, "min_area_m2": min_area, "threshold": threshold},
        "outputs": {**outputs, "polygons": products["polygons"]},
        "derivations": [*manifest.get("derivations", []), derivation],
    }
    write_json_atomic(stage / "run.json", updated)
    replace_products(out, stage, list(products.values()), [outputs["mask"], outputs["polygons"]])
    log.info(
        "%s: %s and %s rebuilt at threshold %s, min area %s m² (%d px): %d landslide objects",
        out,
        products["mask"],
        products["polygons"],
        threshold,
        min_area,
        min_pixels,
        new_summary["objects"],
    )
    return updated


def _store_source(store: Location, manifest: dict) -> ProbabilitySource:
    """The map (and slope) of the job's ``probability.zarr``, on the grid its run.json records
    (``scene`` for a scene job, ``region`` for a region job)."""
    try:
        with storage_errors(store, "probability store"):
            group = zarr.open_group(store=store.zarr_store(read_only=True), mode="r")
        prob = member_array(group, "probability", store)
    except (FileNotFoundError, KeyError) as exc:
        raise InputError(
            f"{store}: the job's probability store is missing or unreadable "
            f"({type(exc).__name__}: {exc}); the map cannot be rebuilt without it"
        ) from None
    if group.attrs.get("job_hash") != manifest.get("job_hash"):
        raise InputError(
            f"{store} belongs to job {group.attrs.get('job_hash')}, its run.json to "
            f"{manifest.get('job_hash')}: the folder mixes two jobs; run the job again"
        )
    grid = manifest["region"] if job_kind(manifest) == REGION_JOB else manifest["scene"]  # the map's grid
    has_slope = SLOPE in group
    info = SceneInfo(
        height=grid["height"],
        width=grid["width"],
        band_names=(SLOPE,) if has_slope else (),
        crs_wkt=grid["crs"],
        transform=tuple(grid["transform"]),
        chunk=prob.chunks[0],
    )
    if prob.shape != (info.height, info.width):
        raise InputError(
            f"{store}: probability is {prob.shape[0]}x{prob.shape[1]} px, run.json's grid {info.height}x{info.width} px"
        )
    return ProbabilitySource(info, window_reader(prob), window_reader(group[SLOPE]) if has_slope else None)
