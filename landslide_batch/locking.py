"""An exclusive, non-waiting file lock: a second holder is refused at once with a clear error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


@contextmanager
def exclusive(lock_file: Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold ``lock_file`` for the block; raise ``busy()`` if someone else holds it."""
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise busy() from None
    try:
        yield
    finally:
        lock.release()
