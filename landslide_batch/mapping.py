"""One scene mapped into a working folder: its units checked, its blocks planned against the
folder's block markers, the blocks to do predicted (locally or on Ray's actors) into
``WORK/probability.zarr``. No lock, no products, no ``run.json``: a scene job and a region job
each wrap :func:`map_scene` in the output folder's protocol (``outputs/folder.py``) and publish
what it made; :func:`map_manifest` is the ``run.json`` both write for a mapped scene."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .checks.reflectance import reflectance_guard
from .checks.units import sample_scene, units_guard
from .config import JobConfig
from .infer.executors import StageContext, actor_pool, run_local, run_ray, scene_work
from .ingest import Scene
from .outputs.manifest import SCENE_JOB, package_versions
from .outputs.store import BlockStore, create_store
from .plan.tiling import Block, TileGrid, plan_blocks, tile_uses
from .progress import progress
from .resolved import ResolvedJob
from .storage import Location

if TYPE_CHECKING:
    from .infer.actor_pool import ActorPool

log = logging.getLogger(__name__)

__all__ = ["SceneMap", "map_manifest", "map_scene", "output_store", "scene_chunk", "scene_input"]


@dataclass
class Plan:
    """The scene's tile grid and blocks, sorted into those resumed, without valid pixels and to do."""

    grid: TileGrid
    blocks: list[Block]
    resumed: list[Block]
    empty: list[Block]
    todo: list[Block]


@dataclass
class Tally:
    """What the computed blocks report, summed (the manifest's ``tiles`` and ``blocks``)."""

    forward: int = 0
    forward_s: float = 0.0  # seconds in the models' forward passes (CPU), summed over workers
    tiles: int = 0
    kept_at_end: int = 0
    node_of: dict[str, str] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)  # block -> Ray's attempt (its actor or node died)


@dataclass
class SceneMap:
    """What :func:`map_scene` made and what ``run.json`` records of it."""

    store: Location  # WORK/probability.zarr, every block written
    plan: Plan
    tally: Tally
    checks: dict  # units, reflectance, coverage
    warnings: list[str]  # the checks' (logged by the caller, with its own)
    actors: list[dict] | None  # Ray: each actor's {actor, node, models_loaded}; None locally
    inferring_since: float  # perf_counter() once the blocks were sent and the models ready


def map_scene(
    job: ResolvedJob,
    scene: Scene,
    work: Location,
    jhash: str,
    models: Future | None = None,
    *,
    pool: ActorPool | None = None,
    held: ExitStack | None = None,
    on_block: Callable[[Block], None] | None = None,
) -> SceneMap:
    """Map ``scene`` into ``work`` (its markers resumed) for the job ``jhash``. How it predicts:
    locally, ``models`` is a future of the ``EnsemblePredictor`` (the first block is read while it
    loads); on Ray, ``pool``'s warm actors, or a pool started in ``held`` (closed by the caller,
    after its products) for the checked spec ``models`` gives. ``on_block``: called with each block
    once written. A scene in other units than the models' is refused before any block is predicted."""
    cfg = job.cfg
    store_path = _output_store(work, scene, cfg.block, jhash)
    checks, warnings = _scene_checks(cfg, scene, job.cards)  # before any block is predicted
    store = BlockStore(store_path, work / "blocks")
    plan = _plan(cfg, scene, store)
    ctx = StageContext(scene.path, plan.grid, job.predictor_spec(), store)
    with ExitStack() as own:
        if cfg.executor == "local":
            assert models is not None, "the local executor predicts with the models' future"
            rows: Iterable[dict] = run_local(plan.todo, ctx, models, cfg.prefetch)
        else:
            if pool is None:  # the driver's check's weights go to the actors through Ray's object store
                assert models is not None, "a Ray job without a pool starts one for the checked models"
                shipped = models.result().shipped()
                pool = (held or own).enter_context(actor_pool(shipped, cfg.ray, work=scene_work(plan.todo)))
            rows = run_ray(plan.todo, ctx, pool)
        t_loop = time.perf_counter()
        ready = _ready_at(models, t_loop)
        tally = _tally_blocks(rows, plan.todo, ready, on_block)
        actors = pool.loads() if pool is not None else None  # how often each actor loaded its models
    return SceneMap(store_path, plan, tally, checks, warnings, actors, ready())


def _ready_at(models: Future | None, t_loop: float) -> Callable[[], float]:
    """-> when inference started: once the blocks were sent and the ``models`` loaded (as far as
    known so far: the rate is logged from then)."""
    done_at: list[float] = []
    if models is not None:
        models.add_done_callback(lambda _: done_at.append(time.perf_counter()))
    return lambda: max([t_loop, *done_at])


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


def _output_store(work: Location, scene: Scene, block: int, jhash: str) -> Location:
    """The job's output store in ``work``, created if there is none yet; -> its location."""
    store_path = output_store(work)
    if not store_path.exists():
        # No store, no finished block: markers without their data would resume into a map of nodata.
        (work / "blocks").rm()
        building = work / "probability.zarr.partial"  # built aside: a half-created store is never resumed
        building.rm()
        create_store(building, scene.info, block, jhash)
        building.move_to(store_path)
    return store_path


def _plan(cfg: JobConfig, scene: Scene, store: BlockStore) -> Plan:
    """The tile grid and blocks, each resumed (finished before), without a valid pixel (marked
    done at once: the store's fill value is already nodata) or to compute."""
    info = scene.info
    grid = TileGrid(info.height, info.width, cfg.tile, cfg.stride)
    blocks = plan_blocks(grid, cfg.block)
    plan = Plan(grid, blocks, [], [], [])
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


def _tally_blocks(
    rows: Iterable[dict], todo: list[Block], since: Callable[[], float], on_block: Callable[[Block], None] | None
) -> Tally:
    """Sum the computed blocks' rows, logging the rate so far (tiles / seconds ``since()``) and
    calling ``on_block`` with each block once written."""
    tally = Tally()
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
        # The models' own seconds are timed on CPU only (a GPU's would need a sync that stalls it).
        model_s = f", {row['forward_s']:.2f} s in the models" if row["forward_s"] else ""
        key, tiles = row["key"], row["tiles"]
        log.info("block %s done (%d/%d): %d tiles%s, %.1f tiles/s so far", key, i, len(todo), tiles, model_s, rate)
        if on_block is not None:
            on_block(by_key[row["key"]])
    return tally


def map_manifest(
    job: ResolvedJob, scene: Scene, scene_sha: str, jhash: str, mapped: SceneMap, started: str, **record
) -> dict:
    """``run.json`` of a mapped scene (a scene job's, or a region's scene in ``.work/scenes/<id>/map``):
    ``record`` adds (or replaces) ``timings``, ``warnings``, ``summary`` and ``outputs``."""
    return {
        "status": "complete",
        "kind": SCENE_JOB,
        "job_hash": jhash,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": {"forward_s": round(mapped.tally.forward_s, 3)},
        "inputs": {"scene": scene_input(job.cfg, scene, scene_sha)},
        "warnings": [*scene.attrs.get("warnings", []), *mapped.warnings],
        "checks": mapped.checks,
        **_map_body(job, scene, mapped.plan, mapped.tally),
        **({"actors": mapped.actors} if mapped.actors is not None else {}),
        **record,
    }


def _map_body(job: ResolvedJob, scene: Scene, plan: Plan, tally: Tally) -> dict:
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


def _reuse_figures(forward: int, members: int, grid: TileGrid, todo: list) -> dict:
    """Tiles the computed blocks need (each once) and forward passes per needed tile and member:
    1.0 when every tile ran once; more where tiles ran twice (after an actor restart, or
    beyond the kept tiles' memory bound); less where tiles without a valid pixel were skipped."""
    needed = int((tile_uses(grid, todo) > 0).sum())
    return {"needed": needed, "redundancy": round(forward / (members * needed), 4) if needed else None}


def scene_input(cfg: JobConfig, scene: Scene, scene_sha: str) -> dict:
    """run.json's ``inputs.scene``: the source, its hash, and its acquisition date (ISO) when the
    ingest found one (a Sentinel-2 product or STAC item; None for a plain GeoTIFF)."""
    return {"path": str(cfg.scene), "sha256": scene_sha, "acquired": scene.attrs.get("ingest", {}).get("acquired")}


def output_store(work: Location) -> Location:
    """Where :func:`map_scene` writes the map in ``work`` (its ``SceneMap.store``)."""
    return work / "probability.zarr"


def scene_chunk(block: int) -> int:
    """Chunk side of a scene store for blocks of ``block`` px: at most 512, dividing the block."""
    return min(512, block) if block % min(512, block) == 0 else block
