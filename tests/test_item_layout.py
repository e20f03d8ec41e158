"""Issue 18: compact item rows (sorter.item_layout) read back exactly as written, whoever writes them; an old
database is converted in place, in batches, keeping every row, audit, delivery and counter; and a row costs
at most 250 bytes with its indexes."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from sorter import item_counts, item_layout, report, store
from sorter.states import ItemState

LABELS = ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"]


def _scores(rng: random.Random) -> dict[str, float]:
    raw = [rng.random() for _ in LABELS]
    total = sum(raw)
    return {label: round(v / total, 6) for label, v in zip(LABELS, raw, strict=True)}


def _row(rng: random.Random, i: int, when: datetime) -> dict:
    """A row as watch or camera writes it, now and then with values that have no compact form."""
    odd = rng.random() < 0.1
    return {
        "sha256": (f"Zz-not-hex-{i}" if odd else hashlib.sha256(str(i).encode()).hexdigest()) if rng.random() < 0.95
        else None,
        "source_path": rng.choice([f"/srv/incoming/cam{i % 3}/{when:%Y-%m-%d}/IMG_{i:06d}.jpg", "0#123",
                                   "rtsp://cam/x#9", "bare.jpg", "/x.jpg", "/dir/", None]),
        "destination": rng.choice([f"/out/fresh/freshapples/IMG_{i:06d}.jpg", None]),
        "label": rng.choice(LABELS), "confidence": round(rng.random(), 6),
        "verdict": rng.choice(["fresh", "rotten", "uncertain", "unknown", None]),
        "scores": rng.choice([_scores(rng), None, {"a": 0.1234567}, {"a": -1.0}, {"a": 2.5, "b": True}]),
        "model_id": rng.choice(["fruit-lite1-int8", None]), "model_sha256": rng.choice(["ab" * 32, None]),
        "source": rng.choice(["watch", "camera"]),
        "received_at": "then" if odd and rng.random() < 0.3 else report.iso_utc(when),
        "routed_at": rng.choice([None, report.iso_utc(when + timedelta(milliseconds=41)),
                                 "2026-01-01T10:00:00+02:00"]),
        "state": rng.choice(list(ItemState)), "error": rng.choice([None, "too-large: 90 MB"]),
        "ood_score": rng.choice([None, rng.uniform(-3, 9)]), "keep_p": rng.choice([None, 0.02]),
    }


def _expected(row: dict) -> dict:
    """What the view gives back for a written row: every value as written, scores as the same JSON object."""
    return {c: row.get(c) for c in store.ITEM_COLUMNS if c != "id"}


def _read(conn: sqlite3.Connection) -> list[dict]:
    cursor = conn.execute(f"SELECT {store.COLUMNS_SQL} FROM items ORDER BY id")
    names = [c[0] for c in cursor.description]
    rows = [dict(zip(names, r, strict=True)) for r in cursor]
    for r in rows:
        if r["scores"] is not None:
            r["scores"] = json.loads(r["scores"])
    return rows


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=1)
    rows = [_row(rng, i, start + timedelta(seconds=7.3 * i, microseconds=rng.randrange(1000) * 1000))
            for i in range(n)]
    for i, row in enumerate(rows):  # every 25th is a second copy of the bytes before it: its duplicate
        real = row["state"] != ItemState.DRY_RUN
        row["duplicate_of"] = None
        if i % 25 == 24 and rows[i - 1]["sha256"] is not None:
            row["sha256"] = rows[i - 1]["sha256"]
            row["duplicate_of"] = i if real and rows[i - 1]["state"] != ItemState.DRY_RUN else None
            if real and row["duplicate_of"] is None:
                row["state"] = ItemState.DRY_RUN  # the earlier copy was a dry run: keep one first row
    return rows


def test_rows_read_back_exactly_as_written_by_the_encoder_and_by_sql_through_the_view(tmp_path):
    rows = _rows(400, seed=3)
    db = store.open_writer(tmp_path / "a.db")
    for row in rows[:200]:  # the daemon's path: Encoder straight into item_rows
        store.insert_item(db, row)
    for row in rows[200:]:  # any other SQL: INSERT INTO the view (the INSTEAD OF trigger encodes)
        values = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in row.items()}
        db.execute(f"INSERT INTO items ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                   list(values.values()))
    got = _read(db.conn)
    assert [{k: v for k, v in r.items() if k != "id"} for r in got] == [_expected(r) for r in rows]
    # the compact forms were used where they fit, the text kept where not
    kinds = dict(db.execute("SELECT typeof(sha) || typeof(received), COUNT(*) FROM item_rows GROUP BY 1").fetchall())
    assert kinds.get("blobinteger", 0) > 300 and kinds.get("textinteger", 0) > 10 and kinds.get("texttext", 0) > 0
    assert db.execute("SELECT COUNT(*) FROM item_rows WHERE typeof(scores) = 'blob'").fetchone()[0] > 50
    assert db.execute("SELECT COUNT(*) FROM item_dirs").fetchone()[0] < 20


def test_updates_through_the_encoder_and_the_view_keep_the_other_columns(tmp_path):
    db = store.open_writer(tmp_path / "a.db")
    rows = _rows(60, seed=4)
    ids = [store.insert_item(db, r) for r in rows]
    rng = random.Random(9)
    for item_id, row in zip(ids, rows, strict=True):
        change = rng.choice([{"destination": "/snap/a.jpg"}, {"state": "done", "routed_at": store.now_iso()},
                             {"scores": {"a": 0.25, "b": 0.75}}, {"model_id": "other"}, {"sha256": f"{item_id:064x}"},
                             {"received_at": "2026-12-01T00:00:00.000+00:00", "error": None}])
        if rng.random() < 0.5:
            store.update_item(db, item_id, change)
        else:
            values = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in change.items()}
            db.execute(f"UPDATE items SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                       [*values.values(), item_id])
        row.update(change)
    assert [{k: v for k, v in r.items() if k != "id"} for r in _read(db.conn)] == [_expected(r) for r in rows]
    db.execute("DELETE FROM items WHERE id = ?", [ids[0]])
    assert db.execute("SELECT COUNT(*) FROM item_rows").fetchone()[0] == len(ids) - 1


def test_a_column_the_table_has_not_is_refused(tmp_path):
    db = store.open_writer(tmp_path / "a.db")
    with pytest.raises(sqlite3.OperationalError, match="no column named colour"):
        store.insert_item(db, {"source": "watch", "received_at": store.now_iso(), "state": "done", "colour": 1})


def test_a_rolled_back_directory_is_not_remembered(tmp_path):
    """The encoder caches directory ids; one added in a rolled-back transaction must be added again, or the
    next row would point at a directory that is not there and lose its path."""
    db = store.open_writer(tmp_path / "a.db")
    with pytest.raises(RuntimeError), store.immediate(db):
        store.insert_item(db, {"source": "watch", "received_at": store.now_iso(), "state": "done",
                               "source_path": "/new/dir/a.jpg"})
        raise RuntimeError("the batch failed")
    store.insert_item(db, {"source": "watch", "received_at": store.now_iso(), "state": "done",
                           "source_path": "/new/dir/b.jpg"})
    assert [r[0] for r in db.execute("SELECT source_path FROM items")] == ["/new/dir/b.jpg"]


def _legacy(path, rows: list[dict]) -> list[dict]:
    """A database as the version before m011 left it, with audits and deliveries: the rows as it reads them."""
    conn = sqlite3.connect(path, isolation_level=None)
    from sqlite_utils import Database
    db = Database(conn)
    store.migrations.apply(db, stop_before="m011_compact_items")
    for row in rows:
        db.table("items").insert(row)
    for item_id in range(1, len(rows), 7):
        db.table("audits").insert({"item_id": item_id, "sha256": rows[item_id - 1]["sha256"], "true_label": "x",
                                   "auditor": "ana", "audited_at": store.now_iso()})
    db.table("deliveries").insert({"item_id": 5, "output": "plc", "key": "k", "event": "{}", "state": "pending",
                                   "attempts": 0, "created_at": store.now_iso()})
    before = _read(conn)
    conn.close()
    return before


def _counters(conn: sqlite3.Connection) -> list[tuple]:
    return sorted(conn.execute(f"SELECT * FROM {item_counts.TABLE}").fetchall())


def test_an_old_database_is_converted_in_place_keeping_every_row_audit_delivery_and_counter(tmp_path):
    path = tmp_path / "old.db"
    before = _legacy(path, _rows(300, seed=5))
    old = sqlite3.connect(path)
    counters, audits = _counters(old), old.execute("SELECT * FROM audits ORDER BY id").fetchall()
    top = old.execute("SELECT MAX(id) FROM items").fetchone()[0]
    old.close()
    db = store.open_writer(path)  # migrates at once: the rows wait in items_v1, part of the view
    assert (tmp_path / "old.db.bak-m011_compact_items").is_file()
    assert item_layout.legacy(db.conn) and _read(db.conn) == before and _counters(db.conn) == counters
    opened = {r["id"] for r in before if r["state"] in ("intent", "held")}
    assert {r[0] for r in db.execute("SELECT id FROM item_rows")} == opened  # what recovery updates moved first
    assert store.convert_legacy(db, batch=64) == len(before) - len(opened)
    assert not item_layout.legacy(db.conn)
    assert _read(db.conn) == before
    assert _counters(db.conn) == counters
    assert db.execute("SELECT * FROM audits ORDER BY id").fetchall() == audits
    assert db.execute("SELECT item_id, state FROM deliveries").fetchall() == [(5, "pending")]
    # the view is the compact table's alone now, and new ids continue after the old ones
    assert "items_v1" not in db.execute("SELECT sql FROM sqlite_master WHERE name = 'items'").fetchone()[0]
    new = store.insert_item(db, {"source": "watch", "received_at": store.now_iso(), "state": "done", "label": "x",
                                 "verdict": "fresh", "confidence": 0.9})
    assert new == top + 1
    assert sum(r[-1] for r in _counters(db.conn)) == len(before) + 1


def test_the_daemon_writes_while_the_old_rows_convert(tmp_path):
    """The writer converts in its idle moments; meanwhile a new copy of old bytes is still a duplicate, an
    update of an old row is kept, retention deletes old rows, and nothing is lost or counted twice."""
    path = tmp_path / "old.db"
    before = _legacy(path, _rows(3000, seed=8))
    old_first = next(r for r in before if r["sha256"] and r["duplicate_of"] is None and r["state"] == "done")
    writer = store.Writer(path)
    assert writer.call(lambda db: item_layout.legacy(db.conn))  # the daemon started before the conversion ended
    ids = writer.call(lambda db: store.write_intents(db, [
        {"sha256": old_first["sha256"], "source": "watch", "received_at": store.now_iso(), "state": "intent"},
        {"sha256": "ef" * 32, "source": "watch", "received_at": store.now_iso(), "state": "intent"}]))
    writer.call(lambda db: store.update_item(db, 3, {"error": "hand-checked"}))
    for _ in range(200):
        if not writer.call(lambda db: item_layout.legacy(db.conn)):
            break
        time.sleep(0.05)
    rows = writer.call(lambda db: _read(db.conn))
    writer.close()
    assert not item_layout.legacy(store.open_reader(path))
    assert rows[-2]["duplicate_of"] == old_first["id"] and rows[-1]["duplicate_of"] is None
    assert ids == [before[-1]["id"] + 1, before[-1]["id"] + 2]
    expected = [dict(r) for r in before]
    expected[2]["error"] = "hand-checked"
    assert rows[:-2] == expected
    conn = store.open_reader(path)
    assert sum(item_counts.tally((str(g.state), g.n) for g in item_counts.all_groups(conn)).values()) == len(rows)
    conn.close()


def test_the_conversion_goes_in_batches_and_resumes_after_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    finished = [r | {"state": "done"} if r["state"] in ("intent", "held") else r for r in _rows(120, seed=6)]
    before = _legacy(path, finished)
    db = store.open_writer(path)
    calls = {"n": 0}
    encode = item_layout.Encoder.encode

    def failing(self, row, current=None):
        calls["n"] += 1
        if calls["n"] > 25:  # the third step of 10 dies half-way: its transaction rolls back
            raise OSError("power cut")
        return encode(self, row, current)

    monkeypatch.setattr(item_layout.Encoder, "encode", failing)
    with pytest.raises(OSError):
        store.convert_legacy(db, batch=10)
    db.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM item_rows").fetchone()[0] == 20  # two whole steps, newest first
    assert conn.execute("SELECT MIN(id) FROM item_rows").fetchone()[0] == 101
    assert conn.execute("SELECT COUNT(*) FROM items_v1").fetchone()[0] == 100
    conn.close()
    monkeypatch.setattr(item_layout.Encoder, "encode", encode)
    db = store.open_writer(path)
    assert _read(db.conn) == before  # meanwhile the view shows both tables
    store.convert_legacy(db)
    assert _read(db.conn) == before and not item_layout.legacy(db.conn)


def test_a_reader_reads_a_database_from_before_m011(tmp_path):
    """A read-only reader cannot migrate: `db stats` and the report still read the old table."""
    path = tmp_path / "old.db"
    rows = [r for r in _rows(80, seed=7) if r["received_at"] != "then"]
    _legacy(path, rows)
    figures = store.stats(path)
    assert figures["items"] == len(rows)
    conn = store.open_reader(path)
    lo, hi = datetime.now(UTC) - timedelta(days=2), datetime.now(UTC)
    groups = item_counts.window_groups(conn, lo, hi)
    assert sum(g.n for g in groups) == len(rows)
    assert store.window_ids(conn, report.iso_utc(lo), report.iso_utc(hi)) == (1, len(rows))


def test_a_row_costs_at_most_250_bytes_with_its_indexes(tmp_path):
    """The figure bench_db measures at 1-20 M rows, on 30,000 rows shaped like a line's (watch: routed files
    under dated folders, every label's score, one model)."""
    db = store.open_writer(tmp_path / "a.db")
    rng = random.Random(1)
    start = datetime.now(UTC) - timedelta(days=1)
    rows = []
    for i in range(30_000):
        when = start + timedelta(milliseconds=100 * i + rng.randrange(50))
        scores = _scores(rng)
        label = max(scores, key=scores.__getitem__)
        rows.append({"sha256": hashlib.sha256(i.to_bytes(8, "little")).hexdigest(),
                     "source_path": f"/srv/incoming/cam1/{when:%Y-%m-%d}/IMG_{i:08d}.jpg",
                     "destination": f"/srv/out/fresh/{label}/IMG_{i:08d}.jpg", "label": label,
                     "confidence": scores[label], "verdict": "fresh", "scores": scores,
                     "model_id": "fruit-lite1-int8", "model_sha256": "ab" * 32, "source": "watch",
                     "received_at": report.iso_utc(when),
                     "routed_at": report.iso_utc(when + timedelta(milliseconds=40)),
                     "state": "done", "ood_score": round(rng.uniform(-2, 9), 4)})
    store.write_intents(db, rows)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    held = ("items", "idx_items", item_layout.ROWS, item_layout.DIRS, item_layout.MODELS)  # the old layout's too
    per_row = sum(v for k, v in pages.items() if k.startswith(held)) / len(rows)
    assert per_row > 150  # the rows were counted
    assert per_row <= 250, pages
    assert pages.get(item_layout.DIRS, 0) + pages.get(item_layout.MODELS, 0) < 20_000
