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
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

from .config import JobConfig, ensemble_members
from .errors import ConfigError, InputError, OutputLockedError
from .gdal_env import bounded_gdal_cache
from .hashing import sha256_tree
from .infer.executors import StageContext, ray_session, run_local, run_ray
from .infer.stages import PredictorSpec
from .ingest import Scene, ingest_job
from .locking import exclusive
from .models.card import WEIGHTS_FILE, read_card
from .outputs.manifest import package_versions, read_manifest, write_json_atomic
from .outputs.polygons import ObjectCollector, write_polygons
from .outputs.quicklook import write_quicklook
from .outputs.rasters import windows, write_cog
from .outputs.store import NODATA, BlockStore, create_store
from .plan.tiling import TileGrid, plan_blocks, tile_uses

log = logging.getLogger(__name__)

OUTPUTS = {
    "probability": "probability.tif",
    "uncertainty": "uncertainty.tif",
    "mask": "mask.tif",
    "polygons": "landslides.gpkg",
    "quicklook": "quicklook.png",
    "zarr": "probability.zarr",
}
MASK_NODATA = 255


def job_hash(cfg: JobConfig, scene_sha: str, model_shas: list[str]) -> str:
    """Identity of a job's result: inputs, models and every setting that changes the map."""
    key = {
        "scene": scene_sha, "models": model_shas, "weights": [m.weight for m in ensemble_members(cfg).members],
        **cfg.model_dump(mode="json", include={"tile", "overlap", "blend", "block", "threshold", "min_area_m2",
                                                "min_pixels", "nodata", "inputs"}),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def run_job(cfg: JobConfig, *, overwrite: bool = False) -> dict:
    """Run (or resume) a job; returns the run manifest (also written to ``OUT/run.json``)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    busy = lambda: OutputLockedError(f"{out} is being written by another job (lock {out / '.lock'} is held); "  # noqa: E731
                                     "wait for it or choose another output folder")
    with exclusive(out / ".lock", busy), bounded_gdal_cache():
        return _run_locked(cfg, out, overwrite)


def _run_locked(cfg: JobConfig, out: Path, overwrite: bool) -> dict:
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    members = ensemble_members(cfg)
    if not Path(cfg.scene).exists():
        raise InputError(f"scene {cfg.scene} does not exist")
    cards = [read_card(m.model) for m in members.members]  # a bad card fails at once
    # Loading the models (imports and weights: seconds) runs beside hashing, ingest and Ray's
    # start-up; its errors surface before any block is predicted, and on the driver: on Ray a
    # predictor that cannot load is an ActorDiedError under Ray's own traceback. The local
    # executor predicts with this very predictor.
    spec = PredictorSpec(members, cfg.tile, cfg.stride, cfg.blend, cfg.batch_size, cfg.device, cfg.threads)
    prep = ThreadPoolExecutor(2, "prepare")
    scene_sha_future = prep.submit(sha256_tree, cfg.scene)
    models_future = prep.submit(spec.build if cfg.executor == "local" else spec.check)
    models_ready: list[float] = []
    models_future.add_done_callback(lambda _: models_ready.append(time.perf_counter()))
    prep.shutdown(wait=False)
    # The card's hash; loading (above, in the background) refuses weights that do not match it.
    model_shas = [c.weights_sha256 or sha256_tree(Path(m.model) / WEIGHTS_FILE)
                  for m, c in zip(members.members, cards)]
    scene_sha = scene_sha_future.result()
    jhash = job_hash(cfg, scene_sha, model_shas)

    previous = read_manifest(out)
    if previous is not None and not overwrite:
        missing = [f for f in OUTPUTS.values() if not (out / f).exists()]
        if previous.get("job_hash") == jhash and missing:
            raise ConfigError(f"{out} holds this job's run.json but {', '.join(missing)} is missing; "
                              "use --overwrite to compute the job again")
        if previous.get("job_hash") == jhash:
            log.info("%s already holds the finished result of this job (hash %s): nothing to do", out, jhash)
            return {**previous, "blocks": {**previous["blocks"], "computed": 0, "resumed": previous["blocks"]["total"]},
                    "tiles": {**previous["tiles"], "forward_passes": 0}}
        raise ConfigError(f"{out} holds the result of a different job (hash {previous.get('job_hash')}, "
                          f"this job {jhash}); use another output folder or --overwrite")
    if previous is not None:  # overwriting: from now on nothing may vouch for the folder's old products
        (out / "run.json").unlink()

    work = out / ".work"
    state = work / "job.json"
    if work.exists() and (not state.is_file() or json.loads(state.read_text()).get("job_hash") != jhash):
        log.info("discarding unfinished work of a different job in %s", work)
        shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    write_json_atomic(state, {"job_hash": jhash})

    with ExitStack() as session:
        # One background thread: ingest now, the products at the end. Unwound last, so leaving
        # the session (even on an error) waits for whichever of them runs: never a writer
        # outside the lock. Ray starts in the main thread (not from a worker), beside ingest.
        background = session.enter_context(ThreadPoolExecutor(1, "stores"))
        stores = background.submit(_prepare_stores, cfg, work, jhash)
        if cfg.executor == "ray":
            session.enter_context(ray_session(cfg.ray))
        scene, store_path, ingest_s = stores.result()
        info = scene.info
        grid = TileGrid(info.height, info.width, cfg.tile, cfg.stride)
        blocks = plan_blocks(grid, cfg.block)
        store = BlockStore(store_path, work / "blocks")

        resumed, empty, todo = [], [], []
        for b in blocks:
            if store.is_done(b):
                resumed.append(b)
            elif not scene.read_valid(b.y0, b.y1, b.x0, b.x1).any():
                store.mark_done(b)  # nothing to predict: the store's fill value is already nodata
                empty.append(b)
            else:
                todo.append(b)
        log.info("scene %dx%d px, %d tiles of %d px (stride %d) in %d block(s): %d to compute, %d resumed, "
                 "%d without valid pixels", info.height, info.width, grid.n_tiles, cfg.tile, cfg.stride,
                 len(blocks), len(todo), len(resumed), len(empty))

        ctx = StageContext(scene.path, grid, spec, store, tile_uses(grid, todo))
        if cfg.executor == "local":  # reads its first block while the models finish loading
            rows = run_local(todo, ctx, models_future, cfg.prefetch)
        else:
            models_future.result()  # the driver's check, before any actor starts
            rows = run_ray(todo, ctx, cfg.ray)
        forward = tiles = 0
        t_loop = time.perf_counter()
        for i, row in enumerate(rows, 1):
            forward += row["forward_passes"]
            tiles += row["tiles"]
            dt = time.perf_counter() - max(t_loop, *models_ready)
            log.info("block %s done (%d/%d): %d tiles, %.1f tiles/s so far", row["key"], i, len(todo),
                     row["tiles"], tiles / dt if dt else 0.0)
        t_plan = max(t_loop, *models_ready)  # inference starts once the models are ready
        infer_s = time.perf_counter() - t_plan

        threshold = cfg.threshold if cfg.threshold is not None else members.decision_threshold([c.threshold for c in cards])
        # The products are written while the Ray session closes (a second or more of waiting on
        # Ray's processes); finishing needs nothing from Ray.
        t_finish = time.perf_counter()
        summary_future = background.submit(_finish, cfg, scene, store_path, work, threshold)
    summary = summary_future.result()
    finish_s = time.perf_counter() - t_finish

    manifest = {
        "status": "complete",
        "job_hash": jhash,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": {"ingest_s": round(ingest_s, 3), "prepare_s": round(t_plan - t0, 3), "infer_s": round(infer_s, 3),
                    "finish_s": round(finish_s, 3), "total_s": round(time.perf_counter() - t0, 3)},
        "inputs": {"scene": {"path": str(cfg.scene), "sha256": scene_sha}},
        "warnings": list(scene.attrs.get("warnings", [])),
        "config": cfg.model_dump(mode="json"),
        "models": [{"path": str(m.model), "name": c.name, "arch": c.arch, "encoder": c.encoder,
                    "features": c.features, "weight": m.weight, "trained": c.trained, "threshold": c.threshold,
                    "sha256": sha} for m, c, sha in zip(members.members, cards, model_shas)],
        "versions": package_versions(),
        "scene": {"height": info.height, "width": info.width, "crs": info.crs_wkt,
                  "transform": list(info.transform), "pixel_area_m2": info.pixel_area_m2},
        "tiles": {"grid": grid.n_tiles, "tile": cfg.tile, "stride": cfg.stride, "forward_passes": forward,
                  "computed_in_blocks": tiles},
        "blocks": {"total": len(blocks), "computed": len(todo), "skipped_nodata": len(empty),
                   "resumed": len(resumed)},
        "summary": {**summary, "threshold": threshold},
        "outputs": OUTPUTS,
    }
    write_json_atomic(work / "final" / "run.json", manifest)
    _publish(work / "final", store_path, out)
    shutil.rmtree(work)
    log.info("finished: %s (%d landslide objects, %.3f km² of %.3f km² mapped)", out / "run.json",
             summary["objects"], summary["landslide_area_km2"] or 0, summary["area_mapped_km2"] or 0)
    return manifest


def _prepare_stores(cfg: JobConfig, work: Path, jhash: str) -> tuple[Scene, Path, float]:
    """Ingest (or resume) the scene store and create the output store if there is none yet;
    -> (scene, output store path, ingest seconds)."""
    chunk = min(512, cfg.block) if cfg.block % min(512, cfg.block) == 0 else cfg.block
    t_ingest = time.perf_counter()
    scene = ingest_job(cfg, work / "scene.zarr", chunk)
    ingest_s = time.perf_counter() - t_ingest
    store_path = work / "probability.zarr"
    if not store_path.exists():
        # No store, no finished block: markers without their data would resume into a map of nodata.
        shutil.rmtree(work / "blocks", ignore_errors=True)
        building = work / "probability.zarr.partial"  # built aside: a half-created store is never resumed
        shutil.rmtree(building, ignore_errors=True)
        create_store(building, scene.info, cfg.block, jhash)
        os.replace(building, store_path)
    return scene, store_path, ingest_s


def _finish(cfg: JobConfig, scene: Scene, store_path: Path, work: Path, threshold: float) -> dict:
    """Write the products (all but the store) into ``work/final`` window by window."""
    info = scene.info
    final = work / "final"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    group = zarr.open_group(str(store_path), mode="r")
    prob, spread = group["probability"], group["uncertainty"]

    def mask_of(y0, y1, x0, x1):
        p = prob[y0:y1, x0:x1]
        return np.where(p < 0, MASK_NODATA, p >= threshold).astype(np.uint8)

    def write_rasters() -> None:
        for key, read, dtype, nodata in (
                ("probability", lambda *w: prob[w[0]:w[1], w[2]:w[3]], "float32", NODATA),
                ("uncertainty", lambda *w: spread[w[0]:w[1], w[2]:w[3]], "float32", NODATA),
                ("mask", mask_of, "uint8", MASK_NODATA)):
            write_cog(final / OUTPUTS[key], info, read, dtype=dtype, nodata=nodata, scratch=work / "scratch.tif")

    # GDAL writes the COGs without the GIL, beside the polygons and quicklook (mostly Python).
    with ThreadPoolExecutor(1, "rasters") as pool:
        rasters = pool.submit(write_rasters)
        has_slope = "slope" in info.band_names
        collector = ObjectCollector(info)
        valid_px = slide_px = 0
        for y0, y1, x0, x1 in windows(info):
            m = mask_of(y0, y1, x0, x1)
            valid_px += int((m != MASK_NODATA).sum())
            slide_px += int((m == 1).sum())
            slope = scene.read_band("slope", y0, y1, x0, x1) if has_slope else None
            collector.add_window(y0, x0, m == 1, prob[y0:y1, x0:x1], slope)
        pixel_area = info.pixel_area_m2
        min_pixels = max(cfg.min_pixels, int(np.ceil(cfg.min_area_m2 / pixel_area)) if pixel_area else 0)
        n_objects = write_polygons(final / OUTPUTS["polygons"], info, collector.objects(), min_pixels, has_slope)
        write_quicklook(final / OUTPUTS["quicklook"], zarr.open_group(str(scene.path), mode="r")["bands"], prob,
                        threshold)
        rasters.result()
    km2 = (pixel_area or 0) / 1e6
    return {"valid_pixels": valid_px, "landslide_pixels": slide_px, "objects": n_objects,
            "area_mapped_km2": valid_px * km2 if pixel_area else None,
            "landslide_area_km2": slide_px * km2 if pixel_area else None}


def _publish(final: Path, store_path: Path, out: Path) -> None:
    """Move the products into ``out``: the store after the files (until then it stays next to its
    block markers, so a failure costs no block), ``run.json`` last. A failure part-way moves back
    what was moved: no product lies under its final name without the run.json that vouches for it."""
    moves = [(final / name, out / name) for key, name in OUTPUTS.items() if key != "zarr"]
    moves += [(store_path, out / OUTPUTS["zarr"]), (final / "run.json", out / "run.json")]
    done = []
    try:
        for src, target in moves:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(src, target)
            done.append((src, target))
    except BaseException:
        for src, target in reversed(done):
            os.replace(target, src)
        raise
