"""Memory a predicted block freed, given back to the system before the next block.

glibc keeps freed mid-sized buffers (a block's intermediate tensors: below its 32 MB mmap
threshold, above its 128 kB one) in its heaps for reuse, but blocks allocate them in shifting
sizes and places, so the heaps fragment and a job's resident memory climbed block by block
(U-Net-MobileNetV2, local: 1248 MB after 4 blocks of 1024², 1417 MB after 16). ``malloc_trim``
returns the free pages after each block (1203 and 1274 MB), at no time measured
(benchmarks/README.md, issue 29). Elsewhere than glibc there is nothing to call, and nothing is done.
"""

from __future__ import annotations

import ctypes

_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_freed_memory() -> None:
    """Return the heaps' free pages to the system (glibc); a no-op elsewhere."""
    if _TRIM is not None:
        _TRIM(0)
