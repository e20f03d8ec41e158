"""Every item exactly once, even when names are reused, files are replaced or written in two opens,
names are not UTF-8 or fill NAME_MAX, the database is full, or photos sit in dated subfolders.

Each test here failed on the code before issue 14 (see the closing note of that issue)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import store, watch
from sorter.route import display_name
from sorter.stages import score_items
from tests.watch_helpers import MODEL, Running, files_under, jpeg, make_watcher, rows, wait_until

RED = "fresh/freshred"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _old(path: Path) -> None:
    os.utime(path, (time.time() - 60, time.time() - 60))


def _intent(tmp: Path, src: Path, dst: Path, data: bytes) -> None:
    """The row a SIGKILL leaves between a move and its done-mark."""
    db = store.open_writer(tmp / "db.sqlite")
    store.write_intents(db, [{"sha256": _sha(data), "source_path": str(src), "destination": str(dst),
                              "state": "intent", "source": "watch", "received_at": store.now_iso(),
                              "label": "freshred", "verdict": "fresh", "confidence": 0.9}])
    db.close()


def _every_row_holds_its_bytes(tmp: Path) -> list[dict]:
    """No row describes other bytes than the file at its destination; returns the rows."""
    got = rows(tmp / "db.sqlite")
    for row in got:
        if row["destination"] and row["state"] == "done":
            assert _sha(Path(row["destination"]).read_bytes()) == row["sha256"], row
    return got


def test_recovery_keeps_a_new_file_that_reuses_a_just_moved_name(tmp_path):
    """Killed after the move, before its done-mark; then a new a.jpg (other bytes) arrives while down."""
    incoming, out = tmp_path / "in", tmp_path / "out" / RED
    incoming.mkdir()
    out.mkdir(parents=True)
    old, new = jpeg("red", tag="first"), jpeg("blue", tag="second")
    (out / "a.jpg").write_bytes(old)
    _intent(tmp_path, incoming / "a.jpg", out / "a.jpg", old)
    (incoming / "a.jpg").write_bytes(new)
    _old(incoming / "a.jpg")
    summary = make_watcher(tmp_path).run(threading.Event(), once=True)
    assert summary.recovered == 1 and summary.routed == 1
    got = _every_row_holds_its_bytes(tmp_path)
    assert sorted(r["sha256"] for r in got) == sorted([_sha(old), _sha(new)])
    assert {r["state"] for r in got} == {"done"} and list(incoming.iterdir()) == []
    assert (tmp_path / "out" / "rotten" / "rottenblue" / "a.jpg").read_bytes() == new


def test_recovery_forgets_a_row_whose_file_was_replaced_before_its_move(tmp_path):
    """Killed after the intent, before the move; the file is replaced (other bytes) while down."""
    incoming, out = tmp_path / "in", tmp_path / "out" / RED
    incoming.mkdir()
    old, new = jpeg("red", tag="was"), jpeg("green", tag="now")
    _intent(tmp_path, incoming / "a.jpg", out / "a.jpg", old)
    (incoming / "a.jpg").write_bytes(new)
    _old(incoming / "a.jpg")
    make_watcher(tmp_path).run(threading.Event(), once=True)
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["sha256"] == _sha(new) and row["destination"].endswith("fresh/freshgreen/a.jpg")
    assert not out.exists() or list(out.iterdir()) == []


def _loaded(w: watch.Watcher, path: Path) -> watch.Item:
    item = watch.load(path, w.clf.input_size, w.settings)
    score_items([item], w.clf, w.rules)
    return item


def test_a_file_replaced_by_rename_after_it_was_read_is_read_again_as_itself(tmp_path):
    w = make_watcher(tmp_path)
    path = tmp_path / "in" / "a.jpg"
    path.write_bytes(jpeg("red", tag="read"))
    item = _loaded(w, path)
    replacement = tmp_path / "in" / ".new"
    replacement.write_bytes(new := jpeg("blue", tag="renamed-over"))
    os.replace(replacement, path)  # between the read and the move
    assert w.router.route([item]) == []
    w.router.flush()
    assert rows(tmp_path / "db.sqlite") == [] and path.read_bytes() == new
    assert not w.stability.empty()  # waits to settle, then is read again
    _old(path)
    w.run(threading.Event(), once=True)
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["sha256"] == _sha(new) and row["verdict"] == "rotten"


def test_a_file_still_growing_after_it_was_read_is_not_moved_as_finished(tmp_path):
    w = make_watcher(tmp_path)
    path = tmp_path / "in" / "g.jpg"
    data = jpeg("green", tag="grows" * 40)
    path.write_bytes(data[:-200])
    item = _loaded(w, path)
    assert item.error  # what was read is a truncated photo
    with open(path, "ab") as fh:
        fh.write(data[-200:])
    w.router.route([item])
    w.router.flush()
    assert rows(tmp_path / "db.sqlite") == [] and path.read_bytes() == data
    _old(path)
    w.run(threading.Event(), once=True)
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["sha256"] == _sha(data) and row["error"] is None and row["verdict"] == "fresh"


def test_a_file_written_in_two_opens_is_one_photo(tmp_path):
    """`head -c 3000 x > a.jpg; sleep 0.3; tail -c +3001 x >> a.jpg`: the close after the first half
    does not skip the stability wait."""
    w = make_watcher(tmp_path, stable_seconds=0.8)
    run = Running(w)
    data = jpeg("blue", tag="two-opens" * 600)
    assert len(data) > 6000
    target = tmp_path / "in" / "a.jpg"
    target.write_bytes(data[:3000])
    time.sleep(0.3)
    with open(target, "ab") as fh:
        fh.write(data[3000:])
    wait_until(lambda: not list((tmp_path / "in").iterdir()), timeout=10, what="a.jpg routed")
    time.sleep(0.3)
    run.stop()
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["error"] is None and row["sha256"] == _sha(data)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files_under(tmp_path / "out")] == [
        "rotten/rottenblue/a.jpg"]


def test_a_writer_that_pauses_longer_than_stable_seconds_keeps_its_file(tmp_path):
    """Open for writing, half written, a pause of 3 × stable_seconds, the rest, close: one whole photo."""
    w = make_watcher(tmp_path, stable_seconds=0.3)
    run = Running(w)
    data = jpeg("red", tag="pause" * 600)
    with open(tmp_path / "in" / "p.jpg", "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(1.0)
        assert rows(tmp_path / "db.sqlite") == [] and (tmp_path / "in" / "p.jpg").exists()
        fh.write(data[len(data) // 2 :])
    wait_until(lambda: not list((tmp_path / "in").iterdir()), timeout=10, what="p.jpg routed")
    time.sleep(0.3)
    run.stop()
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["error"] is None and row["destination"].endswith(f"{RED}/p.jpg")


def test_a_name_that_is_not_utf8_is_routed_with_its_batch(tmp_path):
    w = make_watcher(tmp_path)
    incoming = tmp_path / "in"
    latin1 = os.fsdecode(b"caf\xe9.jpg")
    (incoming / latin1).write_bytes(jpeg("red", tag="latin-1"))
    for i in range(3):
        (incoming / f"ok{i}.jpg").write_bytes(jpeg("green", tag=f"ok{i}"))
    for p in incoming.iterdir():
        _old(p)
    summary = w.run(threading.Event(), once=True)
    assert summary.routed == 4 and not summary.left and list(incoming.iterdir()) == []
    got = {Path(r["source_path"]).name: r for r in _every_row_holds_its_bytes(tmp_path)}
    assert set(got) == {display_name(latin1), "ok0.jpg", "ok1.jpg", "ok2.jpg"}
    assert got["caf\\xe9.jpg"]["destination"].endswith(f"{RED}/caf\\xe9.jpg")


def test_a_255_byte_name_that_collides_is_moved_under_a_name_that_fits(tmp_path):
    w = make_watcher(tmp_path)
    name = "é" * 125 + "x.jpg"  # 255 bytes in UTF-8
    assert len(name.encode()) == 255
    (tmp_path / "out" / RED).mkdir(parents=True)
    (tmp_path / "out" / RED / name).write_bytes(b"someone else's")
    (tmp_path / "in" / name).write_bytes(data := jpeg("red", tag="long"))
    _old(tmp_path / "in" / name)
    summary = w.run(threading.Event(), once=True)
    assert summary.routed == 1 and summary.held == 0
    (row,) = _every_row_holds_its_bytes(tmp_path)
    moved = Path(row["destination"])
    assert moved.read_bytes() == data and len(moved.name.encode()) <= 255 and moved.name.endswith(".jpg")
    assert _sha(data)[:8] in moved.name


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MB file system (tmpfs), unmounted afterwards."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_disk(folder: Path) -> None:
    """Write ballast until the file system is full (ENOSPC)."""
    with open(folder / "ballast", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_once_exits_non_zero_and_says_what_was_left_when_the_database_disk_is_full(tmp_path, tiny_disk,
                                                                                    monkeypatch):
    from sorter.cli import app

    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"r{i}.jpg").write_bytes(jpeg("red", tag=f"full{i}"))
        _old(tmp_path / "in" / f"r{i}.jpg")
    real_open = store.open_writer

    def opened_then_full(path):  # the schema is in place; then the disk fills up
        db = real_open(path)
        _fill_disk(tiny_disk)
        return db

    monkeypatch.setattr(store, "open_writer", opened_then_full)
    result = CliRunner().invoke(app, ["watch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                      "--db", str(tiny_disk / "db.sqlite"), "--model", str(MODEL), "--once"])
    assert result.exit_code == 1, result.output
    assert "3 left in INCOMING (3 not recorded: database or disk is full)" in result.output
    assert "Traceback" not in result.output
    assert result.output.count("could not record a batch") >= 1
    assert len(list((tmp_path / "in").iterdir())) == 3 and not (tmp_path / "out").exists()


def test_subfolders_are_followed_and_out_inside_incoming_is_not(tmp_path):
    incoming = tmp_path / "in"
    out = incoming / "sorted"  # OUT inside INCOMING: never read back as new photos
    w = make_watcher(tmp_path, out=out)
    (incoming / "cam1" / "2026-12-01").mkdir(parents=True)
    (incoming / "cam1" / "2026-12-01" / "a.jpg").write_bytes(jpeg("red", tag="backlog"))
    (incoming / ".hidden").mkdir()
    (incoming / ".hidden" / "h.jpg").write_bytes(jpeg("red", tag="hidden"))
    for p in incoming.rglob("*.jpg"):
        _old(p)
    run = Running(w)
    wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 1, what="the backlog in a subfolder")
    staged = tmp_path / "staged" / "2026-12-02"  # a dated folder moved in whole: its files bring no events
    staged.mkdir(parents=True)
    (staged / "b.jpg").write_bytes(jpeg("blue", tag="moved-dir"))
    os.rename(staged, incoming / "cam1" / "2026-12-02")
    (incoming / "cam1" / "2026-12-01" / "c.jpg").write_bytes(jpeg("green", tag="live"))
    wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 3, what="live files in subfolders")
    time.sleep(0.5)
    run.stop()
    got = _every_row_holds_its_bytes(tmp_path)
    assert sorted(Path(r["source_path"]).name for r in got) == ["a.jpg", "b.jpg", "c.jpg"]
    assert {r["state"] for r in got} == {"done"} and all(r["error"] is None for r in got)
    assert (incoming / ".hidden" / "h.jpg").exists()
    assert sorted(p.relative_to(out).as_posix() for p in files_under(out)) == [
        "fresh/freshgreen/c.jpg", f"{RED}/a.jpg", "rotten/rottenblue/b.jpg"]


def test_not_recursive_says_which_subfolders_it_skips(tmp_path, caplog):
    w = make_watcher(tmp_path, recursive=False)
    (tmp_path / "in" / "cam1").mkdir()
    (tmp_path / "in" / "cam1" / "a.jpg").write_bytes(jpeg("red"))
    _old(tmp_path / "in" / "cam1" / "a.jpg")
    with caplog.at_level("WARNING", logger="sorter.watch"):
        summary = w.run(threading.Event(), once=True)
    assert summary.routed == 0 and rows(tmp_path / "db.sqlite") == []
    assert any("1 subfolder(s)" in r.getMessage() and "recursive = false" in r.getMessage() for r in caplog.records)


def test_a_file_that_looks_open_for_ever_is_still_read_after_the_grace(tmp_path, caplog):
    """A lost close event (inotify overflow) must not strand a file in INCOMING."""
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    stability = watch.Stability(0.05)
    stability.open_grace = 0.3
    stability.opened(path)
    stability.track(path)
    time.sleep(0.1)
    assert stability.due() == []  # settled, but open: a writer may be pausing
    time.sleep(0.3)
    with caplog.at_level("WARNING", logger="sorter.watch"):
        assert stability.due() == [path]
    assert "still looks open" in caplog.text


def test_a_label_that_resolves_outside_out_is_rejected_inside_out(tmp_path):
    """The last line of defence behind the card check: a symlink planted in OUT for a label's folder."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    w = make_watcher(tmp_path)
    (tmp_path / "out" / "fresh").mkdir(parents=True)
    (tmp_path / "out" / "fresh" / "freshred").symlink_to(outside)
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg("red", tag="escape"))
    _old(tmp_path / "in" / "a.jpg")
    summary = w.run(threading.Event(), once=True)
    assert summary.rejected == 1 and list(outside.iterdir()) == []
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["error"].startswith("unsafe-destination") and "/out/rejected/" in row["destination"]


# ---- review of items 1-6 (found after the first fixes) ----

def test_recovery_never_drops_a_source_because_a_symlink_sits_at_its_destination(tmp_path):
    """A symlink at the destination says nothing about the row's bytes: the file in INCOMING (the only
    copy) must not be deleted as 'already moved'; it is moved under another name."""
    incoming, out = tmp_path / "in", tmp_path / "out" / RED
    incoming.mkdir()
    out.mkdir(parents=True)
    data = jpeg("red", tag="only-copy")
    (tmp_path / "elsewhere").write_bytes(b"not the photo")
    (out / "a.jpg").symlink_to(tmp_path / "elsewhere")
    _intent(tmp_path, incoming / "a.jpg", out / "a.jpg", data)
    (incoming / "a.jpg").write_bytes(data)
    _old(incoming / "a.jpg")
    make_watcher(tmp_path).run(threading.Event(), once=True)
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["state"] == "done" and Path(row["destination"]).read_bytes() == data
    assert not Path(row["destination"]).is_symlink()


def test_recovery_of_a_hard_link_that_holds_other_bytes_keeps_no_row_for_them(tmp_path):
    """Killed between the link and its undo (the file changed after it was read): the destination is the
    source itself, with other bytes than the row's. The row is forgotten and the file read as itself."""
    incoming, out = tmp_path / "in", tmp_path / "out" / RED
    incoming.mkdir()
    out.mkdir(parents=True)
    read, now = jpeg("red", tag="as-read"), jpeg("blue", tag="as-it-is-now")
    (incoming / "a.jpg").write_bytes(now)
    os.link(incoming / "a.jpg", out / "a.jpg")
    _intent(tmp_path, incoming / "a.jpg", out / "a.jpg", read)
    _old(incoming / "a.jpg")
    make_watcher(tmp_path).run(threading.Event(), once=True)
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["sha256"] == _sha(now) and row["destination"].endswith("rotten/rottenblue/a.jpg")
    assert list(out.iterdir()) == [] and list(incoming.iterdir()) == []


def test_subfolders_are_followed_when_incoming_sits_inside_out(tmp_path):
    """OUT=/srv/photos, INCOMING=/srv/photos/incoming: only OUT inside INCOMING is excluded, so the
    dated subfolders of an INCOMING inside OUT are still read (and not silently left, exit 0)."""
    out = tmp_path / "out"
    incoming = out / "in"
    (incoming / "cam1").mkdir(parents=True)
    (incoming / "cam1" / "a.jpg").write_bytes(data := jpeg("red", tag="in-out"))
    _old(incoming / "cam1" / "a.jpg")
    clf_watcher = make_watcher(tmp_path, out=out)
    w = watch.Watcher(incoming, out, tmp_path / "db.sqlite", clf_watcher.clf, clf_watcher.rules,
                      clf_watcher.settings)
    summary = w.run(threading.Event(), once=True)
    assert summary.routed == 1 and not summary.left
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["destination"] == str(out / RED / "a.jpg") and (out / RED / "a.jpg").read_bytes() == data


def test_a_writer_whose_open_event_merges_with_a_peek_keeps_its_file(tmp_path):
    """inotify (and watchdog's queue) merge two opens in a row into one event: a writer's open then
    another process's quick look (an indexer, a thumbnailer) leave one open and one close counted. The
    writer, paused longer than stable_seconds, must still not have its half-written file read."""
    w = make_watcher(tmp_path, stable_seconds=0.2)
    run = Running(w)
    names = [f"p{i}.jpg" for i in range(5)]
    data = {n: jpeg("red", tag=f"peeked-{n}" * 300) for n in names}
    writers = {}
    for n in names:
        writers[n] = open(tmp_path / "in" / n, "wb")  # noqa: SIM115 - held open on purpose
        open(tmp_path / "in" / n, "rb").close()  # the peek
        writers[n].write(data[n][: len(data[n]) // 2])
        writers[n].flush()
    time.sleep(1.2)  # 6 × stable_seconds, every writer still open
    try:
        assert rows(tmp_path / "db.sqlite") == []
        assert sorted(p.name for p in (tmp_path / "in").iterdir()) == names
    finally:
        for n in names:
            writers[n].write(data[n][len(data[n]) // 2 :])
            writers[n].close()
    wait_until(lambda: not list((tmp_path / "in").iterdir()), timeout=10, what="the files routed")
    time.sleep(0.3)
    run.stop()
    got = _every_row_holds_its_bytes(tmp_path)
    assert sorted(r["sha256"] for r in got) == sorted(_sha(d) for d in data.values())
    assert all(r["error"] is None for r in got)


def test_recovery_does_not_hang_on_a_fifo_left_at_a_rows_source(tmp_path):
    """While the daemon was down a FIFO took the name of a file whose intent it left: recovery must not
    open it (it would block until someone writes to it: the daemon never starts)."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    _intent(tmp_path, incoming / "a.jpg", tmp_path / "out" / RED / "a.jpg", jpeg("red", tag="was-here"))
    os.mkfifo(incoming / "a.jpg")
    writer = store.Writer(tmp_path / "db.sqlite")
    done = threading.Thread(target=watch.recover, args=(tmp_path / "out", writer), daemon=True)
    done.start()
    done.join(10)
    blocked = done.is_alive()
    if blocked:  # unblock it before failing
        os.close(os.open(incoming / "a.jpg", os.O_WRONLY | os.O_NONBLOCK))
        done.join(5)
    writer.close()
    assert not blocked, "recovery blocked on the FIFO"
    assert rows(tmp_path / "db.sqlite") == [] and (incoming / "a.jpg").exists()


def test_an_out_folder_whose_name_is_not_utf8_gets_the_files_and_its_rows_are_recovered(tmp_path):
    """OUT's own path stored as text names a sibling (`caf\\xe9`, a backslash) outside OUT: moves must go
    into OUT itself, and recovery must find a file moved there (not call it lost)."""
    incoming, out = tmp_path / "in", tmp_path / os.fsdecode(b"caf\xe9")
    incoming.mkdir()
    (out / RED).mkdir(parents=True)
    moved = jpeg("red", tag="moved-before-the-kill")
    (out / RED / "m.jpg").write_bytes(moved)
    _intent(tmp_path, incoming / "m.jpg", Path(watch.path_text(out / RED / "m.jpg")), moved)  # as text
    (incoming / "a.jpg").write_bytes(new := jpeg("red", tag="after"))
    _old(incoming / "a.jpg")
    w = make_watcher(tmp_path, out=out)
    stop, result = threading.Event(), []
    runner = threading.Thread(target=lambda: result.append(w.run(stop, once=True)), daemon=True)
    runner.start()
    runner.join(30)
    stop.set()
    runner.join(15)
    assert result and result[0].routed == 1 and result[0].recovered == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["db.sqlite", "in", out.name])
    assert (out / RED / "a.jpg").read_bytes() == new and (out / RED / "m.jpg").read_bytes() == moved
    got = rows(tmp_path / "db.sqlite")
    assert {r["state"] for r in got} == {"done"} and all(r["error"] is None for r in got)


def test_a_source_removed_right_after_its_link_is_recorded_where_it_went(tmp_path, monkeypatch):
    """Someone deletes the file in INCOMING between the daemon's link and its unlink: the photo is in OUT
    and its row must say so (not 'vanished-before-move' with no destination: a file with no row)."""
    from sorter import route

    w = make_watcher(tmp_path)
    path = tmp_path / "in" / "a.jpg"
    path.write_bytes(data := jpeg("red", tag="deleted-meanwhile"))
    item = _loaded(w, path)
    real_link = os.link

    def link_then_someone_deletes(src, dst, **kw):
        real_link(src, dst, **kw)
        os.unlink(src)

    monkeypatch.setattr(route.os, "link", link_then_someone_deletes)
    w.router.route([item])
    monkeypatch.undo()
    w.router.flush()
    (row,) = _every_row_holds_its_bytes(tmp_path)
    assert row["error"] is None and Path(row["destination"]).read_bytes() == data


def test_not_recursive_leaves_a_folder_moved_in_and_says_so(tmp_path, caplog):
    """recursive = false: a folder moved in is not read (its later files would never be), and a line
    says it is skipped."""
    w = make_watcher(tmp_path, recursive=False)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.jpg").write_bytes(jpeg("red", tag="in-a-moved-folder"))
    _old(staged / "a.jpg")
    with caplog.at_level("WARNING", logger="sorter.watch"):
        run = Running(w)
        os.rename(staged, tmp_path / "in" / "cam2")
        (tmp_path / "in" / "top.jpg").write_bytes(jpeg("green", tag="top"))
        wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 1, what="top.jpg routed")
        time.sleep(0.5)
        run.stop()
    assert [Path(r["source_path"]).name for r in rows(tmp_path / "db.sqlite")] == ["top.jpg"]
    assert (tmp_path / "in" / "cam2" / "a.jpg").exists()
    assert any("subfolder cam2" in r.getMessage() and "recursive = false" in r.getMessage() for r in caplog.records)


def test_a_hidden_folder_moved_in_is_not_read(tmp_path):
    """A sync tool's hidden folder (`.stversions`, a partial dir) moved or made in INCOMING while the daemon
    runs is someone's work in progress, like one there at startup: its files are not read."""
    w = make_watcher(tmp_path)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "old.jpg").write_bytes(jpeg("red", tag="an-old-version"))
    _old(staged / "old.jpg")
    run = Running(w)
    os.rename(staged, tmp_path / "in" / ".stversions")
    (tmp_path / "in" / "top.jpg").write_bytes(jpeg("green", tag="top"))
    wait_until(lambda: len(rows(tmp_path / "db.sqlite")) == 1, what="top.jpg routed")
    time.sleep(0.6)
    run.stop()
    assert [Path(r["source_path"]).name for r in rows(tmp_path / "db.sqlite")] == ["top.jpg"]
    assert (tmp_path / "in" / ".stversions" / "old.jpg").exists()
