"""The field data set: audited items (and, if asked, confident unaudited ones) as class folders.

`sorter dataset build` and `sorter retrain` both read the line's own photos through here, so a data set
is always made by one rule:

- **one photo per content hash.** The bytes are hashed where they lie (camera snapshots carry no hash in
  the database), and a file whose bytes differ from the hash its row recorded is left out: it is not the
  photo the model saw.
- **the latest audit wins.** Several audits of one photo (different auditors, or audits of duplicate rows)
  are resolved as the report resolves them: the one with the latest `audited_at` (ties: the later audit
  row) gives the true label; when auditors disagreed, the photo is kept and listed in `conflicts`.
- **pseudo-labels only on request**, only for photos nobody audited, only above a confidence floor, and
  only for `fresh`/`rotten` verdicts (an `uncertain` or `unknown` item is exactly where the model's label
  cannot be trusted). They are marked `pseudo_label=1` in the manifest.
- **hard links where possible** (no second copy of a photo on an edge device's small disk), copies across
  filesystems.
- **nothing is silently dropped**: every photo left out is in `skipped` with a one-line reason.

Nothing here writes to the database: it is read through a read-only connection.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sorter import item_layout, store
from sorter.card import sha256_file

MANIFEST = "MANIFEST.tsv"
COLUMNS = ("sha256", "file", "true_label", "model_label", "confidence", "auditor", "audited_at", "source",
           "line", "pseudo_label")
PSEUDO_VERDICTS = ("fresh", "rotten")  # a confident model label worth training on; never uncertain/unknown


@dataclass(frozen=True)
class FieldPhoto:
    """One photo in the data set: where it now lies (`file`, inside the data set's folder; the manifest writes
    it relative to that folder) and where it came from (`source`: the path or camera frame it was read from)."""

    sha256: str
    file: Path
    true_label: str
    model_label: str
    confidence: float | None
    auditor: str
    audited_at: str
    source: str
    line: str
    pseudo: bool


@dataclass
class FieldDataset:
    """What `build_dataset` made: the photos in it and, for each photo left out, its hash (or item) and why."""

    out: Path
    photos: list[FieldPhoto]
    skipped: list[tuple[str, str]]
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # kept, but auditors disagreed
    linked: int = 0
    copied: int = 0

    def counts(self) -> dict[str, int]:
        """Photos per true label, labels in sorted order."""
        counts: dict[str, int] = {}
        for photo in sorted(self.photos, key=lambda p: p.true_label):
            counts[photo.true_label] = counts.get(photo.true_label, 0) + 1
        return counts

    def fingerprint(self) -> str:
        """sha256 over the sorted (sha256, true label) pairs: the same photos with the same labels give the
        same fingerprint wherever and whenever they were built (a model card records it)."""
        pairs = sorted((p.sha256, p.true_label) for p in self.photos)
        return hashlib.sha256("".join(f"{sha}\t{label}\n" for sha, label in pairs).encode()).hexdigest()


@dataclass
class _Candidate:
    """An item row that may become a photo: its true label (audited) or its model label (pseudo)."""

    row: dict
    true_label: str
    auditor: str
    audited_at: str
    pseudo: bool
    labels_given: set[str] = field(default_factory=set)


def _cutoff(since: timedelta | None) -> str:
    """The store's text form of now − since ('' = everything): it sorts as received_at does."""
    if since is None:
        return ""
    return (datetime.now(UTC) - since).isoformat(timespec="milliseconds")


def _audited(conn: sqlite3.Connection, cutoff: str) -> tuple[dict[str, _Candidate], dict[int, _Candidate]]:
    """Audited items received since the cutoff, latest audit first; keyed by recorded hash, or by item id
    for rows without one (camera snapshots: hashed once the file is read)."""
    if not store.has_table(conn, "audits"):
        return {}, {}
    rows = conn.execute(
        f"SELECT {', '.join('i.' + c for c in store.ITEM_COLUMNS)}, a.true_label AS a_label, "
        "a.auditor AS a_auditor, a.audited_at AS a_at FROM audits a "
        "JOIN items i ON i.id = a.item_id WHERE i.received_at >= ? "
        "ORDER BY a.audited_at DESC, a.id DESC", [cutoff])
    by_sha: dict[str, _Candidate] = {}
    by_id: dict[int, _Candidate] = {}
    for r in rows:
        row = dict(r)
        key_map: dict = by_sha if row["sha256"] else by_id
        key = row["sha256"] or row["id"]
        if key not in key_map:  # the first seen is the latest audit of these bytes
            key_map[key] = _Candidate(row, row["a_label"], row["a_auditor"] or "", row["a_at"], False)
        key_map[key].labels_given.add(row["a_label"])
    return by_sha, by_id


def _unaudited_confident(conn: sqlite3.Connection, cutoff: str, floor: float) -> list[_Candidate]:
    """First-of-their-content rows nobody audited (under any row of the same bytes), routed as
    fresh or rotten with confidence ≥ floor, whose image was kept (a camera keeps only a share of them:
    the rest are not candidates, not skips)."""
    audited = ("AND id NOT IN (SELECT item_id FROM audits) AND (sha256 IS NULL OR sha256 NOT IN "
               "(SELECT sha256 FROM audits WHERE sha256 IS NOT NULL))") if store.has_table(conn, "audits") else ""
    verdicts = ",".join("?" * len(PSEUDO_VERDICTS))
    window, params = item_layout.in_window(conn, store.ms_of_text(cutoff) if cutoff else -(1 << 62), 1 << 62)
    rows = conn.execute(
        f"SELECT {store.COLUMNS_SQL} FROM items WHERE {window} AND duplicate_of IS NULL AND state = 'done' "
        "AND destination IS NOT NULL "
        f"AND error IS NULL AND label IS NOT NULL AND confidence >= ? AND verdict IN ({verdicts}) {audited} "
        "ORDER BY id", [*params, floor, *PSEUDO_VERDICTS])
    return [_Candidate(dict(r), r["label"], "", "", True) for r in rows]


def _photo_path(row: dict) -> Path | str:
    """Where the item's photo is now: its destination (routed file or camera snapshot), else where it was
    found (dry-run and held rows never moved); the reason as text when neither is a readable file."""
    tried = [p for p in (row["destination"], row["source_path"]) if p]
    for text in tried:
        path = Path(text)
        if path.is_file() and os.access(path, os.R_OK):
            return path
    if not tried:
        return "no file recorded (not kept: only some verdicts keep a snapshot)"
    return f"file missing or unreadable: {tried[0]}"


def _place(src: Path, dst: Path) -> bool:
    """Hard-link src at dst (True), or copy it where a link cannot be made (False): another filesystem,
    or one that has no hard links."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    shutil.copy2(src, dst)
    return False


def _clear_previous(out: Path) -> None:
    """Remove what an earlier build wrote (the files its manifest lists, then empty label folders), so a
    rebuild never keeps a photo whose label changed. A non-empty folder that is not a build is refused:
    a data set is never mixed into someone's files."""
    manifest = out / MANIFEST
    if not out.exists():
        return
    if not manifest.is_file():
        if any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty and holds no {MANIFEST}: choose an empty or new folder")
        return
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            (out / row["file"]).unlink(missing_ok=True)
    manifest.unlink()
    for sub in out.iterdir():
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()


def _safe_label(label: str) -> bool:
    """A label that names one folder inside the data set (card labels are safe names; audits may be older)."""
    return bool(label) and label not in (".", "..") and "/" not in label and "\\" not in label \
        and not label.startswith(".")


def build_dataset(db: Path, out: Path, *, since: timedelta | None = None,
                  include_unaudited_confident: float | None = None, line: str = "") -> FieldDataset:
    """Audited items (received within `since`, if given) → OUT/<true label>/<sha256[:16]><ext> and
    OUT/MANIFEST.tsv; with `include_unaudited_confident`, unaudited fresh/rotten items at or above that
    confidence as pseudo-labels. `line` is the conveyor line's name (config `line`) written in each row."""
    if include_unaudited_confident is not None and not 0.0 <= include_unaudited_confident <= 1.0:
        raise ValueError(f"--include-unaudited-confident {include_unaudited_confident} is not in [0, 1]")
    cutoff = _cutoff(since)
    conn = store.open_reader(db)
    try:
        by_sha, by_id = _audited(conn, cutoff)
        pseudo = [] if include_unaudited_confident is None else _unaudited_confident(
            conn, cutoff, include_unaudited_confident)
    finally:
        conn.close()
    out = Path(out)
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    result = FieldDataset(out, [], [])
    seen: set[str] = set()
    ordered = sorted(by_sha.values(), key=lambda c: c.row["id"]) + sorted(by_id.values(), key=lambda c: c.row["id"])
    for candidate in ordered + pseudo:
        _add(result, candidate, seen, line)
    result.photos.sort(key=lambda p: (p.true_label, p.sha256))
    _write_manifest(result)
    return result


def _add(result: FieldDataset, c: _Candidate, seen: set[str], line: str) -> None:
    """Place one candidate's photo, or record why not."""
    row = c.row
    name = row["sha256"] or f"item {row['id']}"
    if not _safe_label(c.true_label):
        result.skipped.append((name, f"label '{c.true_label}' cannot name a folder"))
        return
    path = _photo_path(row)
    if isinstance(path, str):
        result.skipped.append((name, path))
        return
    try:
        sha = sha256_file(path)
    except OSError as exc:
        result.skipped.append((name, f"file unreadable: {path}: {exc.strerror or exc}"))
        return
    if row["sha256"] and sha != row["sha256"]:
        result.skipped.append((name, f"file changed since it was classified: {path}"))
        return
    if sha in seen:  # a camera snapshot that another row already brought in, byte for byte
        return
    seen.add(sha)
    if len(c.labels_given) > 1:
        result.conflicts.append((sha, f"auditors disagree ({', '.join(sorted(c.labels_given))}); "
                                      f"latest wins: {c.true_label} by {c.auditor or '(no name)'}"))
    rel = Path(c.true_label) / f"{sha[:16]}{path.suffix.lower()}"
    try:
        linked = _place(path, result.out / rel)
    except OSError as exc:
        result.skipped.append((sha, f"could not place {path}: {exc.strerror or exc}"))
        return
    result.linked += linked
    result.copied += not linked
    result.photos.append(FieldPhoto(sha, result.out / rel, c.true_label, row["label"] or "", row["confidence"],
                                    c.auditor, c.audited_at, row["source_path"] or "", line, c.pseudo))


def _write_manifest(result: FieldDataset) -> None:
    """MANIFEST.tsv: one row per photo, paths relative to the data set's folder."""
    with open(result.out / MANIFEST, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for p in result.photos:
            writer.writerow([p.sha256, p.file.relative_to(result.out).as_posix(), p.true_label, p.model_label,
                             "" if p.confidence is None else repr(p.confidence), p.auditor, p.audited_at,
                             p.source, p.line, int(p.pseudo)])


def read_manifest(out: Path) -> list[dict[str, str]]:
    """The manifest's rows as written (for `retrain` and tests)."""
    with open(Path(out) / MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))
