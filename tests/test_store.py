"""Store: migrations, the partial unique index, the single writer, read-only readers, prune."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest

from sorter import store
from sorter.states import ItemState
from sorter.verdict import Verdict


def _row(sha: str | None, **kw) -> dict:
    base = {"sha256": sha, "source_path": f"/in/{sha}.jpg", "source": "watch",
            "received_at": store.now_iso(), "state": "done"}
    return {**base, **kw}


def test_migrations_create_schema_once_with_wal(tmp_path):
    db = store.open_writer(tmp_path / "a.db")
    db.close()
    db = store.open_writer(tmp_path / "a.db")  # second open: nothing re-applied
    applied = list(db.query("SELECT name FROM _sqlite_migrations"))
    assert applied == [{"name": "m001_items"}, {"name": "m002_camera_events"}, {"name": "m003_audits"},
                       {"name": "m004_items_ood_score"}, {"name": "m005_items_keep_p"},
                       {"name": "m006_audit_draws"}, {"name": "m007_audit_controls"},
                       {"name": "m008_deliveries"}, {"name": "m009_check_constraints"},
                       {"name": "m010_item_counts"}, {"name": "m011_compact_items"}]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert set(db["items"].columns_dict) == set(store.ITEM_COLUMNS) | set(store.SEARCH_COLUMNS)
    # a new file has nothing to convert: the view is the compact table's alone (an empty old table left in it
    # made every query scan: 20 s for `db stats` at 1 M rows)
    assert "UNION" not in db.execute("SELECT sql FROM sqlite_master WHERE name = 'items'").fetchone()[0]
    plan = str(db.execute("EXPLAIN QUERY PLAN SELECT received_at FROM items ORDER BY received_ms LIMIT 1").fetchall())
    assert "COMPOUND" not in plan and "USING INDEX item_rows_received" in plan
    indexed = {tuple(i.columns) for i in db["item_rows"].indexes}
    assert {("received",), ("sha",), ("state",)} <= indexed
    db.close()


def test_unique_partial_index_guards_first_rows(tmp_path):
    db = store.open_writer(tmp_path / "a.db")
    first = store.insert_item(db, _row("abc"))
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_item(db, _row("abc"))
    store.insert_item(db, _row("abc", duplicate_of=first))  # duplicates are fine
    store.insert_item(db, _row("abc", state="dry-run"))  # dry-run rows are outside the guard
    store.insert_item(db, _row(None))
    store.insert_item(db, _row(None))  # unreadable files have no hash; never collide
    assert db["items"].count == 5


def test_write_intents_resolves_duplicates_inside_one_batch(tmp_path):
    db = store.open_writer(tmp_path / "a.db")
    ids = store.write_intents(db, [_row("x", state="intent"), _row("x", state="intent"),
                                   _row("y", state="intent")])
    got = {r["id"]: r["duplicate_of"] for r in db.query("SELECT id, duplicate_of FROM items")}
    assert got == {ids[0]: None, ids[1]: ids[0], ids[2]: None}
    assert [r["id"] for r in store.unfinished(db)] == ids


def test_held_rows_are_read_for_the_batch_paths_only(tmp_path):
    """A retry finds its own held row (the newest if it was held twice) and nothing else: not
    another path's held row, nor a finished row for the same path."""
    db = store.open_writer(tmp_path / "a.db")
    store.insert_items(db, [_row("a", state="held"), _row("b", state="held"), _row("c", state="done"),
                            _row("d", state="held", source_path="/in/c.jpg"), _row("e", state="held")])
    newer = store.insert_item(db, _row("f", state="held", source_path="/in/a.jpg"))
    got = store.held_rows(db, ["/in/a.jpg", "/in/c.jpg", "/in/zzz.jpg", "/in/a.jpg"])
    assert {path: row["sha256"] for path, row in got.items()} == {"/in/a.jpg": "f", "/in/c.jpg": "d"}
    assert got["/in/a.jpg"]["id"] == newer
    assert store.held_rows(db, []) == {}


def test_single_writer_serialises_many_threads(tmp_path):
    writer = store.Writer(tmp_path / "a.db")

    def work(n: int) -> None:
        for i in range(25):
            writer.call(lambda db, k=f"{n}-{i}": store.write_intents(db, [_row(k)]))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.call(lambda db: db["items"].count) == 200
    writer.close()


def test_reader_is_read_only_and_not_blocked_by_a_writer(tmp_path):
    path = tmp_path / "a.db"
    db = store.open_writer(path)
    store.insert_item(db, _row("a"))
    db.execute("BEGIN IMMEDIATE")  # the writer holds the write lock
    store.insert_item(db, _row("b"))
    reader = store.open_reader(path)
    assert reader.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 1  # committed view, no lock error
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM items")
    db.execute("COMMIT")
    assert reader.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 2
    with pytest.raises(FileNotFoundError):
        store.open_reader(tmp_path / "missing.db")


def test_prune_deletes_old_finished_rows_in_batches(tmp_path):
    path = tmp_path / "a.db"
    db = store.open_writer(path)
    old = (datetime.now(UTC) - timedelta(days=100)).isoformat(timespec="milliseconds")
    store.insert_items(db, [_row(f"o{i}", received_at=old) for i in range(25)])
    store.insert_item(db, _row("intent", received_at=old, state="intent"))
    store.insert_items(db, [_row(f"n{i}") for i in range(5)])
    db.close()
    assert store.prune(path, store.parse_age("90d"), dry_run=True).matched == 25
    assert store.stats(path)["items"] == 31
    result = store.prune(path, store.parse_age("90d"), batch_size=10)
    assert (result.deleted, result.vacuumed) == (25, True)
    left = store.stats(path)
    assert left["items"] == 6 and left["by_state"] == {"done": 5, "intent": 1}


@pytest.mark.parametrize(("text", "seconds"), [("90d", 90 * 86400), ("12h", 43200), ("2w", 1209600),
                                               ("30m", 1800), ("45s", 45)])
def test_parse_age(text, seconds):
    assert store.parse_age(text).total_seconds() == seconds


def test_parse_age_rejects_garbage():
    with pytest.raises(ValueError):
        store.parse_age("ninety days")


def _before_m009(path) -> sqlite3.Connection:
    """A database as a release before m009 left it, with a row in every table m009 rebuilds."""
    from sqlite_utils import Database

    db = Database(sqlite3.connect(str(path), isolation_level=None))
    store.migrations.apply(db, stop_before="m009_check_constraints")
    first = db.table("items").insert(_row("aa", verdict="rotten", label="rottenapples", keep_p=0.5)).last_pk
    db.table("items").insert(_row("aa", duplicate_of=first, state="done"))
    db.table("items").insert(_row(None, state="held", error="move-failed: No space left on device"))
    db["audits"].insert({"item_id": first, "true_label": "freshapples", "auditor": "ana", "audited_at": "t"})
    db["deliveries"].insert({"item_id": first, "output": "webhook", "key": "k", "event": "{}", "state": "failed",
                             "attempts": 3, "created_at": "t"})
    db["camera_events"].insert({"time": "t", "device": "cam0", "event": "offline"})
    return db.conn


def test_m009_refuses_words_the_code_does_not_know(tmp_path):
    db = store.open_writer(tmp_path / "a.db")
    store.insert_item(db, _row("ok", state=ItemState.HELD, verdict=Verdict.UNKNOWN))
    for table, row, constraint in (
            ("items", _row("s", state="finished"), "items_state"),
            ("items", _row("v", verdict="mouldy"), "items_verdict"),
            ("deliveries", {"item_id": 1, "output": "o", "key": "k", "event": "{}", "state": "lost",
                            "created_at": "t"}, "deliveries_state"),
            ("camera_events", {"time": "t", "device": "d", "event": "exploded"}, "camera_events_event")):
        with pytest.raises(sqlite3.IntegrityError, match=constraint):
            store.insert_item(db, row) if table == "items" else db[table].insert(row)
    with pytest.raises(sqlite3.IntegrityError, match="items_state"):
        db.execute("UPDATE items SET state = 'gone'")
    assert db.execute("SELECT state, verdict FROM items").fetchall() == [("held", "unknown")]
    with pytest.raises(ValueError, match="exploded"):
        store.record_camera_event(db, "cam0", "exploded")


def test_m009_on_an_existing_database_keeps_every_row_id_and_index(tmp_path):
    path = tmp_path / "line.db"
    conn = _before_m009(path)
    tables = ("items", "audits", "deliveries", "camera_events", "audit_controls")
    before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in tables}
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name").fetchall()
    conn.close()
    store.open_writer(path).close()  # backs up, migrates m009 onwards
    assert (tmp_path / "line.db.bak-m009_check_constraints").is_file()
    from sqlite_utils import Database

    db = Database(sqlite3.connect(tmp_path / "line.db.bak-m009_check_constraints", isolation_level=None))
    store.migrations.apply(db, stop_before="m010_item_counts")  # m009 alone, on a copy of the old file
    assert {t: db.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in tables} == before
    after = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name").fetchall()
    assert after == indexes
    assert "CONSTRAINT items_state CHECK" in db["items"].schema
    with pytest.raises(sqlite3.IntegrityError):  # the partial unique index came back with the table
        db.table("items").insert(_row("aa"))
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []  # audits still point at their item


def test_the_item_row_type_is_the_schema():
    """ItemRow names every column the migrations leave, and nothing else: a column a migration adds is
    a field to add, or this fails."""
    from sorter.item_row import COLUMNS, ItemRow

    assert set(COLUMNS) == set(store.ITEM_COLUMNS)
    row = ItemRow(state=ItemState.HELD, source="watch", received_at="t", sha256="ab", verdict=Verdict.ROTTEN)
    assert set(row.values()) == set(store.ITEM_COLUMNS) - {"id"}
    retry = row.retry_values(7)
    assert retry["id"] == 7 and not {"source", "received_at", "duplicate_of"} & set(retry)
