"""Results database: schema migrations, one writer thread, read-only readers, stats and pruning.

Why one writer: SQLite allows one writer at a time; funnelling every write through a single
thread (a queue of jobs) means the daemon never races itself, and WAL plus a busy timeout
lets read-only readers (`sorter db`, reports) run alongside without "database is locked".
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from sorter import item_counts, item_layout, threads
from sorter.states import CameraEvent, DeliveryState, ItemState, sql_in
from sorter.verdict import Verdict

BUSY_TIMEOUT_MS = 10_000
IDLE_S = 0.2  # the writer converts old rows (m011) after this long without a job,
STEP_EVERY_S = 0.25  # and at most this often between jobs
log = logging.getLogger(__name__)
T = TypeVar("T")
migrations = Migrations("sorter")

_M001_COLUMNS = {  # the items table as m001 made it: a migration's schema never changes after release
    "id": int, "sha256": str, "source_path": str, "destination": str, "label": str,
    "confidence": float, "verdict": str, "scores": str, "model_id": str, "model_sha256": str,
    "source": str, "received_at": str, "routed_at": str, "duplicate_of": int, "error": str,
    "state": str,
}
ITEM_COLUMNS = {**_M001_COLUMNS, "ood_score": float, "keep_p": float}  # after every migration
SEARCH_COLUMNS = {"received_ms": int, "sha_key": bytes}  # the view's stored forms, for indexed filters (m011)
# An item's `state` is a sorter.states.ItemState; m009 makes SQLite refuse any other word.


@migrations()
def m001_items(db: Database) -> None:
    """The items table: one row per dropped file, keyed for exactly-once by content hash."""
    db.table("items").create(_M001_COLUMNS, pk="id", not_null={"state", "received_at", "source"})
    db.table("items").create_index(["received_at"])
    db.table("items").create_index(["sha256"])
    db.execute("CREATE UNIQUE INDEX items_first_sha256 ON items(sha256) "
               "WHERE duplicate_of IS NULL AND state != 'dry-run'")
    db.table("items").create_index(["state"])


@migrations()
def m002_camera_events(db: Database) -> None:
    """Camera online/offline/reconnect/dropped history; camera items keep their snapshot in
    `items.destination` (the image's home), so the items table itself is unchanged."""
    db.table("camera_events").create({"id": int, "time": str, "device": str, "event": str, "detail": str},
                               pk="id", not_null={"time", "device", "event"})
    db.table("camera_events").create_index(["time"])


@migrations()
def m003_audits(db: Database) -> None:
    """Operator audits (ground truth) in their own table: the item's prediction is never touched.

    One row per (item, auditor): re-importing the same audit is a no-op, a corrected label
    from the same auditor replaces theirs; the report uses each item's latest audit.
    """
    db.table("audits").create({"id": int, "item_id": int, "sha256": str, "true_label": str, "auditor": str,
                         "audited_at": str, "origin": str, "imported_at": str}, pk="id",
                        not_null={"item_id", "true_label", "auditor", "audited_at"},
                        defaults={"auditor": ""}, foreign_keys=[("item_id", "items", "id")])
    db.execute("CREATE UNIQUE INDEX audits_item_auditor ON audits(item_id, auditor)")
    db.table("audits").create_index(["sha256"])


@migrations()
def m004_items_ood_score(db: Database) -> None:
    """The energy score an item's `unknown` verdict was decided on (logits models; NULL otherwise and
    on rows from before it), so a threshold can be re-chosen from what the line actually saw."""
    db.table("items").add_column("ood_score", float)


@migrations()
def m005_items_keep_p(db: Database) -> None:
    """The probability that the item's image was kept for audits: `sorter camera` keeps a random share
    of each verdict's snapshots (`camera.keep_share`) and records that share on every row. NULL: the
    file the row names is the item's own, always kept (`sorter watch`'s routed files; rows from before
    this migration, whose camera snapshots were all kept for their verdicts), which counts as 1."""
    db.table("items").add_column("keep_p", float)


@migrations()
def m006_audit_draws(db: Database) -> None:
    """Every item `audit sample` drew: its stratum, the stratum's drawn/available `share`, and `p`, the
    probability it had of being drawn (`share` times the item's `keep_p`), so audited accuracy can weight
    each audit by 1/p. One row per (item, sample): an item drawn again in a later sample, never audited
    meanwhile, gets a second row (the report combines them: keep_p × (1 − Π(1 − share)))."""
    db.table("audit_draws").create({"id": int, "item_id": int, "sample": str, "stratum": str, "share": float,
                                    "p": float, "drawn_at": str}, pk="id",
                                   not_null={"item_id", "sample", "stratum", "share", "p", "drawn_at"},
                                   foreign_keys=[("item_id", "items", "id")])
    db.execute("CREATE UNIQUE INDEX audit_draws_item_sample ON audit_draws(item_id, sample)")


@migrations()
def m007_audit_controls(db: Database) -> None:
    """Control photos (`audit sample --control-data`): photos of known label copied into a sample among its
    items, named and ordered like them, so an auditor's answers on them measure the auditor (crowd
    labelling's gold questions). Never items: `name` and `shown_id` are what the sample shows, `predicted`,
    `confidence`, `verdict` and the model what the model in use said of it (the sample shows that for items
    too). One row per (sample, photo, auditor): `answer` is NULL until an import brings one; a second
    auditor's answer gets a row of its own."""
    db.table("audit_controls").create({
        "id": int, "sample_id": str, "sha256": str, "true_label": str, "source_path": str, "name": str,
        "shown_id": int, "predicted": str, "confidence": float, "verdict": str, "model_id": str,
        "model_sha256": str, "placed_at": str, "answer": str, "auditor": str, "answered_at": str, "origin": str},
        pk="id", not_null={"sample_id", "sha256", "true_label", "name", "placed_at", "auditor"},
        defaults={"auditor": ""})
    db.execute("CREATE UNIQUE INDEX audit_controls_sample_sha_auditor ON audit_controls(sample_id, sha256, auditor)")
    db.table("audit_controls").create_index(["sha256"])


@migrations()
def m008_deliveries(db: Database) -> None:
    """One row per (item, output) the item's verdict fires (`sorter.delivery`): written with the item's
    intent, so an output is never forgotten between the decision and the send; `state` pending → sent
    (the output took it: 2xx, exit 0, or MQTT's on-disk spool until the broker's PUBACK) or failed (retries
    spent: sent again at the next start) or cancelled (the item was never routed). `key` is the
    idempotency key the event carries, so a receiver can drop the repeats at-least-once delivery allows."""
    db.table("deliveries").create({
        "id": int, "item_id": int, "output": str, "key": str, "event": str, "state": str, "attempts": int,
        "created_at": str, "delivered_at": str, "last_error": str},
        pk="id", not_null={"item_id", "output", "key", "event", "state", "attempts", "created_at"},
        defaults={"attempts": 0})
    db.execute("CREATE UNIQUE INDEX deliveries_item_output ON deliveries(item_id, output)")
    db.execute("CREATE INDEX deliveries_open ON deliveries(state) WHERE state IN ('pending', 'failed')")


@migrations()
def m009_check_constraints(db: Database) -> None:
    """Item states, verdicts, delivery states and camera events become CHECK constraints built from
    their enums (sorter.states, sorter.verdict), so no writer, tool or hand-typed UPDATE can store a
    word the code does not know. SQLite cannot add a CHECK to a table: each is rebuilt."""
    add_checks(db, "items", {"items_state": sql_in("state", ItemState),
                             "items_verdict": sql_in("verdict", Verdict, nullable=True)})
    add_checks(db, "deliveries", {"deliveries_state": sql_in("state", DeliveryState)})
    add_checks(db, "camera_events", {"camera_events_event": sql_in("event", CameraEvent)})
    add_checks(db, "audit_controls", {"audit_controls_verdict": sql_in("verdict", Verdict, nullable=True)})


@migrations()
def m010_item_counts(db: Database) -> None:
    """Per-hour counters of items kept by triggers (sorter.item_counts), so the report and `db stats` read
    a few hundred counter rows a day instead of the day's rows; and an index of the errored rows only,
    for `db stats`' errors (a handful of rows, where an index of every row's NULL would cost each row)."""
    item_counts.install(db)
    db.execute("CREATE INDEX items_error ON items(error) WHERE error IS NOT NULL")


@migrations()
def m011_compact_items(db: Database) -> None:
    """Items become compact rows under a view that reads as the table did (sorter.item_layout): ~237 bytes a
    row with its indexes instead of ~815. The old table is renamed `items_v1` (other tables' references to
    `items` kept: legacy_alter_table) and stays part of the view; its rows move over later, a short batch at
    a time while the writer is idle (`convert_step`), so the daemon starts at once. Here, in the migration,
    only what the daemon may still change moves: the unfinished rows (recovery updates them). New ids
    continue after the old ones (AUTOINCREMENT from the old largest id), so no new row takes an old id."""
    db.execute("PRAGMA legacy_alter_table=ON")
    try:
        db.execute(f"ALTER TABLE items RENAME TO {item_layout.LEGACY}")
    finally:
        db.execute("PRAGMA legacy_alter_table=OFF")
    item_layout.create(db.conn)
    item_layout.create_view(db.conn, with_legacy=True)
    item_counts.install_on_rows(db.conn)
    db.execute(f"INSERT INTO sqlite_sequence (name, seq) SELECT '{item_layout.ROWS}', MAX(id) "
               f"FROM {item_layout.LEGACY} HAVING MAX(id) IS NOT NULL")
    _move_legacy(db, item_layout.Encoder(db.conn), "WHERE state IN ('intent', 'held')")
    _finish_if_converted(db)  # a new database (or one with nothing but unfinished rows) is done at once


def _finish_if_converted(db: Database) -> bool:
    """When the old table is empty: drop it, and make the view the compact table's alone (a view that still
    unions an empty table costs every query a scan). Whether the conversion is done."""
    if db.execute(f"SELECT 1 FROM {item_layout.LEGACY} LIMIT 1").fetchone() is not None:
        return False
    db.execute(f"DROP TABLE {item_layout.LEGACY}")
    db.execute("DROP VIEW items")
    item_layout.create_view(db.conn, with_legacy=False)
    return True


def add_checks(db: Database, table: str, checks: dict[str, str]) -> None:
    """SQLite's documented table rebuild (sqlite.org/lang_altertable.html, "other kinds of table schema
    changes"): a new table with the old definition plus the named CHECKs, rows copied with their ids, the
    old one dropped, the new one renamed, the indexes made again. Inside the migration's transaction, so
    a row that breaks a check rolls all of it back (the backup taken before migrating is untouched)."""
    schema = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone()[0]
    indexes = [sql for (sql,) in db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", [table])]
    body = schema[schema.index("(") + 1:schema.rindex(")")].rstrip()
    constraints = ",\n   ".join(f"CONSTRAINT {name} CHECK ({expr})" for name, expr in checks.items())
    db.execute(f"CREATE TABLE [{table}_checked] ({body},\n   {constraints}\n)")
    db.execute(f"INSERT INTO [{table}_checked] SELECT * FROM [{table}]")
    db.execute(f"DROP TABLE [{table}]")
    db.execute(f"ALTER TABLE [{table}_checked] RENAME TO [{table}]")
    for sql in indexes:
        db.execute(sql)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Readers may meet a database made before a migration (read-only: they cannot apply it)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone() is not None


def record_camera_event(db: Database, device: str, event: CameraEvent | str, detail: str | None = None) -> int:
    """One row of camera history (runs on the writer thread); an unknown event is a ValueError."""
    return _pk(db.table("camera_events").insert({"time": now_iso(), "device": device, "event": CameraEvent(event),
                                                 "detail": detail}).last_pk)


def insert_item(db: Database, row: dict) -> int:
    """Insert one finished row (camera items are never `intent`: nothing to move or recover); its id."""
    stored = encoder(db).encode(row)
    return _pk(db.conn.execute(item_layout.insert_sql(tuple(stored)), list(stored.values())).lastrowid)


def insert_items(db: Database, rows: list[dict]) -> list[int]:
    """Insert finished rows in one transaction; their ids in order."""
    with immediate(db):
        return [insert_item(db, row) for row in rows]


def update_item(db: Database, item_id: int, changes: dict) -> None:
    """Change some of an item's columns (logical names, as the view shows them)."""
    _update(db, item_id, changes)


_ENCODERS: weakref.WeakKeyDictionary[Database, item_layout.Encoder] = weakref.WeakKeyDictionary()


def encoder(db: Database) -> item_layout.Encoder:
    """The connection's row encoder (it remembers directory and model ids: one per writer connection)."""
    found = _ENCODERS.get(db)
    if found is None:
        found = _ENCODERS[db] = item_layout.Encoder(db.conn)
    return found


def _pk(value: Any) -> int:
    """The rowid of the insert just made (sqlite-utils types it as optional; after an insert it is set)."""
    if value is None:
        raise sqlite3.DatabaseError("insert returned no row id")
    return int(value)


def now_iso() -> str:
    """UTC ISO-8601 with milliseconds: sorts as text, reads well in Datasette."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def open_writer(path: Path | str) -> Database:
    """Open (creating) the database for writing: WAL, busy timeout, migrations applied."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None)
    db = Database(conn)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if not db.table_names():  # only a new file can choose: an existing one changes mode by a full VACUUM
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.enable_wal()
    db.execute("PRAGMA synchronous=FULL")  # two commits per batch: affordable, and power-loss safe
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    item_layout.register(conn)
    backup_before_migrating(db, Path(path))
    migrations.apply(db)
    return db


CACHE_KIB = 65_536  # the writer's page cache: the content-hash index's inner pages stay in memory at 50 M rows
LEGACY_BATCH = 5000  # the most old rows one conversion transaction moves (sized to BATCH_TARGET_S below that)


def _move_legacy(db: Database, encoder: item_layout.Encoder, where: str, params: list | None = None) -> list[int]:
    """Move the old rows `where` picks into the compact table (inside the caller's transaction); their ids.
    Each old row is deleted before its copy goes in, so the counters (counted out by the old table's
    trigger, in by the new one's, which reads the view) never see it twice."""
    rows = [dict(zip(ITEM_COLUMNS, r, strict=True)) for r in db.execute(
        f"SELECT {COLUMNS_SQL} FROM {item_layout.LEGACY} {where}", params or [])]
    if rows:
        ids = [r["id"] for r in rows]
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            db.execute(f"DELETE FROM {item_layout.LEGACY} WHERE id IN ({_marks(part)})", part)
        stored = [encoder.encode(row) for row in rows]
        db.conn.executemany(item_layout.insert_sql(tuple(stored[0])), [list(r.values()) for r in stored])
    return [r["id"] for r in rows]


def convert_step(db: Database, batch: int | None = None) -> int:
    """One short transaction of the conversion m011 began: the newest `batch` old rows move into the compact
    table (so the recent days, which reports read, are compact first). When none is left, the old table
    goes and the view becomes the compact table's alone. The rows moved; 0 when the conversion is done (or
    there was none). The writer thread calls it when it has nothing else to do; a crash loses nothing (each
    step is one transaction) and the next start goes on where it stopped."""
    if not item_layout.legacy(db.conn):
        return 0
    with immediate(db):
        moved = _move_legacy(db, encoder(db), f"ORDER BY id DESC LIMIT {int(batch or LEGACY_BATCH)}")
        _finish_if_converted(db)
    return len(moved)


def convert_legacy(db: Database, batch: int | None = None) -> int:
    """The whole conversion now, step after step with a pause between (`sorter db vacuum`, tests): rows moved."""
    total, size = 0, int(batch or LEGACY_BATCH)
    while True:
        began = time.monotonic()
        moved = convert_step(db, size)
        if not moved:
            return total
        total += moved
        size = next_batch(size, time.monotonic() - began, int(batch or LEGACY_BATCH))
        _breathe(db)


def backup_before_migrating(db: Database, path: Path) -> Path | None:
    """Copy the database to `DB.bak-<first pending migration>` before a schema change touches it.

    Only when there is something to lose (tables exist) and something to apply; the sqlite
    backup API gives a consistent copy even with WAL and other readers attached.
    """
    pending = migrations.pending(db)
    if not pending or not db.table_names():
        return None
    target = path.with_name(f"{path.name}.bak-{pending[0].name}")
    dest = sqlite3.connect(str(target))
    try:
        db.conn.backup(dest)
    finally:
        dest.close()
    return target


def open_reader(path: Path | str) -> sqlite3.Connection:
    """A read-only connection (URI mode=ro): it can never take the write lock."""
    if not Path(path).exists():
        raise FileNotFoundError(f"database {path} not found")
    uri = f"file:{Path(path).resolve()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.row_factory = sqlite3.Row
    item_layout.register(conn)
    _compat_view(conn)
    return conn


def _compat_view(conn: sqlite3.Connection) -> None:
    """A database from before m011, read by a reader (which cannot migrate it): a TEMP view over its items
    table adds the columns the queries search by, computed (every reader's query works, without the
    compact layout's indexes). Temp objects live in the connection's own memory, not in the file."""
    table = conn.execute("SELECT type FROM main.sqlite_master WHERE name = 'items'").fetchone()
    if table is not None and table[0] == "table":
        conn.execute("CREATE TEMP VIEW items AS SELECT *, CAST(round((julianday(received_at) - 2440587.5) "
                     "* 86400000) AS INTEGER) AS received_ms, sorter_sha(sha256) AS sha_key FROM main.items")


class Writer:
    """The single writer thread; `call(fn)` runs fn(db) on it and returns the result. With `nice`,
    it is background work (sorter.threads) that yields the CPU to inference."""

    def __init__(self, path: Path | str, nice: int | None = None):
        self.path = Path(path)
        self._jobs: queue.Queue[tuple[Callable[[Database], Any], Future] | None] = queue.Queue()
        ready: Future = Future()
        self._thread = threads.start(self._run, "db-writer", ready, nice=nice)
        ready.result()

    def _run(self, ready: Future) -> None:
        try:
            db = open_writer(self.path)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        converting, size, stepped = item_layout.legacy(db.conn), 1000, time.monotonic()
        if converting:
            log.info("%s: the old items table moves to the compact layout while this runs (m011)", self.path)
        while True:
            try:
                job, idle = (self._jobs.get(timeout=IDLE_S) if converting else self._jobs.get()), False
            except queue.Empty:
                job, idle = None, True
            if converting and (idle or time.monotonic() - stepped >= STEP_EVERY_S):
                # one short step of an old database's conversion (m011): when idle, or between two jobs at
                # most every STEP_EVERY_S, so a busy line converts too and its writes wait one step at most
                size, converting = self._convert(db, size)
                stepped = time.monotonic()
            if idle:
                continue
            if job is None:
                break
            fn, fut = job
            try:
                fut.set_result(fn(db))
            except BaseException as exc:
                fut.set_exception(exc)
        db.close()

    @staticmethod
    def _convert(db: Database, size: int) -> tuple[int, bool]:
        """One conversion step, sized so it holds the write lock about BATCH_TARGET_S; (next size, more to do).
        A failure is logged and the conversion waits for the next start; the daemon's own work goes on."""
        began = time.monotonic()
        try:
            moved = convert_step(db, size)
        except sqlite3.Error as exc:
            log.warning("converting the old items table stopped: %s (it goes on at the next start)", exc)
            return size, False
        return next_batch(size, time.monotonic() - began, LEGACY_BATCH), moved > 0

    def submit(self, fn: Callable[[Database], T]) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, fut))
        return fut

    def call(self, fn: Callable[[Database], T]) -> T:
        return self.submit(fn).result()

    def close(self) -> None:
        """Finish queued jobs, then stop the thread and close the connection."""
        self._jobs.put(None)
        self._thread.join()


# ---- item queries and writes (each runs on the writer thread, given its db) ----

@contextmanager
def immediate(db: Database) -> Iterator[Database]:
    """A write transaction that takes the write lock first (BEGIN IMMEDIATE). A deferred one that reads
    and then writes fails at once with "database is locked" when another process committed meanwhile
    (its snapshot is stale: the busy timeout does not apply); this one waits its turn instead."""
    if db.conn.in_transaction:
        try:
            with db.atomic():  # nested: a savepoint inside the outer write transaction
                yield db
        except BaseException:
            encoder(db).forget_ids()
            raise
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        encoder(db).forget_ids()  # a directory or model added in it is gone again
        raise
    db.execute("COMMIT")


def _marks(values: list) -> str:
    """One `?` per value, for an IN (...) list."""
    return ",".join("?" * len(values))


COLUMNS_SQL = ", ".join(ITEM_COLUMNS)  # the view's logical columns, for SELECTs whose rows go back to writers
FIRST = "duplicate_of IS NULL AND state != 'dry-run'"  # a content's first row: the partial unique index's WHERE


def first_rows(db: Database, shas: list[str]) -> dict[str, dict]:
    """The first (non-duplicate, real) row for each content hash that has one: one indexed query."""
    wanted = sorted({item_layout.sha_key(s) for s in shas}, key=repr)
    if not wanted:
        return {}
    rows = list(db.query(f"SELECT {COLUMNS_SQL} FROM items WHERE sha_key IN ({_marks(wanted)}) AND {FIRST}", wanted))
    if item_layout.legacy(db.conn):  # an old row not converted yet is searched by its own hash index
        texts = sorted({s for s in shas if s})
        rows += db.query(f"SELECT {COLUMNS_SQL} FROM {item_layout.LEGACY} WHERE sha256 IN ({_marks(texts)}) "
                         f"AND {FIRST}", texts)
    return {row["sha256"]: row for row in rows}


def rows_by_sha(conn: sqlite3.Connection, shas: list[str], columns: str = "id, sha256") -> list[sqlite3.Row | tuple]:
    """Every content's first row and dry-run rows with these hashes, by the two indexes that hold hashes
    (a duplicate is found through its first row: `duplicate_of`)."""
    keys = [item_layout.sha_key(s) for s in sorted(set(shas))]
    if not keys:
        return []
    marks = _marks(keys)
    rows = list(conn.execute(f"SELECT {columns} FROM items WHERE sha_key IN ({marks}) AND {FIRST} UNION ALL "
                             f"SELECT {columns} FROM items WHERE sha_key IN ({marks}) AND state = 'dry-run'",
                             [*keys, *keys]))
    if item_layout.legacy(conn):  # an old row not converted yet is searched by its own hash index
        texts = sorted(set(shas))
        rows += conn.execute(f"SELECT {columns} FROM {item_layout.LEGACY} WHERE sha256 IN ({_marks(texts)})", texts)
    return rows


def held_rows(db: Database, paths: list[str]) -> dict[str, dict]:
    """Rows left `held` (recorded, not moved) for these source paths: a retry reuses them. SQLite picks
    out these paths (walking the held rows by the state index): after a full disk thousands may be
    held, and only the batch's own come back to Python, for every batch."""
    wanted = sorted(set(paths))
    if not wanted:
        return {}
    rows = db.query(f"SELECT {COLUMNS_SQL} FROM items WHERE {OPEN} AND state = 'held' "
                    f"AND source_path IN ({_marks(wanted)}) ORDER BY id", wanted)
    return {row["source_path"]: row for row in rows}


_MODEL_COLUMNS = ("model_id", "model_sha256", "scores")  # stored together (item_layout.Encoder)


def _stored(db: Database, item_id: int, changes: dict) -> dict[str, Any]:
    """The stored columns for changes to item `item_id` (the model's columns it does not change are read)."""
    changes = {c: v for c, v in changes.items() if c != "id"}
    current = None
    if any(c in changes for c in _MODEL_COLUMNS) and not all(c in changes for c in _MODEL_COLUMNS):
        found = db.execute(f"SELECT {', '.join(_MODEL_COLUMNS)} FROM items WHERE id = ?", [item_id]).fetchone()
        current = dict(zip(_MODEL_COLUMNS, found, strict=True)) if found else None
    return encoder(db).encode(changes, current)


def _update(db: Database, item_id: int, changes: dict) -> None:
    stored = _stored(db, item_id, changes)
    if stored and not db.conn.execute(item_layout.update_sql(tuple(stored)), [*stored.values(), item_id]).rowcount:
        _update_legacy(db, item_id, changes)


def _update_legacy(db: Database, item_id: int, changes: dict) -> None:
    """An update of a row still in the old table (m011's conversion not done): there, as it was stored."""
    columns = [c for c in changes if c != "id"]
    if columns and item_layout.legacy(db.conn):
        values = [json.dumps(changes[c]) if isinstance(changes[c], dict) else changes[c] for c in columns]
        db.execute(f"UPDATE {item_layout.LEGACY} SET {', '.join(f'[{c}] = ?' for c in columns)} WHERE id = ?",
                   [*values, item_id])


def write_intents(db: Database, rows: list[dict], firsts: dict[str, dict] | None = None) -> list[int]:
    """Insert (or, for rows with an `id`, update) intent rows in one transaction; ids in order.

    A row's `duplicate_of` is resolved here, inside the transaction, so two copies of the same
    bytes in one batch still make one first row and one duplicate; `firsts` is `first_rows` of
    these hashes when the caller already read it in the same transaction. Plain parameterised
    SQL straight on the connection (statements cached per column set): this runs for every item, and
    sqlite-utils' per-call table introspection would triple its cost.
    """
    ids: list[int] = []
    with immediate(db):
        if firsts is None:
            firsts = first_rows(db, [r["sha256"] for r in rows if r.get("sha256")])
        first_ids = {sha: row["id"] for sha, row in firsts.items()}
        for row in rows:
            if row.get("id") is not None:
                _update(db, row["id"], row)
                ids.append(row["id"])
                continue
            row = {**row, "duplicate_of": first_ids.get(row["sha256"]) if row.get("sha256") else None}
            stored = encoder(db).encode(row)
            cursor = db.conn.execute(item_layout.insert_sql(tuple(stored)), list(stored.values()))
            new_id = int(cursor.lastrowid or 0)  # always set after an INSERT
            ids.append(new_id)
            if row.get("sha256") and row["duplicate_of"] is None and row.get("state") != ItemState.DRY_RUN:
                first_ids[row["sha256"]] = new_id
    return ids


def mark_done(db: Database, updates: list[dict]) -> None:
    """Record the outcome of a batch's moves in one transaction (`id` plus changed columns); rows
    that change the same columns go in one executemany. An update `{"id": …, "forget": True}` deletes
    an intent that never came true (its file changed before the move: `forget`)."""
    doomed = [u["id"] for u in updates if u.get("forget")]
    with immediate(db):
        groups: dict[tuple[str, ...], list[list]] = {}
        for update in updates:
            stored = {} if update.get("forget") else _stored(db, update["id"], update)
            if stored:
                groups.setdefault(tuple(stored), []).append([*stored.values(), update["id"]])
        for columns, params in groups.items():
            db.conn.executemany(item_layout.update_sql(columns), params)
        if item_layout.legacy(db.conn):  # an old row the conversion has not reached
            have = _existing(db, [u["id"] for u in updates if not u.get("forget")])
            for update in updates:
                if not update.get("forget") and update["id"] not in have:
                    _update_legacy(db, update["id"], update)
        forget(db, doomed)


def _existing(db: Database, ids: list[int]) -> set[int]:
    """Which of these ids the compact table holds."""
    found: set[int] = set()
    for chunk in range(0, len(ids), 500):
        part = ids[chunk:chunk + 500]
        found |= {r[0] for r in db.execute(f"SELECT id FROM {item_layout.ROWS} WHERE id IN ({_marks(part)})", part)}
    return found


def forget(db: Database, ids: list[int]) -> None:
    """Delete intents whose file was not the one read (replaced, or still written to, before the move):
    the row describes bytes that never reached OUT, and the file at that path is read again as a new
    item. A duplicate pointing at a forgotten row takes its place as the first of those bytes."""
    for item_id in ids:
        children = [r[0] for r in db.execute("SELECT id FROM items WHERE duplicate_of = ? ORDER BY id", [item_id])]
        db.execute("DELETE FROM audits WHERE item_id = ?", [item_id])
        db.execute("DELETE FROM audit_draws WHERE item_id = ?", [item_id])
        if has_table(db.conn, "deliveries"):
            db.execute("DELETE FROM deliveries WHERE item_id = ?", [item_id])
        db.execute("DELETE FROM items WHERE id = ?", [item_id])
        if children:
            first, rest = children[0], children[1:]
            db.execute("UPDATE items SET duplicate_of = NULL WHERE id = ?", [first])
            db.execute(f"UPDATE items SET duplicate_of = ? WHERE id IN ({_marks(rest)})", [first, *rest])


def window_ids(conn: sqlite3.Connection, start: str, end: str) -> tuple[int, int] | None:
    """The smallest and largest id received in [start, end), from the received_at index alone (it holds the
    rowid): readers use it to find a window's audits through their item_id index instead of walking the
    window's rows. None for an empty window."""
    window, params = item_layout.in_window(conn, ms_of_text(start), ms_of_text(end))
    lo, hi = conn.execute(f"SELECT MIN(id), MAX(id) FROM items WHERE {window}", params).fetchone()
    return None if lo is None else (int(lo), int(hi))


def ms_of_text(moment: str) -> int:
    """A window edge given as ISO text, as the stored `received` milliseconds."""
    return item_layout.ms_of(datetime.fromisoformat(moment))


OPEN = "state IN ('intent', 'held')"  # the unfinished rows' partial index's WHERE (a query names it to use it)


def unfinished(db: Database) -> list[dict]:
    return list(db.query(f"SELECT {COLUMNS_SQL} FROM items WHERE {OPEN} AND state = 'intent' ORDER BY id"))


def held(db: Database) -> list[dict]:
    return list(db.query(f"SELECT {COLUMNS_SQL} FROM items WHERE {OPEN} AND state = 'held' ORDER BY id"))


# ---- readers: stats and prune ----

def stats(path: Path | str) -> dict[str, Any]:
    """Counts by verdict, label, error and state, duplicates and the time range, read-only: from the
    counters (sorter.item_counts), the errored rows' index and the ends of the received_at index, so it
    costs the same at a thousand rows and at fifty million."""
    conn = open_reader(path)
    try:
        conn.execute("BEGIN")  # one snapshot: the counts agree with each other while the daemon writes
        groups = item_counts.all_groups(conn)
        # two subqueries: SQLite reads one end of the index for a lone MIN or MAX, but both in one
        # SELECT walk the whole index (4 s at 20 M rows)
        first, last = _time_range(conn)
        errors = {str(r[0]): r[1] for r in conn.execute(
            "SELECT error, COUNT(*) AS n FROM items WHERE error IS NOT NULL GROUP BY error ORDER BY n DESC")}
        conn.execute("COMMIT")
    finally:
        conn.close()
    firsts = [g for g in groups if not g.dup]
    return {
        "items": sum(g.n for g in groups), "duplicates": sum(g.n for g in groups if g.dup), "first": first,
        "last": last,
        "by_verdict": item_counts.tally((g.verdict, g.n) for g in firsts if g.verdict is not None),
        "by_label": item_counts.tally((g.label, g.n) for g in firsts if g.label is not None),
        "by_error": errors,
        "by_state": item_counts.tally((g.state, g.n) for g in groups),
    }


def _time_range(conn: sqlite3.Connection) -> tuple[str | None, str | None]:
    """The first and last received_at, each from one end of an index (an old table not yet converted: its
    own index too, compared as the text it holds)."""
    first, last = conn.execute("SELECT (SELECT received_at FROM items ORDER BY received_ms LIMIT 1), "
                               "(SELECT received_at FROM items ORDER BY received_ms DESC LIMIT 1)").fetchone() \
        if not item_layout.legacy(conn) else conn.execute(
            f"SELECT (SELECT received_at FROM items WHERE id IN (SELECT id FROM {item_layout.ROWS} "
            "ORDER BY received LIMIT 1)), (SELECT received_at FROM items WHERE id IN (SELECT id FROM "
            f"{item_layout.ROWS} ORDER BY received DESC LIMIT 1))").fetchone()
    if item_layout.legacy(conn):
        old_first, old_last = conn.execute(f"SELECT (SELECT MIN(received_at) FROM {item_layout.LEGACY}), "
                                           f"(SELECT MAX(received_at) FROM {item_layout.LEGACY})").fetchone()
        first = min((t for t in (first, old_first) if t is not None), default=None)
        last = max((t for t in (last, old_last) if t is not None), default=None)
    return first, last


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """'90d', '12h', '2w', '30m', '45s' → timedelta; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a duration like 90d, 12h, 2w")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


@dataclass
class PruneResult:
    matched: int
    deleted: int
    vacuumed: bool


# The rows retention deletes. `+state`: walk the received_at index from the oldest row. By the state index
# SQLite would read every finished row of the table to find that none is left (22 s under the write lock at
# 20 M rows).
PRUNE_WHERE = "received_ms < ? AND +state IN ('done', 'dry-run')"
def _prune_where(conn: sqlite3.Connection, cutoff: int) -> tuple[str, list]:
    """PRUNE_WHERE and its parameters; while an old table waits to be converted, its rows are found by their
    own received_at index too."""
    if not item_layout.legacy(conn):
        return PRUNE_WHERE, [cutoff]
    return PRUNE_WHERE + " AND received_at < ?", [cutoff, item_layout.iso_of_ms(cutoff)]


PAUSE_S = 0.05  # between two retention transactions: a waiting writer's busy handler gets its turn
VACUUM_STEP_PAGES = 512  # pages one incremental-vacuum transaction returns to the disk (2 MB at 4 KiB)


def prune(path: Path | str, older_than: timedelta, dry_run: bool = False,
          batch_size: int = 1000, vacuum_ratio: float | None = None) -> PruneResult:
    """Delete finished rows received before now - older_than in small transactions, then return the free
    pages to the disk (`vacuum_if_worthwhile`).

    Small batches with a pause between keep each write lock short, so a running daemon is never starved:
    its commits wait one batch at most. Unfinished (`intent`/`held`) rows are kept, recovery still needs them.
    """
    cutoff = item_layout.ms_of(datetime.now(UTC) - older_than)
    reader = open_reader(path)
    try:
        where, params = _prune_where(reader, cutoff)
        matched = reader.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params).fetchone()[0]
    finally:
        reader.close()
    if dry_run or not matched:
        return PruneResult(matched, 0, False)
    db = open_writer(path)
    deleted, size = 0, max(1, int(batch_size))
    try:
        while True:
            began = time.monotonic()
            with immediate(db):
                where, params = _prune_where(db.conn, cutoff)
                ids = [r[0] for r in db.execute(f"SELECT id FROM items WHERE {where} LIMIT {size}", params)]
                if ids:  # an item's deliveries go with it (sorter.delivery)
                    db.execute(f"DELETE FROM deliveries WHERE item_id IN ({_marks(ids)})", ids)
                    for table in (item_layout.ROWS, *([item_layout.LEGACY] if item_layout.legacy(db.conn) else [])):
                        db.execute(f"DELETE FROM {table} WHERE id IN ({_marks(ids)})", ids)
            if not ids:
                break
            deleted += len(ids)
            size = next_batch(size, time.monotonic() - began, int(batch_size))
            _breathe(db)
        vacuumed = vacuum_if_worthwhile(db, vacuum_ratio)
    finally:
        db.close()
    return PruneResult(matched, deleted, vacuumed)


BATCH_TARGET_S = 0.05  # how long one retention transaction should hold the write lock


def next_batch(size: int, took: float, most: int) -> int:
    """The next batch's size: halved when this one held the lock longer than BATCH_TARGET_S (a big table's
    indexes make every delete dearer), grown back by a quarter when it was quick, never above `most`."""
    if took > BATCH_TARGET_S:
        return max(1, size // 2)
    return min(most, size + max(1, size // 4)) if took < BATCH_TARGET_S / 2 else size


def _breathe(db: Database) -> None:
    """Between two retention transactions: copy what this one wrote from the WAL into the file (a passive
    checkpoint never blocks a writer), so the daemon's next commit does not find a WAL past the
    auto-checkpoint size and copy it inside its own commit; then pause, so its busy handler gets a turn."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    time.sleep(PAUSE_S)


def freelist_ratio(db: Database) -> float:
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    return db.execute("PRAGMA freelist_count").fetchone()[0] / pages if pages else 0.0


def incremental(db: Database) -> bool:
    """Whether the file returns free pages in steps (`auto_vacuum = INCREMENTAL`, every database this
    version created) rather than by a full VACUUM, which rewrites the file under one lock."""
    return db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


def rewrite_incremental(db: Database) -> None:
    """A full VACUUM that also makes the file incremental: SQLite changes the mode only while it rewrites."""
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("VACUUM")


def vacuum_if_worthwhile(db: Database, ratio: float | None = None) -> bool:
    """Return free pages to the disk when they exceed `ratio` of the file (None = always).

    Incremental files: VACUUM_STEP_PAGES at a time, each step its own short transaction with a pause
    after it, then a WAL checkpoint so the file itself shrinks; a writer alongside waits one step at most.
    A file from before incremental vacuum gets one last full VACUUM that also switches it to incremental
    (it locks the database while it rewrites it: `sorter db vacuum` does it at a time of your choosing)."""
    if ratio is not None and freelist_ratio(db) <= ratio:
        return False
    if not incremental(db):
        rewrite_incremental(db)
        return True
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    while free:
        # executescript steps the pragma to its end: execute() frees one page and stops (Python's sqlite3)
        db.conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES});")
        _breathe(db)
        free, before = db.execute("PRAGMA freelist_count").fetchone()[0], free
        if free >= before:  # nothing more it can give back (never seen: a guard against looping)
            break
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return True


def prune_camera_events(path: Path | str, older_than: timedelta, dry_run: bool = False,
                        batch_size: int = 1000) -> int:
    """Delete camera history older than the cutoff in small transactions; the count (matched if dry)."""
    cutoff = (datetime.now(UTC) - older_than).isoformat(timespec="milliseconds")
    reader = open_reader(path)
    try:
        if not has_table(reader, "camera_events"):
            return 0
        matched = reader.execute("SELECT COUNT(*) FROM camera_events WHERE time < ?", [cutoff]).fetchone()[0]
    finally:
        reader.close()
    if dry_run or not matched:
        return matched
    db = open_writer(path)
    deleted = 0
    try:
        while True:
            with immediate(db):
                cur = db.execute("DELETE FROM camera_events WHERE id IN (SELECT id FROM camera_events "
                                 f"WHERE time < ? LIMIT {int(batch_size)})", [cutoff])
            if not cur.rowcount:
                return deleted
            deleted += cur.rowcount
            time.sleep(PAUSE_S)
    finally:
        db.close()


def prune_files(folder: Path | str, older_than: timedelta, pattern: str = "*/*.jpg",
                dry_run: bool = False) -> int:
    """Delete files (camera snapshots) last modified before the cutoff; empty day folders go too."""
    root = Path(folder)
    if not root.is_dir():
        return 0
    cutoff = (datetime.now(UTC) - older_than).timestamp()
    doomed = [p for p in root.glob(pattern) if p.is_file() and p.stat().st_mtime < cutoff]
    if not dry_run:
        for file in doomed:
            file.unlink(missing_ok=True)
        for day in root.iterdir():
            if day.is_dir() and not any(day.iterdir()):
                day.rmdir()
    return len(doomed)


def full_vacuum(path: Path | str) -> tuple[int, int]:
    """`sorter db vacuum`: rewrite the whole file (VACUUM) and make it incremental, so retention returns free
    pages in short steps from then on. It locks the database while it runs: the file's size in bytes
    before and after."""
    before = Path(path).stat().st_size if Path(path).exists() else 0
    db = open_writer(path)
    try:
        convert_legacy(db)  # an old database's rows waiting for the compact layout (m011) go first
        rewrite_incremental(db)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.close()
    return before, Path(path).stat().st_size


@dataclass
class RetentionResult:
    items: int
    camera_events: int
    snapshots: int
    vacuumed: bool


def apply_retention(path: Path | str, items_age: timedelta, events_age: timedelta, snapshots_age: timedelta,
                    snapshots: Path | None, batch_size: int = 1000, vacuum_ratio: float | None = 0.2,
                    dry_run: bool = False) -> RetentionResult:
    """Items, camera events and snapshot files past their ages; then VACUUM if the freelist grew."""
    items = prune(path, items_age, dry_run=dry_run, batch_size=batch_size, vacuum_ratio=1.0)
    events = prune_camera_events(path, events_age, dry_run=dry_run, batch_size=batch_size)
    files = prune_files(snapshots, snapshots_age, dry_run=dry_run) if snapshots is not None else 0
    vacuumed = False
    if not dry_run and (items.deleted or events):
        db = open_writer(path)
        try:
            vacuumed = vacuum_if_worthwhile(db, vacuum_ratio)
        finally:
            db.close()
    return RetentionResult(items.matched if dry_run else items.deleted, events, files, vacuumed)
