"""Issue 18: the per-hour counters (sorter.item_counts) agree with the rows whoever writes them, and the
report and `db stats` built from them equal the figures computed from the rows one by one."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta

from sorter import item_counts, report, store
from sorter.states import ItemState

LABELS = ["freshapples", "freshbanana", "rottenapples", "rottenbanana"]
END = datetime.now(UTC).replace(minute=23, second=41, microsecond=250000)  # partial first and last hours


def _when(rng: random.Random) -> str:
    return report.iso_utc(END - timedelta(seconds=rng.uniform(0, 3 * 86400)))


def _row(rng: random.Random, i: int) -> dict:
    verdict = rng.choice(["fresh", "rotten", "uncertain", "unknown", None])
    error = rng.choice([None] * 8 + ["wrong-extension: .txt", "too-large: 90 MB", "empty", "", " ", ": x",
                                     "\tbad-bytes: x"])
    return {"sha256": f"{rng.randrange(40):064x}" if rng.random() < 0.9 else None,
            "source_path": f"/in/{i}.jpg", "destination": f"/out/{i}.jpg" if rng.random() < 0.8 else None,
            "label": None if verdict is None else rng.choice(LABELS),
            "confidence": None if verdict is None else rng.choice([0.0, 0.1, 0.3, 0.55, 0.8, 0.95, 0.99, 1.0]),
            "verdict": verdict, "model_id": rng.choice(["colour", "lite", None]),
            "model_sha256": rng.choice(["a" * 64, "b" * 64]), "source": "watch", "received_at": _when(rng),
            "state": rng.choice([ItemState.INTENT, ItemState.DONE, ItemState.DRY_RUN, ItemState.HELD]),
            "error": error}


def _workload(path, seed: int = 5, n: int = 1200) -> None:
    """Rows as every writer leaves them: batches of intents (with duplicates), moves marked done, forgotten
    intents, camera snapshot updates, a hand-typed UPDATE and DELETE, and retention."""
    rng = random.Random(seed)
    db = store.open_writer(path)
    for start in range(0, n, 50):
        ids = store.write_intents(db, [_row(rng, i) for i in range(start, start + 50)])
        intents = [r[0] for r in db.execute(f"SELECT id FROM items WHERE state = 'intent' AND id >= {min(ids)}")]
        store.mark_done(db, [{"id": i, "state": ItemState.DONE, "routed_at": "t"} for i in intents
                             if rng.random() < 0.5]
                        + [{"id": i, "forget": True} for i in ids if rng.random() < 0.05])
        for item_id in rng.sample(ids, 5):
            db.execute("UPDATE items SET destination = ?, verdict = ?, confidence = ? WHERE id = ?",
                       ["/snap.jpg", rng.choice(["fresh", "rotten"]), rng.random(), item_id])
    db.execute("UPDATE items SET error = 'load-failed: truncated' WHERE id % 17 = 0")
    db.execute("DELETE FROM items WHERE id % 23 = 0 AND id NOT IN (SELECT item_id FROM deliveries)")
    db.close()
    store.prune(path, timedelta(days=2, hours=20))


def _from_rows(conn: sqlite3.Connection) -> dict[tuple, int]:
    """The counters recomputed from the rows, key by key."""
    out: dict[tuple, int] = {}
    for r in conn.execute("SELECT * FROM items"):
        reason = report.reason(r["error"]) if r["error"] else None
        conf = r["confidence"]
        key = (r["received_at"][:13], r["model_id"], r["model_sha256"], r["verdict"], r["label"],
               None if conf is None else min(int(conf * 20), 19), r["duplicate_of"] is not None, reason, r["state"],
               r["destination"] is not None)
        out[key] = out.get(key, 0) + 1
    return out


def _counted(conn: sqlite3.Connection) -> dict[tuple, int]:
    """The counters as they are, hour by hour (a window wider than the rows: every hour is whole)."""
    groups = item_counts.window_groups(conn, datetime(1990, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return {tuple(g)[:-1]: g.n for g in groups}


def test_the_counters_equal_the_rows_after_every_kind_of_write(tmp_path):
    path = tmp_path / "line.db"
    _workload(path)
    conn = store.open_reader(path)
    rows = _from_rows(conn)
    assert sum(rows.values()) > 300 and len(rows) > 100
    assert _counted(conn) == rows
    assert conn.execute("SELECT COUNT(*) FROM item_counts WHERE n <= 0").fetchone()[0] == 0  # pruning tidies
    conn.close()


def test_m010_counts_the_rows_of_a_database_made_before_it(tmp_path):
    from sqlite_utils import Database

    path = tmp_path / "old.db"
    db = Database(sqlite3.connect(str(path), isolation_level=None))
    store.migrations.apply(db, stop_before="m010_item_counts")
    rng = random.Random(9)
    firsts: dict[str, int] = {}
    ids = []
    for i in range(300):  # as the old version wrote them: a content's later rows point at its first
        row = _row(rng, i)
        real = row["sha256"] is not None and row["state"] != ItemState.DRY_RUN
        row["duplicate_of"] = firsts.get(row["sha256"]) if real else None
        ids.append(int(db.table("items").insert(row).last_pk or 0))
        if real and row["duplicate_of"] is None:
            firsts[row["sha256"]] = ids[-1]
    db.conn.close()
    writer = store.open_writer(path)  # migrates: m010 counts what is there
    assert (tmp_path / "old.db.bak-m010_item_counts").is_file()
    writer.close()
    conn = store.open_reader(path)
    assert sum(_counted(conn).values()) == len(ids) and _counted(conn) == _from_rows(conn)
    conn.close()


def _naive_report(conn: sqlite3.Connection, lo: datetime, hi: datetime) -> dict:
    """The report's count figures the way the first version computed them: every row of the window."""
    start, end = report.iso_utc(lo), report.iso_utc(hi)
    items = [dict(r) for r in conn.execute("SELECT * FROM items WHERE received_at >= ? AND received_at < ? "
                                           "ORDER BY id", [start, end])]
    firsts = [i for i in items if i["duplicate_of"] is None]
    classified = [i for i in firsts if i["label"] is not None and i["verdict"] is not None]

    def count(values) -> dict[str, int]:
        return item_counts.tally((v, 1) for v in values)

    hist: dict[str, list[int]] = {}
    for i in classified:
        hist.setdefault(i["verdict"], [0] * 10)[min(int(float(i["confidence"] or 0) * 10), 9)] += 1
    versions: dict[str, list[dict]] = {}
    for i in classified:
        versions.setdefault(report.model_version(i), []).append(i)
    return {"items": {"received": len(items), "classified": len(classified), "duplicates": len(items) - len(firsts),
                      "errors": sum(1 for i in firsts if i["error"]),
                      "dry_run": sum(1 for i in firsts if i["state"] == ItemState.DRY_RUN)},
            "by_label": count(i["label"] for i in classified), "by_verdict": count(i["verdict"] for i in classified),
            "by_model": count(i["model_id"] for i in classified),
            "hourly": [{"hour": h + ":00Z", "items": sum(1 for i in classified if i["received_at"][:13] == h),
                        **{v: sum(1 for i in classified if i["received_at"][:13] == h and i["verdict"] == v)
                           for v in report.HOURLY}} for h in report._hours(lo, hi)],
            "histogram": hist,
            "errors_by_reason": count(report.reason(i["error"]) for i in firsts if i["error"]),
            "versions": {v: (len(rows), min(r["received_at"] for r in rows), max(r["received_at"] for r in rows))
                         for v, rows in versions.items()}}


def test_the_report_from_counters_equals_the_report_from_rows(tmp_path):
    path = tmp_path / "line.db"
    _workload(path)
    conn = store.open_reader(path)
    for lo, hi in ((END - timedelta(hours=26, minutes=7), END), (END - timedelta(minutes=20), END),
                   (END - timedelta(days=2, seconds=1), END - timedelta(hours=3, minutes=1))):
        naive = _naive_report(conn, lo, hi)
        got = report.build_report(path, lo, hi)
        assert naive["items"]["received"] > (2 if hi - lo < timedelta(hours=1) else 300)
        assert got["items"] == naive["items"]
        for key in ("by_label", "by_verdict", "by_model", "errors_by_reason"):
            assert got[key] == naive[key], key
        assert got["throughput"]["hourly"] == naive["hourly"]
        assert got["confidence_histogram"]["by_verdict"] == naive["histogram"]
        assert {v["version"]: (v["items"], v["first"], v["last"]) for v in got["by_model_version"]} == \
            naive["versions"]
    conn.close()


def test_db_stats_from_counters_equal_the_rows(tmp_path):
    path = tmp_path / "line.db"
    _workload(path)
    conn = store.open_reader(path)
    rows = [dict(r) for r in conn.execute("SELECT * FROM items")]
    conn.close()
    firsts = [r for r in rows if r["duplicate_of"] is None]
    figures = store.stats(path)
    assert figures["items"] == len(rows) and figures["duplicates"] == len(rows) - len(firsts)
    assert figures["by_verdict"] == item_counts.tally((r["verdict"], 1) for r in firsts if r["verdict"])
    assert figures["by_label"] == item_counts.tally((r["label"], 1) for r in firsts if r["label"])
    assert figures["by_state"] == item_counts.tally((r["state"], 1) for r in rows)
    assert figures["by_error"] == item_counts.tally((r["error"], 1) for r in rows if r["error"] is not None)
    assert (figures["first"], figures["last"]) == (min(r["received_at"] for r in rows),
                                                   max(r["received_at"] for r in rows))
