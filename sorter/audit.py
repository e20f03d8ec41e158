"""Operator audits: ground truth for the nightly report, and the samples people check.

Audits go to their own table (`store.m003_audits`), keyed by (item, auditor), so a re-import
is a no-op and the model's original prediction is never overwritten. Imports validate every
row first and, unless `partial`, write nothing when any row is wrong: a half-imported CSV is
harder to fix than a rejected one.
"""

from __future__ import annotations

import csv
import difflib
import re
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from sorter import controls, item_layout, sampling, store
from sorter.card import sha256_file
from sorter.imaging import is_image_name

SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_ALIASES = {"sha256": "sha256", "sha": "sha256", "hash": "sha256", "file": "file", "path": "file",
            "name": "file", "filename": "file", "true_label": "label", "label": "label", "truth": "label",
            "auditor": "auditor", "time": "time", "audited_at": "time"}


@dataclass
class Audit:
    """One validated audit, ready to write."""

    item_id: int
    sha256: str
    true_label: str
    auditor: str
    audited_at: str
    origin: str


@dataclass
class ImportResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    written: bool = False
    controls: controls.ControlScore | None = None  # the answers on control photos, when the input had any


R = TypeVar("R", bound=ImportResult)


class AuditError(ValueError):
    """The input cannot be read at all (no header, no label column, not a folder)."""


def utc_text(text: str | None, default: str) -> str:
    """ISO-8601 (naive = UTC) → the store's UTC text form, so audits sort with items."""
    if not text or not text.strip():
        return default
    stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="milliseconds")


def check_label(label: str, labels: list[str]) -> str | None:
    """None when known, else the error text (with a suggestion)."""
    if label in labels:
        return None
    close = difflib.get_close_matches(label, labels, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown label '{label}'{hint}; known: {', '.join(labels)}"


def item_by_sha(db: sqlite3.Connection, sha: str) -> tuple[int, str] | None:
    """The first real row for these bytes (duplicates and dry-runs point back to it)."""
    rows = store.rows_by_sha(db, [sha.lower()], "id, sha256, state = 'dry-run'")
    row = min(rows, key=lambda r: (r[2], r[0]), default=None)
    return (row[0], row[1]) if row else None


def _like(text: str) -> str:
    """`text` as a LIKE pattern that matches only itself (ASCII case aside, as LIKE is)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _named_rows(db: sqlite3.Connection, name: str) -> list[tuple[int, str]]:
    """(id, sha256) of first rows whose source or destination is `name` or ends in '/' + `name`. With compact
    rows the file names are compared as stored (no path is built for rows whose name differs), then the
    few that share the name are checked whole; an old table is searched as it was."""
    suffix = f"%/{_like(name)}"
    if not store.has_table(db, item_layout.ROWS):
        return db.execute("SELECT id, sha256 FROM items WHERE duplicate_of IS NULL AND sha256 IS NOT NULL AND "
                          "(source_path = ? OR destination = ? OR source_path LIKE ? ESCAPE '\\' "
                          "OR destination LIKE ? ESCAPE '\\') ORDER BY id", [name, name, suffix, suffix]).fetchall()
    base = _like(name.rsplit("/", 1)[-1])
    return db.execute(f"SELECT i.id, i.sha256 FROM {item_layout.ROWS} r CROSS JOIN items i ON i.id = r.id "
                      "WHERE (r.src_name LIKE ? ESCAPE '\\' OR r.dst_name LIKE ? ESCAPE '\\') "
                      "AND r.duplicate_of IS NULL AND r.sha IS NOT NULL AND (i.source_path = ? OR i.destination = ? "
                      "OR i.source_path LIKE ? ESCAPE '\\' OR i.destination LIKE ? ESCAPE '\\') ORDER BY i.id",
                      [base, base, name, name, suffix, suffix]).fetchall()


def item_by_name(db: sqlite3.Connection, name: str) -> tuple[int, str] | str:
    """Match a full path or a bare file name against where items came from and went; error text
    when nothing or several different contents match."""
    rows = _named_rows(db, name)
    shas = {r[1] for r in rows}
    if not shas:
        return f"unknown item '{name}' (no record with that file name)"
    if len(shas) > 1:
        return f"ambiguous item '{name}': {len(shas)} records with different contents; use sha256"
    return item_by_sha(db, rows[0][1]) or f"unknown item '{name}'"


def _find_item(db: sqlite3.Connection, sha: str, name: str) -> tuple[int, str] | str:
    """By hash, else by a path or file name the database already records. Nothing named in the CSV
    is opened: an audit file is not a licence to read `/etc/shadow` or hash a 2 GB file, and the
    message for a name is the same whether or not such a file exists."""
    if sha:
        if not SHA256_HEX.match(sha):
            return f"bad sha256 '{sha}' (want 64 hex digits)"
        return item_by_sha(db, sha) or f"unknown item sha256 {sha[:12]}… (not in the database)"
    if not name:
        return "neither sha256 nor file given"
    return item_by_name(db, name)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows keyed by canonical column names (sha256, file, label, auditor, time)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        names = {h: _ALIASES.get(h.strip().lower().replace(" ", "_")) for h in reader.fieldnames or []}
        header = {h: name for h, name in names.items() if name}
        if "label" not in header.values():
            raise AuditError(f"{path}: no label column (want one of: true_label, label)")
        if not {"sha256", "file"} & set(header.values()):
            raise AuditError(f"{path}: no item column (want sha256 or file/path)")
        return [{header[k]: (v or "").strip() for k, v in row.items() if k in header}
                for row in reader]


Answer = Audit | controls.ControlAnswer  # an audit of an item, or an answer on a control photo


def resolve_csv(db: sqlite3.Connection, rows: list[dict[str, str]], labels: list[str],
                now: str) -> tuple[list[Answer], list[str], int]:
    """Validated audits and control answers, one error line per bad row (row 2 = first data line), rows
    left blank. A control photo is known by its hash, or without one by the name its sample gave it."""
    audits: list[Answer] = []
    errors, skipped = [], 0
    known = controls.known(db)
    for number, row in enumerate(rows, start=2):
        label = row.get("label", "")
        if not label:
            skipped += 1  # a sample manifest not filled in yet
            continue
        problem = check_label(label, labels)
        control = known.match(row.get("sha256", ""), row.get("file", ""))
        found = control or _find_item(db, row.get("sha256", ""), row.get("file", ""))
        if isinstance(found, str) and not control:
            problem = f"{problem}; {found}" if problem else found
        try:
            when = utc_text(row.get("time"), now)
        except ValueError:
            problem = f"{problem}; bad time '{row.get('time')}'" if problem else f"bad time '{row.get('time')}'"
        if problem:
            errors.append(f"row {number}: {problem}")
            continue
        if control:
            audits.append(controls.ControlAnswer(control, label, row.get("auditor", ""), when, "csv"))
            continue
        assert not isinstance(found, str)
        audits.append(Audit(found[0], found[1], label, row.get("auditor", ""), when, "csv"))
    return audits, errors, skipped


def resolve_folder(db: sqlite3.Connection, folder: Path, labels: list[str],
                   auditor: str) -> tuple[list[Answer], list[str], int]:
    """Files in FOLDER/<true label>/ matched by content hash (control photos too); loose files in FOLDER
    are ignored."""
    if not folder.is_dir():
        raise AuditError(f"{folder} is not a folder")
    audits: list[Answer] = []
    errors, skipped = [], 0
    known = controls.known(db)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        label_problem = check_label(sub.name, labels)
        if label_problem and files:
            errors.append(f"{sub.name}/: {label_problem}")
            continue
        for path in files:
            if not is_image_name(path.name):
                skipped += 1
                continue
            sha = sha256_file(path)
            when = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="milliseconds")
            if control := known.match(sha, ""):
                audits.append(controls.ControlAnswer(control, sub.name, auditor, when, "folder"))
                continue
            found = item_by_sha(db, sha)
            if found is None:
                errors.append(f"{sub.name}/{path.name}: unknown item (its content is not in the database)")
                continue
            audits.append(Audit(found[0], found[1], sub.name, auditor, when, "folder"))
    return audits, errors, skipped


def write_audits(db, audits: list[Audit]) -> tuple[int, int, int]:
    """Upsert on (item, auditor) in one transaction: (inserted, updated, unchanged)."""
    counts = [0, 0, 0]
    now = store.now_iso()
    with store.immediate(db):
        for a in audits:
            old = db.execute("SELECT true_label FROM audits WHERE item_id = ? AND auditor = ?",
                             [a.item_id, a.auditor]).fetchone()
            if old and old[0] == a.true_label:
                counts[2] += 1
                continue
            db.execute("INSERT INTO audits (item_id, sha256, true_label, auditor, audited_at, origin, imported_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(item_id, auditor) DO UPDATE SET "
                       "true_label = excluded.true_label, audited_at = excluded.audited_at, "
                       "origin = excluded.origin, imported_at = excluded.imported_at",
                       [a.item_id, a.sha256, a.true_label, a.auditor, a.audited_at, a.origin, now])
            counts[1 if old else 0] += 1
    return counts[0], counts[1], counts[2]


def _plain(audits: list[Answer], errors: list[str], skipped: int) -> tuple[list[Answer], ImportResult]:
    return audits, ImportResult(skipped=skipped, errors=errors)


def import_resolved(db_path: Path, resolve: Callable[[sqlite3.Connection], tuple[Sequence[Answer], R]],
                    partial: bool) -> R:
    """Every import's one path: `resolve` reads the input against the database into audits (and answers
    on control photos, `sorter.controls`) and a result holding its errors; with errors nothing is written
    unless `partial` (CSV, folder, Label Studio). Control answers are never audits: they are recorded in
    `audit_controls` and scored against the photos' known labels (`result.controls`)."""
    if not Path(db_path).exists():
        raise FileNotFoundError(f"database {db_path} not found")
    db = store.open_writer(db_path)
    try:
        answers, result = resolve(db.conn)
        if result.errors and not partial:
            return result
        audits = [a for a in answers if isinstance(a, Audit)]
        checks = [a for a in answers if isinstance(a, controls.ControlAnswer)]
        with store.immediate(db):
            result.inserted, result.updated, result.unchanged = write_audits(db, audits)
            if checks:
                result.controls = controls.write_answers(db, checks)
        result.written = True
        return result
    finally:
        db.close()


def import_csv(db_path: Path, csv_path: Path, labels: list[str], partial: bool = False) -> ImportResult:
    """`sorter audit import`: validate every row, then write all (or, with errors, nothing)."""
    rows = read_csv(csv_path)
    now = store.now_iso()
    return import_resolved(db_path, lambda conn: _plain(*resolve_csv(conn, rows, labels, now)), partial)


def import_folder(db_path: Path, folder: Path, labels: list[str], auditor: str = "",
                  partial: bool = False) -> ImportResult:
    """`sorter audit folder`: AUDIT_DIR/<true label>/<file>, matched by content hash."""
    return import_resolved(db_path, lambda conn: _plain(*resolve_folder(conn, folder, labels, auditor)), partial)


# ---- sampling: what people should look at next ----

@dataclass
class SampleResult:
    drawn: int
    candidates: int
    by_verdict: dict[str, int]
    manifest: Path
    sample_id: str = ""
    controls: int = 0  # control photos placed among the items (`sorter.controls`)


@dataclass
class ControlSpec:
    """`audit sample --control-data DIR --controls N`: N photos of known label from DIR/<label>/, given the
    model's prediction (`model`) as the items have theirs."""

    folder: Path
    n: int
    model: Path


def record_draws(db_path: Path, picked: list[dict], sample_id: str, when: str) -> None:
    """Each drawn item's stratum and inclusion probability (`audit_draws`), in one transaction, so a later
    import of their audits can be weighted 1/p by the report."""
    db = store.open_writer(db_path)
    try:
        with store.immediate(db):
            db.conn.executemany("INSERT OR IGNORE INTO audit_draws (item_id, sample, stratum, share, p, drawn_at) "
                                "VALUES (?, ?, ?, ?, ?, ?)",
                                [(r["id"], sample_id, r["stratum"], r["share"], r["p"], when) for r in picked])
    finally:
        db.close()


def _controls(conn: sqlite3.Connection, spec: ControlSpec | None, picked: list[dict], labels: list[str],
              seed: int | None) -> tuple[list[controls.Placed], str, str]:
    """The control photos for this sample, named like its items and given the model's answer."""
    if spec is None or spec.n <= 0 or not picked:
        return [], "", ""
    if not labels:
        raise controls.ControlError("control photos need the model card's labels: pass --model")
    rng = np.random.default_rng(None if seed is None else [seed, 16])
    chosen = controls.choose(conn, controls.read_folder(spec.folder, labels), spec.n, rng)
    return controls.predict(spec.model, controls.place(conn, chosen, picked, rng))


def sample(db_path: Path, out: Path, n: int, start: str, end: str, labels: list[str],
           seed: int | None = None, control: ControlSpec | None = None) -> SampleResult:
    """Copy a sample into OUT with a `sample.csv` manifest and empty OUT/<label>/ folders, so OUT
    works both as a CSV to fill in (`audit import`) and as a folder to sort (`audit folder`); the draws
    and their probabilities are recorded in the database (`audit_draws`). With `control`, photos of known
    label are shuffled in among the items, named and listed like them (`audit_controls`, never items)."""
    if not Path(db_path).exists():
        raise FileNotFoundError(f"database {db_path} not found")
    store.open_writer(db_path).close()  # migrations first: a database from before keep_p and audit_draws
    conn = store.open_reader(db_path)
    try:
        picked, candidates = sampling.draw(conn, start, end, n, seed)
        placed, model_id, model_sha = _controls(conn, control, picked, labels, seed)
    finally:
        conn.close()
    out.mkdir(parents=True, exist_ok=True)
    for label in labels:
        (out / label).mkdir(exist_ok=True)
    manifest = out / "sample.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sha256", "file", "predicted", "confidence", "verdict", "true_label", "auditor"])
        lines = []
        for row in picked:
            src = Path(row["destination"])
            name = f"{row['id']:06d}-{src.name}"
            shutil.copy2(src, out / name)
            lines.append((row["id"], [row["sha256"], name, row["label"], row["confidence"], row["verdict"], "", ""]))
        if placed:
            controls.copy_in(out, placed, picked, np.random.default_rng(None if seed is None else [seed, 17]))
        lines += [(p.shown_id, [p.photo.sha256, p.name, p.predicted, p.confidence, p.verdict, "", ""]) for p in placed]
        writer.writerows(line for _, line in sorted(lines, key=lambda pair: pair[0]))
    sample_id = uuid.uuid4().hex
    when = store.now_iso()
    record_draws(db_path, picked, sample_id, when)
    if placed:
        db = store.open_writer(db_path)
        try:
            controls.record(db, sample_id, placed, model_id, model_sha, when)
        finally:
            db.close()
    by_verdict: dict[str, int] = {}
    for row in picked:
        by_verdict[row["verdict"]] = by_verdict.get(row["verdict"], 0) + 1
    return SampleResult(len(picked), candidates, by_verdict, manifest, sample_id, len(placed))
