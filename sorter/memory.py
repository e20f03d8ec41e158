"""Keep the daemons' pixel buffers in the process instead of handing them back to the kernel per photo.

Why: every photo allocates a few buffers of 0.1-2 MB (decoded pixels, the resized input, the
batch). glibc's defaults return such memory to the kernel soon after it is freed (the heap is
trimmed), so the next photo page-faults it back in: 13-20 faults per photo in `sorter watch`
(`perf stat` over 3,000 photos), CPU that decoding and routing take from inference on a small box.
With fixed thresholds, freed buffers are reused. The price: glibc no longer adapts its mmap
threshold, so buffers above `MMAP_BYTES` (full decodes of large PNG/TIFF photos; JPEGs are decoded
at reduced scale) are mapped and unmapped each time, and each thread's arena may keep up to
`TRIM_BYTES` of free memory (about 10 MB more idle RSS measured after a burst of mixed photos).
An operator's own allocator settings (GLIBC_TUNABLES, MALLOC_*_ variables) are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys

log = logging.getLogger("sorter.memory")
_M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_BYTES = 8 << 20  # a batch of 8 × 256 px (1.5 MB) and a 1000 px photo decoded whole (3 MB) fit below
TRIM_BYTES = 32 << 20  # free memory an arena keeps before it is returned
_OPERATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def recycle_buffers() -> bool:
    """Fix glibc's malloc thresholds for this process; False off Linux, where the operator tuned the
    allocator, or where libc's mallopt refuses (musl). Process-wide, so called by the daemons, not on import."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    done = False
    with contextlib.suppress(OSError, AttributeError, TypeError):
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    log.debug("pixel buffers %s", "kept in the process" if done else "left to the allocator's defaults")
    return done
