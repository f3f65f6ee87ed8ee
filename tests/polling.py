"""Waiting in tests for something another process or thread does."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``predicate`` until true; after ``timeout`` seconds fail naming ``what``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
