"""Thread roles: OS names, and background helpers that yield the CPU to the interpreters."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from sorter import threads
from tests.watch_helpers import Running, make_watcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling is Linux's")


def _role(tid: int) -> tuple[str, int, int]:
    """(kernel thread name, scheduling policy, nice) of one thread of this process."""
    comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    return comm, os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)


def _role_inside(**kw) -> tuple[str, int, int]:
    seen: list[tuple[str, int, int]] = []
    thread = threads.start(lambda: seen.append(_role(threading.get_native_id())), "probe-thread", **kw)
    thread.join(5)
    return seen[0]


def test_a_background_thread_is_named_batch_scheduled_and_niced():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    nice = min(19, base + 7)
    assert _role_inside(nice=nice) == ("probe-thread", os.SCHED_BATCH, nice)


def test_a_foreground_thread_keeps_the_process_scheduling():
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    assert _role_inside() == ("probe-thread", *before)
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == before  # the caller untouched


def test_the_watcher_runs_its_helpers_in_the_background_and_inference_in_front(tmp_path):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    nice = min(19, base + 5)
    run = Running(make_watcher(tmp_path, interpreters=2, decode_workers=2, background_nice=nice))
    try:
        roles = {t.name: _role(t.native_id) for t in threading.enumerate() if t.native_id}
    finally:
        run.stop()
    helpers = ["decode-0", "decode-1", "route", "db-writer"]
    assert {name: roles[name] for name in helpers} == {name: (name, os.SCHED_BATCH, nice) for name in helpers}
    normal = os.sched_getscheduler(0)
    assert roles["infer-0"] == ("infer-0", normal, base) and roles["infer-1"] == ("infer-1", normal, base)
