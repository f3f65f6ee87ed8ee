"""A region job: every scene mapped (``mapping.map_scene``), then merged onto one grid.

Layout of ``OUT``: the region's products as a scene job writes them, plus
``scenes.gpkg`` (footprints), and ``.work/`` kept after the job as the cache that makes adding
a scene cheap:

- ``.work/scenes/<id>/scene.zarr``: the scene as ingested; ``.work/scenes/<id>/map/``: its own
  finished probability map (an output folder under the same protocol as a scene job's,
  ``scene_map.py``, resumed block by block: the store and ``run.json`` only, no products, and
  no second copy of the scene);
- ``.work/region/``: the merged region (output store, a scene store holding the merged RGB and
  slope for the quicklook and polygons, one marker per merged block naming the scenes in it).

A block of the region is merged again only when the scenes touching it change, so adding a
scene maps that scene and merges the blocks it touches; the products are then written again.

``OUT`` may be on object storage (``s3://``, ``gs://``, ``az://``): then all of ``.work`` is there
too (the scene stores and maps, which Ray actors on any node read and write, and the merge
state and merged stores, kept between passes as locally), the lock is a lease object, and the
products are written in a local temporary folder and published by ``publish_products``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from shapely.geometry import box, shape

from ..checks.output import check_free_space, check_inputs_outside, check_out_folder
from ..checks.pixels import off_resolution
from ..checks.preflight import model_b10_means, resolve_inputs_units, resolve_job
from ..checks.reflectance import reflectance_guard
from ..checks.results import result_warnings
from ..config import EnsembleConfig, JobConfig
from ..errors import InputError
from ..gdal_env import bounded_gdal_cache
from ..hashing import sha256_tree
from ..infer.executors import job_device, region_work
from ..ingest import ModelB10, Scene, ingest_job
from ..ingest.aoi import aoi_in_crs, load_aoi
from ..ingest.inputs import SceneInputs
from ..ingest.scene import SceneInfo
from ..mapping import scene_chunk
from ..outputs.derive import min_object_pixels
from ..outputs.folder import enter_output, previous_result, stage_folder
from ..outputs.manifest import REGION_JOB, package_versions, write_json_atomic
from ..outputs.metadata import provenance_tags
from ..outputs.products import outputs_for, write_products
from ..outputs.publish import publish_products
from ..plan.limits import check_work
from ..resolved import ResolvedJob, identity_hash
from ..storage import Location, location, storage_errors
from .event import (
    NDVI_LOSS_FULL,
    PRE_EVENT,
    change_source,
    check_pre_event,
    pre_event_config,
    write_change_layers,
    write_change_mask_and_polygons,
)
from .event import OUTPUTS as EVENT_OUTPUTS
from .grid import region_grid, target_crs
from .mapped import MappedScene
from .merge import merge_region
from .mosaic import FEATHER_PX
from .observed import OUTPUTS as OBSERVATION_OUTPUTS
from .observed import write_observation_products
from .pre_event import pick_pre_event
from .progress import RegionProgress
from .scene_map import map_region_scene
from .scenes import SceneSource, find_scenes, load_signer
from .stac_search import dem_items, search_items
from .timeliness import stamp_time_to_map

if TYPE_CHECKING:
    from ..infer.actor_pool import ActorPool

log = logging.getLogger(__name__)

SCENES_FILE = "scenes.gpkg"
#: Scenes mapped at once on Ray: one predicted, the next prepared and queued behind it.
SCENES_IN_FLIGHT = 2
MERGE_RULE = (
    f"weighted mean; weight = validity (nearest) x min(d, {FEATHER_PX}) / {FEATHER_PX}, d = distance in "
    "region pixels to the scene's nearest invalid or absent pixel; layers sampled bilinearly from "
    "valid pixels; nodata -1 where no scene is valid or outside the AOI"
)


def run_region(cfg: JobConfig, *, overwrite: bool = False) -> dict:
    """Run (or resume, or extend with new scenes) a region job; returns its manifest (``OUT/run.json``)."""
    return _run_region(resolve_job(cfg), overwrite)


def _run_region(job: ResolvedJob, overwrite: bool) -> dict:
    """A region job whose models were read once (``preflight.resolve_job``): its scenes' jobs and
    its pre-event map take them from ``job``."""
    cfg = job.cfg
    out = location(cfg.out)
    out.require_writable("out")
    if out.is_local:
        check_out_folder(out.path)
        check_inputs_outside(out.path, _local_inputs(cfg, job.members))
    with ExitStack() as held:
        enter_output(held, out)  # a full disk: exit 4, as for one scene
        held.enter_context(bounded_gdal_cache())
        stage = stage_folder(held, out, ".work/region") / "stage"
        return _run_region_locked(job, out, overwrite, stage)


def _local_inputs(cfg: JobConfig, members: EnsembleConfig) -> list[tuple[str, Path]]:
    """The job's inputs on this machine's disk, by what they are (scene entries may be globs)."""
    named = [("AOI", cfg.aoi), ("ensemble file", cfg.ensemble)]
    named += [("model", m.model) for m in members.members]
    named += [("scene", s) for s in cfg.scenes or []] + [("pre-event scene", s) for s in cfg.pre_scenes or []]
    return [(what, location(p).path) for what, p in named if p is not None and location(p).is_local]


@dataclass(frozen=True)
class RegionSetup:
    """What a region job is, before any scene is read: its grid, AOI, models and identity."""

    job: ResolvedJob  # with the inputs' units resolved from the model cards
    grid: SceneInfo
    aoi: Any  # shapely geometry in the region CRS
    crs: CRS
    aoi_text: str
    rhash: str
    outputs: dict[str, str]

    @property
    def cfg(self) -> JobConfig:
        return self.job.cfg


def _run_region_locked(job: ResolvedJob, out: Location, overwrite: bool, stage: Path) -> dict:
    """``stage``: the local folder the products are written into before they are published."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    r = _setup_region(job)
    cfg = r.cfg
    if out.is_local and (overwrite or not (out / "run.json").is_file()):  # the region's stores and products
        check_free_space(out.path, r.grid.height, r.grid.width)
    # The pre-event map first (kept in OUT/pre_event: found finished on later passes), then this one's models.
    pre, picked = _pre_event_map(cfg, r, out, overwrite)
    previous = previous_result(out, r.rhash, overwrite, "region job")[0]
    region_dir = out / ".work" / "region"
    _discard_unless(region_dir, r.rhash, overwrite)
    with ExitStack() as session:
        # The models load (locally) or are checked and the actors start (Ray) while the scenes are ingested.
        pool, models = _start_models(r.job, session, work=region_work(r.cfg, r.grid.height, r.grid.width))
        b10_means = model_b10_means(r.job.members, r.job.cards)
        scenes, skipped = _prepare_scenes(r.cfg, out / ".work", r.aoi, r.crs, b10_means, models)
        signature = _signature(scenes) + _pre_event_signature(cfg, r, pre, scenes)
        if not overwrite and previous is not None and _holds(out, previous, signature):
            log.info("%s already holds this region's map over these %d scene(s): nothing to do", out, len(scenes))
            return {**previous, "blocks": {**previous["blocks"], "computed": 0, "resumed": previous["blocks"]["total"]}}
        t_map = time.perf_counter()
        models.result()  # the local predictor, or (Ray) the checked spec; raises the models' error
        actors = _map_scenes(r.job, scenes, overwrite, pool, models)
    timings = {"map_s": time.perf_counter() - t_map}

    t_merge = time.perf_counter()
    merge_blocks = merge_region(scenes, r.grid, r.aoi, region_dir, r.cfg.block, r.rhash)
    timings["merge_s"] = time.perf_counter() - t_merge

    t_finish = time.perf_counter()
    threshold, summary = _write_region_products(r, scenes, region_dir, stage, out / PRE_EVENT if pre else None)
    timings["finish_s"] = time.perf_counter() - t_finish

    manifest = {
        "status": "complete",
        "kind": REGION_JOB,
        "job_hash": r.rhash,
        "region_hash": r.rhash,
        "scenes_signature": signature,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": {k: round(v, 3) for k, v in {**timings, "total_s": time.perf_counter() - t0}.items()},
        **_region_record(r, scenes, actors),
        "skipped_scenes": skipped,
        "merge_blocks": merge_blocks,
        "summary": {**summary, "threshold": threshold},
        "outputs": r.outputs,
        **({"event": _event_record(cfg, pre, picked)} if pre else {}),
    }
    manifest["time_to_map"] = stamp_time_to_map(manifest["scenes"], previous, manifest["finished"])
    _flag_implausible(manifest)
    write_json_atomic(stage / "final" / "run.json", manifest)
    # The merge keeps its own store for the next scene: a copy is published.
    publish_products(stage / "final", region_dir / "probability.zarr", out, r.outputs, keep_store=True)
    shutil.rmtree(stage, ignore_errors=True)
    log.info(
        "region finished: %s (%d scene(s), %d landslide objects)", out / "run.json", len(scenes), summary["objects"]
    )
    return manifest


def _pre_event_signature(cfg: JobConfig, r: RegionSetup, pre: dict | None, scenes: list[MappedScene]) -> str:
    """The pre-event map's part of the scenes' signature ("" without one; with the change rule's
    setting, which changes the products but not the merge), once it is checked against the
    region grid and ``event_date`` (``event.check_pre_event``)."""
    if pre is None:
        return ""
    check_pre_event(pre, r.grid, cfg.event_date, [s.source.date for s in scenes])
    return f"+{pre['scenes_signature']}" + ("" if cfg.change_ndvi else "-ndvi")


def _pre_event_map(cfg: JobConfig, r: RegionSetup, out: Location, overwrite: bool) -> tuple[dict | None, dict | None]:
    """The pre-event region map (None without ``pre_scenes`` or ``pre_event``), and with
    ``pre_event: auto`` the record of how its scene was picked (``pre_event.py``)."""
    picked = None
    if cfg.pre_event == "auto":
        bbox = transform_bounds(r.crs, "EPSG:4326", *r.aoi.bounds)
        sign = load_signer(cfg.href_signer)
        items, picked = pick_pre_event(cfg, r.aoi, r.crs, bbox, out / ".work", sign)
        cfg = cfg.model_copy(update={"pre_scenes": [items]})
    if not cfg.pre_scenes:
        return None, None
    return _run_region(r.job.with_config(pre_event_config(cfg, out)), overwrite), picked


def _event_record(cfg: JobConfig, pre: dict, picked: dict | None) -> dict:
    """``run.json``'s ``event``: the event date, the pre-event map (and how ``pre_event: auto``
    picked it), the change rule."""
    rule = "p_post x (1 - p_pre)" + (f" x clip(-dNDVI / {NDVI_LOSS_FULL}, 0, 1)" if cfg.change_ndvi else "")
    return {
        "event_date": cfg.event_date.isoformat() if cfg.event_date else None,
        "pre_event": {"folder": PRE_EVENT, "scenes": pre["scenes"], "scenes_signature": pre["scenes_signature"]},
        **({"pre_event_auto": picked} if picked else {}),
        "new_probability_rule": rule,
        "change_ndvi": cfg.change_ndvi,
    }


def _flag_implausible(manifest: dict) -> None:
    """A region map mostly classified as landslide is flagged as a single scene's is: a warning
    (logged, in ``run.json``) and ``summary.implausible`` (which the STAC item carries)."""
    flags = result_warnings(manifest["summary"])
    for msg in flags:
        log.warning("%s", msg)
    manifest["warnings"] = [*manifest["warnings"], *flags]
    manifest["summary"]["implausible"] = bool(flags)


def _setup_region(job: ResolvedJob) -> RegionSetup:
    """The region grid over the AOI (in the target CRS), the models, and the job's identity."""
    cfg = resolve_inputs_units(job.cfg, job.cards)  # a pre-event map's settings come unresolved
    job = job.with_config(cfg).on_device(_identity_device(cfg))
    geom, aoi_crs, aoi_text = load_aoi(SceneInputs(aoi=str(cfg.aoi)))
    crs = target_crs(geom, aoi_crs, cfg.crs)
    aoi = aoi_in_crs(geom, aoi_crs, crs)
    grid = region_grid(aoi, crs, cfg.resolution, scene_chunk(cfg.block))
    n = len(job.members.members)  # before anything runs: a continent-sized AOI fails here, with its figure
    check_work(
        grid.height, grid.width, tile=cfg.tile, stride=cfg.stride, block=cfg.block, members=n, max_pixels=cfg.max_pixels
    )
    rhash = region_hash(job, grid, aoi)
    outputs = {**outputs_for(cfg.polygon_format), "scenes": SCENES_FILE, **OBSERVATION_OUTPUTS}
    if cfg.pre_scenes or cfg.pre_event:
        outputs |= EVENT_OUTPUTS
    return RegionSetup(job, grid, aoi, crs, aoi_text, rhash, outputs)


def _holds(out: Location, previous: dict, signature: str) -> bool:
    """Whether ``out`` holds the finished map of this region over exactly these scenes."""
    return previous.get("scenes_signature") == signature and all(
        (out / name).exists() for name in previous.get("outputs", {}).values()
    )


def _write_region_products(
    r: RegionSetup, scenes: list[MappedScene], region_dir: Location, stage: Path, pre_dir: Location | None
) -> tuple[float, dict]:
    """The region's products and scene footprints into ``stage/final``; -> (threshold, summary).
    With a pre-event map in ``pre_dir``: the change layers too, and the mask and polygons of
    ``new_probability`` in place of those of the probability (``event.py``)."""
    cfg = r.cfg
    threshold = r.job.threshold()
    stage.mkdir(parents=True, exist_ok=True)
    scene = Scene(str(region_dir / "scene.zarr"))
    models = [{"name": c.name, "sha256": sha} for c, sha in zip(r.job.cards, r.job.model_shas)]
    scene_records = [{"source": s.source.origin, "sha256": s.sha256, "date": s.source.date} for s in scenes]
    tags = provenance_tags(models, scene_records, threshold, r.rhash)
    summary = write_products(cfg, scene, region_dir / "probability.zarr", stage, threshold, r.outputs, tags)
    scratch = stage / "observed.scratch.tif"
    summary |= write_observation_products(region_dir / "scene.zarr", r.grid, stage / "final", scratch)
    if pre_dir is not None:
        change = change_source(region_dir, pre_dir, r.grid, cfg.change_ndvi)
        write_change_layers(change, stage / "final", scratch)
        min_pixels = min_object_pixels(r.grid, cfg.min_area_m2, cfg.min_pixels)
        mask, polygons = (stage / "final" / r.outputs[k] for k in ("mask", "polygons"))
        mask.unlink()
        polygons.unlink()
        summary |= write_change_mask_and_polygons(change, threshold, min_pixels, mask, polygons, scratch)
    write_footprints(stage / "final" / SCENES_FILE, scenes, r.crs)
    return threshold, summary


def _region_record(r: RegionSetup, scenes: list[MappedScene], actors: list[dict] | None) -> dict:
    """The manifest's record of the settings, models, actors, region grid and scenes."""
    cfg, grid = r.cfg, r.grid
    per_scene = [s.result["blocks"] for s in scenes]
    return {
        "config": cfg.model_dump(mode="json"),
        "models": r.job.model_records(),
        # times the models were loaded: once locally, once per actor (warm across scenes) on Ray
        "models_loaded": 1 if actors is None else sum(a["models_loaded"] for a in actors),
        **({"actors": actors} if actors is not None else {}),
        "versions": package_versions(),
        "region": {
            "crs": grid.crs_wkt,
            "epsg": r.crs.to_epsg(),
            "height": grid.height,
            "width": grid.width,
            "transform": list(grid.transform),
            "resolution_m": cfg.resolution,
            "aoi": r.aoi_text,
            "pixel_area_m2": grid.pixel_area_m2,
            "merge_rule": MERGE_RULE,
            "feather_px": FEATHER_PX,
        },
        "scenes": [_provenance(s) for s in scenes],
        "warnings": [w for s in scenes for w in s.result.get("warnings", [])],
        "blocks": {key: sum(b[key] for b in per_scene) for key in ("total", "computed", "skipped_nodata", "resumed")},
    }


def _identity_device(cfg: JobConfig) -> str:
    """The device part of a region's identity, known before Ray starts: ``auto`` on Ray without
    GPUs per actor is what the cluster offers at run time (each scene's job hash records which)."""
    if cfg.executor == "ray" and cfg.device == "auto" and not cfg.ray.gpus_per_actor:
        return "auto"
    return job_device(cfg.device, cfg.executor, cfg.ray)


def region_hash(job: ResolvedJob, grid: SceneInfo, aoi) -> str:
    """Identity of a region's map except its scenes (which may grow): a scene job's identity
    (models, device, every map setting: ``ResolvedJob.identity``) plus the grid, the AOI and the
    merge's settings."""
    key = {
        **job.identity(),
        "grid": [grid.crs_wkt, list(grid.transform), grid.height, grid.width],
        "aoi": aoi.wkt,
        "feather_px": FEATHER_PX,
        "resolution": job.cfg.resolution,
    }
    return identity_hash(key)


def _discard_unless(folder: Location, rhash: str, overwrite: bool) -> None:
    """Remove ``folder`` (the merge state) unless it belongs to the region ``rhash`` and is not
    being overwritten (``--overwrite`` merges every block again, as it maps every scene again)."""
    state = folder / "region.json"
    if folder.exists() and (
        overwrite or not state.is_file() or json.loads(state.read_text()).get("region_hash") != rhash
    ):
        log.info("discarding the merge state in %s (%s)", folder, "overwrite" if overwrite else "another region job")
        folder.rm()


def _prepare_scenes(
    cfg: JobConfig, work: Location, aoi, crs: CRS, b10_means: list[ModelB10], models: Future
) -> tuple[list[MappedScene], list[dict]]:
    """Find, ingest and check every scene (``b10_means``: the models' B10 means, for
    ``inputs.b10: model_mean``); scenes missing the AOI are skipped with a warning.
    Raises InputError for a scene without a CRS or at another resolution, and when none is left;
    the error of ``models`` (loading beside) as soon as it fails, before the next scene."""
    entries = list(cfg.scenes or [])
    if cfg.stac_search is not None:
        entries.append(
            search_items(cfg.stac_search, transform_bounds(crs, "EPSG:4326", *aoi.bounds), work / "stac_search.json")
        )
    sign = load_signer(cfg.href_signer)
    sources = find_scenes(entries, work / "items", sign)
    scenes, skipped = [], []
    for src in sources:
        if models.done() and models.exception() is not None:
            models.result()  # raises the models' error: no point ingesting more scenes
        folder = work / "scenes" / src.id
        with storage_errors(src.source, "scene"):
            found = location(src.source).exists()
        if not found:
            raise InputError(f"scene {src.origin} does not exist")
        sha = src.sha256 or sha256_tree(src.source)
        state, record = folder / "source.json", _ingest_record(cfg, src.source, sha, b10_means)
        if folder.exists() and (not state.is_file() or json.loads(state.read_text()) != record):
            folder.rm()  # the source or how it is ingested changed: its store and map are stale
        folder.makedirs()
        write_json_atomic(state, record)
        scene = ingest_job(
            src.source,
            folder / "scene.zarr",
            chunk=scene_chunk(cfg.block),
            nodata=cfg.nodata,
            inputs=_scene_inputs(cfg, src, folder, sign),
            b10_means=b10_means,
        )
        footprint = _check_scene(src.origin, scene.info, cfg.resolution, crs)
        reflectance_guard(scene, cfg.accept_units_mismatch, src.origin)  # refused before any scene is mapped
        if not footprint.intersects(aoi):
            log.warning("scene %s does not overlap the AOI: skipped", src.origin)
            skipped.append({"source": src.origin, "reason": "does not overlap the AOI"})
            folder.rm()
            continue
        ingest_id = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        scenes.append(MappedScene(src, folder, sha, scene, footprint, ingest_id))
    if not scenes:
        raise InputError(
            f"none of the {len(sources)} scene(s) overlaps the AOI ({', '.join(s.origin for s in sources)})"
        )
    return scenes, skipped


def _scene_inputs(cfg: JobConfig, src: SceneSource, folder: Location, sign) -> SceneInputs | None:
    """The job's ``inputs``; with ``stac_search.dem_collection``, its ``dem`` the collection's tiles
    over the scene's footprint (the STAC item's ``bbox``), found on the scenes' API."""
    search = cfg.stac_search
    if search is None or search.dem_collection is None:
        return cfg.inputs
    item = json.loads(location(src.source).read_text()) if src.source.endswith(".json") else {}
    bbox = item.get("bbox") or (shape(item["geometry"]).bounds if item.get("geometry") else None)
    if bbox is None:
        raise InputError(
            f"scene {src.origin}: stac_search.dem_collection finds DEM tiles over a STAC item's footprint, "
            "and this scene is not a STAC item with a bbox or geometry; set inputs.dem for it"
        )
    west, south, east, north = bbox if len(bbox) == 4 else (bbox[0], bbox[1], bbox[3], bbox[4])  # 2D or 3D
    dem = dem_items(search, (west, south, east, north), folder / "dem-items.json", sign)
    return (cfg.inputs or SceneInputs()).model_copy(update={"dem": dem})


def _ingest_record(cfg: JobConfig, source: str, sha: str, b10_means: list[ModelB10]) -> dict:
    """What a scene's store is ingested from and with (``source.json``): a change rebuilds it."""
    inputs = cfg.inputs.model_dump(mode="json") if cfg.inputs is not None else None
    ingest: dict[str, Any] = {"chunk": scene_chunk(cfg.block), "nodata": cfg.nodata, "inputs": inputs}
    ingest["b10_means"] = b10_means
    if cfg.stac_search is not None and cfg.stac_search.dem_collection is not None:
        ingest["dem_collection"] = cfg.stac_search.dem_collection
    return json.loads(json.dumps({"source": str(source), "sha256": sha, "ingest": ingest}))


def _check_scene(source: str, info: SceneInfo, resolution: float, crs: CRS):
    """-> the scene's footprint in the region CRS; refuses what cannot be placed on the region grid."""
    if info.crs is None:
        raise InputError(
            f"scene {source} has no CRS: a region job places each scene by its CRS; give a "
            "georeferenced raster (an L4S .h5 patch has none)"
        )
    found = off_resolution(info, resolution)
    if found is not None:
        raise InputError(
            f"scene {source}: pixels of {found}, the region maps at {resolution:g} m; the models "
            f"work at {resolution:g} m, so resample the scene first (mixed resolutions are refused)"
        )
    a = info.affine
    x0, y0 = a @ (0, 0)
    x1, y1 = a @ (info.width, info.height)
    return aoi_in_crs(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), info.crs, crs)


def _signature(scenes: list[MappedScene]) -> str:
    return hashlib.sha256(json.dumps(sorted((s.source.id, s.sha256) for s in scenes)).encode()).hexdigest()[:16]


def _start_models(job: ResolvedJob, session: ExitStack, work: int) -> tuple[ActorPool | None, Future]:
    """Start what predicts every scene, in the background of the scenes' ingest: locally the
    predictor (a future of it); on Ray, join the cluster and start one pool of predictor actors,
    which load their models at once, while the driver builds each model once as a check (a
    future of the checked spec). -> (the pool or None, the future); closed with ``session``.
    ``work``: the region's ``region_work``, which ``num_actors: auto`` follows."""
    cfg, spec = job.cfg, job.predictor_spec()
    background = session.enter_context(ThreadPoolExecutor(1, "models"))
    if cfg.executor == "local":
        return None, background.submit(spec.build)
    from ..infer.executors import actor_pool, ray_session

    session.enter_context(ray_session(cfg.ray))
    pool = session.enter_context(actor_pool(spec.shipped(), cfg.ray, work=work, shared=True))
    pool.start()
    return pool, background.submit(spec.check)


def _map_scenes(
    job: ResolvedJob, scenes: list[MappedScene], overwrite: bool, pool: ActorPool | None, models: Future
) -> list[dict] | None:
    """Each scene mapped into its folder (``scene_map.map_region_scene``), with the models loaded
    once. Local: one scene after the other, all predicted by ``models``' predictor. Ray: all predicted by
    ``pool``'s warm actors, two scenes in flight (``_map_side_by_side``); -> each actor's
    ``{actor, node, models_loaded}`` (None locally)."""
    cfg = job.cfg
    progress = RegionProgress([(s.scene.info.height, s.scene.info.width) for s in scenes], cfg.block, cfg.resolution)
    if pool is None:
        for i in range(len(scenes)):
            _map_scene(job, scenes, i, overwrite, progress, models)
        return None
    _map_side_by_side(job, scenes, overwrite, progress, pool, models)
    return pool.loads()


def _map_side_by_side(
    job: ResolvedJob,
    scenes: list[MappedScene],
    overwrite: bool,
    progress: RegionProgress,
    pool: ActorPool,
    models: Future,
) -> None:
    """Ray: each scene in a thread, ``SCENES_IN_FLIGHT`` at a time. While one scene's blocks are
    predicted the next one is prepared (hashed, planned) and waits for its turn on the pool
    (``ActorPool.take_turn``): it sends its first blocks once the other has sent its last, so the
    actors never wait between scenes, and a scene's products are written while the next one
    is predicted. The first error stops the scenes not started yet and is raised."""
    with ThreadPoolExecutor(SCENES_IN_FLIGHT, "scene") as threads:
        futures = [
            threads.submit(_map_scene, job, scenes, i, overwrite, progress, models, pool) for i in range(len(scenes))
        ]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            failed.result()  # raises the scene's error


def _map_scene(
    job: ResolvedJob,
    scenes: list[MappedScene],
    i: int,
    overwrite: bool,
    progress: RegionProgress,
    models: Future,
    pool: ActorPool | None = None,
) -> None:
    """Scene ``i`` mapped into its folder from the store the region ingested, without products of
    its own; its manifest goes to ``.manifest``."""
    s = scenes[i]
    log.info("region: scene %d/%d %s", i + 1, len(scenes), s.source.origin)
    try:
        s.manifest = map_region_scene(job, s, overwrite, models, pool=pool, on_block=partial(progress.block_done, i))
    finally:
        if pool is not None:  # after an error, the next scene must not wait for this one's turn
            pool.give_turn()
    progress.scene_done(i)


def _provenance(s: MappedScene) -> dict:
    return {
        "id": s.source.id,
        "source": s.source.origin,
        "sha256": s.sha256,
        "crs": s.crs.to_string(),
        "date": s.source.date,
        "cloud_cover": s.source.cloud_cover,
        "catalog_created": s.source.properties.get("created"),
        "catalog_published": s.source.properties.get("published"),
        "footprint_bounds": [round(v, 3) for v in s.footprint.bounds],
        "blocks": s.result["blocks"],
        "forward_passes": s.result["tiles"]["forward_passes"],
        "checks": s.result.get("checks", {}),
    }


def write_footprints(dest: Path, scenes: list[MappedScene], crs: CRS) -> None:
    """The ``scenes`` layer: one footprint per scene with its source, date and cloud cover."""
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(
        {
            "scene_id": [s.source.id for s in scenes],
            "source": [s.source.origin for s in scenes],
            "date": [s.source.date for s in scenes],
            "cloud_cover": [s.source.cloud_cover for s in scenes],
            "scene_crs": [s.crs.to_string() for s in scenes],
        },
        geometry=[s.footprint for s in scenes],
        crs=crs,
    )
    gdf.to_file(dest, layer="scenes", driver="GPKG")
