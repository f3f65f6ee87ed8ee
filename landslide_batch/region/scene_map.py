"""A region's scene mapped into its own folder, ``OUT/.work/scenes/<id>/map``, under the output
folder's protocol (``outputs/folder.py``) as a scene job's: locked, its finished result found or
another job's refused, ``.work`` claimed, ``mapping.map_scene``, then the probability store and
a ``run.json`` published (no products: the region writes those of its merged map). The region
ingested the scene and holds the models; a finished map is found again on later passes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..infer.executors import job_device
from ..infer.shared_disk import require_shared_folder
from ..mapping import map_manifest, map_scene
from ..outputs.folder import claim_work, enter_output, finished_before, publish_result, stage_folder
from ..outputs.products import OUTPUTS
from ..plan.tiling import Block
from ..resolved import ResolvedJob, identity_hash
from ..storage import path_or_uri
from .mapped import MappedScene

if TYPE_CHECKING:
    from ..infer.actor_pool import ActorPool

log = logging.getLogger(__name__)

#: What a scene's map folder holds besides ``run.json``.
MAP_OUTPUTS = {"zarr": OUTPUTS["zarr"]}


def map_region_scene(
    job: ResolvedJob,
    s: MappedScene,
    overwrite: bool,
    models: Future,
    *,
    pool: ActorPool | None = None,
    on_block: Callable[[Block], None] | None = None,
) -> dict:
    """Map the region's scene ``s`` into ``s.folder / "map"`` with the region's models (``models``:
    locally a future of the predictor; on Ray, ``pool``'s warm actors predict); -> its ``run.json``,
    found finished (no block computed) or written. ``on_block``: called with each block once written."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = s.folder / "map"
    cfg = job.cfg.model_copy(
        update={
            "scene": path_or_uri((s.folder / "scene.zarr").uri),  # a config value: a Path, or the URI
            "out": path_or_uri(out.uri),
            "scenes": None,
            "aoi": None,
            "crs": None,
            "inputs": None,
        }
    )
    job = job.with_config(cfg).on_device(job_device(cfg.device, cfg.executor, cfg.ray))
    jhash = identity_hash({"scene": s.ingest_id, **job.identity()})  # the region hashed the scene's source
    with ExitStack() as held:
        enter_output(held, out)
        if (finished := finished_before(out, jhash, overwrite, MAP_OUTPUTS, "scene job")) is not None:
            return finished
        work = claim_work(out, jhash)
        if cfg.executor == "ray" and work.is_local:  # every node must see the working store
            require_shared_folder(work.path)
        mapped = map_scene(job, s.scene, work, jhash, models, pool=pool, held=held, on_block=on_block)
        infer_s = time.perf_counter() - mapped.inferring_since
        for msg in mapped.warnings:
            log.warning("%s", msg)
        timings = {"infer_s": infer_s, "forward_s": mapped.tally.forward_s, "total_s": time.perf_counter() - t0}
        manifest = map_manifest(
            job,
            s.scene,
            s.ingest_id,
            jhash,
            mapped,
            started,
            timings={k: round(v, 3) for k, v in timings.items()},
            summary={"threshold": job.threshold()},
            outputs=MAP_OUTPUTS,
        )
        stage = stage_folder(held, out, ".work")
        publish_result(manifest, stage, mapped.store, out, work)
    log.info("finished: %s (the probability map, no products)", out / "run.json")
    return manifest
