"""Keep the daemons' pixel buffers in the process instead of handing them back to the kernel per photo.

Why: every photo allocates a few buffers of 0.1-2 MB (decoded pixels, the resized input, the
batch). glibc's defaults return such memory to the kernel as soon as it is freed (unmapped, or
the heap trimmed), so the next photo page-faults it back in: about 20 faults per photo, a
measurable share of the CPU that decoding and routing may take from inference on a small box.
With fixed thresholds, freed buffers are reused; anything larger than `MMAP_BYTES` (a
full-resolution decode of a very large photo) is still mapped on its own and given back at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_BYTES = 8 << 20  # a 1000 px photo's full decode (3 MB) and a batch of 8 × 256 px (1.5 MB) fit below
TRIM_BYTES = 32 << 20  # free memory an arena keeps before it is returned


def recycle_buffers() -> bool:
    """Fix glibc's malloc thresholds for this process; False where there is no glibc (macOS, musl
    builds may ignore it). Process-wide, so called by the daemons, not on import."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError, TypeError):
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    return False
