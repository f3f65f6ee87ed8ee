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
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

from .checks.output import disk_full_is_clear
from .checks.preflight import preflight
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
from .ingest import Scene, ingest_job
from .models.card import WEIGHTS_FILE, read_card
from .outputs.derive import MASK_NODATA, ProbabilitySource, min_object_pixels, window_reader, write_mask_and_polygons
from .outputs.manifest import package_versions, read_manifest, write_json_atomic
from .outputs.polygons import POLYGON_FILES
from .outputs.publish import move_all
from .outputs.publish_remote import publish_to_object_store
from .outputs.quicklook import write_quicklook
from .outputs.rasters import write_cog
from .outputs.store import NODATA, SLOPE, BlockStore, create_store
from .outputs.summary import assumed_pixel_m, describe_mapped
from .plan.tiling import Block, TileGrid, plan_blocks, tile_uses
from .storage import Location, exclusive_location, location, require_exists, storage_errors

log = logging.getLogger(__name__)

OUTPUTS = {  # the polygons' name follows the job's polygon_format: see outputs_for
    "probability": "probability.tif",
    "uncertainty": "uncertainty.tif",
    "mask": "mask.tif",
    "polygons": POLYGON_FILES["gpkg"],
    "quicklook": "quicklook.png",
    "zarr": "probability.zarr",
}
__all__ = ["MASK_NODATA", "OUTPUTS", "job_hash", "outputs_for", "run_job"]


def outputs_for(polygon_format: str) -> dict[str, str]:
    """The products of a job writing its polygons as ``polygon_format`` (gpkg, parquet or fgb)."""
    return {**OUTPUTS, "polygons": POLYGON_FILES[polygon_format]}


def job_hash(cfg: JobConfig, scene_sha: str, model_shas: list[str], device: str) -> str:
    """Identity of a job's result: inputs, models, the device type (``cpu`` / ``cuda``) with its
    arithmetic, and every setting that changes the map."""
    key = {
        "scene": scene_sha,
        "models": model_shas,
        "weights": [m.weight for m in ensemble_members(cfg).members],
        "device": device,
        "precision": PRECISION[device],
        **cfg.model_dump(
            mode="json",
            include={"tile", "overlap", "blend", "block", "threshold", "min_area_m2", "min_pixels", "nodata", "inputs"},
        ),
        **({"tta": True} if cfg.tta else {}),  # only when set: earlier jobs keep their hashes
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def run_job(
    cfg: JobConfig,
    *,
    overwrite: bool = False,
    predictor=None,
    pool=None,
    on_block: Callable[[Block], None] | None = None,
) -> dict:
    """Run (or resume) a job; returns the run manifest (also written to ``OUT/run.json``).

    A region job (``scenes:``) runs in ``region.job``, which maps each scene through here.
    ``predictor``: an ``EnsemblePredictor`` already built for this job's settings (a region job
    loads its models once for all scenes); the local executor then predicts with it.
    ``pool``: the same for Ray, an ``infer.actor_pool.ActorPool`` of warm predictor actors
    (started in the caller's Ray session), which the job uses and leaves running.
    ``on_block``: called with each block once written (a region's progress over its scenes).

    ``out`` may be a local folder or an object-store prefix: there the lock is a lease object,
    the work (scene store, output store, markers) lives under ``OUT/.work/`` and the products
    are written in a local temporary folder, then published (``outputs/publish_remote.py``)."""
    if cfg.scenes is not None:
        from .region.job import run_region  # the region layer sits on top of this module

        return run_region(cfg, overwrite=overwrite)
    cfg, model_files = preflight(
        cfg, overwrite
    )  # out, free space, model folders, inputs units: before anything is written
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
        return _run_locked(cfg, out, overwrite, stage, predictor, pool, on_block, model_files)


def _run_locked(
    cfg: JobConfig,
    out: Location,
    overwrite: bool,
    scratch: Path,
    predictor=None,
    pool=None,
    on_block: Callable[[Block], None] | None = None,
    model_files: tuple | None = None,
) -> dict:
    """``scratch``: a local folder for the products of a job whose ``out`` is on object storage;
    ``model_files``: the members' files as the preflight read and checked them."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    members = ensemble_members(cfg)
    require_exists(cfg.scene, "scene")
    cards = [read_card(m.model) for m in members.members]  # a bad card fails at once
    # Loading the models (imports and weights: seconds) runs beside hashing, ingest and Ray's
    # start-up; its errors surface before any block is predicted, and on the driver: on Ray a
    # predictor that cannot load is an ActorDiedError under Ray's own traceback. The local
    # executor predicts with this very predictor.
    spec = replace(predictor_spec(cfg, members), model_files=model_files)
    prep = ThreadPoolExecutor(2, "prepare")
    scene_sha_future = prep.submit(sha256_tree, cfg.scene)
    build = spec.build if predictor is None else lambda: predictor
    check = spec.check if pool is None else lambda: pool.spec  # a pool's models were checked when it was made
    models_future = prep.submit(build if cfg.executor == "local" else check)
    models_ready: list[float] = []
    models_future.add_done_callback(lambda _: models_ready.append(time.perf_counter()))
    prep.shutdown(wait=False)
    # The card's hash; loading (above, in the background) refuses weights that do not match it.
    model_shas = [
        c.weights_sha256 or sha256_tree(location(m.model) / WEIGHTS_FILE) for m, c in zip(members.members, cards)
    ]
    scene_sha = scene_sha_future.result()
    device = job_device(cfg.device, cfg.executor, cfg.ray)
    jhash = job_hash(cfg, scene_sha, model_shas, device)

    previous = read_manifest(out)
    outputs = outputs_for(cfg.polygon_format)
    if previous is not None and not overwrite:
        missing = [f for f in previous.get("outputs", outputs).values() if not (out / f).exists()]
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
        old_polygons = previous.get("outputs", {}).get("polygons", outputs["polygons"])
        if old_polygons != outputs["polygons"]:  # another format's file would outlive the job it came from
            (out / old_polygons).rm()

    work = out / ".work"
    state = work / "job.json"
    if work.exists() and (not state.is_file() or json.loads(state.read_text()).get("job_hash") != jhash):
        log.info("discarding unfinished work of a different job in %s", work)
        work.rm()
    work.makedirs()
    write_json_atomic(state, {"job_hash": jhash})
    stage = work.path if work.is_local else scratch  # where the products are written before publishing

    with ExitStack() as session:
        # One background thread: ingest now, the products at the end. Unwound last, so leaving
        # the session (even on an error) waits for whichever of them runs: never a writer
        # outside the lock. Ray starts in the main thread (not from a worker), beside ingest.
        background = session.enter_context(ThreadPoolExecutor(1, "stores"))
        stores = background.submit(_prepare_stores, cfg, work, jhash)
        if cfg.executor == "ray":
            session.enter_context(ray_session(cfg.ray))
            if work.is_local:  # before any compute: every node must see the working store
                require_shared_folder(work.path)
        scene, store_path, ingest_s = stores.result()
        # Before any block is predicted: a scene in other units than the models' refuses (exit 2).
        unit_checks, warnings = units_guard(sample_scene(scene), cards, cfg.accept_units_mismatch)
        info = scene.info
        grid = TileGrid(info.height, info.width, cfg.tile, cfg.stride)
        blocks = plan_blocks(grid, cfg.block)
        store = BlockStore(store_path, work / "blocks")

        resumed, empty, todo = [], [], []
        done = store.done_keys()
        for b in blocks:
            if b.key in done:
                resumed.append(b)
            elif not scene.read_valid(b.y0, b.y1, b.x0, b.x1).any():
                store.mark_done(b)  # nothing to predict: the store's fill value is already nodata
                empty.append(b)
            else:
                todo.append(b)
        log.info(
            "scene %dx%d px, %d tiles of %d px (stride %d) in %d block(s): %d to compute, %d resumed, "
            "%d without valid pixels",
            info.height,
            info.width,
            grid.n_tiles,
            cfg.tile,
            cfg.stride,
            len(blocks),
            len(todo),
            len(resumed),
            len(empty),
        )

        ctx = StageContext(scene.path, grid, spec, store)
        if cfg.executor == "local":  # reads its first block while the models finish loading
            rows = run_local(todo, ctx, models_future, cfg.prefetch)
        else:
            # The driver's check, before any actor starts; the weights it read go to the actors
            # through Ray's object store, so no actor reads a model path.
            if pool is None:
                pool = session.enter_context(actor_pool(models_future.result().shipped(), cfg.ray))
            rows = run_ray(todo, ctx, pool)
        forward = tiles = kept_at_end = 0
        node_of: dict[str, str] = {}
        by_key = {b.key: b for b in todo}
        t_loop = time.perf_counter()
        for i, row in enumerate(rows, 1):
            forward += row["forward_passes"]
            tiles += row["tiles"]
            node_of[row["key"]] = row["node"]
            kept_at_end += row["kept_tiles"] if row["last_in_stripe"] else 0
            dt = time.perf_counter() - max(t_loop, *models_ready)
            log.info(
                "block %s done (%d/%d): %d tiles, %.1f tiles/s so far",
                row["key"],
                i,
                len(todo),
                row["tiles"],
                tiles / dt if dt else 0.0,
            )
            if on_block is not None:
                on_block(by_key[row["key"]])
        t_plan = max(t_loop, *models_ready)  # inference starts once the models are ready
        actors = pool.loads() if pool is not None else None  # how often each actor loaded its models
        infer_s = time.perf_counter() - t_plan

        threshold = (
            cfg.threshold if cfg.threshold is not None else members.decision_threshold([c.threshold for c in cards])
        )
        # The products are written while the Ray session closes (a second or more of waiting on
        # Ray's processes); finishing needs nothing from Ray.
        t_finish = time.perf_counter()
        summary_future = background.submit(_finish, cfg, scene, store_path, stage, threshold, outputs)
    summary = summary_future.result()
    finish_s = time.perf_counter() - t_finish
    warnings += result_warnings({**summary, "threshold": threshold})
    for msg in warnings:
        log.warning("%s", msg)

    manifest = {
        "status": "complete",
        "job_hash": jhash,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": {
            "ingest_s": round(ingest_s, 3),
            "prepare_s": round(t_plan - t0, 3),
            "infer_s": round(infer_s, 3),
            "finish_s": round(finish_s, 3),
            "total_s": round(time.perf_counter() - t0, 3),
        },
        "inputs": {"scene": {"path": str(cfg.scene), "sha256": scene_sha}},
        "warnings": [*scene.attrs.get("warnings", []), *warnings],
        "checks": {"units": [v.record() for v in unit_checks]},
        "config": cfg.model_dump(mode="json"),
        "models": [
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
        ],
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
            "forward_passes": forward,
            "computed_in_blocks": tiles,
            **_reuse_figures(forward, len(members.members), grid, todo),
            "kept_at_end": kept_at_end,
        },
        "blocks": {
            "total": len(blocks),
            "computed": len(todo),
            "skipped_nodata": len(empty),
            "resumed": len(resumed),
            "node_of": node_of,
            "per_node": dict(Counter(node_of.values())),
        },
        **({"actors": actors} if actors is not None else {}),
        "summary": {**summary, "threshold": threshold},
        "outputs": outputs,
    }
    write_json_atomic(stage / "final" / "run.json", manifest)
    _publish(stage / "final", store_path, out, outputs)
    work.rm()
    log.info("finished: %s (%d landslide objects, %s)", out / "run.json", summary["objects"], describe_mapped(summary))
    return manifest


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


def _prepare_stores(cfg: JobConfig, work: Location, jhash: str) -> tuple[Scene, Location, float]:
    """Ingest (or resume) the scene store and create the output store if there is none yet;
    -> (scene, output store path, ingest seconds)."""
    chunk = scene_chunk(cfg.block)
    t_ingest = time.perf_counter()
    scene = ingest_job(cfg, work / "scene.zarr", chunk)
    ingest_s = time.perf_counter() - t_ingest
    store_path = work / "probability.zarr"
    if not store_path.exists():
        # No store, no finished block: markers without their data would resume into a map of nodata.
        (work / "blocks").rm()
        building = work / "probability.zarr.partial"  # built aside: a half-created store is never resumed
        building.rm()
        create_store(building, scene.info, cfg.block, jhash)
        building.move_to(store_path)
    return scene, store_path, ingest_s


def _finish(
    cfg: JobConfig, scene: Scene, store_path: Path, work: Path, threshold: float, outputs: dict[str, str]
) -> dict:
    """Write the products (all but the store) into ``work/final`` window by window; returns the
    summary. The mask and polygons come from the step ``vectorize`` repeats later, and the
    scene's slope goes into the store as that step reads it, for ``vectorize`` to read there."""
    info = scene.info
    final = work / "final"
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
                scratch=work / f"{key}.scratch.tif",
            )

    kept = group.get(SLOPE)  # None: a store resumed from before stores kept the slope

    def slope_kept(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        slope = scene.read_band(SLOPE, y0, y1, x0, x1)
        if kept is not None:
            kept[y0:y1, x0:x1] = slope
        return slope

    # GDAL writes the COGs without the GIL, beside the polygons and quicklook (mostly Python).
    with ThreadPoolExecutor(1, "rasters") as pool:
        rasters = pool.submit(write_rasters)
        source = ProbabilitySource(info, window_reader(prob), slope_kept if SLOPE in info.band_names else None)
        summary = write_mask_and_polygons(
            source,
            threshold,
            min_object_pixels(info, cfg.min_area_m2, cfg.min_pixels),
            final / outputs["mask"],
            final / outputs["polygons"],
            scratch=work / "mask.scratch.tif",
        )
        write_quicklook(
            final / outputs["quicklook"], zarr.open_group(str(scene.path), mode="r")["bands"], prob, threshold
        )
        rasters.result()
    return {
        **summary,
        "min_area_m2": cfg.min_area_m2,
        "assumed_pixel_m": assumed_pixel_m(scene.attrs.get("source", {}).get("kind"), info.pixel_area_m2),
    }


def _log_kept_derivation(previous: dict, outputs: dict[str, str], out: Path) -> None:
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
    if current and current != outputs["polygons"]:
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
