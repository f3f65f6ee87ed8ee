"""A block's freed intermediate buffers go back to the system (``infer/heap.py``)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from landslide_batch.infer import heap


def _rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(
    heap._TRIM is None or not os.path.exists("/proc/self/statm") or "MALLOC_MMAP_THRESHOLD_" in os.environ,
    reason="glibc on Linux, with its dynamic mmap threshold",
)
def test_freed_mid_sized_buffers_pinned_below_a_live_one_are_returned():
    """Buffers below glibc's mmap threshold are freed into its heap; one still alive above them
    pins the heap's top, so the free pages stay resident until they are released."""
    first = np.ones(4 << 18)  # 8 MB, mmapped: freeing it raises glibc's mmap threshold above 2 MB
    del first
    arrays = [np.ones(1 << 18) for _ in range(100)]  # 100 x 2 MB, now on the heap
    pinned = arrays[-1]
    del arrays
    before = _rss_mb()
    heap.release_freed_memory()
    after = _rss_mb()
    assert before - after > 100, (before, after)  # of the 198 MB freed
    assert pinned.sum() == 1 << 18
