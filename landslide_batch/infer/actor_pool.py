"""Predictor actors that outlive one scene: a region job maps all its scenes with one warm pool.

The actors are created once (``ActorPool.start``) and load their models with their first block;
everything that belongs to a scene (its grid, the reader of its store, the stripe) comes with
each block, so the next scene reuses the loaded models. A single-scene job uses a pool of its
own and closes it with the job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .stages import PredictBlock, PredictorSpec, ReadBlock

if TYPE_CHECKING:
    from ..plan.tiling import TileGrid
    from .executors import ActorPlan

log = logging.getLogger(__name__)


class PredictBlockActor:
    """``PredictBlock`` on a Ray actor, one stripe at a time. The predictor is built with the first
    block, so an error there (a model, no GPU) reaches the driver as that block's error; results
    name the node that computed them. ``models_loaded`` counts the builds (1 for a warm actor)."""

    def __init__(self, spec: PredictorSpec):
        self.spec = spec
        self.predictor = None
        self.models_loaded = 0
        self.stage: PredictBlock | None = None
        self.stripe: tuple | None = None

    def ready(self) -> None:
        """Answers once the actor is placed: the driver hands it a stripe then."""

    def predict(self, row: dict, imports: dict, scene: str, grid: TileGrid, reader: ReadBlock | None) -> dict:
        """Predict one block of stripe ``row["task"].stripe`` of ``scene``; a new stripe (or scene)
        starts with nothing kept from the last one, but with the models already loaded."""
        import ray

        if self.predictor is None:
            self.predictor = self.spec.build()
            self.models_loaded += 1
        if (scene, row["task"].stripe) != self.stripe:
            self.stage = PredictBlock(self.spec, grid, predictor=self.predictor, reader=reader)
            self.stripe = (scene, row["task"].stripe)
        result = self.stage({**row, "imports": imports})
        result["node"] = ray.get_runtime_context().get_node_id()
        return result

    def loads(self) -> dict:
        """-> ``{actor, node, models_loaded}``: what ``run.json`` records of this actor."""
        import ray

        context = ray.get_runtime_context()
        return {"actor": context.get_actor_id(), "node": context.get_node_id(), "models_loaded": self.models_loaded}


class ActorPool:
    """``plan.actors`` predictor actors of ``spec``, created on first use. ``shared``: the pool
    serves several scenes, so an actor without a stripe in one scene stays (idle, warm) for the
    next; a job's own pool kills it at once to free its resources for others."""

    def __init__(self, spec: PredictorSpec, plan: ActorPlan, *, shared: bool = False):
        self.spec, self.plan, self.shared = spec, plan, shared
        self.actors: list = []
        self.placing: dict = {}  # ObjectRef of ready() -> actor index, for actors not placed yet
        self.placed: list[int] = []  # actors placed, in the order they were
        self.retired: dict[int, dict] = {}  # actor killed when idle -> its loads() at that time

    def start(self) -> None:
        """Create the actors (once). SPREAD: on different nodes where they fit (more memory
        bandwidth, a node's loss costs one). Restarted without limit when they or their node die."""
        if self.actors:
            return
        import ray

        plan = self.plan
        actor_class = ray.remote(PredictBlockActor).options(
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            max_restarts=-1,
            max_task_retries=-1,
            scheduling_strategy="SPREAD",
        )
        self.actors = [actor_class.remote(self.spec) for _ in range(plan.actors)]
        self.placing = {actor.ready.remote(): a for a, actor in enumerate(self.actors)}
        if self.shared:
            log.info("ray: %d predictor actor(s) started, kept warm for every scene of the region", plan.actors)

    def mark_placed(self, ref) -> int:
        """The actor whose ``ready()`` answered ``ref`` is placed; -> its index."""
        import ray

        ray.get(ref)
        a = self.placing.pop(ref)
        self.placed.append(a)
        return a

    def idle(self, a: int) -> None:
        """Actor ``a`` has nothing more to do in this scene."""
        import ray

        if not self.shared:
            self.retired[a] = ray.get(self.actors[a].loads.remote())
            ray.kill(self.actors[a])

    def loads(self) -> list[dict]:
        """``{actor, node, models_loaded}`` of every placed actor (in placing order)."""
        import ray

        live = {a: self.actors[a].loads.remote() for a in self.placed if a not in self.retired}
        answers = dict(zip(live, ray.get(list(live.values()))))
        return [self.retired.get(a) or answers[a] for a in self.placed]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.placing, self.placed, self.retired = [], {}, [], {}

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
