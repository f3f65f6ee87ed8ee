"""An exclusive lock on a location: an OS file lock locally, a lease object on object storage.

The lease is created with a conditional PUT (``If-None-Match: *``: exactly one of two
creators wins), holds an owner id (host, pid, random token) and an expiry, and is renewed
by a background thread while held. A lease whose expiry has passed, or one left on this
host by a process that no longer runs (a SIGKILLed driver), is taken over. See
docs/reliability.md for what this guarantees and what it does not.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .location import Location

LEASE_S = 120.0  # a held lease is renewed every LEASE_S / 4
HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(lease: dict, now: float) -> bool:
    """Expired, or left on this host by a process that is gone."""
    if float(lease.get("expires", 0)) < now:
        return True
    return lease.get("host") == HOST and not _pid_alive(int(lease.get("pid", -1)))


def _read(lock: Location) -> dict | None:
    try:
        return json.loads(lock.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:  # unreadable: treat as expired, so a corrupt lease cannot block forever
        return {}


def _acquire(lock: Location, owner: dict) -> bool:
    """One try: create the lease, or take over a stale one (then create it again, conditionally)."""

    def body():
        return json.dumps({**owner, "expires": time.time() + LEASE_S}).encode()

    if lock.create_exclusive(body()):
        return True
    held = _read(lock)
    if held is None or _stale(held, time.time()):
        lock.rm(recursive=False)
        return lock.create_exclusive(body())
    return False


@contextmanager
def _lease(lock: Location, busy: Callable[[], Exception]) -> Iterator[None]:
    owner = {"host": HOST, "pid": os.getpid(), "token": uuid.uuid4().hex}
    if not _acquire(lock, owner):
        raise busy()
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 4):
            held = _read(lock)
            if held is not None and held.get("token") != owner["token"]:
                return  # taken over (we were presumed dead): never overwrite the new holder
            lock.write_bytes(json.dumps({**owner, "expires": time.time() + LEASE_S}).encode())

    keeper = threading.Thread(target=renew, name="lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        held = _read(lock)
        if held is not None and held.get("token") == owner["token"]:
            lock.rm(recursive=False)


@contextmanager
def exclusive_location(lock: Location, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold ``lock`` for the block; raise ``busy()`` at once if another job holds it."""
    if lock.is_local:
        from ..locking import exclusive

        with exclusive(lock.path, busy):
            yield
        return
    with _lease(lock, busy):
        yield
