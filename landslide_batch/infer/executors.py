"""Executors run the block stages: in-process (threads overlap I/O with the model) or on Ray Data.

Both call the same ``ReadBlock`` / ``PredictBlock`` / ``WriteBlock`` objects and yield one
small summary row per finished block.
"""

from __future__ import annotations

import gc
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import RaySettings
from ..outputs.store import BlockStore
from ..plan.tiling import Block, TileGrid
from .stages import PredictBlock, PredictorSpec, ReadBlock, WriteBlock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageContext:
    scene_path: Path
    grid: TileGrid
    predictor: PredictorSpec
    store: BlockStore
    tile_uses: np.ndarray  # (ny, nx) blocks of this run predicting each tile


def _rows(blocks: list[Block]) -> list[dict]:
    return [{**b.as_dict(), "key": b.key, "tiles": b.n_tiles} for b in blocks]


def run_local(blocks: list[Block], ctx: StageContext, predictor: Future, prefetch: int | None = None
              ) -> Iterator[dict]:
    """Predicts block after block; the previous block is written, and ``prefetch`` blocks are
    read (default: 1 on a GPU, 0 on CPU), in background threads while the model works. The first
    block is read while ``predictor`` (a future: the models load in the background) is not ready."""
    read, write = ReadBlock(ctx.scene_path, ctx.grid), WriteBlock(ctx.store)
    rows = _rows(blocks)
    with ThreadPoolExecutor(1, "read") as reader, ThreadPoolExecutor(1, "write") as writer:
        reads: deque = deque(reader.submit(read, row) for row in rows[:1])
        submitted, pending_write = len(reads), None
        model = predictor.result()
        if prefetch is None:
            prefetch = int(model.device.type != "cpu")
        predict = PredictBlock(ctx.predictor, ctx.grid, ctx.tile_uses, model)
        for i in range(len(rows)):
            while submitted <= min(i + prefetch, len(rows) - 1):
                reads.append(reader.submit(read, rows[submitted]))
                submitted += 1
            item = reads.popleft().result()
            result = predict(item)
            del item
            if pending_write is not None:
                yield pending_write.result()
            pending_write = writer.submit(write, result)
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
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=False, **({} if address else {"num_cpus": os.cpu_count()}))
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


def run_ray(blocks: list[Block], ctx: StageContext, settings: RaySettings) -> Iterator[dict]:
    """A Ray Data streaming pipeline inside a ``ray_session``: predictor actor
    pool -> rows back to the driver, which writes them (so the output store needs no shared disk).

    GPU actors get their blocks from read tasks: a GPU predicts a block in about the time it
    takes to read it, so reading inside the actor would leave it idle. CPU actors read their
    own blocks: there reading is ~2 % of a block, and read tasks would only compete with the
    model's threads for the cores and copy every block's bands through the object store."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = settings.num_actors or max(gpus, 1)
    read = ReadBlock(ctx.scene_path, ctx.grid)
    ds = ray.data.from_items(_rows(blocks), override_num_blocks=len(blocks))
    if gpus:
        ds = ds.map(read, num_cpus=0.5, compute=ray.data.TaskPoolStrategy(size=settings.read_tasks))
        spec, reader, per_actor = ctx.predictor, None, {"num_gpus": 1}
    else:  # an actor reserves the cores its torch threads use (by default a node's share), so it fits a node
        node_cpus = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]] + [1])
        cpus = ctx.predictor.threads or max(1, node_cpus // actors)
        spec, reader = replace(ctx.predictor, threads=cpus), read
        per_actor = {"num_cpus": min(cpus, node_cpus)}
    ds = ds.map(PredictBlock, fn_constructor_args=(spec, ctx.grid, ctx.tile_uses, None, reader),
                compute=ray.data.ActorPoolStrategy(size=actors), **per_actor)
    log.info("ray: %d block(s) through %d predictor actor(s) (%s)", len(blocks), actors,
             "1 GPU each" if gpus else f"{spec.threads} CPU thread(s) each")
    write = WriteBlock(ctx.store)
    for row in ds.iter_rows():
        yield write(row)
