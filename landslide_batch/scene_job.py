"""One scene job end to end: ingest -> plan -> infer -> products -> publish.

The output folder is locked while a job runs. Work in progress lives in ``OUT/.work``
(scene store, output store, block markers); finished products are written under
temporary names and moved into place, ``run.json`` last. Re-running an interrupted job
resumes from its finished blocks; re-running a finished one does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TypeVar

from .checks.output import disk_full_is_clear
from .checks.pixels import require_resolution
from .checks.preflight import model_b10_means, preflight
from .checks.reflectance import reflectance_guard
from .checks.results import result_warnings
from .checks.units import sample_scene, units_guard
from .config import JobConfig, ensemble_members
from .errors import ConfigError
from .gdal_env import bounded_gdal_cache
from .hashing import sha256_tree
from .infer.executors import (
    StageContext,
    actor_pool,
    device_session,
    job_device,
    ray_session,
    run_local,
    run_ray,
    scene_work,
)
from .infer.shared_disk import require_shared_folder
from .infer.stages import PredictorSpec
from .ingest import ModelB10, Scene, ingest_job
from .outputs.folder import output_lock, previous_result
from .outputs.manifest import SCENE_JOB, package_versions, write_json_atomic
from .outputs.metadata import provenance_tags
from .outputs.products import OUTPUTS, outputs_for, write_products
from .outputs.publish import publish_products
from .outputs.store import BlockStore, create_store
from .outputs.summary import describe_mapped
from .plan.tiling import Block, TileGrid, plan_blocks, tile_uses
from .progress import progress
from .resolved import ResolvedJob, identity_hash, map_identity
from .storage import Location, location, require_exists, storage_errors

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["IngestedScene", "job_hash", "run_scene_job"]


def job_hash(cfg: JobConfig, scene_sha: str, model_shas: list[str], device: str) -> str:
    """Identity of a scene job's result: its scene and ``resolved.map_identity``."""
    return identity_hash({"scene": scene_sha, **map_identity(cfg, ensemble_members(cfg), model_shas, device)})


def run_scene_job(
    job: ResolvedJob,
    *,
    overwrite: bool = False,
    entered: tuple[float, float | None] | None = None,
    predictor=None,
    pool=None,
    on_block: Callable[[Block], None] | None = None,
    ingested: IngestedScene | None = None,
    products: bool = True,
) -> dict:
    """Run (or resume) the scene job ``job`` (its models read once: ``preflight.resolve_job``);
    returns the run manifest (also written to ``OUT/run.json``).

    ``entered``: when the job began (``perf_counter()``) and how old the process was then.
    ``predictor``: an ``EnsemblePredictor`` already built for this job's settings (a region job
    loads its models once for all scenes); the local executor then predicts with it.
    ``pool``: the same for Ray, an ``infer.actor_pool.ActorPool`` of warm predictor actors
    (started in the caller's Ray session), which the job uses and leaves running.
    ``on_block``: called with each block once written (a region's progress over its scenes).
    ``ingested``: ``cfg.scene`` as its caller already ingested it (a region's scene), used as it
    is: neither copied nor hashed again. ``products=False``: only the probability store and
    ``run.json`` (its ``outputs`` say so), for a region, which writes the products of its own map.

    ``out`` may be a local folder or an object-store prefix: there the lock is a lease object,
    the work (scene store, output store, markers) lives under ``OUT/.work/`` and the products
    are written in a local temporary folder, then published (``outputs/publish_remote.py``)."""
    entered = entered or (time.perf_counter(), process_age_s())
    preflight(job, overwrite)  # out, free space: before anything is written
    cfg = job.cfg
    out = location(cfg.out)

    with ExitStack() as held:
        if out.is_local:  # entered first, left last: a full disk anywhere below ends in one clear error
            held.enter_context(disk_full_is_clear(out.path))
        with storage_errors(out, "out"):  # first contact with `out`: a bad bucket, key or endpoint fails here
            out.makedirs()
            held.enter_context(output_lock(out))
        held.enter_context(bounded_gdal_cache())
        held.enter_context(device_session(cfg.device, cfg.executor, cfg.ray))  # Ray's `auto` asks the cluster
        stage = Path(held.enter_context(tempfile.TemporaryDirectory(prefix="landslide-products-")))
        job = job.on_device(job_device(cfg.device, cfg.executor, cfg.ray))
        return _run_locked(
            job, out, overwrite, stage, predictor, pool, on_block, entered=entered, given=(ingested, products)
        )


@dataclass(frozen=True)
class IngestedScene:
    """A scene store its caller ingested, with the identity its jobs hash: the source's hash and
    the settings it was ingested with (a changed scene or setting must change the job's hash)."""

    scene: Scene
    ingest_id: str  # a hash of the source's hash and the ingest settings, not of the scene's bytes


@dataclass
class _Plan:
    """The scene's tile grid and blocks, sorted into those resumed, without valid pixels and to do."""

    grid: TileGrid
    blocks: list[Block]
    resumed: list[Block]
    empty: list[Block]
    todo: list[Block]


@dataclass
class _Tally:
    """What the computed blocks report, summed (the manifest's ``tiles`` and ``blocks``)."""

    forward: int = 0
    forward_s: float = 0.0  # seconds in the models' forward passes (CPU), summed over workers
    tiles: int = 0
    kept_at_end: int = 0
    node_of: dict[str, str] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)  # block -> Ray's attempt (its actor or node died)


@dataclass
class _Prepared:
    """The work started beside the job's lock and ingest: hashing the scene, and loading (local)
    or checking (Ray) the models, whose errors surface before any block is predicted (and stop
    an ingest still running)."""

    scene_sha: Future
    models: Future
    times: dict[str, float]  # hash_s, models_s: seconds each took, once done
    ended: dict[str, float]  # the same keys: perf_counter() when each was done (before its future is)


def _scene_source(cfg: JobConfig) -> Path | str:
    """The scene of a scene job (a region job names ``scenes`` and runs in ``region.job``)."""
    if cfg.scene is None:
        raise ConfigError("this job has no 'scene': a scene job needs one (a region job gives 'scenes')")
    return cfg.scene


def _run_locked(
    job: ResolvedJob,
    out: Location,
    overwrite: bool,
    local_stage: Path,
    predictor=None,
    pool=None,
    on_block: Callable[[Block], None] | None = None,
    *,
    entered: tuple[float, float | None],
    given: tuple[IngestedScene | None, bool] = (None, True),
) -> dict:
    """``local_stage``: the local folder for the products of a job whose ``out`` is on object storage;
    ``entered``: when the job began (``perf_counter()``) and how old the process was then;
    ``given``: ``run_scene_job``'s ``ingested`` and ``products``."""
    ingested, products = given
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cfg, members, cards = job.cfg, job.members, job.cards
    require_exists(_scene_source(cfg), "scene")
    spec = job.predictor_spec()
    prep = _start_preparing(cfg, spec, predictor, pool, ingested.ingest_id if ingested else None)
    outputs = outputs_for(cfg.polygon_format) if products else {"zarr": OUTPUTS["zarr"]}

    with ExitStack() as session:
        # One background thread: ingest, then the products at the end. Unwound last, so leaving
        # the session (even on an error) waits for whichever of them runs: never a writer
        # outside the lock. Ray starts in the main thread (not from a worker), beside ingest.
        background = session.enter_context(ThreadPoolExecutor(1, "stores"))
        stop = threading.Event()  # set when the models fail to load, or on any error: the ingest ends
        session.callback(stop.set)
        ingest = partial(_ingest_scene, cfg, out / ".work", model_b10_means(members, cards), ingested, stop)
        fresh = ingested is None and _nothing_to_resume(out, overwrite)  # then ingest while hashing
        scene_ingest = background.submit(ingest) if fresh else None
        scene_sha = prep.scene_sha.result()
        jhash = identity_hash({"scene": scene_sha, **job.identity()})
        if (finished := _finished_before(out, jhash, overwrite, outputs)) is not None:
            return finished
        work = _claim_work(out, jhash, fresh)
        stage = work.path if work.is_local else local_stage  # where the products are written before publishing
        scene_ingest = scene_ingest or background.submit(ingest)
        _join_ray(cfg, session, work)
        scene, ingest_s = _unless_models_fail(scene_ingest, prep.models, stop)
        store_path = _output_store(work, scene, cfg.block, jhash)
        checks, warnings = _scene_checks(cfg, scene, cards)  # before any block is predicted
        store = BlockStore(store_path, work / "blocks")
        plan = _plan(cfg, scene, store)
        rows, pool = _start_inference(cfg, session, scene, plan, spec, store, prep.models, pool)
        background.submit(_import_finishing)  # beside the blocks: its imports are not the finish's seconds
        t_loop = time.perf_counter()
        tally = _tally_blocks(rows, plan.todo, lambda: max(t_loop, prep.ended.get("models_s", t_loop)), on_block)
        t_plan = max(t_loop, prep.ended["models_s"])  # inference starts once the models are ready
        actors = pool.loads() if pool is not None else None  # how often each actor loaded its models
        infer_s = time.perf_counter() - t_plan
        threshold = job.threshold()
        # The products are written while the Ray session closes (a second or more of waiting on
        # Ray's processes); finishing needs nothing from Ray.
        t_finish = time.perf_counter()
        tags = _product_tags(job, _scene_input(cfg, scene, scene_sha), threshold, jhash)
        finishing = background.submit(write_products, cfg, scene, store_path, stage, threshold, outputs, tags)
    summary, finish_s = finishing.result(), time.perf_counter() - t_finish
    warnings = _logged_warnings(warnings, summary, threshold)
    manifest = {
        "status": "complete",
        "kind": SCENE_JOB,
        "job_hash": jhash,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": _timings(entered, t0, prep, ingest_s=ingest_s, prepare_s=t_plan - t0, infer_s=infer_s)
        | {"finish_s": finish_s, "forward_s": round(tally.forward_s, 3)},
        "inputs": {"scene": _scene_input(cfg, scene, scene_sha)},
        "warnings": [*scene.attrs.get("warnings", []), *warnings],
        "checks": checks,
        **_manifest_body(job, scene, plan, tally),
        **({"actors": actors} if actors is not None else {}),
        "summary": _summary(summary, threshold),
        "outputs": outputs,
    }
    return _publish_job(manifest, t0, stage, store_path, out, work)


def _scene_checks(cfg: JobConfig, scene: Scene, cards: list) -> tuple[dict, list[str]]:
    """A scene in other units than the models', or whose reflectance is off by an offset (applied
    twice, or missed), refuses (exit 2); -> (the checks for ``run.json``, warnings)."""
    unit_checks, warnings = units_guard(sample_scene(scene), cards, cfg.accept_units_mismatch)
    reflectance, offset_warnings = reflectance_guard(scene, cfg.accept_units_mismatch, str(cfg.scene))
    checks = {
        "units": [v.record() for v in unit_checks],
        "reflectance": reflectance,  # how each band became reflectance, and the offset verdict
        "coverage": scene.attrs.get("ingest", {}).get("coverage"),  # of the DEM and SCL
    }
    return checks, warnings + offset_warnings


def _summary(summary: dict, threshold: float) -> dict:
    """``run.json``'s summary: the map's, its threshold, and (with products) whether it is implausible."""
    out = {**summary, "threshold": threshold}
    return out | ({"implausible": bool(result_warnings(out))} if summary else {})


def _logged_warnings(warnings: list[str], summary: dict, threshold: float) -> list[str]:
    """``warnings`` with those on the map's ``summary`` (none without products), all logged."""
    warnings = warnings + (result_warnings({**summary, "threshold": threshold}) if summary else [])
    for msg in warnings:
        log.warning("%s", msg)
    return warnings


def _start_preparing(cfg: JobConfig, spec: PredictorSpec, predictor, pool, scene_sha: str | None) -> _Prepared:
    """Start hashing the scene and building the job's predictor (local: the models built from the
    files the preflight read, folded; Ray: the spec, its models built once as a check) in the
    background, beside the lock, ingest and Ray's start-up: torch and the models' imports take
    over a second, which here overlaps work that mostly runs without the GIL. Errors surface on
    the driver before any block is predicted (see ``_unless_models_fail``). The local executor
    predicts with this very predictor; a given ``predictor`` or ``pool`` was checked when it was
    made; a known ``scene_sha`` (an ingested scene's) is not computed again."""
    times: dict[str, float] = {}
    ended: dict[str, float] = {}

    def timed(name: str, step: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            t = time.perf_counter()
            try:
                return step()
            finally:
                ended[name] = time.perf_counter()
                times[name] = ended[name] - t

        return run

    if cfg.executor == "local":
        load = spec.build if predictor is None else lambda: predictor
    else:  # the driver's check: every model built once (spec.check returns the spec holding its files)
        load = spec.check if pool is None else lambda: pool.spec
    prep = ThreadPoolExecutor(2, "prepare")
    hashed = prep.submit(timed("hash_s", lambda: scene_sha or sha256_tree(_scene_source(cfg))))
    models = prep.submit(timed("models_s", load))
    prep.shutdown(wait=False)
    return _Prepared(hashed, models, times, ended)


def _unless_models_fail(stores: Future[T], models: Future, stop: threading.Event) -> T:
    """``stores``' result, unless the models (loading beside it) fail first: then ``stop`` is set,
    which ends the ingest at its next window, and the models' error is raised at once."""
    done, _ = wait([stores, models], return_when=FIRST_COMPLETED)
    if stores not in done and models.exception() is not None:
        stop.set()
        models.result()  # raises the models' error
    return stores.result()


def _timings(entered: tuple[float, float | None], t0: float, prep: _Prepared, **steps: float) -> dict[str, float]:
    """The job's seconds for ``run.json``: the process's age when the job began, preflight (with
    the lock and device session), hashing and model loading (beside ingest), when the models were
    ready, and ``steps``; ``total_s`` is added when the manifest is written."""
    return {
        **({"process_age_at_job_s": entered[1]} if entered[1] is not None else {}),
        "preflight_s": t0 - entered[0],
        **prep.times,
        "models_ready_s": prep.ended["models_s"] - t0,
        **steps,
    }


def _finished_before(out: Location, jhash: str, overwrite: bool, outputs: dict[str, str]) -> dict | None:
    """The manifest of this very job when ``out`` holds its finished result (nothing to do), else
    None; ConfigError for another job's result unless overwriting, which first invalidates it
    (``outputs.folder.previous_result``)."""
    previous, old_outputs = previous_result(out, jhash, overwrite, "scene job")
    if previous is not None and not overwrite:
        missing = [f for f in (old_outputs or outputs).values() if not (out / f).exists()]
        if missing:
            raise ConfigError(
                f"{out} holds this job's run.json but {', '.join(missing)} is missing; "
                "use --overwrite to compute the job again"
            )
        log.info("%s already holds the finished result of this job (hash %s): nothing to do", out, jhash)
        _log_kept_derivation(previous, outputs, out)
        return {
            **previous,
            "blocks": {**previous["blocks"], "computed": 0, "resumed": previous["blocks"]["total"]},
            "tiles": {**previous["tiles"], "forward_passes": 0},
        }
    if overwrite:  # from now on nothing may vouch for the folder's old products
        (out / "run.json").rm()
        old_polygons = old_outputs.get("polygons")
        # another format's file (or one this job does not write) would outlive the job it came from
        if old_polygons and old_polygons != outputs.get("polygons"):
            (out / old_polygons).rm()
    return None


def _join_ray(cfg: JobConfig, session: ExitStack, work: Location) -> None:
    """A Ray job joins its cluster for ``session`` (from the main thread, beside ingest), and
    checks, before any compute, that every node sees a local working store."""
    if cfg.executor == "ray":
        session.enter_context(ray_session(cfg.ray))
        if work.is_local:
            require_shared_folder(work.path)


def _nothing_to_resume(out: Location, overwrite: bool) -> bool:
    """Whether ``out`` holds neither work to resume nor a result this job could find finished: then
    the job creates ``OUT/.work`` before its hash is known, and ingests while it hashes (the two
    read the scene once from disk, not one after the other)."""
    return not (out / ".work").exists() and (overwrite or not (out / "run.json").exists())


def _claim_work(out: Location, jhash: str, fresh: bool = False) -> Location:
    """``OUT/.work`` for this job: another job's unfinished work there is discarded (``fresh``: the
    job created it itself, see :func:`_nothing_to_resume`); -> its location."""
    work = out / ".work"
    state = work / "job.json"
    if not fresh and work.exists() and (not state.is_file() or json.loads(state.read_text()).get("job_hash") != jhash):
        log.info("discarding unfinished work of a different job in %s", work)
        work.rm()
    work.makedirs()
    write_json_atomic(state, {"job_hash": jhash})
    return work


def _plan(cfg: JobConfig, scene: Scene, store: BlockStore) -> _Plan:
    """The tile grid and blocks, each resumed (finished before), without a valid pixel (marked
    done at once: the store's fill value is already nodata) or to compute."""
    info = scene.info
    grid = TileGrid(info.height, info.width, cfg.tile, cfg.stride)
    blocks = plan_blocks(grid, cfg.block)
    plan = _Plan(grid, blocks, [], [], [])
    done = store.done_keys()
    for b in blocks:
        if b.key in done:
            plan.resumed.append(b)
        elif not scene.read_valid(b.y0, b.y1, b.x0, b.x1).any():
            store.mark_done(b)
            plan.empty.append(b)
        else:
            plan.todo.append(b)
    log.info(
        "scene %dx%d px, %d tiles of %d px (stride %d) in %d block(s): %d to compute, %d resumed, "
        "%d without valid pixels",
        info.height,
        info.width,
        grid.n_tiles,
        cfg.tile,
        cfg.stride,
        len(blocks),
        len(plan.todo),
        len(plan.resumed),
        len(plan.empty),
    )
    return plan


def _start_inference(
    cfg: JobConfig,
    session: ExitStack,
    scene: Scene,
    plan: _Plan,
    spec: PredictorSpec,
    store: BlockStore,
    models: Future,
    pool,
) -> tuple[Iterator[dict], object]:
    """Start predicting the blocks to do: locally with the models loading in the background (the
    first block is read meanwhile), or on Ray's actors (``pool``, or a pool started in ``session``).
    -> (the computed blocks' rows as they come, the actor pool or None)."""
    ctx = StageContext(scene.path, plan.grid, spec, store)
    if cfg.executor == "local":
        return run_local(plan.todo, ctx, models, cfg.prefetch), None
    # The driver's check, before any actor starts; the weights it read go to the actors
    # through Ray's object store, so no actor reads a model path.
    checked = models.result()
    if pool is None:
        pool = session.enter_context(actor_pool(checked.shipped(), cfg.ray, work=scene_work(plan.todo)))
    return run_ray(plan.todo, ctx, pool), pool


def _tally_blocks(
    rows: Iterable[dict], todo: list[Block], since: Callable[[], float], on_block: Callable[[Block], None] | None
) -> _Tally:
    """Sum the computed blocks' rows, logging the rate so far (tiles / seconds ``since()``) and
    calling ``on_block`` with each block once written."""
    tally = _Tally()
    by_key = {b.key: b for b in todo}
    for i, row in enumerate(progress(rows, "infer", "block", total=len(todo)), 1):
        tally.forward += row["forward_passes"]
        tally.forward_s += row["forward_s"]
        tally.tiles += row["tiles"]
        tally.node_of[row["key"]] = row["node"]
        if row["attempt"]:
            tally.retried[row["key"]] = row["attempt"]
        tally.kept_at_end += row["kept_tiles"] if row["last_in_stripe"] else 0
        dt = time.perf_counter() - since()
        rate = tally.tiles / dt if dt else 0.0
        log.info("block %s done (%d/%d): %d tiles, %.1f tiles/s so far", row["key"], i, len(todo), row["tiles"], rate)
        if on_block is not None:
            on_block(by_key[row["key"]])
    return tally


def _manifest_body(job: ResolvedJob, scene: Scene, plan: _Plan, tally: _Tally) -> dict:
    """The manifest's record of the models, versions, scene grid, device, tiles and blocks."""
    cfg, info, grid = job.cfg, scene.info, plan.grid
    return {
        "config": cfg.model_dump(mode="json"),
        "models": job.model_records(),
        "versions": package_versions(),
        "scene": {
            "height": info.height,
            "width": info.width,
            "crs": info.crs_wkt,
            "transform": list(info.transform),
            "pixel_area_m2": info.pixel_area_m2,
        },
        "device": {"type": job.device, "precision": job.precision},
        "tiles": {
            "grid": grid.n_tiles,
            "tile": cfg.tile,
            "stride": cfg.stride,
            "forward_passes": tally.forward,
            "computed_in_blocks": tally.tiles,
            **_reuse_figures(tally.forward, len(job.members.members), grid, plan.todo),
            "kept_at_end": tally.kept_at_end,
        },
        "blocks": {
            "total": len(plan.blocks),
            "computed": len(plan.todo),
            "skipped_nodata": len(plan.empty),
            "resumed": len(plan.resumed),
            "node_of": tally.node_of,
            "per_node": dict(Counter(tally.node_of.values())),
            "retried": tally.retried,
        },
    }


def _publish_job(manifest: dict, t0: float, stage: Path, store_path: Location, out: Location, work: Location) -> dict:
    """Write ``run.json`` (with the job's total seconds) beside the products and move them all
    into ``out``; the working folder goes. -> the manifest."""
    timings = {**manifest["timings"], "total_s": time.perf_counter() - t0}  # the moves below come after it
    manifest["timings"] = {k: round(v, 3) for k, v in timings.items()}
    write_json_atomic(stage / "final" / "run.json", manifest)
    publish_products(stage / "final", store_path, out, manifest["outputs"])
    work.rm()
    summary = manifest["summary"]
    if "objects" not in summary:  # products=False: the probability store alone
        log.info("finished: %s (the probability map, no products)", out / "run.json")
        return manifest
    log.info("finished: %s (%d landslide objects, %s)", out / "run.json", summary["objects"], describe_mapped(summary))
    return manifest


def _import_finishing() -> None:
    """Import what the polygons need (scipy.ndimage, shapely, geopandas: over half a second) while
    the blocks are predicted, rather than before the first block or on the finish's critical path."""
    import geopandas  # noqa: F401
    import shapely.ops  # noqa: F401
    import shapely.strtree  # noqa: F401
    from scipy import ndimage  # noqa: F401


def process_age_s() -> float | None:
    """Seconds since this process started (its interpreter start-up and imports included), from
    Linux's ``/proc``; None elsewhere. Recorded in ``run.json`` to tell a job's fixed cost apart."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _reuse_figures(forward: int, members: int, grid: TileGrid, todo: list) -> dict:
    """Tiles the computed blocks need (each once) and forward passes per needed tile and member:
    1.0 when every tile ran once; more where tiles ran twice (after an actor restart, or
    beyond the kept tiles' memory bound); less where tiles without a valid pixel were skipped."""
    needed = int((tile_uses(grid, todo) > 0).sum())
    return {"needed": needed, "redundancy": round(forward / (members * needed), 4) if needed else None}


def scene_chunk(block: int) -> int:
    """Chunk side of a scene store for blocks of ``block`` px: at most 512, dividing the block."""
    return min(512, block) if block % min(512, block) == 0 else block


def _ingest_scene(
    cfg: JobConfig,
    work: Location,
    b10_means: list[ModelB10],
    ingested: IngestedScene | None,
    stop: threading.Event,
) -> tuple[Scene, float]:
    """Ingest (or resume) the scene store in ``work`` (created if need be: a fresh job ingests
    before claiming it), unless it is ``ingested`` already (``b10_means``: the models' B10 means,
    for ``inputs.b10: model_mean``; ``stop``: ends the ingest, see ``ingest_job``);
    -> (scene, ingest seconds). A scene at another pixel size than the models' is refused here
    (a region's scenes were checked as it ingested them)."""
    t_ingest = time.perf_counter()
    if ingested is not None:
        return ingested.scene, 0.0
    work.makedirs()
    scene = ingest_job(
        _scene_source(cfg),
        work / "scene.zarr",
        chunk=scene_chunk(cfg.block),
        nodata=cfg.nodata,
        inputs=cfg.inputs,
        b10_means=b10_means,
        stop=stop,
    )
    require_resolution(_scene_source(cfg), scene.info, cfg.resolution)
    return scene, time.perf_counter() - t_ingest


def _output_store(work: Location, scene: Scene, block: int, jhash: str) -> Location:
    """The job's output store in ``work``, created if there is none yet; -> its location."""
    store_path = work / "probability.zarr"
    if not store_path.exists():
        # No store, no finished block: markers without their data would resume into a map of nodata.
        (work / "blocks").rm()
        building = work / "probability.zarr.partial"  # built aside: a half-created store is never resumed
        building.rm()
        create_store(building, scene.info, block, jhash)
        building.move_to(store_path)
    return store_path


def _scene_input(cfg: JobConfig, scene: Scene, scene_sha: str) -> dict:
    """run.json's ``inputs.scene``: the source, its hash, and its acquisition date (ISO) when the
    ingest found one (a Sentinel-2 product or STAC item; None for a plain GeoTIFF)."""
    return {"path": str(cfg.scene), "sha256": scene_sha, "acquired": scene.attrs.get("ingest", {}).get("acquired")}


def _product_tags(job: ResolvedJob, scene: dict, threshold: float, jhash: str) -> dict[str, str]:
    """The rasters' provenance tags; ``scene``: :func:`_scene_input`."""
    models = [{"name": c.name, "sha256": sha} for c, sha in zip(job.cards, job.model_shas)]
    record = {"source": scene["path"], "sha256": scene["sha256"], "date": scene["acquired"]}
    return provenance_tags(models, [record], threshold, jhash)


def _log_kept_derivation(previous: dict, outputs: dict[str, str], out: Location) -> None:
    """A finished job found re-derived products (``vectorize``): they are kept, and the log says so."""
    derived = previous.get("derivations") or []
    if derived:
        last = derived[-1]
        log.info(
            "%s: mask and polygons were re-derived on %s (threshold %s, min area %s m², %s) and are kept; "
            "`landslide-batch vectorize` derives them again",
            out,
            last["time"],
            last["threshold"],
            last["min_area_m2"],
            last["polygons"],
        )
    current = previous.get("outputs", {}).get("polygons")
    if current and "polygons" in outputs and current != outputs["polygons"]:
        log.warning(
            "%s: polygons stay in %s; `landslide-batch vectorize %s --format %s` writes %s without running the models",
            out,
            current,
            out,
            Path(outputs["polygons"]).suffix[1:],
            outputs["polygons"],
        )
