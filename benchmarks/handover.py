"""Issue 26: what the Ray executor's cross-stripe tile handover saves, in forward passes.

A tile straddling the edge between two stripes is needed by both. With the handover
(``infer.stripes``: ``share`` / ``needs``, ``infer.executors._Handover``) the later stripe
predicts it once and the driver passes it to the earlier one; without it each stripe predicts
every tile it uses once (per-stripe tile reuse stays). The measure is forward passes / grid
tiles: a count, so a tiny untrained model is enough, and the timings are not reported.

Two figures per row:
- ``plan``: what the stripe plan predicts (grid tiles + the tiles handed over when there is
  no handover), pure integer bookkeeping, exact;
- ``ray``: the sum of ``forward_passes`` over the blocks of a real ``run_ray`` on a local Ray
  (one scene store ingested once, ``n`` one-thread CPU actors, blocks written nowhere). Without
  the handover the driver plans each stripe on its own (its tasks share and need no tile).

The predictor counts the tiles it sends to the models, so the count does not depend on what
the model computes: by default the actors' models are a stand-in that returns zero logits
(a Ray worker setup hook), which makes an 8192² run minutes of reading and blending instead
of an hour of forward passes on two cores; ``--real-forward`` keeps the untrained MobileNetV2
U-Net's forward (1024² with 256² blocks: the same figures as the stand-in).

    .venv/bin/python benchmarks/handover.py                       # 8192², 2 and 4 actors
    .venv/bin/python benchmarks/handover.py --size 1024 --block 256 --real-forward
    .venv/bin/python benchmarks/handover.py --plan-only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TILE, STRIDE = 128, 64  # the job defaults (tile 128, overlap 0.5)


def independent(stripes, grid):
    """``plan_tasks`` for stripes that hand nothing over: each predicts every tile it uses."""
    from landslide_batch.infer.stripes import plan_tasks

    return [[replace(t, share=(), needs=()) for t in tasks] for tasks in plan_tasks(stripes, grid)]


def plan_ratio(grid, blocks, actors: int, handover: bool) -> float:
    from landslide_batch.infer.stripes import plan_tasks, split_stripes
    from landslide_batch.plan.tiling import tile_uses

    used = int((tile_uses(grid, blocks) > 0).sum())
    handed = sum(len(t.needs) for tasks in plan_tasks(split_stripes(blocks, actors), grid) for t in tasks)
    return (used + (0 if handover else handed)) / used


class Nowhere:
    """A ``BlockWriter`` that drops the blocks: only the counts are measured."""

    def write(self, block, prob, spread, agreement) -> None:
        pass


def ray_ratio(ctx, blocks, actors: int, handover: bool) -> tuple[float, int]:
    """Forward passes / grid tiles of one ``run_ray`` over ``blocks``; -> (ratio, stripes' actors)."""
    from landslide_batch.config import RaySettings
    from landslide_batch.infer import executors
    from landslide_batch.plan.tiling import tile_uses

    used = int((tile_uses(ctx.grid, blocks) > 0).sum())
    with executors.actor_pool(ctx.predictor, RaySettings(num_actors=actors), work=actors) as pool:
        with nullcontext() if handover else mock.patch.object(executors, "plan_tasks", independent):
            passes = sum(row["forward_passes"] for row in executors.run_ray(blocks, ctx, pool))
        return passes / used, len(pool.placed)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=8192, help="scene side in pixels (default 8192)")
    p.add_argument("--block", type=int, default=1024, help="block side in pixels (the job default, 1024)")
    p.add_argument("--actors", type=int, nargs="+", default=[2, 4])
    p.add_argument("--work", type=Path, help="where the scene and its store go (default: a temporary folder)")
    p.add_argument("--plan-only", action="store_true", help="the plan's figures only, no Ray run")
    p.add_argument("--real-forward", action="store_true", help="the tiny model's own forward, not a stand-in")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from landslide_batch.plan.tiling import TileGrid, plan_blocks

    grid = TileGrid(args.size, args.size, TILE, STRIDE)
    blocks = plan_blocks(grid, args.block)
    print(f"{args.size}² scene, tile {TILE} stride {STRIDE}, {args.block}² blocks: {grid.n_tiles} tiles", flush=True)
    print("| actors | handover | plan: passes / tiles | ray: passes / tiles | actors placed |", flush=True)
    print("|---|---|---|---|---|", flush=True)
    if args.plan_only:
        for n in args.actors:
            for handover in (True, False):
                print(f"| {n} | {'yes' if handover else 'no'} | {plan_ratio(grid, blocks, n, handover):.4f} | | |")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        ctx = prepare(work, args.size, grid, max(args.actors), args.real_forward)
        try:
            for n in args.actors:
                for handover in (False, True):
                    ratio, placed = ray_ratio(ctx, blocks, n, handover)
                    plan = plan_ratio(grid, blocks, n, handover)
                    print(f"| {n} | {'yes' if handover else 'no'} | {plan:.4f} | {ratio:.4f} | {placed} |", flush=True)
        finally:
            from landslide_batch.infer.executors import shutdown_ray

            shutdown_ray()
    return 0


def stand_in_forward() -> None:
    """Ray worker setup hook: each member's model, once loaded, becomes one that returns zero
    logits (the predictor still cuts, counts and blends every tile it sends)."""
    import torch

    from landslide_batch.infer import predictor

    class ZeroLogits(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] * 0

    predictor._inference_ready = lambda model, in_channels, tile: ZeroLogits()


def stand_in_active() -> bool:
    from landslide_batch.infer import predictor

    return predictor._inference_ready.__name__ == "<lambda>"


def prepare(work: Path, size: int, grid, cpus: int, real_forward: bool):
    """The scene store (ingested once), a tiny model's predictor spec shipped to a local Ray of
    ``cpus`` logical CPUs (one per one-thread actor) -> the ``StageContext``."""
    import ray
    from run import make_scene

    from landslide_batch.config import EnsembleConfig
    from landslide_batch.infer.executors import StageContext
    from landslide_batch.infer.stages import PredictorSpec
    from landslide_batch.ingest import ingest
    from landslide_batch.models.card import init_model_folder

    work.mkdir(parents=True, exist_ok=True)
    store = work / f"scene_{size}.zarr"
    if not store.exists():
        ingest(make_scene(work / f"scene_{size}.tif", size), store)
    model = work / "unet_mobilenet_v2"
    if not model.exists():
        init_model_folder("Unet", "mobilenet_v2", model, seed=0)
    ensemble = EnsembleConfig.model_validate({"members": [{"model": model}]})
    spec = PredictorSpec(ensemble, TILE, STRIDE, "gaussian", 16, "cpu", 1)
    hook = {} if real_forward else {"runtime_env": {"worker_process_setup_hook": stand_in_forward}}
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False, **hook)
    if not real_forward:  # the hook ran in Ray's workers
        assert ray.get(ray.remote(stand_in_active).remote()), "the stand-in forward is not in place"
    return StageContext(store, grid, spec.shipped(), Nowhere())


if __name__ == "__main__":
    sys.exit(main())
