"""One scene job end to end: lock -> ingest -> previous result or claim of ``OUT/.work`` ->
``mapping.map_scene`` (plan, infer; each block's products written as it is) -> publish.

The output folder is locked while a job runs. Work in progress lives in ``OUT/.work``
(scene store, output store, block markers); finished products are written under
temporary names and moved into place, ``run.json`` last. Re-running an interrupted job
resumes from its finished blocks; re-running a finished one does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TypeVar

from .checks.pixels import require_resolution
from .checks.preflight import model_b10_means, preflight
from .checks.results import result_warnings
from .config import JobConfig, ensemble_members
from .errors import ConfigError
from .gdal_env import bounded_gdal_cache
from .hashing import sha256_tree
from .infer.executors import device_session, job_device, ray_session
from .infer.shared_disk import require_shared_folder
from .infer.stages import PredictorSpec
from .ingest import ModelB10, Scene, ingest_job
from .mapping import map_manifest, map_scene, output_store, scene_chunk, scene_input
from .outputs.folder import claim_work, enter_output, finished_before, publish_result, stage_folder
from .outputs.metadata import provenance_tags
from .outputs.products import ProductsWriter, outputs_for
from .outputs.summary import describe_mapped
from .resolved import ResolvedJob, identity_hash, map_identity
from .storage import Location, location, require_exists

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["job_hash", "process_age_s", "run_scene_job"]


def job_hash(cfg: JobConfig, scene_sha: str, model_shas: list[str], device: str) -> str:
    """Identity of a scene job's result: its scene and ``resolved.map_identity``."""
    return identity_hash({"scene": scene_sha, **map_identity(cfg, ensemble_members(cfg), model_shas, device)})


def run_scene_job(
    job: ResolvedJob, *, overwrite: bool = False, entered: tuple[float, float | None] | None = None
) -> dict:
    """Run (or resume) the scene job ``job`` (its models read once: ``preflight.resolve_job``);
    returns the run manifest (also written to ``OUT/run.json``). ``entered``: when the job began
    (``perf_counter()``) and how old the process was then.

    ``out`` may be a local folder or an object-store prefix: there the lock is a lease object,
    the work (scene store, output store, markers) lives under ``OUT/.work/`` and the products
    are written in a local temporary folder, then published (``outputs/publish_remote.py``)."""
    entered = entered or (time.perf_counter(), process_age_s())
    preflight(job, overwrite)  # out, free space: before anything is written
    cfg = job.cfg
    out = location(cfg.out)

    with ExitStack() as held:
        enter_output(held, out)
        held.enter_context(bounded_gdal_cache())
        held.enter_context(device_session(cfg.device, cfg.executor, cfg.ray))  # Ray's `auto` asks the cluster
        stage = stage_folder(held, out, ".work")  # locally the job's working folder
        job = job.on_device(job_device(cfg.device, cfg.executor, cfg.ray))
        return _run_locked(job, out, overwrite, stage, entered=entered)


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
    job: ResolvedJob, out: Location, overwrite: bool, stage: Path, *, entered: tuple[float, float | None]
) -> dict:
    """The scene job inside its lock: ingest, the folder's previous result or claim of
    ``OUT/.work``, ``mapping.map_scene`` beside the products' writer, publish. ``stage``: the local folder
    the products are written in before publishing (``outputs.folder.stage_folder``); ``entered``: see
    :func:`run_scene_job`."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cfg = job.cfg
    require_exists(_scene_source(cfg), "scene")
    prep = _start_preparing(cfg, job.predictor_spec())
    outputs = outputs_for(cfg.polygon_format)

    with ExitStack() as session:
        # One background thread: ingest, then the COGs at the end. Unwound last, so leaving
        # the session (even on an error) waits for whichever of them runs: never a writer
        # outside the lock. Ray starts in the main thread (not from a worker), beside ingest.
        background = session.enter_context(ThreadPoolExecutor(1, "stores"))
        stop = threading.Event()  # set when the models fail to load, or on any error: the ingest ends
        session.callback(stop.set)
        ingest = partial(_ingest_scene, cfg, out / ".work", model_b10_means(job.members, job.cards), stop)
        fresh = _nothing_to_resume(out, overwrite)  # then ingest while hashing
        scene_ingest = background.submit(ingest) if fresh else None
        scene_sha = prep.scene_sha.result()
        jhash = identity_hash({"scene": scene_sha, **job.identity()})
        if (finished := finished_before(out, jhash, overwrite, outputs, "scene job")) is not None:
            return finished
        work = claim_work(out, jhash, fresh)
        scene_ingest = scene_ingest or background.submit(ingest)
        _join_ray(cfg, session, work)
        scene, ingest_s = _unless_models_fail(scene_ingest, prep.models, stop)
        background.submit(_import_finishing)  # beside the blocks: its imports are not the finish's seconds
        threshold = job.threshold()
        tags = _product_tags(job, scene_input(cfg, scene, scene_sha), threshold, jhash)
        # Locally each block's products are written as soon as it is (the writer's thread, joined
        # when the session ends), the blocks not computed after. Ray's blocks come in any order,
        # which would number the objects differently each run: there, all follow in the plan's order.
        writer = session.enter_context(ProductsWriter(cfg, scene, output_store(work), stage, threshold, outputs, tags))
        local = cfg.executor == "local"
        mapped = map_scene(job, scene, work, jhash, prep.models, held=session, on_block=writer.add if local else None)
        for block in [*mapped.plan.resumed, *mapped.plan.empty] if local else mapped.plan.blocks:
            writer.add(block)
        infer_s = time.perf_counter() - mapped.inferring_since
        # The COGs are finished while the Ray session closes (a second or more of waiting on
        # Ray's processes); finishing needs nothing from Ray.
        t_finish = time.perf_counter()
        finishing = background.submit(writer.finish)
    summary, finish_s = finishing.result(), time.perf_counter() - t_finish
    timings = _timings(entered, t0, prep, ingest_s=ingest_s, prepare_s=mapped.inferring_since - t0, infer_s=infer_s)
    manifest = map_manifest(
        job,
        scene,
        scene_sha,
        jhash,
        mapped,
        started,
        timings=timings | {"finish_s": finish_s, "forward_s": round(mapped.tally.forward_s, 3)},
        warnings=[*scene.attrs.get("warnings", []), *_logged_warnings(mapped.warnings, summary, threshold)],
        summary=_summary(summary, threshold),
        outputs=outputs,
    )
    return _publish_job(manifest, t0, stage, mapped.store, out, work)


def _summary(summary: dict, threshold: float) -> dict:
    """``run.json``'s summary: the map's, its threshold, and whether it is implausible."""
    out = {**summary, "threshold": threshold}
    return out | {"implausible": bool(result_warnings(out))}


def _logged_warnings(warnings: list[str], summary: dict, threshold: float) -> list[str]:
    """``warnings`` with those on the map's ``summary``, all logged."""
    warnings = warnings + result_warnings({**summary, "threshold": threshold})
    for msg in warnings:
        log.warning("%s", msg)
    return warnings


def _start_preparing(cfg: JobConfig, spec: PredictorSpec) -> _Prepared:
    """Start hashing the scene and building the job's predictor (local: the models built from the
    files the preflight read, folded; Ray: the spec, its models built once as a check) in the
    background, beside the lock, ingest and Ray's start-up: torch and the models' imports take
    over a second, which here overlaps work that mostly runs without the GIL. Errors surface on
    the driver before any block is predicted (see ``_unless_models_fail``). The local executor
    predicts with this very predictor."""
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

    # Ray: the driver's check, every model built once (spec.check returns the spec holding its files)
    load = spec.build if cfg.executor == "local" else spec.check
    prep = ThreadPoolExecutor(2, "prepare")
    hashed = prep.submit(timed("hash_s", lambda: sha256_tree(_scene_source(cfg))))
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


def _publish_job(manifest: dict, t0: float, stage: Path, store_path: Location, out: Location, work: Location) -> dict:
    """Write ``run.json`` (with the job's total seconds) beside the products and move them all
    into ``out``; the working folder goes. -> the manifest."""
    timings = {**manifest["timings"], "total_s": time.perf_counter() - t0}  # the moves below come after it
    manifest["timings"] = {k: round(v, 3) for k, v in timings.items()}
    publish_result(manifest, stage, store_path, out, work)
    summary = manifest["summary"]
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


def _ingest_scene(
    cfg: JobConfig,
    work: Location,
    b10_means: list[ModelB10],
    stop: threading.Event,
) -> tuple[Scene, float]:
    """Ingest (or resume) the scene store in ``work`` (created if need be: a fresh job ingests
    before claiming it; ``b10_means``: the models' B10 means, for ``inputs.b10: model_mean``;
    ``stop``: ends the ingest, see ``ingest_job``); -> (scene, ingest seconds). A scene at another
    pixel size than the models' is refused here."""
    t_ingest = time.perf_counter()
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


def _product_tags(job: ResolvedJob, scene: dict, threshold: float, jhash: str) -> dict[str, str]:
    """The rasters' provenance tags; ``scene``: ``mapping.scene_input``."""
    models = [{"name": c.name, "sha256": sha} for c, sha in zip(job.cards, job.model_shas)]
    record = {"source": scene["path"], "sha256": scene["sha256"], "date": scene["acquired"]}
    return provenance_tags(models, [record], threshold, jhash)
