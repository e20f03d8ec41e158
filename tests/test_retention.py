"""Retention (items, camera events, snapshots; VACUUM only when worthwhile) and backup before migrating."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from datetime import timedelta

from typer.testing import CliRunner

from sorter import store
from sorter.cli import app


def old_and_new(db_path, n_old: int = 300, n_new: int = 5) -> None:
    db = store.open_writer(db_path)
    with db.atomic():
        for i in range(n_old + n_new):
            when = "2000-01-01T00:00:00.000+00:00" if i < n_old else store.now_iso()
            db["items"].insert({"sha256": f"{i:064d}", "source": "watch", "received_at": when, "state": "done",
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
