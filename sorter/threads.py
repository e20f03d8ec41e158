"""Thread roles for the daemons: OS-visible names, and background work that stays out of inference's way.

Why: on a 2-core box the interpreters are the work; decoding, routing and the database writer are
overhead that must fit in the gaps. With every thread equal, each wake-up of a helper preempted
an interpreter mid-batch (about three preemptions per image), costing it its caches. Background
threads therefore run SCHED_BATCH (no preemption on wake-up) at a low priority (nice), so Linux
lets them run when an interpreter waits for input, in longer slices. `python benchmarks/bench_watch.py`
measured the daemon at 0.89-0.90 of the interpreters alone with equal threads, 0.91-0.94 with
background threads at nice 19. The helpers cannot starve the pipeline: an interpreter that runs out
of decoded images blocks, and then they get the core.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15
try:
    _prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
except (OSError, AttributeError, TypeError):  # pragma: no cover - not Linux
    _prctl = None


def name_os_thread(name: str) -> None:
    """Give the calling thread its Python name in the kernel too (`top -H`, `ps -L`, perf):
    Python 3.11 leaves every thread named after the process. Linux keeps 15 bytes."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def run_in_background(nice: int) -> None:
    """Make the calling thread background work: SCHED_BATCH, and `nice` (0-19) on Linux, where
    priorities are per thread. Only a hint: refused or unsupported, the thread runs as before."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with contextlib.suppress(OSError):  # e.g. a seccomp profile that forbids it
            os.sched_setscheduler(0, policy, os.sched_param(0))  # 0 = the calling thread
    if nice and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)


def start(target: Callable[..., Any], name: str, *args: Any, nice: int | None = None) -> threading.Thread:
    """A daemon thread named `name` in Python and in the OS; with `nice`, background work."""

    def run() -> None:
        name_os_thread(name)
        if nice is not None:
            run_in_background(nice)
        target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
