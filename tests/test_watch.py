"""Watch: real observer, real SQLite, real TFLite model; partial writes, duplicates, bad inputs."""

from __future__ import annotations

import errno
import os
import re
import signal
import sqlite3
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sorter import store, threads, watch
from sorter.files import read_at_most
from sorter.stages import score_items
from tests.watch_helpers import (
    EXPECTED,
    Running,
    files_under,
    jpeg,
    make_watcher,
    rows,
    wait_for,
    wait_until,
    watch_command,
)


def _colour(source_path: str) -> str:
    """The colour a test file was named after: red7.jpg → red."""
    return re.match(r"[a-z]+", Path(source_path).name).group()


def _old(path: Path) -> None:
    os.utime(path, (time.time() - 60, time.time() - 60))


def test_backlog_routes_each_colour_exactly(tmp_path):
    w = make_watcher(tmp_path)
    for i, color in enumerate(["red", "green", "blue", "grey"] * 2):
        (tmp_path / "in" / f"{color}{i}.jpg").write_bytes(jpeg(color, tag=str(i)))
        _old(tmp_path / "in" / f"{color}{i}.jpg")
    summary = w.run(watch.threading.Event(), once=True)
    assert summary.routed == 8 and not list((tmp_path / "in").iterdir())
    for row in rows(tmp_path / "db.sqlite"):
        color = _colour(row["source_path"])
        assert Path(row["destination"]).parent == tmp_path / "out" / EXPECTED[color]
        assert Path(row["destination"]).exists() and row["state"] == "done"
        assert row["model_sha256"] and row["routed_at"] and row["scores"]


@pytest.mark.parametrize(("interpreters", "decode_workers"), [(2, 1), (3, 2)])
def test_side_by_side_interpreters_route_each_file_once(tmp_path, interpreters, decode_workers):
    """Several inference workers, fed by the decode threads, share one intake:
    every file once, every copy of the same bytes a duplicate of one first row, all rows done."""
    w = make_watcher(tmp_path, interpreters=interpreters, decode_workers=decode_workers, batch_size=4)
    assert len({id(c._interp) for c in w.clfs}) == interpreters
    colours = ["red", "green", "blue", "grey"] * 10
    for i, color in enumerate(colours):
        path = tmp_path / "in" / f"{color}{i}.jpg"
        path.write_bytes(jpeg(color, tag=str(i % 20)))  # file i+20 has the bytes of file i
        _old(path)
    summary = w.run(watch.threading.Event(), once=True)
    assert not list((tmp_path / "in").iterdir())
    got = rows(tmp_path / "db.sqlite")
    assert len(got) == 40 and {r["state"] for r in got} == {"done"}
    firsts = [r for r in got if r["duplicate_of"] is None]
    assert len(firsts) == len({r["sha256"] for r in got}) == 20
    assert (summary.routed, summary.duplicates) == (20, 20)
    for row in firsts:
        color = _colour(row["source_path"])
        assert Path(row["destination"]).parent == tmp_path / "out" / EXPECTED[color]
    assert len(files_under(tmp_path / "out")) == 40


def test_every_interpreter_is_warmed_at_the_batch_size_before_ready(tmp_path):
    """No file yet, so only the warm-up can have sized the tensors: the first real batch is not
    the one that pays for allocating them and setting up the delegate."""
    w = make_watcher(tmp_path, interpreters=2, batch_size=4)
    running = Running(w)
    try:
        assert [c._inp["shape"][0] for c in w.clfs] == [4, 4]
    finally:
        running.stop()


def test_outcomes_ride_on_the_next_commit_and_a_crash_before_it_recovers(tmp_path):
    """Moves are committed with the next batch's intents (one fsync per batch); if the process dies
    first, the rows are intents whose files already moved, and the next start finds them done."""
    w = make_watcher(tmp_path)
    paths = []
    for i, color in enumerate(["red", "blue", "green"]):
        paths.append(tmp_path / "in" / f"{color}{i}.jpg")
        paths[-1].write_bytes(jpeg(color, tag=str(i)))
    batch = [watch.load(p, w.clf.input_size, w.settings) for p in paths]
    score_items(batch, w.clf, w.rules)
    w.router.route(batch)
    moved = files_under(tmp_path / "out")
    assert len(moved) == 3 and not list((tmp_path / "in").iterdir())
    assert {r["state"] for r in rows(tmp_path / "db.sqlite")} == {"intent"}
    w.writer.close()  # dies here: the outcomes were never committed
    again = make_watcher(tmp_path)
    summary = again.run(watch.threading.Event(), once=True)
    assert summary.recovered == 3 and files_under(tmp_path / "out") == moved
    got = rows(tmp_path / "db.sqlite")
    assert {r["state"] for r in got} == {"done"} and sorted(r["destination"] for r in got) == [str(p) for p in moved]


def _classified_batches(tmp: Path, w: watch.Watcher, count: int) -> list[list[watch.Item]]:
    """`count` scored batches of two distinct files each, ready for the routing thread."""
    batches = []
    for b in range(count):
        batch = []
        for i, color in enumerate(["red", "blue"]):
            path = tmp / "in" / f"{color}{b}-{i}.jpg"
            path.write_bytes(jpeg(color, tag=f"{b}-{i}"))
            batch.append(watch.load(path, w.clf.input_size, w.settings))
        score_items(batch, w.clf, w.rules)
        batches.append(batch)
    return batches


def _states(tmp: Path) -> list[str]:
    return sorted(r["state"] for r in rows(tmp / "db.sqlite"))


def _commits(w: watch.Watcher) -> list[str]:
    """COMMIT statements the watcher's writer runs from now on, as they happen."""
    commits: list[str] = []
    w.writer.call(lambda db: db.conn.set_trace_callback(
        lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None))
    return commits


@contextmanager
def _routing(w: watch.Watcher) -> Iterator[None]:
    """The watcher's routing thread alone, fed by the test through `w.record.queue`."""
    router = threads.start(w.record.loop, "route")
    try:
        yield
    finally:
        w.record.queue.put(None)
        router.join(5)
        w.writer.close()


def test_under_load_outcomes_ride_on_the_next_batch_and_alone_they_commit_after_a_tick(tmp_path, monkeypatch):
    """Batches arriving within a tick of each other: one commit each (the moves of one ride on the
    next one's intents), even though the queue is empty in between; the last batch's moves commit
    on their own once a tick passes with no batch."""
    monkeypatch.setattr(watch, "TICK_S", 1.0)
    w = make_watcher(tmp_path)
    commits = _commits(w)
    with _routing(w):
        for batch in _classified_batches(tmp_path, w, 4):
            w.record.queue.put(batch)
            w.record.queue.join()  # routed, and the queue empty, before the next one comes
        assert len(commits) == 4 and _states(tmp_path) == ["done"] * 6 + ["intent"] * 2
        assert wait_for(lambda: _states(tmp_path) == ["done"] * 8, timeout=5)
        assert len(commits) == 5


def test_batches_queued_behind_a_slow_router_are_routed_in_one_transaction(tmp_path, monkeypatch):
    """Routing fell behind (three scored batches waiting): it catches up with one commit for all of
    them, every file routed once, and then the moves' own commit."""
    monkeypatch.setattr(watch, "TICK_S", 0.2)
    w = make_watcher(tmp_path)
    commits = _commits(w)
    for batch in _classified_batches(tmp_path, w, 3):
        w.record.queue.put(batch)
    with _routing(w):
        w.record.queue.join()
        assert len(commits) == 1 and _states(tmp_path) == ["intent"] * 6
        assert len(files_under(tmp_path / "out")) == 6 and not list((tmp_path / "in").iterdir())
        assert wait_for(lambda: _states(tmp_path) == ["done"] * 6, timeout=5) and len(commits) == 2


def test_a_failed_lone_commit_waits_for_the_next_batch_instead_of_looping(tmp_path, monkeypatch, caplog):
    """The lone commit of the last moves fails (say the disk is full): one error line, no retry every
    tick; the next batch's commit carries those moves, and nothing is lost."""
    monkeypatch.setattr(watch, "TICK_S", 0.05)
    w = make_watcher(tmp_path)
    real, calls = store.mark_done, []

    def failing_once(db, updates):
        calls.append(len(updates))
        if len(calls) == 2:  # the lone commit of the first batch's moves
            raise sqlite3.OperationalError("database or disk is full")
        real(db, updates)

    monkeypatch.setattr(store, "mark_done", failing_once)
    first, second = _classified_batches(tmp_path, w, 2)
    with _routing(w):
        w.record.queue.put(first)
        w.record.queue.join()
        assert wait_for(lambda: calls == [0, 2], timeout=5)  # the batch's own commit, then the failed lone one
        time.sleep(10 * watch.TICK_S)
        assert calls == [0, 2] and _states(tmp_path) == ["intent"] * 2
        assert len([r for r in caplog.records if "could not record" in r.getMessage()]) == 1
        w.record.queue.put(second)
        w.record.queue.join()
        assert calls[2] == 2 and _states(tmp_path) == ["done"] * 2 + ["intent"] * 2  # carried
        assert wait_for(lambda: _states(tmp_path) == ["done"] * 4, timeout=5)


def test_part_file_renamed_is_classified_once_and_complete(tmp_path):
    w = make_watcher(tmp_path)
    run = Running(w)
    data = jpeg("blue", tag="slow")
    part = tmp_path / "in" / "x.jpg.part"
    with open(part, "wb") as fh:
        for i in range(0, len(data), 100):
            fh.write(data[i : i + 100])
            fh.flush()
            time.sleep(0.02)
    time.sleep(0.5)  # a temp name is ignored however long it sits
    assert rows(tmp_path / "db.sqlite") == []
    part.rename(tmp_path / "in" / "x.jpg")
    wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 1 and not list((tmp_path / "in").iterdir()),
               what="x.jpg routed")
    run.stop()
    dst = tmp_path / "out" / "rotten" / "rottenblue" / "x.jpg"
    assert dst.read_bytes() == data and len(rows(tmp_path / "db.sqlite")) == 1


def test_chunked_write_under_final_name_is_classified_once_complete(tmp_path):
    w = make_watcher(tmp_path, stable_seconds=1.0)
    run = Running(w)
    data = jpeg("green", tag="chunky" * 50)
    with open(tmp_path / "in" / "c.jpg", "wb") as fh:  # held open: one close-write at the end
        for i in range(0, len(data), 64):
            fh.write(data[i : i + 64])
            fh.flush()
            time.sleep(0.01)
    wait_until(lambda: not list((tmp_path / "in").iterdir()), what="c.jpg routed")
    time.sleep(0.3)
    run.stop()
    got = rows(tmp_path / "db.sqlite")
    assert len(got) == 1 and got[0]["error"] is None
    assert (tmp_path / "out" / "fresh" / "freshgreen" / "c.jpg").read_bytes() == data


def test_duplicate_events_and_duplicate_content_count_once(tmp_path):
    w = make_watcher(tmp_path)
    run = Running(w)
    incoming = tmp_path / "in"
    data = jpeg("red", tag="same")
    (incoming / "a.jpg").write_bytes(data)
    for _ in range(3):  # extra events for the same path, as some copy tools cause
        w.intake.offer(incoming / "a.jpg")
    wait_until(lambda: not (incoming / "a.jpg").exists(), what="a.jpg routed")
    for _ in range(3):  # late events for a file already moved are harmless
        w.intake.offer(incoming / "a.jpg")
    (incoming / "b.jpg").write_bytes(data)  # the same bytes again under another name
    wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 2 and not list(incoming.iterdir()),
               what="b.jpg routed")
    time.sleep(0.3)
    run.stop()
    first, dup = rows(tmp_path / "db.sqlite")
    assert len(rows(tmp_path / "db.sqlite")) == 2
    assert first["duplicate_of"] is None and dup["duplicate_of"] == first["id"]
    assert first["sha256"] == dup["sha256"]
    assert (tmp_path / "out" / "fresh" / "freshred" / "a.jpg").exists()
    assert (tmp_path / "out" / "duplicates" / "b.jpg").read_bytes() == data


def _bomb_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def test_bad_inputs_are_rejected_with_reasons_and_the_daemon_goes_on(tmp_path):
    w = make_watcher(tmp_path, max_file_bytes=20_000)
    run = Running(w)
    incoming = tmp_path / "in"
    good = jpeg("red", tag="good")
    bad = {"zero.jpg": b"", "trunc.jpg": jpeg("blue", tag="t" * 300)[:330], "text.jpg": b"hello, not a jpeg",
           "notes.txt": b"a note", "bomb.png": _bomb_png(), "huge.jpg": jpeg("green", tag="h" * 30_000)}
    for name, data in bad.items():
        (incoming / name).write_bytes(data)
    (incoming / "good.jpg").write_bytes(good)
    wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 7 and not list(incoming.iterdir()),
               what="all seven recorded")
    run.stop()
    reasons = {Path(r["source_path"]).name: r["error"] for r in rows(tmp_path / "db.sqlite")}
    assert reasons["zero.jpg"].startswith("empty")
    assert reasons["trunc.jpg"].split(":")[0] in {"truncated", "undecodable"}
    assert reasons["text.jpg"].startswith("not-an-image")
    assert reasons["notes.txt"].startswith("wrong-extension")
    assert reasons["bomb.png"].startswith("pixel-bomb")
    assert reasons["huge.jpg"].startswith("too-large")
    assert reasons["good.jpg"] is None
    assert sorted(p.name for p in (tmp_path / "out" / "rejected").iterdir()) == sorted(bad)
    assert (tmp_path / "out" / "fresh" / "freshred" / "good.jpg").read_bytes() == good


def test_a_file_that_grows_past_the_limit_while_read_is_cut_off(tmp_path):
    path = tmp_path / "growing.jpg"
    path.write_bytes(b"x" * 5_000)
    assert read_at_most(path, 10_000, expected=100)[0] == b"x" * 5_000  # a stale size still reads it all
    path.write_bytes(b"x" * 50_000)
    assert len(read_at_most(path, 10_000, expected=5_000)[0]) == 10_001  # one byte over: too large
    item = watch.load(path, (32, 32), make_watcher(tmp_path, max_file_bytes=60_000).settings)
    assert item.error.startswith("not-an-image")  # read whole, then refused for what it is
    item = watch.load(path, (32, 32), make_watcher(tmp_path, max_file_bytes=10_000).settings)
    assert item.error.startswith("too-large")


def test_symlink_is_rejected_and_its_target_untouched(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg("red", tag="secret"))
    w = make_watcher(tmp_path)
    (tmp_path / "in" / "link.jpg").symlink_to(secret)
    _old(secret)
    w.run(watch.threading.Event(), once=True)
    (row,) = rows(tmp_path / "db.sqlite")
    assert row["error"].startswith("symlink") and row["sha256"] is None
    assert (tmp_path / "out" / "rejected" / "link.jpg").is_symlink()
    assert secret.read_bytes() == jpeg("red", tag="secret")


def test_name_collisions_keep_both(tmp_path):
    w = make_watcher(tmp_path)
    run = Running(w)
    one, two = jpeg("red", tag="one"), jpeg("red", tag="two")
    (tmp_path / "in" / "a.jpg").write_bytes(one)
    wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 1, what="first a.jpg")
    (tmp_path / "in" / "a.jpg").write_bytes(two)
    wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 2 and not list((tmp_path / "in").iterdir()),
               what="second a.jpg")
    run.stop()
    kept = sorted(p.read_bytes() for p in (tmp_path / "out" / "fresh" / "freshred").iterdir())
    assert kept == sorted([one, two])
    assert len({r["destination"] for r in rows(tmp_path / "db.sqlite")}) == 2


@contextmanager
def unwritable(folder: Path) -> Iterator[str]:
    """A folder nobody can write to: a read-only tmpfs for root (who ignores permissions), else mode 0500.
    Yields the errno name a write there fails with."""
    folder.mkdir()
    if os.geteuid() == 0:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"root, and no read-only tmpfs can be mounted: {proc.stderr.strip()}")
        try:
            yield "EROFS"
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        return
    folder.chmod(0o500)
    try:
        yield "EACCES"
    finally:
        folder.chmod(0o700)


def test_unwritable_out_holds_files_in_place(tmp_path):
    with unwritable(tmp_path / "out") as code:
        w = make_watcher(tmp_path, out=tmp_path / "out")
        (tmp_path / "in" / "a.jpg").write_bytes(jpeg("red"))
        _old(tmp_path / "in" / "a.jpg")
        summary = w.run(watch.threading.Event(), once=True)
        (row,) = rows(tmp_path / "db.sqlite")
        assert row["state"] == "held" and code in row["error"]
        assert (tmp_path / "in" / "a.jpg").exists()
        assert list(summary.left) == [row["error"]] and summary.left[row["error"]] == 1


def test_move_failure_holds_in_place_backs_off_and_later_finishes(tmp_path, monkeypatch):
    from sorter.metrics import Telemetry

    w = make_watcher(tmp_path, retry_seconds=0.4, telemetry=Telemetry("watch"))
    calls = []
    real_move = watch.move

    def full_disk(src, dst, expect=None):
        calls.append(time.monotonic())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(watch, "move", full_disk)
    run = Running(w)
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg("blue", tag="full"))
    (tmp_path / "in" / "b.jpg").write_bytes(jpeg("red", tag="fine-later"))
    wait_until(lambda: len(calls) >= 2, what="first attempts")
    time.sleep(2.0)
    assert len(calls) <= 2 * 4, f"retried too often: {len(calls)} attempts in ~2 s"  # 0.4, 0.8, 1.6 s backoff
    held = rows(tmp_path / "db.sqlite")
    assert len(held) == 2 and {r["state"] for r in held} == {"held"}
    assert all("ENOSPC" in r["error"] for r in held)
    assert (tmp_path / "in" / "a.jpg").exists()
    monkeypatch.setattr(watch, "move", real_move)  # disk freed: the next retry finishes, same rows
    wait_until(lambda: not list((tmp_path / "in").iterdir()), timeout=15, what="retry after backoff")
    time.sleep(0.2)
    run.stop()
    done = rows(tmp_path / "db.sqlite")
    assert [r["id"] for r in done] == [r["id"] for r in held]
    assert {r["state"] for r in done} == {"done"} and all(r["duplicate_of"] is None for r in done)
    assert (tmp_path / "out" / "rotten" / "rottenblue" / "a.jpg").exists()
    counted = w.telemetry.registry.get_sample_value  # each held attempt was classified, counted once settled
    assert counted("sorter_items_total", {"verdict": "rotten", "label": "rottenblue"}) == 1
    assert counted("sorter_items_total", {"verdict": "fresh", "label": "freshred"}) == 1


def test_database_locked_by_another_process_files_wait_and_finish_once(tmp_path, monkeypatch):
    """Another process holds the write lock past the busy timeout: the batch's records roll back,
    its files stay in INCOMING, and they are retried after the delay, each recorded (and counted) once."""
    from sorter.metrics import Telemetry

    monkeypatch.setattr(watch.store, "BUSY_TIMEOUT_MS", 200)
    w = make_watcher(tmp_path, retry_seconds=0.3, telemetry=Telemetry("watch"))
    holds: Counter[Path] = Counter()  # a retry that fails again holds the same file a second time
    hold = w.intake.hold
    monkeypatch.setattr(w.intake, "hold", lambda path, delay, why="": (holds.update([path]), hold(path, delay, why)))
    run = Running(w)
    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    for i, color in enumerate(["red", "blue", "green"]):
        (tmp_path / "in" / f"{color}.jpg").write_bytes(jpeg(color, tag=f"locked-{i}"))
    wait_until(lambda: max(holds.values(), default=0) >= 2, timeout=15, what="a file held twice while the lock is held")
    assert len(list((tmp_path / "in").iterdir())) == 3
    other.execute("ROLLBACK")
    other.close()
    wait_until(lambda: not list((tmp_path / "in").iterdir()), timeout=15, what="retry after the lock")
    run.stop()
    got = rows(tmp_path / "db.sqlite")
    assert len(got) == 3 and {r["state"] for r in got} == {"done"} and all(r["duplicate_of"] is None for r in got)
    assert len(files_under(tmp_path / "out")) == 3
    counted = w.telemetry.registry.get_sample_value  # the failed attempts were classified but never counted
    assert all(counted("sorter_items_total", {"verdict": r["verdict"], "label": r["label"]}) == 1 for r in got)


def test_out_on_another_device(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) on another device")
    out = shm / f"sorter-watch-{os.getpid()}"
    try:
        w = make_watcher(tmp_path, out=out)
        (tmp_path / "in" / "g.jpg").write_bytes(jpeg("green"))
        _old(tmp_path / "in" / "g.jpg")
        w.run(watch.threading.Event(), once=True)
        assert (out / "fresh" / "freshgreen" / "g.jpg").read_bytes() == jpeg("green")
        assert not (tmp_path / "in" / "g.jpg").exists()
        assert [p.name for p in files_under(out)] == ["g.jpg"]
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


def test_dry_run_records_without_moving(tmp_path):
    w = make_watcher(tmp_path, dry_run=True)
    (tmp_path / "in" / "b.jpg").write_bytes(jpeg("blue"))
    _old(tmp_path / "in" / "b.jpg")
    w.run(watch.threading.Event(), once=True)
    (row,) = rows(tmp_path / "db.sqlite")
    assert row["state"] == "dry-run" and row["verdict"] == "rotten"
    assert row["destination"].endswith("rotten/rottenblue/b.jpg")
    assert (tmp_path / "in" / "b.jpg").exists() and not (tmp_path / "out").exists()


def test_cli_once_processes_backlog_and_exits(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "r.jpg").write_bytes(jpeg("red"))
    _old(tmp_path / "in" / "r.jpg")
    proc = subprocess.run(watch_command(tmp_path, "--once"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "routed r.jpg -> fresh/freshred" in proc.stderr
    assert (tmp_path / "out" / "fresh" / "freshred" / "r.jpg").exists()


def test_sigterm_drains_and_exits_zero_consistently(tmp_path):
    (tmp_path / "in").mkdir()
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(watch_command(tmp_path), stderr=err)
    wait_until(lambda: "ready" in log.read_text(), timeout=30, what="ready")
    names = []
    for i in range(80):
        name = f"f{i}.jpg"
        (tmp_path / "in" / name).write_bytes(jpeg(["red", "green", "blue", "grey"][i % 4], tag=str(i)))
        names.append(name)
        time.sleep(0.005)
        if i == 40:
            wait_until(lambda: len(rows(tmp_path / "db.sqlite")) >= 5, what="some routed")
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()
    recorded = {Path(r["source_path"]).name: r for r in rows(tmp_path / "db.sqlite")}
    left = {p.name for p in (tmp_path / "in").iterdir()}
    assert recorded and left, "the signal should land while files are still flowing"
    for name in names:  # each file: routed and recorded done, or untouched in INCOMING with no row
        if name in left:
            assert name not in recorded
        else:
            assert recorded[name]["state"] == "done" and Path(recorded[name]["destination"]).exists()


def test_chunks_fill_batches_exactly_and_the_overflow_starts_the_next(tmp_path):
    """Decode workers hand over chunks; a batch never exceeds batch_size (the model's tensor keeps its
    size), and what overflows is carried into the next batch, not dropped."""
    w = make_watcher(tmp_path, batch_size=8, batch_ms=20)
    items = [watch.Item(tmp_path / f"{i}.jpg") for i in range(13)]
    w.decode.queue.put(items[:5])
    w.decode.queue.put(items[5:])
    stop, carry = watch.threading.Event(), []
    first = w.score.gather(stop, carry)
    assert first == items[:8] and carry == items[8:]
    timer = watch.threading.Timer(2.0, stop.set)  # were the carry lost, this gather would wait for a stop
    timer.start()
    second = w.score.gather(stop, carry)  # nothing more arrives: the carried five go after batch_ms
    timer.cancel()
    assert second == items[8:] and carry == [] and not stop.is_set()
    w.writer.close()
