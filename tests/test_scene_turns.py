"""Scenes of a region take turns on one actor pool (``ActorPool.take_turn``): a thread sends its
scene's blocks only while no other thread does, and a thread that failed never keeps the turn."""

from __future__ import annotations

import threading
import time

from landslide_batch.infer.actor_pool import ActorPool
from landslide_batch.infer.executors import ActorPlan


def _pool() -> ActorPool:
    # No actor is started: turns are bookkeeping in the driver (the spec is never used here).
    return ActorPool(None, ActorPlan(1, "cpu", 0, 1, 1, 0), shared=True)  # type: ignore[arg-type]


def test_the_next_scene_waits_until_the_turn_is_given_back():
    pool, events = _pool(), []
    pool.take_turn()

    def next_scene() -> None:
        pool.take_turn()
        events.append("second sends")
        pool.give_turn()

    thread = threading.Thread(target=next_scene)
    thread.start()
    time.sleep(0.3)
    events.append("first gives its turn")
    pool.give_turn()
    thread.join(5)
    assert not thread.is_alive() and events == ["first gives its turn", "second sends"]


def test_only_the_holder_gives_the_turn_back_and_giving_twice_is_harmless():
    pool, taken = _pool(), threading.Event()
    pool.take_turn()
    other = threading.Thread(target=lambda: (pool.give_turn(), taken.set()))  # not the holder: no effect
    other.start()
    other.join(5)
    waiter = threading.Thread(target=pool.take_turn, daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert taken.is_set() and waiter.is_alive()  # still held by this thread
    pool.give_turn()
    pool.give_turn()  # a failed scene's cleanup after its feed already gave it back
    waiter.join(5)
    assert not waiter.is_alive()
