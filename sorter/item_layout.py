"""How an item is laid out on disk: compact rows under a view that reads as the items table always did.

Why: 576,000 items a day for 90 days is 52 M rows, and an edge box has a small SD card. As plain text a
row cost ~815 bytes with its indexes: a 64-character hex hash stored twice more in two indexes, times as
29-character text, the model's name and hash and every label's name in every row, absolute paths. Here
(migration m011) a row is ~230 bytes:

- `sha` is the hash's 32 bytes, indexed once (the first row of each content, as the exactly-once guard
  needs; dry-run rows have their own small index).
- `received` and `routed` are integer milliseconds since 1970 (UTC).
- a path is a directory (`item_dirs`, a few hundred a season) and a file name.
- `model` refers to `item_models` (name, hash, and the order of the labels the scores are in); `scores` are
  3 bytes a label, the probability in millionths (scores are stored rounded to 6 digits: verdict.DIGITS).

`items` is a view that gives every column back exactly as it was written (the same names and text), so
readers, Datasette and hand-typed SQL see the table they know. It also shows `received_ms` and `sha_key`,
the stored forms, for queries that must use the indexes (a filter on `received_at` is computed for every
row). Writes through the view go through INSTEAD OF triggers; the daemon's hot path writes `item_rows`
itself with `Encoder` (no trigger, one statement a row). A value that does not fit its compact form (a
hash that is not 64 lowercase hex digits, a time that is not UTC ISO-8601, a score with more digits) is
stored as the text it was given: nothing written is ever changed or lost.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sorter.states import ItemState, sql_in
from sorter.verdict import Verdict

ROWS, DIRS, MODELS, LEGACY = "item_rows", "item_dirs", "item_models", "items_v1"
PLAIN = ("id", "label", "confidence", "verdict", "source", "duplicate_of", "error", "state", "ood_score", "keep_p")
LOGICAL = frozenset(PLAIN) | {"sha256", "source_path", "destination", "received_at", "routed_at", "model_id",
                             "model_sha256", "scores"}
SCALE = 1_000_000  # scores in millionths
WIDTH = 3  # bytes a score: SCALE fits in 24 bits
_HEX = "0123456789abcdef"


# ---- values: Python side ----

def sha_key(sha256: str | None) -> bytes | str | None:
    """A hash as stored: 32 bytes when it is 64 lowercase hex digits (what hashlib gives), else as given."""
    if sha256 is None:
        return None
    if len(sha256) == 64 and all(c in _HEX for c in sha256):
        return bytes.fromhex(sha256)
    return sha256


def time_key(text: str | None) -> int | str | None:
    """An ISO-8601 UTC time as integer milliseconds when the view gives back exactly this text
    (`store.now_iso`'s form), else the text itself (kept as written, outside every window)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return text
    if moment.tzinfo is None:
        return text
    ms = round(moment.timestamp() * 1000)
    return ms if iso_of_ms(ms) == text else text


def iso_of_ms(ms: int) -> str:
    """What the view shows for `ms` (and store.now_iso writes): '2026-12-03T15:45:50.123+00:00'."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_of(moment: datetime) -> int:
    """A window edge as `received` stores times: whole milliseconds, floored as the edge's ISO text (with
    milliseconds) is; integer arithmetic, so 0.123 s never becomes 122 ms."""
    return (moment.astimezone(UTC) - EPOCH) // timedelta(milliseconds=1)


def scores_key(scores: Mapping[str, float] | str | None) -> tuple[bytes | str | None, str]:
    """(stored scores, the labels' order as JSON) for a scores dict or its JSON text: 3 bytes a score when every
    score is a probability with at most 6 decimals (the view gives back the same JSON object, spelled as
    SQLite's json functions spell it), else the JSON text as given."""
    if scores is None:
        return None, ""
    if isinstance(scores, str):
        try:
            parsed = json.loads(scores)
        except ValueError:
            return scores, ""
    else:
        parsed = dict(scores)  # a dict is packed as it is: JSON only if it has no compact form (once a row)

    def as_text() -> tuple[str, str]:
        return (scores if isinstance(scores, str) else json.dumps(parsed)), ""

    if not isinstance(parsed, dict) or not parsed:
        return as_text()
    packed = bytearray()
    for value in parsed.values():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return as_text()
        micro = round(value * SCALE)
        if not 0 <= micro < 1 << (8 * WIDTH) or micro / SCALE != value:
            return as_text()
        packed += micro.to_bytes(WIDTH, "big")
    return bytes(packed), json.dumps(list(parsed), separators=(",", ":"))


def split_path(path: str | None) -> tuple[str | None, str | None]:
    """(directory with its trailing '/', file name); ('', path) for a name without a directory."""
    if path is None:
        return None, None
    cut = path.rfind("/") + 1
    return path[:cut], path[cut:]


class Encoder:
    """Logical item columns → `item_rows` columns, for one writer connection: directory and model ids are
    looked up (or added) once and remembered, so a row costs no extra statement once its folder is known."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._dirs: dict[str, int] = {}
        self._models: dict[tuple[str, str, str], int] = {}

    def forget_ids(self) -> None:
        """After a rollback: ids added in it are gone (the next lookup adds them again)."""
        self._dirs.clear()
        self._models.clear()

    def dir_id(self, directory: str) -> int:
        if (known := self._dirs.get(directory)) is not None:
            return known
        self.conn.execute(f"INSERT OR IGNORE INTO {DIRS} (dir) VALUES (?)", [directory])
        found = int(self.conn.execute(f"SELECT id FROM {DIRS} WHERE dir = ?", [directory]).fetchone()[0])
        self._dirs[directory] = found
        return found

    def model_ref(self, model_id: str | None, model_sha256: str | None, labels: str) -> int:
        key = (model_id or "", model_sha256 or "", labels)
        if (known := self._models.get(key)) is not None:
            return known
        self.conn.execute(f"INSERT OR IGNORE INTO {MODELS} (model_id, model_sha256, labels) VALUES (?, ?, ?)", key)
        found = int(self.conn.execute(f"SELECT id FROM {MODELS} WHERE model_id = ? AND model_sha256 = ? "
                                      "AND labels = ?", key).fetchone()[0])
        self._models[key] = found
        return found

    def encode(self, row: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The stored columns for the logical columns in `row`. The model, its hash and the scores are stored
        together: an update that changes one of them reads the others from `current` (the row as it is)."""
        unknown = set(row) - LOGICAL
        if unknown:
            raise sqlite3.OperationalError(f"table items has no column named {sorted(unknown)[0]}")
        out: dict[str, Any] = {c: row[c] for c in PLAIN if c in row}
        if "sha256" in row:
            out["sha"] = sha_key(row["sha256"])
        for column, (d, n) in (("source_path", ("src_dir", "src_name")), ("destination", ("dst_dir", "dst_name"))):
            if column in row:
                directory, name = split_path(row[column])
                out[d], out[n] = (None if directory is None else self.dir_id(directory)), name
        for column, stored in (("received_at", "received"), ("routed_at", "routed")):
            if column in row:
                out[stored] = time_key(row[column])
        if any(c in row for c in ("model_id", "model_sha256", "scores")):
            whole = {**(current or {}), **row}
            scores, labels = scores_key(whole.get("scores"))
            named = any(whole.get(c) is not None for c in ("model_id", "model_sha256", "scores"))
            out["scores"] = scores
            out["model"] = self.model_ref(whole.get("model_id"), whole.get("model_sha256"), labels) if named else None
        return out


# ---- the schema (migration m011): tables, indexes, the view, its triggers ----

def _scores_sql(row: str, model: str) -> str:
    """JSON text of `row`'s scores: the 3-byte millionths decoded with SQL alone (any SQLite can read the view),
    named by the model's labels in order."""
    digit = f"(instr('0123456789ABCDEF', substr(hex({row}.scores), l.key * {2 * WIDTH} + {{i}}, 1)) - 1)"
    value = " + ".join(f"{digit.format(i=i + 1)} * {16 ** (2 * WIDTH - 1 - i)}" for i in range(2 * WIDTH))
    return (f"CASE WHEN typeof({row}.scores) != 'blob' THEN {row}.scores ELSE ("
            f"SELECT json_group_object(l.value, ({value}) / {SCALE}.0) FROM json_each({model}.labels) l) END")


def _decoded(row: str = "r") -> str:
    """The view's select list over `item_rows r`: every logical column, then the stored forms it is searched by."""
    def path(d: str, n: str) -> str:
        return (f"CASE WHEN {row}.{n} IS NULL THEN NULL "
                f"ELSE (SELECT dir FROM {DIRS} WHERE id = {row}.{d}) || {row}.{n} END")

    def time(column: str) -> str:
        return (f"CASE WHEN typeof({row}.{column}) = 'integer' THEN strftime('%Y-%m-%dT%H:%M:%S', "
                f"{row}.{column} / 1000, 'unixepoch') || printf('.%03d', {row}.{column} % 1000) || '+00:00' "
                f"ELSE {row}.{column} END")

    return ", ".join([
        f"{row}.id AS id",
        f"CASE WHEN typeof({row}.sha) = 'blob' THEN lower(hex({row}.sha)) ELSE {row}.sha END AS sha256",
        f"{path('src_dir', 'src_name')} AS source_path", f"{path('dst_dir', 'dst_name')} AS destination",
        f"{row}.label AS label", f"{row}.confidence AS confidence", f"{row}.verdict AS verdict",
        f"{_scores_sql(row, 'm')} AS scores", "nullif(m.model_id, '') AS model_id",
        "nullif(m.model_sha256, '') AS model_sha256", f"{row}.source AS source",
        f"{time('received')} AS received_at", f"{time('routed')} AS routed_at",
        f"{row}.duplicate_of AS duplicate_of", f"{row}.error AS error", f"{row}.state AS state",
        f"{row}.ood_score AS ood_score", f"{row}.keep_p AS keep_p",
        f"{row}.received AS received_ms", f"{row}.sha AS sha_key"])


_LEGACY_COLUMNS = ("id, sha256, source_path, destination, label, confidence, verdict, scores, model_id, model_sha256, "
                   "source, received_at, routed_at, duplicate_of, error, state, ood_score, keep_p")


def view_sql(with_legacy: bool) -> str:
    """The items view; while an old database's rows wait to be converted (`items_v1`), they are part of it."""
    sql = f"CREATE VIEW items AS SELECT {_decoded()} FROM {ROWS} r LEFT JOIN {MODELS} m ON m.id = r.model"
    if with_legacy:
        sql += (f" UNION ALL SELECT {_LEGACY_COLUMNS}, "
                "CAST(round((julianday(received_at) - 2440587.5) * 86400000) AS INTEGER), sha256 FROM items_v1")
    return sql


def _trigger_sql(with_legacy: bool) -> list[str]:
    """INSTEAD OF triggers: writes to the view land in item_rows. Plain columns and paths are SQL alone (a
    hand-typed `UPDATE items SET state = …` works in any SQLite); hashes, times, scores and the model need the
    functions `register` adds (another tool's connection gets 'no such function' and changes nothing)."""
    def dir_of(value: str) -> str:
        return f"rtrim({value}, replace({value}, '/', ''))"

    def name_of(value: str) -> str:
        return f"CASE WHEN {value} IS NULL THEN NULL ELSE substr({value}, length({dir_of(value)}) + 1) END"

    def dir_id(value: str) -> str:
        return f"(SELECT id FROM {DIRS} WHERE dir = {dir_of(value)})"

    def add_dirs(*values: str) -> str:
        return " ".join(f"INSERT OR IGNORE INTO {DIRS} (dir) SELECT {dir_of(v)} WHERE {v} IS NOT NULL;" for v in values)

    model_key = ("coalesce(NEW.model_id, ''), coalesce(NEW.model_sha256, ''), "
                 "coalesce(sorter_labels(NEW.scores), '')")
    add_model = (f"INSERT OR IGNORE INTO {MODELS} (model_id, model_sha256, labels) SELECT {model_key} "
                 "WHERE NEW.model_id IS NOT NULL OR NEW.model_sha256 IS NOT NULL OR NEW.scores IS NOT NULL;")
    model_id = f"(SELECT id FROM {MODELS} WHERE (model_id, model_sha256, labels) = ({model_key}))"
    scores = "sorter_scores(NEW.scores)"
    plain = ", ".join(PLAIN[1:])

    def old(*columns: str) -> str:
        """While old rows wait to be converted, a write to one of them lands in the old table."""
        if not with_legacy:
            return ""
        if not columns:
            return f" DELETE FROM {LEGACY} WHERE id = OLD.id;"
        return f" UPDATE {LEGACY} SET {', '.join(f'{c} = NEW.{c}' for c in columns)} WHERE id = OLD.id;"

    return [
        f"CREATE TRIGGER items_insert INSTEAD OF INSERT ON items BEGIN "
        f"{add_dirs('NEW.source_path', 'NEW.destination')} {add_model} "
        f"INSERT INTO {ROWS} (id, sha, src_dir, src_name, dst_dir, dst_name, {plain}, scores, model, received, routed) "
        f"VALUES (NEW.id, sorter_sha(NEW.sha256), {dir_id('NEW.source_path')}, {name_of('NEW.source_path')}, "
        f"{dir_id('NEW.destination')}, {name_of('NEW.destination')}, {', '.join(f'NEW.{c}' for c in PLAIN[1:])}, "
        f"{scores}, {model_id}, sorter_ms(NEW.received_at), sorter_ms(NEW.routed_at)); END",
        f"CREATE TRIGGER items_delete INSTEAD OF DELETE ON items BEGIN DELETE FROM {ROWS} WHERE id = OLD.id;"
        f"{old()} END",
        f"CREATE TRIGGER items_update_plain INSTEAD OF UPDATE OF {plain} ON items BEGIN UPDATE {ROWS} SET "
        f"{', '.join(f'{c} = NEW.{c}' for c in PLAIN[1:])} WHERE id = OLD.id;{old(*PLAIN[1:])} END",
        f"CREATE TRIGGER items_update_paths INSTEAD OF UPDATE OF source_path, destination ON items BEGIN "
        f"{add_dirs('NEW.source_path', 'NEW.destination')} UPDATE {ROWS} SET src_dir = {dir_id('NEW.source_path')}, "
        f"src_name = {name_of('NEW.source_path')}, dst_dir = {dir_id('NEW.destination')}, "
        f"dst_name = {name_of('NEW.destination')} WHERE id = OLD.id;{old('source_path', 'destination')} END",
        f"CREATE TRIGGER items_update_times INSTEAD OF UPDATE OF received_at, routed_at ON items BEGIN UPDATE {ROWS} "
        "SET received = sorter_ms(NEW.received_at), routed = sorter_ms(NEW.routed_at) WHERE id = OLD.id;"
        f"{old('received_at', 'routed_at')} END",
        f"CREATE TRIGGER items_update_sha INSTEAD OF UPDATE OF sha256 ON items BEGIN UPDATE {ROWS} "
        f"SET sha = sorter_sha(NEW.sha256) WHERE id = OLD.id;{old('sha256')} END",
        f"CREATE TRIGGER items_update_model INSTEAD OF UPDATE OF model_id, model_sha256, scores ON items BEGIN "
        f"{add_model} UPDATE {ROWS} SET scores = {scores}, model = {model_id} WHERE id = OLD.id;"
        f"{old('model_id', 'model_sha256', 'scores')} END",
    ]


def create(conn: sqlite3.Connection) -> None:
    """The compact tables and their indexes (an empty item_rows)."""
    conn.execute(f"CREATE TABLE {DIRS} (id INTEGER PRIMARY KEY, dir TEXT NOT NULL UNIQUE)")
    conn.execute(f"CREATE TABLE {MODELS} (id INTEGER PRIMARY KEY, model_id TEXT NOT NULL, model_sha256 TEXT NOT NULL, "
                 "labels TEXT NOT NULL, UNIQUE (model_id, model_sha256, labels))")
    conn.execute(
        f"CREATE TABLE {ROWS} (id INTEGER PRIMARY KEY AUTOINCREMENT, sha BLOB, src_dir INTEGER, src_name TEXT, "
        "dst_dir INTEGER, dst_name TEXT, label TEXT, confidence REAL, verdict TEXT, scores BLOB, model INTEGER, "
        "source TEXT NOT NULL, "
        "received INTEGER NOT NULL, routed INTEGER, duplicate_of INTEGER, error TEXT, state TEXT NOT NULL, "
        f"ood_score REAL, keep_p REAL, CONSTRAINT items_state CHECK ({sql_in('state', ItemState)}), "
        f"CONSTRAINT items_verdict CHECK ({sql_in('verdict', Verdict, nullable=True)}))")
    conn.execute(f"CREATE INDEX {ROWS}_received ON {ROWS}(received)")
    # the exactly-once guard, and every lookup by content: a content's first row (dry-run rows apart)
    conn.execute(f"CREATE UNIQUE INDEX {ROWS}_first_sha ON {ROWS}(sha) "
                 "WHERE duplicate_of IS NULL AND state != 'dry-run'")
    conn.execute(f"CREATE INDEX {ROWS}_dry_sha ON {ROWS}(sha) WHERE state = 'dry-run'")
    conn.execute(f"CREATE INDEX {ROWS}_open ON {ROWS}(state) WHERE state IN ('intent', 'held')")
    conn.execute(f"CREATE INDEX {ROWS}_error ON {ROWS}(error) WHERE error IS NOT NULL")


def create_view(conn: sqlite3.Connection, with_legacy: bool) -> None:
    """The items view and its write triggers (a view's triggers go with it when it is dropped)."""
    conn.execute(view_sql(with_legacy))
    for sql in _trigger_sql(with_legacy):
        conn.execute(sql)


def register(conn: sqlite3.Connection) -> None:
    """The functions the view's write triggers call (deterministic: SQLite may fold them)."""
    conn.create_function("sorter_sha", 1, sha_key, deterministic=True)
    conn.create_function("sorter_ms", 1, time_key, deterministic=True)
    conn.create_function("sorter_scores", 1, lambda text: scores_key(text)[0], deterministic=True)
    conn.create_function("sorter_labels", 1, lambda text: scores_key(text)[1] or None, deterministic=True)


def legacy(conn: sqlite3.Connection) -> bool:
    """Whether an old database's rows are still waiting to be converted (`items_v1`, part of the view)."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [LEGACY]).fetchone()
    return found is not None


def _iso_bound(ms: int) -> str:
    try:
        return iso_of_ms(ms)
    except (OverflowError, OSError, ValueError):
        return "" if ms < 0 else "\uffff"


def in_window(conn: sqlite3.Connection, lo_ms: int, hi_ms: int, alias: str = "") -> tuple[str, list[Any]]:
    """SQL and parameters for `received in [lo_ms, hi_ms)` that every part of the view can search by index:
    the compact rows by `received_ms`; while old rows wait to be converted, they by their received_at index
    too (the text condition is added only then: computing the text for every compact row would cost)."""
    at = f"{alias}." if alias else ""
    sql = f"{at}received_ms >= ? AND {at}received_ms < ?"
    params: list[Any] = [lo_ms, hi_ms]
    if legacy(conn):
        sql += f" AND {at}received_at >= ? AND {at}received_at < ?"
        params += [_iso_bound(lo_ms), _iso_bound(hi_ms)]
    return sql, params


@functools.cache
def insert_sql(columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {ROWS} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


@functools.cache
def update_sql(columns: tuple[str, ...]) -> str:
    return f"UPDATE {ROWS} SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?"
