"""Per-hour item counters kept by SQLite itself, so reports and `db stats` never load a day's rows.

Why triggers: every writer (watch, camera, `audit`, a hand-typed UPDATE, retention) changes `items` in
its own transaction, and an AFTER trigger updates the counters inside that same transaction, so the
counters can never disagree with the rows, whoever wrote them. One counter row per (UTC hour, model,
verdict, label, confidence bin, duplicate or not, error reason, state, image kept or not); `n` items have
that key. A day holds a few hundred keys against 576,000 rows, so a report over any window reads the
counters of its whole hours and only its two partial hours' rows (`window_groups`).

NULLs are stored as '' (text) and -1 (bin): a UNIQUE key treats NULLs as distinct, which would break the
upsert; `Group` gives them back as None.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlite_utils import Database

from sorter import item_layout

TABLE = "item_counts"
KEY = ("hour", "model_id", "model_sha256", "verdict", "label", "bin", "dup", "reason", "state", "kept")
BINS = 20  # confidence bins of 0.05: the report's ten of 0.1 are pairs, and the audit strata's edges fall on them


def _key_sql(row: str) -> tuple[str, ...]:
    """The key of one items row (`NEW`, `OLD`, or a table alias), as SQL expressions in KEY's order.
    Frozen: migration m010's triggers are built from it (a migration never changes after release)."""
    space = "char(32, 9, 10, 11, 12, 13)"  # what Python's str.strip() takes off, as report.reason does
    head = f"trim(substr({row}.error, 1, instr({row}.error, ':') - 1), {space})"
    reason = (f"CASE WHEN {row}.error IS NULL OR {row}.error = '' THEN '' WHEN instr({row}.error, ':') > 0 THEN "
              f"coalesce(nullif({head}, ''), 'unknown') "
              f"ELSE coalesce(nullif(trim({row}.error, {space}), ''), 'unknown') END")
    return (f"substr({row}.received_at, 1, 13)", f"coalesce({row}.model_id, '')",
            f"coalesce({row}.model_sha256, '')", f"coalesce({row}.verdict, '')", f"coalesce({row}.label, '')",
            confidence_bin(f"{row}.confidence"), f"{row}.duplicate_of IS NOT NULL", reason, f"{row}.state",
            f"{row}.destination IS NOT NULL")


def confidence_bin(column: str) -> str:
    """The SQL for a confidence's bin, 0..BINS-1 (-1 for none). 20·c is exactly 2·(10·c) in floating point,
    so bin // 2 is the report's `min(int(10·c), 9)` for every c, not just most."""
    return f"CASE WHEN {column} IS NULL THEN -1 ELSE min(max(CAST({column} * {BINS} AS INTEGER), 0), {BINS - 1}) END"


_COLUMNS = ", ".join(KEY)
_WATCHED = ("received_at", "model_id", "model_sha256", "verdict", "label", "confidence", "duplicate_of", "error",
            "state", "destination")


def _add(row: str, step: int) -> str:
    """The trigger statements that count `row` (+1) or count it out (-1: a counter that reaches 0 goes,
    so the table holds only keys that have items, and retention shrinks it as it shrinks the rows)."""
    key = ", ".join(_key_sql(row))
    sql = (f"INSERT INTO {TABLE} ({_COLUMNS}, n) VALUES ({key}, {step}) "
           f"ON CONFLICT ({_COLUMNS}) DO UPDATE SET n = n + {step};")
    return sql if step > 0 else sql + f" DELETE FROM {TABLE} WHERE ({_COLUMNS}) = ({key}) AND n = 0;"


def install(db: Database) -> None:
    """Migration m010: the counters table, its three triggers, and the counts of the rows already there
    (one GROUP BY inside the migration's transaction: about a second per million rows, once)."""
    db.execute(f"CREATE TABLE {TABLE} (hour TEXT NOT NULL, model_id TEXT NOT NULL, model_sha256 TEXT NOT NULL, "
               "verdict TEXT NOT NULL, label TEXT NOT NULL, bin INTEGER NOT NULL, dup INTEGER NOT NULL, "
               "reason TEXT NOT NULL, state TEXT NOT NULL, kept INTEGER NOT NULL, n INTEGER NOT NULL, "
               f"PRIMARY KEY ({_COLUMNS})) WITHOUT ROWID")
    old, new = _key_sql("OLD"), _key_sql("NEW")
    changed = " OR ".join(f"({a}) IS NOT ({b})" for a, b in zip(old, new, strict=True))
    db.execute(f"CREATE TRIGGER {TABLE}_insert AFTER INSERT ON items BEGIN {_add('NEW', 1)} END")
    db.execute(f"CREATE TRIGGER {TABLE}_delete AFTER DELETE ON items BEGIN {_add('OLD', -1)} END")
    db.execute(f"CREATE TRIGGER {TABLE}_update AFTER UPDATE OF {', '.join(_WATCHED)} ON items WHEN {changed} "
               f"BEGIN {_add('OLD', -1)} {_add('NEW', 1)} END")
    db.execute(f"INSERT INTO {TABLE} ({_COLUMNS}, n) SELECT {', '.join(_key_sql('items'))}, COUNT(*) FROM items "
               f"GROUP BY {', '.join(str(i + 1) for i in range(len(KEY)))}")


# the stored columns (sorter.item_layout) a counter's key is made from
_STORED_WATCHED = ("received", "model", "verdict", "label", "confidence", "duplicate_of", "error", "state", "dst_name")


def _count_view_row(ref: str, step: int) -> str:
    """The trigger statements that count the items-view row with id `ref`.id in (+1) or out (-1)."""
    key = ", ".join(_key_sql("v"))
    sql = (f"INSERT INTO {TABLE} ({_COLUMNS}, n) SELECT {key}, {step} FROM items v WHERE v.id = {ref}.id "
           f"ON CONFLICT ({_COLUMNS}) DO UPDATE SET n = n + {step};")
    if step < 0:
        sql += f" DELETE FROM {TABLE} WHERE ({_COLUMNS}) = (SELECT {key} FROM items v WHERE v.id = {ref}.id) AND n = 0;"
    return sql


def install_on_rows(conn: sqlite3.Connection) -> None:
    """Migration m011: the same counters kept from the compact rows (sorter.item_layout). The key is read from
    the items view, the row as every reader sees it, so the counters agree with the rows by construction:
    counted in after an insert or a change, out before a delete or a change."""
    rows, watched = item_layout.ROWS, ", ".join(_STORED_WATCHED)
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _STORED_WATCHED)
    conn.execute(f"CREATE TRIGGER {TABLE}_rows_insert AFTER INSERT ON {rows} BEGIN {_count_view_row('NEW', 1)} END")
    conn.execute(f"CREATE TRIGGER {TABLE}_rows_delete BEFORE DELETE ON {rows} BEGIN {_count_view_row('OLD', -1)} END")
    conn.execute(f"CREATE TRIGGER {TABLE}_rows_before_update BEFORE UPDATE OF {watched} ON {rows} WHEN {changed} "
                 f"BEGIN {_count_view_row('OLD', -1)} END")
    conn.execute(f"CREATE TRIGGER {TABLE}_rows_after_update AFTER UPDATE OF {watched} ON {rows} WHEN {changed} "
                 f"BEGIN {_count_view_row('NEW', 1)} END")


class Group(NamedTuple):
    """`n` items of one key (None where the row has NULL)."""

    hour: str
    model_id: str | None
    model_sha256: str | None
    verdict: str | None
    label: str | None
    bin: int | None  # of BINS
    dup: bool
    reason: str | None
    state: str
    kept: bool  # the item has an image (`destination`)
    n: int

    @property
    def classified(self) -> bool:
        """A first-of-its-content item the model labelled and decided (what the report's figures count)."""
        return not self.dup and self.label is not None and self.verdict is not None


def _group(row: tuple) -> Group:
    hour, model_id, sha, verdict, label, bin_, dup, reason, state, kept, n = row
    return Group(hour, model_id or None, sha or None, verdict or None, label or None, None if bin_ < 0 else bin_,
                 bool(dup), reason or None, state, bool(kept), n)


def hour_text(moment: datetime) -> str:
    """'2026-12-03T14': the counters' hour of a moment (UTC), as `substr(received_at, 1, 13)` gives it."""
    return moment.astimezone(UTC).isoformat()[:13]


def whole_hours(lo: datetime, hi: datetime) -> tuple[datetime, datetime] | None:
    """The whole UTC hours inside [lo, hi): (first hour's start, last hour's end), None if there is none."""
    first = lo.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if first < lo:
        first += timedelta(hours=1)
    last = hi.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return (first, last) if first < last else None


def _counted(conn: sqlite3.Connection, first: datetime, last: datetime) -> Iterator[Group]:
    rows = conn.execute(f"SELECT {_COLUMNS}, n FROM {TABLE} WHERE hour >= ? AND hour < ? AND n != 0",
                        [hour_text(first), hour_text(last)])
    return (_group(r) for r in rows)


def _scanned(conn: sqlite3.Connection, start: int, end: int) -> Iterator[Group]:
    """The same groups from the rows themselves (a partial hour, in ms): one indexed range, grouped in SQL."""
    if start >= end:
        return iter(())
    window, params = item_layout.in_window(conn, start, end)
    rows = conn.execute(f"SELECT {', '.join(_key_sql('items'))}, COUNT(*) FROM items WHERE {window} "
                        f"GROUP BY {', '.join(str(i + 1) for i in range(len(KEY)))}", params)
    return (_group(tuple(r)) for r in rows)


def window_groups(conn: sqlite3.Connection, lo: datetime, hi: datetime) -> list[Group]:
    """Every item received in [lo, hi) as groups: the counters of the window's whole hours, the rows of
    its partial first and last hours. Without the counters (a read-only reader on a database from before
    m010), the rows of the whole window, grouped in SQL all the same."""
    start, end = item_layout.ms_of(lo), item_layout.ms_of(hi)
    hours = whole_hours(lo, hi) if has_counters(conn) else None
    if hours is None:
        return list(_scanned(conn, start, end))
    first, last = hours
    return [*_scanned(conn, start, item_layout.ms_of(first)), *_counted(conn, first, last),
            *_scanned(conn, item_layout.ms_of(last), end)]


def all_groups(conn: sqlite3.Connection) -> list[Group]:
    """Every item in the database as groups without their hour (`db stats`), summed in SQL: the counters,
    or the rows before m010."""
    if not has_counters(conn):
        return list(_scanned(conn, -(1 << 62), 1 << 62))
    rest = ", ".join(KEY[1:])
    return [_group(r) for r in conn.execute(f"SELECT '', {rest}, SUM(n) FROM {TABLE} GROUP BY {rest}")]


def has_counters(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [TABLE]).fetchone() is not None


def tally(pairs: Iterable[tuple[Any, int]]) -> dict[str, int]:
    """Summed counts per key (`str` of it), most first, ties by key; keys whose items all went are left out.
    The order of every count table in the report and `db stats`."""
    out: dict[str, int] = {}
    for key, n in pairs:
        out[str(key)] = out.get(str(key), 0) + n
    return dict(sorted(((k, n) for k, n in out.items() if n), key=lambda kv: (-kv[1], kv[0])))
