"""Executors run the block stages: in-process (threads overlap I/O with the model) or on Ray actors.

Both call the same ``ReadBlock`` / ``PredictBlock`` / ``WriteBlock`` objects on blocks grouped in
stripes (``infer.stripes``: one stripe per predictor, so edge tiles are predicted once), and yield
one small summary row per finished block: its key, tiles, forward passes and the node that
computed it.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import JobConfig, RaySettings
from ..errors import LandslideBatchError
from ..plan.tiling import Block, TileGrid
from .actor_pool import ActorPlan, ActorPool
from .device import device_type
from .ray_connect import require_reachable
from .stages import BlockWriter, PredictBlock, PredictorSpec, ReadBlock, Row, WriteBlock
from .stripes import BlockTask, Tile, plan_tasks, split_stripes

if TYPE_CHECKING:
    from .predictor import EnsemblePredictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageContext:
    scene_path: Path | str
    grid: TileGrid
    predictor: PredictorSpec
    store: BlockWriter


#: The node of blocks computed in-process (``run.json`` ``blocks.node_of``).
LOCAL_NODE = "local"


def _stripe_rows(blocks: list[Block], grid: TileGrid, n: int) -> list[list[Row]]:
    """``blocks`` in at most ``n`` stripes: per stripe its rows (block fields + ``task``), in order."""
    stripes = split_stripes(blocks, n)
    return [
        [{**b.as_dict(), "key": b.key, "tiles": b.n_tiles, "task": t} for b, t in zip(stripe, tasks)]
        for stripe, tasks in zip(stripes, plan_tasks(stripes, grid))
    ]


def _write(write: WriteBlock, result: Row, node: str) -> Row:
    """Write a predicted block; -> its summary row."""
    task: BlockTask = result["task"]
    return {
        **write(result),
        "node": node,
        "stripe": task.stripe,
        "last_in_stripe": task.last,
        "kept_tiles": int(result["kept_tiles"]),
        "attempt": int(result.get("attempt", 0)),  # > 0: recomputed by Ray after its actor or node died
    }


def run_local(
    blocks: list[Block], ctx: StageContext, predictor: Future[EnsemblePredictor], prefetch: int | None = None
) -> Iterator[Row]:
    """Predicts block after block; the previous block is written, and ``prefetch`` blocks are
    read (default: 1 on a GPU, 0 on CPU), in background threads while the model works. The first
    block is read while ``predictor`` (a future: the models load in the background) is not ready."""
    read, write = ReadBlock(ctx.scene_path, ctx.grid), WriteBlock(ctx.store)
    rows = [row for stripe in _stripe_rows(blocks, ctx.grid, 1) for row in stripe]
    with ThreadPoolExecutor(1, "read") as reader, ThreadPoolExecutor(1, "write") as writer:
        reads: deque[Future[Row]] = deque(reader.submit(read, row) for row in rows[:1])
        submitted, pending_write = len(reads), None
        model = predictor.result()
        if prefetch is None:
            prefetch = int(model.device.type != "cpu")
        predict = PredictBlock(ctx.predictor, ctx.grid, model)
        for i in range(len(rows)):
            while submitted <= min(i + prefetch, len(rows) - 1):
                reads.append(reader.submit(read, rows[submitted]))
                submitted += 1
            item = reads.popleft().result()
            result = predict(item)
            del item
            if pending_write is not None:
                yield pending_write.result()
            pending_write = writer.submit(_write, write, result, LOCAL_NODE)
        if pending_write is not None:
            yield pending_write.result()


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[None]:
    """Join the configured cluster (``address``, else ``RAY_ADDRESS``) or start a local Ray, and
    leave it again; inside an already initialised Ray, use that. Enter it from the main thread:
    a Ray started from a worker thread lost its GCS connection here within a minute."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address:
        require_reachable(address, settings.connect_timeout_s)  # a dead head: one line, not minutes of retries
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        num_cpus=None if address else os.cpu_count(),
    )
    try:
        yield
    finally:
        shutdown_ray()


def shutdown_ray() -> None:
    """``ray.shutdown()``, after freeing unreachable Ray objects (datasets hold object refs in
    reference cycles) while Ray is still up: a garbage collection releasing them after shutdown,
    in whatever thread it runs, makes Ray's core worker exit the whole process."""
    import ray

    gc.collect()
    ray.shutdown()


def ray_device(device: str, settings: RaySettings, cluster_gpus: float) -> str:
    """The device type of a Ray job's actors: ``cuda`` asks for GPUs whether or not a GPU node
    exists yet; ``auto`` means GPU actors if ``gpus_per_actor`` is set or the cluster has a GPU."""
    if device == "auto":
        return "cuda" if settings.gpus_per_actor or cluster_gpus else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def scene_work(blocks: list[Block]) -> int:
    """A scene job's work for ``num_actors: auto``: the stripes its blocks make (one per actor)."""
    return len(split_stripes(blocks, len(blocks)))


def region_work(cfg: JobConfig, height: int, width: int) -> int:
    """A region job's work for ``num_actors: auto``, before any scene is read: the scenes listed
    x the blocks of its ``height`` x ``width`` grid; scenes from a STAC search are not known yet,
    so then as many actors as ``max_actors`` allows."""
    if cfg.stac_search is not None:
        return cfg.ray.max_actors
    return len(cfg.scenes or []) * math.ceil(height / cfg.block) * math.ceil(width / cfg.block)


def _actor_count(settings: RaySettings, work: int, default: int) -> int:
    if settings.num_actors == "auto":
        return max(1, min(work, settings.max_actors))
    return settings.num_actors or default


def plan_actors(
    settings: RaySettings, device: str, threads: int | None, cluster_gpus: float, node_cpus: list[int], work: int
) -> ActorPlan:
    """Resources per actor from the job's settings; the cluster's GPUs count only for ``auto``
    and the default number of GPU actors, its nodes' CPUs only for the default CPU share;
    ``work`` (``scene_work``, ``region_work``) only for ``num_actors: auto``."""
    if ray_device(device, settings, cluster_gpus) == "cuda":
        gpus = settings.gpus_per_actor or 1
        actors = _actor_count(settings, work, max(1, int(cluster_gpus // gpus)))
        cpus = settings.cpus_per_actor or 1
        read_ahead = 2 if settings.read_tasks is None else settings.read_tasks
        return ActorPlan(actors, "cuda", gpus, cpus, threads or max(1, int(cpus)), read_ahead)
    actors = _actor_count(settings, work, 1)
    biggest = max(node_cpus + [1])  # an actor reserves the cores its torch threads use, so it fits a node
    cpus = settings.cpus_per_actor or min(threads or max(1, biggest // actors), biggest)
    return ActorPlan(actors, "cpu", 0, cpus, threads or max(1, int(cpus)), settings.read_tasks or 0)


def job_device(device: str, executor: str, settings: RaySettings) -> str:
    """The device type a job's predictors run on, ``cpu`` or ``cuda`` (part of the job's identity).
    Ray's ``auto`` looks at the cluster: call it inside ``device_session``."""
    if executor == "local":
        return device_type(device)
    gpus = 0.0
    if device == "auto" and not settings.gpus_per_actor:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)  # type: ignore[no-untyped-call]  # ray leaves it unannotated
    return ray_device(device, settings, gpus)


def device_session(device: str, executor: str, settings: RaySettings) -> AbstractContextManager[None]:
    """A ``ray_session`` for the whole job where the job's device depends on the cluster (Ray and
    ``auto``), else nothing: then Ray starts later, beside ingest."""
    if executor == "ray" and device == "auto" and not settings.gpus_per_actor:
        return ray_session(settings)
    return nullcontext()


def actor_pool(spec: PredictorSpec, settings: RaySettings, *, work: int, shared: bool = False) -> ActorPool:
    """A pool of predictor actors for ``spec`` (a shipped spec), sized and placed by ``settings``
    (and ``work``: ``scene_work`` or ``region_work``) on the cluster this process is connected
    to (call it inside a ``ray_session``)."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]  # type: ignore[no-untyped-call]  # ray leaves it unannotated
    plan = plan_actors(
        settings,
        spec.device,
        spec.threads,
        ray.cluster_resources().get("GPU", 0),  # type: ignore[no-untyped-call]  # ray leaves it unannotated
        [int(n["Resources"].get("CPU", 0)) for n in nodes],
        work,
    )
    return ActorPool(replace(spec, device=plan.device, threads=plan.threads), plan, shared=shared)


def _read_block(read: ReadBlock, row: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = read(row)
    return block


class _Handover:
    """Tiles one stripe predicted for others, held by the driver until every stripe that needs
    them has been sent them. A block waits for a tile only while the stripe that owns it runs;
    a stripe not started yet (its actor not placed) would make it wait for nothing, so then the
    block predicts the tile itself (counted in the forward passes)."""

    def __init__(self, stripes: list[list[dict[str, Any]]]) -> None:
        self.waiting = Counter(t for rows in stripes for row in rows for t in row["task"].needs)
        self.owner = {t: row["task"].stripe for rows in stripes for row in rows for t in row["task"].share}
        self.tiles: dict[Tile, Any] = {}

    def add(self, exports: dict[Tile, Any]) -> None:
        self.tiles.update({t: probs for t, probs in exports.items() if self.waiting[t]})

    def ready(self, task: BlockTask, running: set[int]) -> bool:
        return all(t in self.tiles or self.owner[t] not in running for t in task.needs)

    def take(self, task: BlockTask) -> dict[Tile, Any]:
        out = {t: self.tiles[t] for t in task.needs if t in self.tiles}
        for t in task.needs:
            self.waiting[t] -= 1
            if not self.waiting[t]:
                self.tiles.pop(t, None)
        return out


def run_ray(blocks: list[Block], ctx: StageContext, pool: ActorPool) -> Iterator[dict[str, Any]]:
    """Blocks through predictor actors inside a ``ray_session``, one stripe per actor; results
    come back to the driver, which writes them (so the output store needs no shared disk).
    A stripe goes to the first actor that is placed and free, so a job whose actors do not all
    fit runs on those that do (the others' resource demand stays visible to an autoscaler).

    Each actor has up to ``1 + read_ahead`` blocks queued (at least 2: it never waits for the
    driver between blocks). GPU actors get their blocks from read tasks: a GPU predicts a block
    in about the time it takes to read it, so reading inside the actor would leave it idle. CPU
    actors read their own blocks: there reading is ~2 % of a block, and read tasks would only
    compete with the model's threads for the cores and copy every block's bands through the
    object store. Actors restart and retry their blocks without limit when they or their node
    die (``max_restarts`` / ``max_task_retries`` -1). The actors are ``pool``'s: started here if
    not yet, left running (the pool's owner closes it), so a region's next scene finds them warm."""
    if not blocks:  # every block is done (a re-run after a failure while finishing): nothing to compute
        return
    pool.start()
    stripes = _stripe_rows(blocks, ctx.grid, pool.plan.actors)
    log.info(
        "ray: %d block(s) in %d stripe(s) through %d predictor actor(s) on %s (%s)",
        len(blocks),
        len(stripes),
        len(pool.actors),
        pool.plan.device,
        pool.plan.describe(),
    )
    write = WriteBlock(ctx.store)
    feed = _StripeFeed(stripes, ctx, pool)  # once the blocks of a scene mapped beside this one are all sent
    try:
        while feed.busy():
            result = feed.next_result()
            if result is not None:
                yield _write(write, result, result["node"])
    finally:
        feed.give_turn()
    if pool.placing:
        log.info("ray: %d predictor actor(s) not started yet (their resources never became free)", len(pool.placing))


class _StripeFeed:
    """The driver's side of ``run_ray``: hands each stripe to an actor once one is placed and
    free, keeps up to ``window`` blocks queued on it, and passes the tiles a stripe predicted for
    others (``_Handover``) to the blocks that need them."""

    def __init__(self, stripes: list[list[dict[str, Any]]], ctx: StageContext, pool: ActorPool) -> None:
        import ray

        plan = pool.plan
        self.pool, self.grid, self.scene = pool, ctx.grid, str(ctx.scene_path)
        self.read = ReadBlock(ctx.scene_path, ctx.grid)
        self.own_reader = None if plan.read_ahead else self.read
        # Read tasks beside CPU actors reserve no core: the actors hold them all for their threads.
        read_cpus = 0.5 if plan.device == "cuda" else 0
        self.read_task = (
            ray.remote(_read_block).options(num_cpus=read_cpus, max_retries=-1) if plan.read_ahead else None
        )
        self.window = 1 + max(plan.read_ahead, 1)
        self.queues = [deque(rows) for rows in stripes]
        self.left = [len(rows) for rows in stripes]  # results outstanding per stripe
        self.queued = [0] * len(stripes)
        # The last stripe first: it never waits, and predicts the tiles it shares at its start, so an
        # earlier stripe whose actor is placed later finds them handed over instead of predicting them.
        self.unassigned = deque(reversed(range(len(stripes))))
        self.actor_of: dict[int, int] = {}  # running stripe -> actor
        self.pending: dict[Any, int] = {}  # ObjectRef of a block's result -> stripe
        self.handover = _Handover(stripes)
        pool.take_turn()
        self.has_turn = True  # held until every block is sent (``ActorPool.take_turn``)
        log.info("ray: sending the blocks of %s", self.scene)
        try:
            # Warm from an earlier scene: free now, or once the blocks already queued on them are done.
            for a in [a for a in pool.placed if a not in pool.retired]:
                self._start_stripe(a)
            self._submit_ready()
        except BaseException:
            self.give_turn()
            raise

    def give_turn(self) -> None:
        """Let the next scene send its blocks (once: every block of this one is sent, or it failed)."""
        if self.has_turn:
            self.has_turn = False
            self.pool.give_turn()

    def busy(self) -> bool:
        return bool(self.pending) or any(self.left)

    def next_result(self) -> dict[str, Any] | None:
        """Wait for the next event: a block's result (-> it), or an actor placed (-> None)."""
        import ray

        if not self.pending and not (self.has_turn and self.pool.placing):  # the highest running stripe never waits
            raise RuntimeError(f"blocks left waiting for tiles from other stripes: {self.left}")
        # Actors placed from now on matter only while blocks are left to send: then it is this
        # feed's turn, and no other feed waits for them.
        placing = list(self.pool.placing) if self.has_turn else []
        (ref,), _ = ray.wait(list(self.pending) + placing, num_returns=1)
        if ref not in self.pending:  # an actor placed
            self._start_stripe(self.pool.mark_placed(ref))
            self._submit_ready()
            return None
        s = self.pending.pop(ref)
        self.queued[s] -= 1
        self.left[s] -= 1
        result = _result(ref)
        self.handover.add(result.pop("exports"))
        if not self.left[s]:
            self._start_stripe(self.actor_of.pop(s))
        self._submit_ready()
        return result

    def _start_stripe(self, a: int) -> None:
        if self.unassigned:
            self.actor_of[self.unassigned.popleft()] = a
        else:  # nothing left for it in this scene
            self.pool.idle(a)

    def _submit_ready(self) -> None:
        """Queue every running stripe's next blocks, up to the window, whose imported tiles are there."""
        running = set(self.actor_of)
        for s, a in self.actor_of.items():
            queue = self.queues[s]
            while queue and self.queued[s] < self.window and self.handover.ready(queue[0]["task"], running):
                row = queue.popleft()
                imports = self.handover.take(row["task"])
                block = self.read_task.remote(self.read, row) if self.read_task else row
                ref = self.pool.actors[a].predict.remote(block, imports, self.scene, self.grid, self.own_reader)
                self.pending[ref] = s
                self.queued[s] += 1
        if self.has_turn and not any(self.queues):
            log.info("ray: every block of %s sent", self.scene)
            self.give_turn()


def _result(ref: Any) -> dict[str, Any]:
    """A block's result; a ``LandslideBatchError`` raised in the actor is raised here as itself."""
    import ray

    try:
        result: dict[str, Any] = ray.get(ref)
        return result
    except ray.exceptions.RayTaskError as exc:
        if isinstance(getattr(exc, "cause", None), LandslideBatchError):
            raise exc.cause from None
        raise
