"""Predictor actors that outlive one scene: a region job maps all its scenes with one warm pool.

The actors are created once (``ActorPool.start``) and load their models with their first block;
everything that belongs to a scene (its grid, the reader of its store, the stripe) comes with
each block, so the next scene reuses the loaded models. A single-scene job uses a pool of its
own and closes it with the job.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .stages import PredictBlock, PredictorSpec, ReadBlock, Row

if TYPE_CHECKING:
    from ray import ObjectRef

    from ..plan.tiling import TileGrid
    from .predictor import EnsemblePredictor, FloatArray
    from .stripes import Tile

log = logging.getLogger(__name__)


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


def task_attempt() -> int:
    """Which execution of the running Ray task this is: 0 the first, 1 after one retry (its actor
    or node died while the task was queued or running on it). Ray keeps the number in its core
    worker only (no public API in Ray 2.x); ``run.json`` ``blocks.retried`` records it."""
    import ray

    worker: Any = ray._private.worker.global_worker
    return int(worker.core_worker.get_current_task_attempt_number())


class PredictBlockActor:
    """``PredictBlock`` on a Ray actor, one stripe at a time. The predictor is built by ``warm``,
    which the pool asks for as soon as the actor exists, or else with the first block; an error
    there (a model, no GPU) reaches the driver as the first block's error. Results name the node
    that computed them. ``models_loaded`` counts the builds (1 for a warm actor)."""

    def __init__(self, spec: PredictorSpec):
        self.spec = spec
        self.predictor: EnsemblePredictor | None = None
        self.failed: Exception | None = None  # why ``warm`` could not build the predictor
        self.models_loaded = 0
        self.stage: PredictBlock | None = None
        self.stripe: tuple[str, int] | None = None  # (scene, stripe) of ``stage``

    def ready(self) -> None:
        """Answers once the actor is placed: the driver hands it a stripe then."""

    def warm(self) -> None:
        """Build the predictor now, while the driver still prepares the scenes, rather than with
        the first block (a second or more of imports and model loading). A failure is kept and
        raised with the first block, as that block's error."""
        try:
            self._predictor()
        except Exception as exc:  # raised again by predict(): an actor's errors reach the driver with blocks
            self.failed = exc

    def _predictor(self) -> EnsemblePredictor:
        if self.failed is not None:
            raise self.failed
        if self.predictor is None:
            if self.spec.threads:  # the actor owns its process, so it sets torch's threads
                import torch

                torch.set_num_threads(self.spec.threads)
            self.predictor = self.spec.build()
            self.models_loaded += 1
        return self.predictor

    def predict(
        self,
        row: Row,
        imports: dict[Tile, FloatArray | None],
        scene: str,
        grid: TileGrid,
        reader: ReadBlock | None,
    ) -> Row:
        """Predict one block of stripe ``row["task"].stripe`` of ``scene``; a new stripe (or scene)
        starts with nothing kept from the last one, but with the models already loaded."""
        import ray

        predictor = self._predictor()
        if self.stage is None or (scene, row["task"].stripe) != self.stripe:
            self.stage = PredictBlock(self.spec, grid, predictor=predictor, reader=reader)
            self.stripe = (scene, row["task"].stripe)
        result = self.stage({**row, "imports": imports})
        result["node"] = ray.get_runtime_context().get_node_id()
        result["attempt"] = task_attempt()
        return result

    def loads(self) -> dict[str, Any]:
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
        self.actors: list[Any] = []  # Ray actor handles of PredictBlockActor
        self.placing: dict[ObjectRef[None], int] = {}  # ObjectRef of ready() -> actor index, for actors not placed yet
        self.placed: list[int] = []  # actors placed, in the order they were
        self.retired: dict[int, dict[str, Any]] = {}  # actor killed when idle -> its loads() at that time
        # The turn: held by the thread sending a scene's blocks to the actors until it has sent its
        # last one; the next scene (in another thread) then queues its first blocks behind them, so
        # the actors go from one scene to the next without waiting, and never mix two scenes' blocks.
        self._turn = threading.Condition()
        self._turn_holder: int | None = None  # thread ident

    def take_turn(self) -> None:
        """Wait until no other thread is sending blocks to the actors, then hold the turn."""
        with self._turn:
            self._turn.wait_for(lambda: self._turn_holder is None)
            self._turn_holder = threading.get_ident()

    def give_turn(self) -> None:
        """Give the turn back, if this thread holds it (so a failed scene never keeps it)."""
        with self._turn:
            if self._turn_holder == threading.get_ident():
                self._turn_holder = None
                self._turn.notify_all()

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
        for actor in self.actors:  # models loaded once placed: its errors come with the first block
            actor.warm.remote()
        if self.shared:
            log.info("ray: %d predictor actor(s) started, kept warm for every scene of the region", plan.actors)

    def mark_placed(self, ref: ObjectRef[None]) -> int:
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

    def loads(self) -> list[dict[str, Any]]:
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

    def __exit__(self, *exc: object) -> None:
        self.close()
