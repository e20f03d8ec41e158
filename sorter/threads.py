"""Thread roles for the daemons: OS-visible names, and background work that stays out of inference's way.

Why: on a 2-core box the interpreters are the work; decoding, routing and the database writer are
overhead that must fit in the gaps. With every thread equal, each wake-up of a helper preempted
an interpreter mid-batch. Background threads therefore run SCHED_BATCH (no preemption on wake-up)
at a high nice value, so Linux runs them mostly while an interpreter waits for input; README's
benchmark section has the figures. Within one daemon the helpers cannot starve: an interpreter
that runs out of decoded images blocks and hands them the core. Another busy process at normal
priority on the same cores (a second daemon, say) can slow them badly; `background_nice = 0` in
the config turns the background role off.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("sorter.threads")
LINUX = sys.platform.startswith("linux")
_PR_SET_NAME = 15
_prctl = None
if LINUX:
    with contextlib.suppress(OSError, AttributeError, TypeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # the C library already loaded: no ldconfig run
        _prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        _prctl.restype = ctypes.c_int


def name_os_thread(name: str) -> None:
    """Give the calling thread its Python name in the kernel too (`top -H`, `ps -L`, perf): before
    3.14 Python leaves every thread named after the process. Linux keeps 15 bytes."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def run_in_background(nice: int) -> None:
    """Make the calling thread background work: SCHED_BATCH, and at least `nice` (never lowered:
    that needs privileges, and a unit's own Nice= is respected). Linux only, where both are per
    thread (elsewhere they would reach the whole process, inference included). Refused, it is a no-op."""
    if not LINUX:
        return
    with contextlib.suppress(OSError):  # e.g. a seccomp profile that forbids it
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0 = the calling thread
    with contextlib.suppress(OSError):
        if nice > os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, nice)


def start(target: Callable[..., Any], name: str, *args: Any, nice: int | None = None) -> threading.Thread:
    """A daemon thread named `name` in Python and in the OS; with `nice`, background work. The
    role is only a hint: if setting it fails, the thread still runs `target`."""

    def run() -> None:
        try:
            name_os_thread(name)
            if nice is not None:
                run_in_background(nice)
        except Exception:  # pragma: no cover - a hint must never cost the daemon a thread
            log.warning("could not set the role of thread %s", name, exc_info=True)
        target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def join_within(workers: Sequence[threading.Thread], timeout: float) -> list[threading.Thread]:
    """Join every started thread, all within one `timeout` in seconds; the ones still alive after it.

    Why: a daemon thread still inside C++ code at interpreter exit is ended by `pthread_exit` when it
    next takes the GIL, and C++ code that catches everything (OpenCV's bindings do) swallows that
    unwind: glibc aborts the process, `FATAL: exception not rethrown`, exit -6. Such threads must be
    joined before the interpreter exits, and a caller must never wait for ever on one that is wedged.
    """
    deadline = time.monotonic() + timeout
    for worker in workers:
        if worker.ident is not None:  # a thread never started has nothing to join
            worker.join(max(0.0, deadline - time.monotonic()))
    return [worker for worker in workers if worker.is_alive()]
