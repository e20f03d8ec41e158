"""Retention (items, camera events, snapshots; VACUUM only when worthwhile) and backup before migrating."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from datetime import timedelta

from typer.testing import CliRunner

from sorter import item_layout, store
from sorter.cli import app


def old_and_new(db_path, n_old: int = 300, n_new: int = 5) -> None:
    db = store.open_writer(db_path)
    with db.atomic():
        for i in range(n_old + n_new):
            when = "2000-01-01T00:00:00.000+00:00" if i < n_old else store.now_iso()
            store.insert_item(db, {"sha256": f"{i:064d}", "source": "watch", "received_at": when, "state": "done",
                                "scores": "x" * 500})
            db["camera_events"].insert({"time": when, "device": "0", "event": "online"})
    db.close()


def test_config_driven_prune_of_items_events_and_snapshots(tmp_path):
    db_path = tmp_path / "s.db"
    old_and_new(db_path)
    snaps = tmp_path / "snaps"
    (snaps / "2000-01-01").mkdir(parents=True)
    (snaps / "today").mkdir()
    old = snaps / "2000-01-01" / "a.jpg"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    (snaps / "today" / "b.jpg").write_bytes(b"y")
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"db = '{db_path}'\n[camera]\nsnapshots = '{snaps}'\n[retention]\nbatch_size = 50\n")
    dry = CliRunner().invoke(app, ["db", "prune", "-c", str(cfg), "--dry-run"])
    assert dry.exit_code == 0 and "would delete 300 items, 300 camera events, 1 snapshots" in dry.output
    result = CliRunner().invoke(app, ["db", "prune", "-c", str(cfg)])
    assert result.exit_code == 0 and "deleted 300 items, 300 camera events, 1 snapshots and vacuumed" in result.output
    conn = store.open_reader(db_path)
    assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 5
    assert conn.execute("SELECT COUNT(*) FROM camera_events").fetchone()[0] == 5
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert not old.exists() and not old.parent.exists() and (snaps / "today" / "b.jpg").exists()


def test_vacuum_is_skipped_when_little_is_free(tmp_path):
    db_path = tmp_path / "s.db"
    old_and_new(db_path, n_old=1, n_new=300)
    result = store.apply_retention(db_path, timedelta(days=90), timedelta(days=90), timedelta(days=90), None)
    assert (result.items, result.camera_events, result.vacuumed) == (1, 1, False)


def test_backup_is_taken_only_before_a_pending_migration(tmp_path):
    path = tmp_path / "s.db"
    store.open_writer(path).close()
    assert not list(tmp_path.glob("*.bak-*"))  # a brand-new DB has nothing to lose
    conn = sqlite3.connect(path)
    item_layout.register(conn)  # the view's write triggers call the store's functions
    conn.execute("INSERT INTO items (source, received_at, state) VALUES ('watch', 'then', 'done')")
    last = conn.execute("SELECT name FROM _sqlite_migrations ORDER BY id DESC LIMIT 1").fetchone()[0]
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = ?", [last])  # pretend it is new
    conn.commit()
    conn.close()
    with contextlib.suppress(sqlite3.OperationalError):  # re-running a real migration may fail: backup came first
        store.open_writer(path).close()
    backup = tmp_path / f"s.db.bak-{last}"
    assert backup.is_file()
    copy = sqlite3.connect(backup)
    assert copy.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 1
    copy.close()
    before = sorted(tmp_path.glob("*.bak-*"))
    store.open_writer(tmp_path / "fresh.db").close()
    assert sorted(tmp_path.glob("*.bak-*")) == before


def _line_with_history(path, old: int, recent: int) -> None:
    """`old` finished items from the year 2000 (a retention's worth) and `recent` ones from now, written the
    way a build of a big line database is: plain INSERTs in one transaction (the counters' triggers run)."""
    db = store.open_writer(path)
    rows = [(f"{i:064x}", f"/in/cam1/{i}.jpg", f"/out/fresh/freshapples/{i}.jpg", "freshapples", 0.97, "fresh",
             "x" * 300, "lite", "a" * 64, "watch", "2000-01-01T00:00:00.000+00:00" if i < old else store.now_iso(),
             "done") for i in range(old + recent)]
    with store.immediate(db):
        db.conn.executemany("INSERT INTO items (sha256, source_path, destination, label, confidence, verdict, scores, "
                            "model_id, model_sha256, source, received_at, state) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            rows)
    db.close()


def test_pruning_while_the_daemon_writes_never_stalls_it_and_gives_the_space_back(tmp_path):
    """Issue 18: retention deletes in batches with a pause between and returns the free pages in
    incremental-vacuum steps, so a writer committing alongside (as `sorter watch` does, through the same
    store functions) never waits more than a batch: its longest gap between commits stays under 200 ms.
    A full VACUUM of this 50 MB file holds the lock for longer than that."""
    import threading

    path = tmp_path / "line.db"
    _line_with_history(path, old=60_000, recent=500)
    size_before = path.stat().st_size
    commits: list[float] = []
    stop = threading.Event()

    def daemon() -> None:
        db = store.open_writer(path)
        i = 0
        while not stop.is_set():
            row = {"sha256": f"new{i:061d}", "source_path": f"/in/{i}.jpg", "destination": f"/out/{i}.jpg",
                   "label": "freshapples", "confidence": 0.9, "verdict": "fresh", "source": "watch",
                   "received_at": store.now_iso(), "state": "intent"}
            ids = store.write_intents(db, [row])
            store.mark_done(db, [{"id": ids[0], "state": "done", "routed_at": store.now_iso()}])
            commits.append(time.monotonic())
            i += 1
            time.sleep(0.002)
        db.close()

    writer = threading.Thread(target=daemon)
    writer.start()
    time.sleep(0.3)
    began = time.monotonic()
    result = store.apply_retention(path, timedelta(days=90), timedelta(days=90), timedelta(days=90), None)
    ended = time.monotonic()
    time.sleep(0.2)
    stop.set()
    writer.join()
    during = [t for t in commits if began <= t <= ended]
    gaps = [b - a for a, b in zip([began, *during], [*during, ended], strict=True)]
    assert result.items == 60_000 and result.vacuumed
    assert len(during) > 20 and max(gaps) < 0.2, f"longest gap between the daemon's commits {max(gaps):.3f} s"
    conn = store.open_reader(path)
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 500 + len(commits)
    assert conn.execute("SELECT SUM(n) FROM item_counts").fetchone()[0] == 500 + len(commits)
    conn.close()
    assert path.stat().st_size < size_before / 3  # the pages went back to the disk, not just to a free list


def _legacy(path) -> None:
    """A database as versions before incremental vacuum made it (auto_vacuum NONE)."""
    _line_with_history(path, old=2000, recent=10)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()


def test_db_vacuum_makes_an_older_database_incremental(tmp_path):
    path = tmp_path / "old.db"
    _legacy(path)
    result = CliRunner().invoke(app, ["db", "vacuum", "--db", str(path)])
    assert result.exit_code == 0 and "retention now returns free pages incrementally" in result.output
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2 and conn.execute(
        "SELECT COUNT(*) FROM items").fetchone()[0] == 2010
    conn.close()
    missing = CliRunner().invoke(app, ["db", "vacuum", "--db", str(tmp_path / "none.db")])
    assert missing.exit_code != 0 and "none.db not found" in missing.output


def test_the_first_prune_of_an_older_database_switches_it_to_incremental(tmp_path):
    path = tmp_path / "old.db"
    _legacy(path)
    result = store.apply_retention(path, timedelta(days=90), timedelta(days=90), timedelta(days=90), None)
    assert (result.items, result.vacuumed) == (2000, True)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2 and conn.execute(
        "PRAGMA freelist_count").fetchone()[0] == 0
    conn.close()


def test_prune_walks_the_received_at_index_and_sizes_its_batches_by_time(tmp_path):
    """At 20 M rows the state index made prune's last, empty batch read every finished row under the write
    lock (22 s, the daemon's commit timed out); and one batch of 1,000 deletes held the lock 130 ms."""
    db = store.open_writer(tmp_path / "a.db")
    plan = db.execute(f"EXPLAIN QUERY PLAN SELECT id FROM items WHERE {store.PRUNE_WHERE} LIMIT 10",
                      ["2000"]).fetchall()
    db.close()
    assert "item_rows_received" in str(plan)
    assert store.next_batch(1000, 0.13, 1000) == 500 and store.next_batch(500, 0.01, 1000) == 625
    assert store.next_batch(900, 0.01, 1000) == 1000 and store.next_batch(700, 0.04, 1000) == 700
