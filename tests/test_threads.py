"""Thread roles: OS names, and background helpers that yield the CPU to the interpreters."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sorter import threads
from tests.watch_helpers import Running, make_watcher, wait_for

BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0) if threads.LINUX else 0
pytestmark = [
    pytest.mark.skipif(not threads.LINUX, reason="per-thread scheduling and names are Linux's"),
    pytest.mark.skipif(BASE_NICE >= 15, reason=f"the tests run at nice {BASE_NICE}: no room to raise it"),
]
HELPERS = ("decode-0", "decode-1", "route", "db-writer")


def _role(tid: int) -> tuple[str, int, int]:
    """(kernel thread name, scheduling policy, nice) of one thread of this process."""
    comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    return comm, os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)


def _role_inside(before=None, **kw) -> tuple[str, int, int]:
    seen: list[tuple[str, int, int]] = []

    def body() -> None:
        if before:
            before()
        seen.append(_role(threading.get_native_id()))

    threads.start(body, "probe-thread", **kw).join(5)
    return seen[0]


def test_a_background_thread_is_named_batch_scheduled_and_niced():
    assert _role_inside(nice=BASE_NICE + 3) == ("probe-thread", os.SCHED_BATCH, BASE_NICE + 3)


def test_a_background_thread_never_lowers_a_nice_it_already_has():
    """Lowering needs privileges; a unit's own Nice= (or an operator's renice) above ours stands."""
    def raise_first() -> None:  # the role is set before the target runs: re-apply it after raising
        os.setpriority(os.PRIO_PROCESS, 0, BASE_NICE + 4)
        threads.run_in_background(BASE_NICE + 2)

    assert _role_inside(before=raise_first, nice=BASE_NICE + 2)[2] == BASE_NICE + 4


def test_a_foreground_thread_keeps_the_process_scheduling():
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    assert _role_inside() == ("probe-thread", *before)
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == before  # the caller untouched


def _watcher_roles(tmp_path: Path, nice: int) -> dict[str, tuple[str, int, int]]:
    """The roles of a running watcher's threads, once its helpers have set theirs."""
    run = Running(make_watcher(tmp_path, interpreters=2, decode_workers=2, background_nice=nice))
    mine = set(HELPERS) | {"infer-0", "infer-1"}
    roles: dict[str, tuple[str, int, int]] = {}

    def settled() -> bool:
        roles.clear()
        roles.update({t.name: _role(t.native_id) for t in threading.enumerate()
                      if t.name in mine and t.native_id and t.is_alive()})
        return len(roles) == len(mine) and all(roles[n][0] == n for n in mine)

    try:
        assert wait_for(settled, timeout=5)
        if nice:
            wait_for(lambda: settled() and all(roles[n][1] == os.SCHED_BATCH for n in HELPERS), timeout=5)
    finally:
        run.stop()
    return roles


def test_the_watcher_runs_its_helpers_in_the_background_and_inference_in_front(tmp_path):
    roles = _watcher_roles(tmp_path, BASE_NICE + 5)
    assert {n: roles[n] for n in HELPERS} == {n: (n, os.SCHED_BATCH, BASE_NICE + 5) for n in HELPERS}
    normal = os.sched_getscheduler(0)
    assert roles["infer-0"] == ("infer-0", normal, BASE_NICE) and roles["infer-1"] == ("infer-1", normal, BASE_NICE)


def test_background_nice_zero_leaves_the_helpers_ordinary_threads(tmp_path):
    roles = _watcher_roles(tmp_path, 0)
    normal = (os.sched_getscheduler(0), BASE_NICE)
    assert {n: roles[n][1:] for n in HELPERS} == dict.fromkeys(HELPERS, normal)
