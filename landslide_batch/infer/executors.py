"""Executors run the block stages: in-process (threads overlap I/O with the model) or on Ray Data.

Both call the same ``ReadBlock`` / ``PredictBlock`` / ``WriteBlock`` objects and yield one
small summary row per finished block.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def run_local(blocks: list[Block], ctx: StageContext, predictor, prefetch: int = 1) -> Iterator[dict]:
    """Predicts block after block; the previous block is written, and ``prefetch`` blocks are
    read, in background threads while the model works."""
    read, write = ReadBlock(ctx.scene_path, ctx.grid), WriteBlock(ctx.store)
    predict = PredictBlock(ctx.predictor, ctx.grid, ctx.tile_uses, predictor)
    rows = _rows(blocks)
    with ThreadPoolExecutor(1, "read") as reader, ThreadPoolExecutor(1, "write") as writer:
        reads: deque = deque()
        pending_write, submitted = None, 0
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


def run_ray(blocks: list[Block], ctx: StageContext, settings: RaySettings) -> Iterator[dict]:
    """A Ray Data streaming pipeline: read tasks -> predictor actor pool -> write tasks."""
    import ray

    started = False
    if not ray.is_initialized():
        address = settings.address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, **({} if address else {"num_cpus": os.cpu_count()}))
        started = True
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = settings.num_actors or max(gpus, 1)
        per_actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        ds = ray.data.from_items(_rows(blocks), override_num_blocks=len(blocks))
        ds = ds.map(ReadBlock(ctx.scene_path, ctx.grid), num_cpus=0.5,
                    compute=ray.data.TaskPoolStrategy(size=settings.read_tasks))
        ds = ds.map(PredictBlock, fn_constructor_args=(ctx.predictor, ctx.grid, ctx.tile_uses),
                    compute=ray.data.ActorPoolStrategy(size=actors), **per_actor)
        ds = ds.map(WriteBlock(ctx.store), num_cpus=0.25)
        log.info("ray: %d block(s) through %d predictor actor(s) (%s)", len(blocks), actors,
                 "1 GPU each" if gpus else "CPU")
        yield from ds.iter_rows()
    finally:
        if started:
            ray.shutdown()
