"""One region job end to end: ingest -> plan -> infer -> finish.

The output folder is locked while a job runs. Work in progress lives in ``OUT/.work``
(scene store, output store, block markers); finished products are written under
temporary names and moved into place, ``run.json`` last. Re-running an interrupted job
resumes from its finished blocks; re-running a finished one does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import zarr

from .checks.output import disk_full_is_clear
from .checks.pixels import require_resolution
from .checks.preflight import model_b10_means, preflight
from .checks.reflectance import reflectance_guard
from .checks.results import result_warnings
from .checks.units import sample_scene, units_guard
from .config import JobConfig, ensemble_members
from .errors import ConfigError, OutputLockedError
from .gdal_env import bounded_gdal_cache
from .hashing import sha256_tree
from .infer.device import PRECISION
from .infer.executors import StageContext, actor_pool, device_session, job_device, ray_session, run_local, run_ray
from .infer.shared_disk import require_shared_folder
from .infer.stages import PredictorSpec
from .ingest import ModelB10, Scene, ingest_job
from .ingest.scene import member_array
from .models.card import WEIGHTS_FILE, read_card
from .outputs.derive import MASK_NODATA, ProbabilitySource, min_object_pixels, window_reader, write_mask_and_polygons
from .outputs.manifest import package_versions, read_manifest, write_json_atomic
from .outputs.metadata import BANDS, SIDECARS, provenance_tags, write_sidecars
from .outputs.polygons import POLYGON_FILES
from .outputs.publish import move_all, product_names
from .outputs.publish_remote import publish_to_object_store
from .outputs.quicklook import write_quicklook
from .outputs.rasters import write_cog
from .outputs.store import NODATA, SLOPE, BlockStore, create_store
from .outputs.summary import assumed_pixel_m, describe_mapped
from .plan.tiling import Block, TileGrid, plan_blocks, tile_uses
from .progress import progress
from .storage import Location, exclusive_location, location, require_exists, storage_errors

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTPUTS = {  # the polygons' name follows the job's polygon_format: see outputs_for
    "probability": "probability.tif",
    "uncertainty": "uncertainty.tif",
    "mask": "mask.tif",
    "polygons": POLYGON_FILES["gpkg"],
    "quicklook": "quicklook.png",
    "zarr": "probability.zarr",
    **SIDECARS,  # QGIS styles, the mask's category names
}
__all__ = ["MASK_NODATA", "OUTPUTS", "IngestedScene", "job_hash", "outputs_for", "run_job"]


def outputs_for(polygon_format: str) -> dict[str, str]:
    """The products of a job writing its polygons as ``polygon_format`` (gpkg, parquet or fgb)."""
    return {**OUTPUTS, "polygons": POLYGON_FILES[polygon_format]}


def map_identity(cfg: JobConfig, model_shas: list[str], device: str) -> dict:
    """What makes two maps of the same input the same map: the models, the device type (``cpu`` /
    ``cuda``) with its arithmetic, and every setting that changes the map. Scene jobs and region
    jobs both hash it (:func:`job_hash`, ``region.job.region_hash``)."""
    return {
        "models": model_shas,
        "weights": [m.weight for m in ensemble_members(cfg).members],
        "device": device,
        "precision": PRECISION.get(device, "the device's"),
        **cfg.model_dump(
            mode="json",
            include={"tile", "overlap", "blend", "block", "threshold", "min_area_m2", "min_pixels", "nodata", "inputs"},
        ),
        **({"tta": True} if cfg.tta else {}),  # only when set: earlier jobs keep their hashes
    }


def job_hash(cfg: JobConfig, scene_sha: str, model_shas: list[str], device: str) -> str:
    """Identity of a scene job's result: its scene and :func:`map_identity`."""
    key = {"scene": scene_sha, **map_identity(cfg, model_shas, device)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def run_job(
    cfg: JobConfig,
    *,
    overwrite: bool = False,
    predictor=None,
    pool=None,
    on_block: Callable[[Block], None] | None = None,
    ingested: IngestedScene | None = None,
    products: bool = True,
) -> dict:
    """Run (or resume) a job; returns the run manifest (also written to ``OUT/run.json``).

    A region job (``scenes:``) runs in ``region.job``, which maps each scene through here.
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
    if cfg.scenes is not None:
        from .region.job import run_region  # the region layer sits on top of this module

        return run_region(cfg, overwrite=overwrite)
    entered = (time.perf_counter(), process_age_s())
    # out, free space, model files, inputs units: before anything is written
    cfg, model_files = preflight(cfg, overwrite)
    out = location(cfg.out)

    def busy():
        return OutputLockedError(
            f"{out} is being written by another job (lock {out / '.lock'} is held); "  # noqa: E731
            "wait for it or choose another output folder"
        )

    with ExitStack() as held:
        if out.is_local:  # entered first, left last: a full disk anywhere below ends in one clear error
            held.enter_context(disk_full_is_clear(out.path))
        with storage_errors(out, "out"):  # first contact with `out`: a bad bucket, key or endpoint fails here
            out.makedirs()
            held.enter_context(exclusive_location(out / ".lock", busy))
        held.enter_context(bounded_gdal_cache())
        held.enter_context(device_session(cfg.device, cfg.executor, cfg.ray))  # Ray's `auto` asks the cluster
        stage = Path(held.enter_context(tempfile.TemporaryDirectory(prefix="landslide-products-")))
        return _run_locked(
            cfg,
            out,
            overwrite,
            stage,
            predictor,
            pool,
            on_block,
            model_files,
            entered=entered,
            given=(ingested, products),
        )


@dataclass(frozen=True)
class IngestedScene:
    """A scene store its caller ingested, with the identity its jobs hash: the source's hash and
    the settings it was ingested with (a changed scene or setting must change the job's hash)."""

    scene: Scene
    sha256: str


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
    """The scene of a one-scene job (a region job names ``scenes`` and runs in ``region.job``)."""
    if cfg.scene is None:
        raise ConfigError("this job has no 'scene': a one-scene job needs one (a region job gives 'scenes')")
    return cfg.scene


def _run_locked(
    cfg: JobConfig,
    out: Location,
    overwrite: bool,
    scratch: Path,
    predictor=None,
    pool=None,
    on_block: Callable[[Block], None] | None = None,
    model_files: tuple | None = None,
    *,
    entered: tuple[float, float | None],
    given: tuple[IngestedScene | None, bool] = (None, True),
) -> dict:
    """``scratch``: a local folder for the products of a job whose ``out`` is on object storage;
    ``model_files``: the members' files as the preflight read them (card, weights, hash);
    ``entered``: when ``run_job`` began (``perf_counter()``) and how old the process was then;
    ``given``: ``run_job``'s ``ingested`` and ``products``."""
    ingested, products = given
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    members = ensemble_members(cfg)
    require_exists(_scene_source(cfg), "scene")
    cards = [read_card(m.model) for m in members.members]  # a bad card fails at once
    spec = replace(predictor_spec(cfg, members), model_files=model_files)
    prep = _start_preparing(cfg, spec, predictor, pool, ingested.sha256 if ingested else None)
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
        model_shas, scene_sha, device, jhash = _identify(cfg, members, cards, prep)
        if (finished := _finished_before(out, jhash, overwrite, outputs)) is not None:
            return finished
        work = _claim_work(out, jhash, fresh)
        stage = work.path if work.is_local else scratch  # where the products are written before publishing
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
        threshold = decision_threshold(cfg, members, cards)
        # The products are written while the Ray session closes (a second or more of waiting on
        # Ray's processes); finishing needs nothing from Ray.
        t_finish = time.perf_counter()
        tags = _product_tags(cards, model_shas, _scene_input(cfg, scene, scene_sha), threshold, jhash)
        finishing = background.submit(_finish, cfg, scene, store_path, stage, threshold, outputs, tags)
    summary, finish_s = finishing.result(), time.perf_counter() - t_finish
    warnings = _logged_warnings(warnings, summary, threshold)
    manifest = {
        "status": "complete",
        "job_hash": jhash,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": _timings(entered, t0, prep, ingest_s=ingest_s, prepare_s=t_plan - t0, infer_s=infer_s)
        | {"finish_s": finish_s, "forward_s": round(tally.forward_s, 3)},
        "inputs": {"scene": _scene_input(cfg, scene, scene_sha)},
        "warnings": [*scene.attrs.get("warnings", []), *warnings],
        "checks": checks,
        **_manifest_body(cfg, members, cards, model_shas, scene, device, plan, tally),
        **({"actors": actors} if actors is not None else {}),
        "summary": _summary(summary, threshold),
        "outputs": outputs,
    }
    return _publish_job(manifest, t0, stage, store_path, out, work)


def decision_threshold(cfg: JobConfig, members, cards: list) -> float:
    """The job's threshold, else the one its members' cards decide on together."""
    return cfg.threshold if cfg.threshold is not None else members.decision_threshold([c.threshold for c in cards])


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


def _identify(cfg: JobConfig, members, cards: list, prep: _Prepared) -> tuple[list[str], str, str, str]:
    """-> (the models' hashes, the scene's, the device type, the job's hash: see :func:`job_hash`)."""
    # The card's hash: the preflight refused weights that do not match it.
    model_shas = [
        c.weights_sha256 or sha256_tree(location(m.model) / WEIGHTS_FILE) for m, c in zip(members.members, cards)
    ]
    scene_sha = prep.scene_sha.result()
    device = job_device(cfg.device, cfg.executor, cfg.ray)
    return model_shas, scene_sha, device, job_hash(cfg, scene_sha, model_shas, device)


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
    None; ConfigError for another job's result unless overwriting, which first invalidates it."""
    previous = read_manifest(out)
    old_outputs = product_names(out, previous) if previous is not None else {}  # all inside ``out``
    if previous is not None and not overwrite:
        missing = [f for f in (old_outputs or outputs).values() if not (out / f).exists()]
        if previous.get("job_hash") == jhash and missing:
            raise ConfigError(
                f"{out} holds this job's run.json but {', '.join(missing)} is missing; "
                "use --overwrite to compute the job again"
            )
        if previous.get("job_hash") == jhash:
            log.info("%s already holds the finished result of this job (hash %s): nothing to do", out, jhash)
            _log_kept_derivation(previous, outputs, out)
            return {
                **previous,
                "blocks": {**previous["blocks"], "computed": 0, "resumed": previous["blocks"]["total"]},
                "tiles": {**previous["tiles"], "forward_passes": 0},
            }
        raise ConfigError(
            f"{out} holds the result of a different job (hash {previous.get('job_hash')}, "
            f"this job {jhash}); use another output folder or --overwrite"
        )
    if previous is not None:  # overwriting: from now on nothing may vouch for the folder's old products
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
        pool = session.enter_context(actor_pool(checked.shipped(), cfg.ray))
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


def model_records(members, cards: list, model_shas: list[str]) -> list[dict]:
    """run.json's ``models``: each member's folder, card (name, architecture, features, whether
    trained, threshold), weight and weights hash; a region job records them the same way."""
    return [
        {
            "path": str(m.model),
            "name": c.name,
            "arch": c.arch,
            "encoder": c.encoder,
            "features": c.features,
            "weight": m.weight,
            "trained": c.trained,
            "threshold": c.threshold,
            "sha256": sha,
        }
        for m, c, sha in zip(members.members, cards, model_shas)
    ]


def _manifest_body(
    cfg: JobConfig, members, cards: list, model_shas: list[str], scene: Scene, device: str, plan: _Plan, tally: _Tally
) -> dict:
    """The manifest's record of the models, versions, scene grid, device, tiles and blocks."""
    info, grid = scene.info, plan.grid
    return {
        "config": cfg.model_dump(mode="json"),
        "models": model_records(members, cards, model_shas),
        "versions": package_versions(),
        "scene": {
            "height": info.height,
            "width": info.width,
            "crs": info.crs_wkt,
            "transform": list(info.transform),
            "pixel_area_m2": info.pixel_area_m2,
        },
        "device": {"type": device, "precision": PRECISION[device]},
        "tiles": {
            "grid": grid.n_tiles,
            "tile": cfg.tile,
            "stride": cfg.stride,
            "forward_passes": tally.forward,
            "computed_in_blocks": tally.tiles,
            **_reuse_figures(tally.forward, len(members.members), grid, plan.todo),
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
    _publish(stage / "final", store_path, out, manifest["outputs"])
    work.rm()
    summary = manifest["summary"]
    if "objects" not in summary:  # run_job(products=False): the probability store alone
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


def predictor_spec(cfg: JobConfig, members) -> PredictorSpec:
    """What builds the job's ensemble predictor (``members``: the job's ``EnsembleConfig``)."""
    return PredictorSpec(members, cfg.tile, cfg.stride, cfg.blend, cfg.batch_size, cfg.device, cfg.threads, tta=cfg.tta)


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


def _product_tags(cards: list, model_shas: list[str], scene: dict, threshold: float, jhash: str) -> dict[str, str]:
    """The rasters' provenance tags; ``scene``: :func:`_scene_input`."""
    models = [{"name": c.name, "sha256": sha} for c, sha in zip(cards, model_shas)]
    record = {"source": scene["path"], "sha256": scene["sha256"], "date": scene["acquired"]}
    return provenance_tags(models, [record], threshold, jhash)


def _finish(
    cfg: JobConfig,
    scene: Scene,
    store_path: Path | Location,
    work: Path,
    threshold: float,
    outputs: dict[str, str],
    tags: dict[str, str],
) -> dict:
    """Write the products (all but the store) into ``work/final`` window by window; returns the
    summary. The mask and polygons come from the step ``vectorize`` repeats later, and the
    scene's slope goes into the store as that step reads it, for ``vectorize`` to read there.
    ``tags``: the rasters' provenance (:func:`.outputs.metadata.provenance_tags`)."""
    info = scene.info
    final = work / "final"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    if "mask" not in outputs:  # the probability store alone (``run_job(products=False)``): no summary
        return {}
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
                scratch=work / f"{key}.scratch.tif",
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
            scratch=work / "mask.scratch.tif",
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


def _publish(final: Path, store_path: Location, out: Location, outputs: dict[str, str]) -> None:
    """Move the products into ``out``: the store after the files (until then it stays next to its
    block markers, so a failure costs no block), ``run.json`` last. A failure part-way moves back
    what was moved: no product lies under its final name without the run.json that vouches for it.
    On object storage: uploaded under temporary keys and copied into place, see ``publish_remote``."""
    if out.is_remote:
        publish_to_object_store(final, store_path, out, outputs)
        return
    moves = [(final / name, out.path / name) for key, name in outputs.items() if key != "zarr"]
    moves += [(store_path.path, out.path / outputs["zarr"]), (final / "run.json", out.path / "run.json")]
    move_all(moves)
