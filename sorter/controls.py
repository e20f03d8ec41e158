"""Control photos: photos of known label shuffled into an audit sample, so the audits can be checked.

An auditor who swaps fresh and rotten on every photo of a new line cannot be caught by the line's own
photos (the field test is drawn from the same audits) nor by the base test set (another domain). Crowd
labelling tools answer this with "gold questions" (Label Studio's ground truth tasks, Toloka's control
tasks): items whose answer is known, mixed in among the real ones. `audit sample --control-data DIR`
copies a few photos from DIR/<label>/ (a labelled set, e.g. the base data's test split) into the sample,
named, numbered, dated and given a model prediction like the drawn items, and records them in
`audit_controls` (migration m007), never as items. Every import (CSV, folder, Label Studio: they share
`sorter.audit.import_resolved`) recognises them by content hash (or, in a CSV without hashes, by the name
the sample gave them), records the answers there, and prints the score; `sorter retrain` refuses audits
whose samples' controls score below its threshold.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from sorter import store
from sorter.card import ControlFigures, sha256_file
from sorter.imaging import is_image_name
from sorter.verdict import Verdict

CONTROL_SHARE = 0.1  # of the drawn items: enough to see a swapped auditor, few enough to cost little time
MIN_CONTROLS = 5
MIN_ACCURACY = 0.9  # `sorter retrain --min-control-accuracy`'s default
_DIGITS = re.compile(r"\d+")


class ControlError(ValueError):
    """The control data cannot be used (not a folder, no class folder named like a label)."""


def default_count(n: int) -> int:
    """How many controls a sample of n items gets when --controls is not given: 10 %, at least 5."""
    return max(MIN_CONTROLS, math.ceil(CONTROL_SHARE * n))


@dataclass(frozen=True)
class ControlPhoto:
    path: Path
    true_label: str
    sha256: str


@dataclass
class Placed:
    """A control photo as the sample shows it: its file name there, the id in that name, the model's answer."""

    photo: ControlPhoto
    name: str
    shown_id: int
    predicted: str | None = None
    confidence: float | None = None
    verdict: Verdict | None = None


def read_folder(folder: Path, labels: list[str]) -> list[ControlPhoto]:
    """FOLDER/<label>/<photo> for the model's labels (other folders are not this model's classes)."""
    if not folder.is_dir():
        raise ControlError(f"--control-data {folder} is not a folder")
    photos = [ControlPhoto(p, sub.name, sha256_file(p))
              for sub in sorted(folder.iterdir()) if sub.is_dir() and sub.name in labels
              for p in sorted(sub.iterdir()) if p.is_file() and not p.name.startswith(".") and is_image_name(p.name)]
    if not photos:
        raise ControlError(f"--control-data {folder} has no photos in folders named like the model's labels "
                           f"({', '.join(labels)})")
    return photos


def choose(conn: sqlite3.Connection, photos: list[ControlPhoto], n: int,
           rng: np.random.Generator) -> list[ControlPhoto]:
    """n photos spread evenly over the labels, never one whose bytes are an item (its answer would be an
    audit), photos no earlier sample used first (an auditor should not learn the controls)."""
    shas = sorted({p.sha256 for p in photos})
    items = {r[0] for r in store.rows_by_sha(conn, shas, "sha256")}
    used = set() if not store.has_table(conn, "audit_controls") else {
        r[0] for r in conn.execute(f"SELECT DISTINCT sha256 FROM audit_controls WHERE sha256 IN ({_marks(shas)})",
                                   shas)}
    by_label: dict[str, list[ControlPhoto]] = {}
    seen: set[str] = set()
    for photo in photos:
        if photo.sha256 not in items and photo.sha256 not in seen:
            seen.add(photo.sha256)
            by_label.setdefault(photo.true_label, []).append(photo)
    queues = []
    for label in sorted(by_label):
        group = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
        queues.append(sorted(group, key=lambda p: p.sha256 in used))  # stable: unused first, shuffled within
    queues = [queues[i] for i in rng.permutation(len(queues))]
    chosen: list[ControlPhoto] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def disguise(borrowed: str, suffix: str, taken: set[str], rng: np.random.Generator) -> str:
    """A file name like a drawn item's: its last run of digits redrawn at the same width (the control's
    own extension kept: its bytes are copied unchanged), never a name the sample already has."""
    matches = list(_DIGITS.finditer(Path(borrowed).stem))
    stem = Path(borrowed).stem
    for _ in range(100):
        if matches:
            last = matches[-1]
            width = len(last.group())
            number = f"{int(rng.integers(0, 10 ** min(width, 9))):0{width}d}"
            name = f"{stem[:last.start()]}{number}{stem[last.end():]}{suffix}"
        else:
            name = f"{stem}_{int(rng.integers(0, 10_000)):04d}{suffix}"
        if name not in taken:
            return name
    return f"{stem}_{len(taken):06d}{suffix}"


def shown_ids(drawn: list[int], k: int, rng: np.random.Generator) -> list[int]:
    """k ids among the drawn items' ids (not one of them), so that sorted by name the controls fall between
    the items, not all at one end."""
    taken = set(drawn)
    low, high = min(drawn), max(drawn)
    free = [i for i in range(low, high + 1) if i not in taken][: 100 * k + 1000]
    free += list(range(high + 1, high + 1 + max(0, k - len(free))))
    return sorted(int(i) for i in rng.choice(free, size=k, replace=False))


def place(conn: sqlite3.Connection, photos: list[ControlPhoto], picked: list[dict],
          rng: np.random.Generator) -> list[Placed]:
    """Names for the chosen controls as the sample names items (`<id, 6 digits>-<file name>`): the id and the
    file name of a real item of the same stretch of ids that was not drawn, so a name's id and its file name
    relate as an item's do (only the extension is the control's own: its bytes are copied unchanged); where
    there are too few such items, a drawn item's name with its digits redrawn (`disguise`)."""
    if not picked or not photos:
        return []
    drawn = [r["id"] for r in picked]
    names = [Path(r["destination"]).name for r in picked]
    others = [(r[0], Path(r[1] or r[2]).name) for r in conn.execute(
        "SELECT id, destination, source_path FROM items WHERE id BETWEEN ? AND ? AND (destination IS NOT NULL "
        "OR source_path IS NOT NULL) ORDER BY id", [min(drawn), max(drawn)]) if r[0] not in set(drawn)]
    chosen = sorted(others[i] for i in rng.choice(len(others), size=min(len(photos), len(others)), replace=False))
    rest = len(photos) - len(chosen)
    taken = set(names) | {name for _, name in chosen}
    extra = []
    for shown in shown_ids(drawn + [i for i, _ in chosen], rest, rng) if rest else []:
        extra.append((shown, disguise(names[int(rng.integers(len(names)))], "", taken, rng)))
        taken.add(extra[-1][1])
    order = [photos[i] for i in rng.permutation(len(photos))]
    return [Placed(photo, f"{shown:06d}-{Path(name).stem}{photo.path.suffix}", shown)
            for photo, (shown, name) in zip(order, sorted(chosen + extra), strict=True)]


def predict(model: Path, placed: list[Placed]) -> tuple[list[Placed], str, str]:
    """The model in use's label, confidence and verdict on each control (the sample shows them for items);
    an unreadable photo is left out. Also the model's name and hash, as items record them."""
    from sorter.classify import classify_files, rules_for
    from sorter.model import Classifier

    clf = Classifier(model)
    kept = []
    for item, result in zip(placed, classify_files([p.photo.path for p in placed], clf, rules_for(clf)),
                            strict=True):
        if result.error is None:
            item.predicted, item.confidence, item.verdict = result.label, result.confidence, result.verdict
            kept.append(item)
    return kept, clf.model_id, clf.sha256


def copy_in(out: Path, placed: list[Placed], picked: list[dict], rng: np.random.Generator) -> None:
    """Copy each control into the sample with the modification time of a drawn item's copy (a folder
    import takes a file's time as the audit's time; and a fresh time would stand out)."""
    times = [(out / f"{r['id']:06d}-{Path(r['destination']).name}").stat().st_mtime for r in picked]
    for item in placed:
        target = out / item.name
        shutil.copyfile(item.photo.path, target)
        stamp = times[int(rng.integers(len(times)))]
        os.utime(target, (stamp, stamp))


def record(db: Database, sample_id: str, placed: list[Placed], model_id: str, model_sha256: str, when: str) -> None:
    """One `audit_controls` row per placed photo, no answer yet (in the caller's transaction or its own)."""
    with store.immediate(db):
        db.conn.executemany(
            "INSERT INTO audit_controls (sample_id, sha256, true_label, source_path, name, shown_id, predicted, "
            "confidence, verdict, model_id, model_sha256, placed_at, auditor) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
            [(sample_id, p.photo.sha256, p.photo.true_label, str(p.photo.path.resolve()), p.name, p.shown_id,
              p.predicted, p.confidence, p.verdict, model_id, model_sha256, when) for p in placed])


# ---- imports: answers on control photos ----

@dataclass
class Known:
    """Every control photo the database knows: by content hash, and by the name a sample gave it."""

    shas: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)

    def match(self, sha: str, name: str) -> str | None:
        """The control's hash when these bytes (or, without a hash, this sample file name) are a control."""
        if sha:
            return sha.lower() if sha.lower() in self.shas else None
        return self.names.get(Path(name).name) if name else None


def known(conn: sqlite3.Connection) -> Known:
    if not store.has_table(conn, "audit_controls"):
        return Known()
    rows = conn.execute("SELECT sha256, name FROM audit_controls").fetchall()
    return Known({r[0] for r in rows}, {r[1]: r[0] for r in rows})


def shown(conn: sqlite3.Connection, sha: str, name: str) -> dict | None:
    """The control as a sample showed it (its name there first, else its latest placement); None when
    these bytes are no control photo."""
    if not store.has_table(conn, "audit_controls"):
        return None
    cursor = conn.execute("SELECT * FROM audit_controls WHERE sha256 = ? ORDER BY name = ? DESC, placed_at DESC, "
                          "id DESC LIMIT 1", [sha, name])
    row = cursor.fetchone()
    return dict(zip([c[0] for c in cursor.description], row, strict=True)) if row else None


@dataclass
class ControlAnswer:
    """An auditor's label for a control photo: recorded in `audit_controls`, never as an audit."""

    sha256: str
    answer: str
    auditor: str
    answered_at: str
    origin: str


@dataclass
class ControlScore:
    """How an import's answers on control photos compare with the photos' known labels."""

    right: int
    total: int
    wrong: list[tuple[str, str]] = field(default_factory=list)  # (known label, answer)

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 1.0

    def line(self) -> str:
        """One line for the import's output."""
        text = f"controls: {self.right} of {self.total} right"
        if self.right == self.total:
            return text + " (photos of known label among the sample)"
        text += f" ({self.accuracy:.0%}) — these answers disagree with photos of known label"
        if self.accuracy < MIN_ACCURACY:
            text += f"; `sorter retrain` refuses audits whose controls score below {MIN_ACCURACY:.0%}"
        return text


def _target(db: Database, answer: ControlAnswer) -> tuple[int | None, dict]:
    """The row the answer goes to: the latest sample with this photo that this auditor has not answered
    yet (else the latest one: a corrected answer), their own row there, else the unanswered placement row
    (None: a new row for another auditor, copied from it)."""
    rows = [dict(r) for r in db.query("SELECT * FROM audit_controls WHERE sha256 = ? ORDER BY placed_at DESC, id DESC",
                                      [answer.sha256])]
    answered = {r["sample_id"] for r in rows if r["auditor"] == answer.auditor and r["answer"] is not None}
    samples = [r["sample_id"] for r in rows]
    sample = next((s for s in samples if s not in answered), samples[0])
    here = [r for r in rows if r["sample_id"] == sample]
    own = next((r for r in here if r["auditor"] == answer.auditor), None)
    if own is not None:
        return own["id"], own
    blank = next((r for r in here if r["answer"] is None), None)
    return (blank["id"], blank) if blank is not None else (None, here[0])


def write_answers(db: Database, answers: Sequence[ControlAnswer]) -> ControlScore:
    """Record each answer (one row per sample, photo and auditor) in one transaction; the score."""
    score = ControlScore(0, 0)
    with store.immediate(db):
        for a in answers:
            row_id, row = _target(db, a)
            if row_id is None:
                db.execute("INSERT INTO audit_controls (sample_id, sha256, true_label, source_path, name, shown_id, "
                           "predicted, confidence, verdict, model_id, model_sha256, placed_at, answer, auditor, "
                           "answered_at, origin) SELECT sample_id, sha256, true_label, source_path, name, shown_id, "
                           "predicted, confidence, verdict, model_id, model_sha256, placed_at, ?, ?, ?, ? "
                           "FROM audit_controls WHERE id = ?",
                           [a.answer, a.auditor, a.answered_at, a.origin, row["id"]])
            else:
                db.execute("UPDATE audit_controls SET answer = ?, auditor = ?, answered_at = ?, origin = ? "
                           "WHERE id = ?",
                           [a.answer, a.auditor, a.answered_at, a.origin, row_id])
            score.total += 1
            if a.answer == row["true_label"]:
                score.right += 1
            else:
                score.wrong.append((row["true_label"], a.answer))
    return score


# ---- retrain: the controls of the audits a data set is built from ----

def _marks(values: Sequence) -> str:
    return ",".join("?" * len(values))


def figures(conn: sqlite3.Connection, since: timedelta | None = None) -> ControlFigures:
    """The control figures of the samples the audited items received since `since` were drawn in (as
    `sorter.dataset` picks audited items: by the item's received time)."""
    start = (datetime.now(UTC) - since).isoformat(timespec="milliseconds") if since else ""
    if not store.has_table(conn, "audits"):
        return ControlFigures()
    audited = {r[0] for r in conn.execute("SELECT DISTINCT a.item_id FROM audits a JOIN items i ON i.id = a.item_id "
                                          "WHERE i.received_at >= ?", [start])}
    if not store.has_table(conn, "audit_controls") or not audited:
        return ControlFigures(audited=len(audited))
    ids = sorted(audited)
    draws = conn.execute(f"SELECT item_id, sample FROM audit_draws WHERE item_id IN ({_marks(ids)})", ids).fetchall()
    samples = sorted({s for _, s in draws})
    rows = conn.execute(f"SELECT sample_id, sha256, true_label, answer FROM audit_controls "
                        f"WHERE sample_id IN ({_marks(samples)})", samples).fetchall() if samples else []
    answered = [r for r in rows if r[3] is not None]
    live = {r[0] for r in answered}
    right = sum(r[2] == r[3] for r in answered)
    return ControlFigures(audited=len(audited), covered=len({i for i, s in draws if s in live}), samples=len(live),
                          placed=len({(r[0], r[1]) for r in rows}), answered=len(answered), right=right,
                          accuracy=round(right / len(answered), 6) if answered else None)
