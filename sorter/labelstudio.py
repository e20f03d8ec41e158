"""Label Studio: an `audit sample` as tasks to label there, and its JSON export back as audits.

Export (`sorter audit export-labelstudio SAMPLE_DIR --document-root ROOT`) writes, beside the sample's
copies, `labelstudio-tasks.json` (Label Studio's tasks import format: `data.image` as a local-files URL
`/data/local-files/?d=<path under LOCAL_FILES_DOCUMENT_ROOT>`, the item's content hash in `data.sha256`,
and the model's label as a `predictions` pre-annotation of type `choices`) and `labelstudio-config.xml`
(an Image + Choices labeling config listing the card's labels, whose names the pre-annotations use).

Import (`sorter audit import-labelstudio EXPORT.json`) reads Label Studio's "JSON" export (a list of
tasks with `annotations[].result[].value.choices`) and writes one audit per (item, annotator) through
`sorter.audit.write_audits`, so they are the same audits as CSV and folder imports. Items are matched by
content hash: `data.sha256`, else the hash of the file `data.image` names under the document root.
Every annotation that gives no audit says why in one line (skipped in Label Studio, no choice yet, an
older annotation by the same person); an annotation that cannot be trusted (unknown label, several
choices, an item not in the database) is an error, and errors write nothing unless `partial`.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from xml.sax.saxutils import quoteattr

from sorter import controls, store
from sorter.audit import SHA256_HEX, Answer, Audit, ImportResult, check_label, import_resolved, item_by_sha, utc_text
from sorter.card import sha256_file

TASKS = "labelstudio-tasks.json"
CONFIG = "labelstudio-config.xml"
FROM_NAME, TO_NAME = "label", "image"  # the Choices and Image tag names in CONFIG; results must use them
LOCAL_FILES = "/data/local-files/"
ORIGIN = "labelstudio"
_ID_PREFIX = re.compile(r"^(\d+)-")  # `audit sample` names its copies <item id, 6 digits>-<name>


class LabelStudioError(ValueError):
    """The input cannot be used at all (not a sample folder, not an export, a file outside the root)."""


# ---- export: a sample → tasks JSON and a labeling config ----

def labeling_config(labels: list[str]) -> str:
    """An Image + single-choice Choices config; the names match every pre-annotation's from_name/to_name."""
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true" required="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def local_files_url(path: Path, document_root: Path) -> str:
    """`/data/local-files/?d=<path relative to the document root>`, percent-encoded (a `&`, `#` or space in
    a name would otherwise end or break the query); LabelStudioError when the file is not under the root."""
    try:
        relative = path.resolve().relative_to(document_root.resolve())
    except ValueError:
        raise LabelStudioError(f"{path} is not under the document root {document_root}: Label Studio serves "
                               "only files below LOCAL_FILES_DOCUMENT_ROOT") from None
    return f"{LOCAL_FILES}?d={quote(relative.as_posix(), safe='/')}"


def _camera_item(conn: sqlite3.Connection, item_id: int | None, sha: str) -> tuple[int, str] | None:
    """A row with no recorded hash (a camera snapshot) whose file has these bytes: the content still decides."""
    if item_id is None:
        return None
    row = conn.execute("SELECT id, destination FROM items WHERE id = ? AND sha256 IS NULL", [item_id]).fetchone()
    if row is None or not row[1] or not Path(row[1]).is_file():
        return None
    return (row[0], sha) if sha256_file(Path(row[1])) == sha else None


def find_item(conn: sqlite3.Connection, sha: str, item_id: int | None) -> tuple[int, str] | None:
    """The item these bytes are: by recorded hash, else the named camera item if its snapshot has them."""
    return item_by_sha(conn, sha) or _camera_item(conn, item_id, sha)


def _sample_rows(sample_dir: Path) -> list[dict[str, str]]:
    manifest = sample_dir / "sample.csv"
    if not manifest.is_file():
        raise LabelStudioError(f"{sample_dir} has no sample.csv: make it with `sorter audit sample --out DIR`")
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def _task(conn: sqlite3.Connection, sample_dir: Path, row: dict[str, str], document_root: Path,
          labels: list[str]) -> dict[str, Any] | str:
    """One task for one sample row, or the error text."""
    name = row.get("file", "")
    copy = sample_dir / name
    if not name or not copy.is_file():
        return f"'{name}' is not in {sample_dir}"
    sha = sha256_file(copy)
    if row.get("sha256") and row["sha256"].lower() != sha:
        return f"'{name}' changed since it was sampled (its hash is not the one in sample.csv)"
    control = controls.shown(conn, sha, name)
    if control is not None:  # a photo of known label: the task it gets is an item's, as the sample shows it
        item = {"id": control["shown_id"], "label": control["predicted"], "confidence": control["confidence"],
                "verdict": control["verdict"], "model_id": control["model_id"], "model_sha256": control["model_sha256"]}
        return _task_of(item, copy, sha, name, document_root, labels)
    prefix = _ID_PREFIX.match(name)
    found = find_item(conn, sha, int(prefix.group(1)) if prefix else None)
    if found is None:
        return f"'{name}': its content is not in the database"
    row = conn.execute("SELECT id, label, confidence, verdict, model_id, model_sha256 FROM items WHERE id = ?",
                       [found[0]]).fetchone()
    return _task_of(dict(row), copy, sha, name, document_root, labels)


def _task_of(item: dict[str, Any], copy: Path, sha: str, name: str, document_root: Path,
             labels: list[str]) -> dict[str, Any]:
    """The task of one sample photo: its local-files URL, hash, id and verdict, the model's pre-annotation."""
    task: dict[str, Any] = {"data": {"image": local_files_url(copy, document_root), "sha256": sha,
                                     "item_id": item["id"], "file": name, "verdict": item["verdict"]}}
    if item["label"] in labels:  # a choice the config lacks would not show: no pre-annotation then
        version = item["model_id"] or "unknown"
        if item["model_sha256"]:
            version = f"{version}@{item['model_sha256'][:12]}"
        task["predictions"] = [{"model_version": version, "score": item["confidence"], "result": [
            {"id": f"item{item['id']}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
             "value": {"choices": [item["label"]]}}]}]
    return task


@dataclass
class ExportResult:
    tasks: int
    pre_annotated: int
    errors: list[str]
    files: list[Path]


def export_sample(db_path: Path, sample_dir: Path, document_root: Path, labels: list[str]) -> ExportResult:
    """Tasks for every row of SAMPLE_DIR/sample.csv (all or, with any error, nothing written)."""
    rows = _sample_rows(sample_dir)
    conn = store.open_reader(db_path)
    try:
        made = [_task(conn, sample_dir, row, document_root, labels) for row in rows]
    finally:
        conn.close()
    errors = [f"row {n}: {m}" for n, m in enumerate(made, start=2) if isinstance(m, str)]
    tasks = [m for m in made if not isinstance(m, str)]
    if errors:
        return ExportResult(len(tasks), 0, errors, [])
    (sample_dir / TASKS).write_text(json.dumps(tasks, indent=2, ensure_ascii=False) + "\n")
    (sample_dir / CONFIG).write_text(labeling_config(labels))
    return ExportResult(len(tasks), sum("predictions" in t for t in tasks), [], [sample_dir / TASKS,
                                                                                sample_dir / CONFIG])


# ---- import: a Label Studio JSON export → audits ----

@dataclass
class LabelStudioImport(ImportResult):
    """An import's counts, errors, and one line for each annotation or task that gave no audit."""

    notes: list[str] = field(default_factory=list)


def read_export(path: Path) -> list[dict]:
    """The export's tasks; LabelStudioError when it is not Label Studio's JSON export (a list of tasks)."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LabelStudioError(f"{path}: not JSON ({exc})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict)
                                              for t in tasks):
        raise LabelStudioError(f"{path}: not a Label Studio JSON export (want a list of tasks with `data`; "
                               "export with the JSON format, not JSON_MIN or CSV)")
    return tasks


def path_from_url(url: str, document_root: Path) -> Path | str:
    """The file a `/data/local-files/?d=…` URL names under the document root, or why there is none. A path
    that climbs out of the root (`..`, a symlink) is refused: an export is not a licence to read any file."""
    parts = urlsplit(url)
    if not parts.path.endswith(LOCAL_FILES.rstrip("/")) and not parts.path.endswith(LOCAL_FILES):
        return f"image '{url}' is not a local-files URL"
    relative = (parse_qs(parts.query).get("d") or [""])[0]
    if not relative:
        return f"image '{url}' names no file (no ?d=)"
    root = document_root.resolve()
    path = (root / relative.lstrip("/")).resolve()
    if not path.is_relative_to(root):
        return f"image '{url}' is outside the document root {document_root}"
    if not path.is_file():
        return f"image '{url}': {path} not found"
    return path


def _task_item(conn: sqlite3.Connection, data: dict, document_root: Path | None,
               known: controls.Known) -> tuple[int, str] | str:
    """The task's item by content hash: `data.sha256`, else the hash of its local file. A control photo
    is `(0, sha)`: never an item (its `item_id` is only the one its sample's name shows)."""
    sha = str(data.get("sha256") or "").lower()
    if sha and not SHA256_HEX.match(sha):
        return f"bad sha256 '{sha}' in task data (want 64 hex digits)"
    if not sha:
        if document_root is None:
            return "no sha256 in task data, and no --document-root to find its image"
        path = path_from_url(str(data.get("image", "")), document_root)
        if isinstance(path, str):
            return path
        sha = sha256_file(path)
    if known.match(sha, ""):
        return 0, sha
    item_id = data.get("item_id")
    found = find_item(conn, sha, item_id if isinstance(item_id, int) else None)
    return found or f"unknown item sha256 {sha[:12]}… (not in the database)"


def annotator(completed_by: Any) -> str:
    """The auditor name: `labelstudio:<email>` (older exports give the user) or `labelstudio:<user id>`."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return f"{ORIGIN}:{completed_by}" if completed_by not in (None, "") else ORIGIN


def _choice(annotation: dict) -> list[str] | str:
    """The choices of the annotation's `choices` result for our Choices tag (or its only one), or an error."""
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
    ours = [r for r in results if r.get("from_name") == FROM_NAME] or results
    if len(ours) > 1:
        return f"{len(ours)} choices results (from {', '.join(sorted(str(r.get('from_name')) for r in ours))})"
    if not ours:
        return []
    choices = (ours[0].get("value") or {}).get("choices") or []
    return [str(c) for c in choices] if isinstance(choices, list) else f"choices {choices!r} is not a list"


def _resolve(conn: sqlite3.Connection, tasks: list[dict], labels: list[str],
             document_root: Path | None) -> tuple[list[Answer], list[str], list[str]]:
    """Audits and control answers (the latest annotation per photo and annotator), error and note lines."""
    chosen: dict[tuple[int, str, str], tuple[Answer, str, str]] = {}
    errors, notes = [], []
    known = controls.known(conn)
    for number, task in enumerate(tasks, start=1):
        where = f"task {task.get('id', f'#{number}')}"
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        if not annotations:
            notes.append(f"{where}: no annotation yet")
            continue
        for ann in annotations:
            if ann.get("was_cancelled"):
                notes.append(f"{where}, annotation {ann.get('id', '?')} by {annotator(ann.get('completed_by'))}: "
                             "skipped in Label Studio (was_cancelled)")
        live = [a for a in annotations if not a.get("was_cancelled")]
        if not live:
            continue  # an item only skipped needs no lookup: it gives no audit either way
        found = _task_item(conn, task["data"], document_root, known)
        if isinstance(found, str):
            errors.append(f"{where}: {found}")
            continue
        for ann in live:
            who = annotator(ann.get("completed_by"))
            here = f"{where}, annotation {ann.get('id', '?')} by {who}"
            choice = _choice(ann)
            if not isinstance(choice, str) and len(choice) > 1:
                choice = f"several choices ({', '.join(choice)}); an audit is one label"
            if isinstance(choice, str):
                errors.append(f"{here}: {choice}")
                continue
            if not choice:
                notes.append(f"{here}: no choice made")
                continue
            if problem := check_label(choice[0], labels):
                errors.append(f"{here}: {problem}")
                continue
            stamp = ann.get("updated_at") or ann.get("created_at")
            try:
                when = utc_text(stamp, store.now_iso())
            except (ValueError, TypeError):
                errors.append(f"{here}: bad time '{stamp}'")
                continue
            audit: Answer = (Audit(found[0], found[1], choice[0], who, when, ORIGIN) if found[0]
                             else controls.ControlAnswer(found[1], choice[0], who, when, ORIGIN))
            key = (found[0], found[1], who)
            older = chosen.get(key)
            if older and older[2] > when:
                notes.append(f"{here}: older than {older[1]} by the same annotator, not used")
                continue
            if older:
                notes.append(f"{older[1]}: superseded by {here}")
            chosen[key] = (audit, here, when)
    return [a for a, _, _ in chosen.values()], errors, notes


def import_export(db_path: Path, export: Path, labels: list[str], document_root: Path | None = None,
                  partial: bool = False) -> LabelStudioImport:
    """`sorter audit import-labelstudio`: validate every annotation, then write all (or, with errors, nothing)."""
    tasks = read_export(export)

    def resolve(conn: sqlite3.Connection) -> tuple[list[Answer], LabelStudioImport]:
        audits, errors, notes = _resolve(conn, tasks, labels, document_root)
        return audits, LabelStudioImport(skipped=len(notes), errors=errors, notes=notes)

    return import_resolved(db_path, resolve, partial)
