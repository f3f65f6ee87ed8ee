"""Executors run the block stages: in-process (threads overlap I/O with the model) or on Ray actors.

Both call the same ``ReadBlock`` / ``PredictBlock`` / ``WriteBlock`` objects on blocks grouped in
stripes (``infer.stripes``: one stripe per predictor, so edge tiles are predicted once), and yield
one small summary row per finished block: its key, tiles, forward passes and the node that
computed it.
"""

from __future__ import annotations

import gc
import logging
import os
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import RaySettings
from ..errors import LandslideBatchError
from ..outputs.store import BlockStore
from ..plan.tiling import Block, TileGrid
from .actor_pool import ActorPool
from .device import device_type
from .stages import PredictBlock, PredictorSpec, ReadBlock, WriteBlock
from .stripes import BlockTask, plan_tasks, split_stripes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageContext:
    scene_path: Path
    grid: TileGrid
    predictor: PredictorSpec
    store: BlockStore


#: The node of blocks computed in-process (``run.json`` ``blocks.node_of``).
LOCAL_NODE = "local"


def _stripe_rows(blocks: list[Block], grid: TileGrid, n: int) -> list[list[dict]]:
    """``blocks`` in at most ``n`` stripes: per stripe its rows (block fields + ``task``), in order."""
    stripes = split_stripes(blocks, n)
    return [
        [{**b.as_dict(), "key": b.key, "tiles": b.n_tiles, "task": t} for b, t in zip(stripe, tasks)]
        for stripe, tasks in zip(stripes, plan_tasks(stripes, grid))
    ]


def _write(write: WriteBlock, result: dict, node: str) -> dict:
    """Write a predicted block; -> its summary row."""
    task: BlockTask = result["task"]
    return {
        **write(result),
        "node": node,
        "stripe": task.stripe,
        "last_in_stripe": task.last,
        "kept_tiles": int(result["kept_tiles"]),
    }


def run_local(blocks: list[Block], ctx: StageContext, predictor: Future, prefetch: int | None = None) -> Iterator[dict]:
    """Predicts block after block; the previous block is written, and ``prefetch`` blocks are
    read (default: 1 on a GPU, 0 on CPU), in background threads while the model works. The first
    block is read while ``predictor`` (a future: the models load in the background) is not ready."""
    read, write = ReadBlock(ctx.scene_path, ctx.grid), WriteBlock(ctx.store)
    rows = [row for stripe in _stripe_rows(blocks, ctx.grid, 1) for row in stripe]
    with ThreadPoolExecutor(1, "read") as reader, ThreadPoolExecutor(1, "write") as writer:
        reads: deque = deque(reader.submit(read, row) for row in rows[:1])
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
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        **({} if address else {"num_cpus": os.cpu_count()}),
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


@dataclass(frozen=True)
class ActorPlan:
    """What the predictor actors of a Ray job ask of the cluster."""

    actors: int
    device: str  # "cuda" | "cpu"
    num_gpus: float
    num_cpus: float
    threads: int  # torch CPU threads per actor
    read_ahead: int  # blocks read ahead of each actor by Ray tasks (0: the actor reads its own)

    def describe(self) -> str:
        gpus = f"{self.num_gpus:g} GPU, " if self.num_gpus else ""
        reads = f"; {self.read_ahead} block(s) read ahead by Ray tasks" if self.read_ahead else ""
        return f"{gpus}{self.num_cpus:g} CPU, {self.threads} torch thread(s) each{reads}"


def ray_device(device: str, settings: RaySettings, cluster_gpus: float) -> str:
    """The device type of a Ray job's actors: ``cuda`` asks for GPUs whether or not a GPU node
    exists yet; ``auto`` means GPU actors if ``gpus_per_actor`` is set or the cluster has a GPU."""
    if device == "auto":
        return "cuda" if settings.gpus_per_actor or cluster_gpus else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def plan_actors(
    settings: RaySettings, device: str, threads: int | None, cluster_gpus: float, node_cpus: list[int]
) -> ActorPlan:
    """Resources per actor from the job's settings; the cluster's GPUs count only for ``auto``
    and the default number of GPU actors, its nodes' CPUs only for the default CPU share."""
    if ray_device(device, settings, cluster_gpus) == "cuda":
        gpus = settings.gpus_per_actor or 1
        actors = settings.num_actors or max(1, int(cluster_gpus // gpus))
        cpus = settings.cpus_per_actor or 1
        read_ahead = 2 if settings.read_tasks is None else settings.read_tasks
        return ActorPlan(actors, "cuda", gpus, cpus, threads or max(1, int(cpus)), read_ahead)
    actors = settings.num_actors or 1
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

        gpus = ray.cluster_resources().get("GPU", 0)
    return ray_device(device, settings, gpus)


def device_session(device: str, executor: str, settings: RaySettings) -> AbstractContextManager:
    """A ``ray_session`` for the whole job where the job's device depends on the cluster (Ray and
    ``auto``), else nothing: then Ray starts later, beside ingest."""
    if executor == "ray" and device == "auto" and not settings.gpus_per_actor:
        return ray_session(settings)
    return nullcontext()


def actor_pool(spec: PredictorSpec, settings: RaySettings, *, shared: bool = False) -> ActorPool:
    """A pool of predictor actors for ``spec`` (a shipped spec), sized and placed by ``settings``
    on the cluster this process is connected to (call it inside a ``ray_session``)."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    plan = plan_actors(
        settings,
        spec.device,
        spec.threads,
        ray.cluster_resources().get("GPU", 0),
        [int(n["Resources"].get("CPU", 0)) for n in nodes],
    )
    return ActorPool(replace(spec, device=plan.device, threads=plan.threads), plan, shared=shared)


def _read_block(read: ReadBlock, row: dict) -> dict:
    return read(row)


class _Handover:
    """Tiles one stripe predicted for others, held by the driver until every stripe that needs
    them has been sent them. A block waits for a tile only while the stripe that owns it runs;
    a stripe not started yet (its actor not placed) would make it wait for nothing, so then the
    block predicts the tile itself (counted in the forward passes)."""

    def __init__(self, stripes: list[list[dict]]):
        self.waiting = Counter(t for rows in stripes for row in rows for t in row["task"].needs)
        self.owner = {t: row["task"].stripe for rows in stripes for row in rows for t in row["task"].share}
        self.tiles: dict = {}

    def add(self, exports: dict) -> None:
        self.tiles.update({t: probs for t, probs in exports.items() if self.waiting[t]})

    def ready(self, task: BlockTask, running: set[int]) -> bool:
        return all(t in self.tiles or self.owner[t] not in running for t in task.needs)

    def take(self, task: BlockTask) -> dict:
        out = {t: self.tiles[t] for t in task.needs if t in self.tiles}
        for t in task.needs:
            self.waiting[t] -= 1
            if not self.waiting[t]:
                self.tiles.pop(t, None)
        return out


def run_ray(blocks: list[Block], ctx: StageContext, pool: ActorPool) -> Iterator[dict]:
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
    import ray

    pool.start()
    plan = pool.plan
    stripes = _stripe_rows(blocks, ctx.grid, plan.actors)
    read = ReadBlock(ctx.scene_path, ctx.grid)
    actors = pool.actors
    scene = str(ctx.scene_path)
    own_reader = None if plan.read_ahead else read
    # Read tasks beside CPU actors reserve no core: the actors hold them all for their threads.
    read_cpus = 0.5 if plan.device == "cuda" else 0
    read_task = ray.remote(_read_block).options(num_cpus=read_cpus, max_retries=-1) if plan.read_ahead else None
    log.info(
        "ray: %d block(s) in %d stripe(s) through %d predictor actor(s) on %s (%s)",
        len(blocks),
        len(stripes),
        len(actors),
        plan.device,
        plan.describe(),
    )
    window = 1 + max(plan.read_ahead, 1)
    queues = [deque(rows) for rows in stripes]
    left = [len(rows) for rows in stripes]  # results outstanding per stripe
    queued = [0] * len(stripes)
    # The last stripe first: it never waits, and predicts the tiles it shares at its start, so an
    # earlier stripe whose actor is placed later finds them handed over instead of predicting them.
    unassigned = deque(reversed(range(len(stripes))))
    actor_of: dict[int, int] = {}  # running stripe -> actor
    pending: dict = {}  # ObjectRef -> stripe
    handover = _Handover(stripes)

    def start_stripe(a: int) -> None:
        if unassigned:
            actor_of[unassigned.popleft()] = a
        else:  # nothing left for it in this scene
            pool.idle(a)

    def submit_ready() -> None:
        for s, a in actor_of.items():
            queue = queues[s]
            while queue and queued[s] < window and handover.ready(queue[0]["task"], set(actor_of)):
                row = queue.popleft()
                imports = handover.take(row["task"])
                block = read_task.remote(read, row) if read_task else row
                pending[actors[a].predict.remote(block, imports, scene, ctx.grid, own_reader)] = s
                queued[s] += 1

    write = WriteBlock(ctx.store)
    for a in [a for a in pool.placed if a not in pool.retired]:  # warm from an earlier scene: free now
        start_stripe(a)
    submit_ready()
    while pending or any(left):
        if not pending and not pool.placing:  # cannot happen: the highest running stripe never waits
            raise RuntimeError(f"blocks left waiting for tiles from other stripes: {left}")
        (ref,), _ = ray.wait(list(pending) + list(pool.placing), num_returns=1)
        if ref in pool.placing:
            start_stripe(pool.mark_placed(ref))
            submit_ready()
            continue
        s = pending.pop(ref)
        queued[s] -= 1
        left[s] -= 1
        result = _result(ref)
        handover.add(result.pop("exports"))
        if not left[s]:
            start_stripe(actor_of.pop(s))
        submit_ready()
        row = _write(write, result, result["node"])
        yield row
    if pool.placing:
        log.info("ray: %d predictor actor(s) not started yet (their resources never became free)", len(pool.placing))


def _result(ref) -> dict:
    """A block's result; a ``LandslideBatchError`` raised in the actor is raised here as itself."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(getattr(exc, "cause", None), LandslideBatchError):
            raise exc.cause from None
        raise
