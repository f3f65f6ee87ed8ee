"""Progress bars with an ETA (tqdm) for the loops a user waits on: ingest, inference, merge.

Shown when stderr is a terminal, unless the command line says ``-q``;
``LANDSLIDE_BATCH_PROGRESS=1`` shows them anywhere (a log captured by CI), ``=0`` never. The
command line writes its log lines through ``tqdm.write`` so that they print above a bar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
ENV = "LANDSLIDE_BATCH_PROGRESS"
_hidden = [False]  # set while a ``-q`` command runs (:func:`hidden`)


def shown() -> bool:
    """Whether bars are drawn now: ``ENV`` decides when set, else a terminal and no ``-q``."""
    forced = os.environ.get(ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return not _hidden[0] and sys.stderr.isatty()


@contextmanager
def hidden(quiet: bool) -> Iterator[None]:
    """No bars while ``quiet`` (``-q``), for the duration of the block."""
    before = _hidden[0]
    _hidden[0] = quiet
    try:
        yield
    finally:
        _hidden[0] = before


def progress(items: Iterable[T], desc: str, unit: str, total: int | None = None) -> Iterable[T]:
    """``items``, with a bar while they are consumed (``items`` unchanged when bars are off)."""
    if not shown():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)
