"""Folder source: recover unfinished moves, scan the backlog, follow watchdog events, route batches.

Threads: the watchdog observer offers paths to an `Intake` (deduplicated, so the two or three
events a copy produces count once); decode workers read each file once (hash + decode the
same bytes) and hand chunks of up to a batch to a bounded queue; one inference worker per
interpreter gathers a batch (N items or T ms) and scores it; one routing thread records and
moves each batch through the single store thread. Per batch: record intents → move → record
done, so a SIGKILL at any instant leaves rows that `recover` can finish on the next start. The
configured outputs fire per routed item (after its move), their deliveries recorded with the intents
(`sorter.delivery`), so one that did not go out before a stop goes out at the next start.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlite_utils import Database
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from sorter import memory, store
from sorter.config import Settings
from sorter.delivery import Ledger, Planned, event_of
from sorter.files import read_at_most, refusal
from sorter.imaging import ImageError, decode, is_image_name, one_image_per_thread
from sorter.item_row import ItemRow
from sorter.metrics import Telemetry
from sorter.model import Classifier, warm_up_all
from sorter.outputs import Dispatcher, build_outputs
from sorter.route import Changed, Identity, finish, free_name, from_text, move, path_text, stored_at, target_dir
from sorter.stages import TICK_S, DecodeStage, RecordStage, ScoreStage, Stage, queued
from sorter.states import ItemState
from sorter.verdict import Verdict, VerdictRules

log = logging.getLogger("sorter.watch")
MAX_RETRY_S = 3600.0
OPEN_GRACE_S = 60.0


@dataclass
class Item:
    """One file on its way through the pipeline."""

    path: Path
    received_at: str = field(default_factory=store.now_iso)
    sha256: str | None = None
    image: np.ndarray | None = None
    error: str | None = None
    label: str | None = None
    confidence: float | None = None
    verdict: Verdict | None = None
    scores: dict[str, float] | None = None
    ood_score: float | None = None  # the OOD score (logits models: energy or feature distance) `unknown` was decided on
    identity: Identity | None = None  # the file that was read: only that file is moved


def ignored(name: str, temp_suffixes: list[str]) -> bool:
    """Dot-files and temporary names are someone else's work in progress."""
    return name.startswith(".") or any(name.endswith(s) for s in temp_suffixes)


class Intake:
    """Paths waiting to be processed: each at most once in flight, held ones only when due."""

    def __init__(self, temp_suffixes: list[str]):
        self._suffixes = temp_suffixes
        self._queue: queue.Queue[Path] = queue.Queue()
        self._pending: set[Path] = set()
        self._held: dict[Path, tuple[float, float]] = {}  # path → (due, current backoff)
        self._why: dict[Path, str] = {}  # path → why it is held, for the exit summary
        self._lock = threading.Lock()

    def offer(self, path: Path) -> bool:
        if ignored(path.name, self._suffixes):
            return False
        with self._lock:
            hold = self._held.get(path)
            if path in self._pending or (hold and hold[0] > time.monotonic()):
                return False
            self._pending.add(path)
        self._queue.put(path)
        return True

    def take(self, timeout: float) -> Path | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def take_many(self, limit: int, timeout: float) -> list[Path]:
        """The first path waits up to `timeout`; up to `limit` - 1 more that are already queued come along."""
        first = self.take(timeout)
        return [] if first is None else [first, *queued(self._queue, limit - 1)]

    def done(self, path: Path) -> None:
        with self._lock:
            self._pending.discard(path)

    def hold(self, path: Path, first_delay: float, reason: str = "held") -> None:
        """Not retried before the delay, which doubles on each failure: no hot loop."""
        with self._lock:
            backoff = min(MAX_RETRY_S, self._held[path][1] * 2) if path in self._held else first_delay
            self._held[path] = (time.monotonic() + backoff, backoff)
            self._why[path] = reason

    def release(self, path: Path) -> None:
        with self._lock:
            self._held.pop(path, None)
            self._why.pop(path, None)

    def why(self, path: Path) -> str | None:
        with self._lock:
            return self._why.get(path)

    def due_holds(self) -> list[Path]:
        now = time.monotonic()
        with self._lock:
            return [p for p, (due, _) in self._held.items() if due <= now and p not in self._pending]

    def idle(self) -> bool:
        with self._lock:
            return not self._pending


class Stability:
    """When a file is finished: its size and mtime have not changed for `stable_seconds` and no
    writer holds it open. A close event does not skip the wait (a writer may open the file again and
    append: `head -c 3000 x > a.jpg; tail -c +3001 x >> a.jpg`), and a file some process has opened
    (inotify IN_OPEN without its close) is never due, however long its writer pauses. Opens are
    counted, but inotify and watchdog's queue merge an event identical to the one before it: a writer's
    open followed at once by another process's look counts one open and one close. So a file written to
    (IN_MODIFY) also counts as open until a writer closes it (IN_CLOSE_WRITE), whatever readers do."""

    def __init__(self, stable_seconds: float):
        self.stable = stable_seconds
        # a file reported open but unchanged this long is read anyway: its close event may have been lost
        self.open_grace = max(OPEN_GRACE_S, 20 * stable_seconds)
        self._seen: dict[Path, tuple[int, int, float]] = {}
        self._open: dict[Path, int] = {}  # opens not yet closed, from the events
        self._writing: set[Path] = set()  # written to since a writer last closed it
        self._lock = threading.Lock()

    def track(self, path: Path) -> bool:
        """Note the file's size and mtime (the wait restarts when they changed); False if it is gone."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        with self._lock:
            old = self._seen.get(path)
            if old is None or (old[0], old[1]) != (st.st_size, st.st_mtime_ns):
                self._seen[path] = (st.st_size, st.st_mtime_ns, time.monotonic())
        return True

    def opened(self, path: Path) -> None:
        with self._lock:
            self._open[path] = self._open.get(path, 0) + 1

    def written(self, path: Path) -> None:
        with self._lock:
            self._writing.add(path)

    def closed(self, path: Path, wrote: bool = False) -> None:
        """A close (after writing or not): one open fewer. Our own reads open and close too."""
        with self._lock:
            left = self._open.pop(path, 0) - 1
            if left > 0:
                self._open[path] = left
            if wrote:
                self._writing.discard(path)

    def _busy(self, path: Path) -> bool:
        return path in self._open or path in self._writing

    def is_open(self, path: Path) -> bool:
        with self._lock:
            return self._busy(path)

    def forget(self, path: Path) -> None:
        """The path was deleted or moved away: what was known of it no longer applies."""
        with self._lock:
            self._forget(path)

    def _forget(self, path: Path) -> None:
        self._seen.pop(path, None)
        self._open.pop(path, None)
        self._writing.discard(path)

    def due(self) -> list[Path]:
        with self._lock:
            paths = list(self._seen)
        ready = []
        for path in paths:
            there = self.track(path)  # one lstat: the size check and whether it still exists
            with self._lock:
                entry = self._seen.get(path)
                if entry is None:
                    continue
                quiet = time.monotonic() - entry[2]
                if not there:
                    del self._seen[path]
                elif quiet >= self.stable and (not self._busy(path) or quiet >= self.open_grace):
                    if self._busy(path):  # a close event lost (inotify overflow): never strand the file
                        log.warning("%s still looks open but has not changed for %.0f s; reading it",
                                    path.name, quiet)
                    self._forget(path)
                    ready.append(path)
        return ready

    def empty(self) -> bool:
        with self._lock:
            return not self._seen


class Events(FileSystemEventHandler):
    """Moved-in files (a finished file renamed into place) go straight to the intake unless some process
    still has them open; everything else (created, modified, closed) waits in `Stability`. Subfolders are
    followed when `recursive` (a camera's dated folders); a folder moved or made in INCOMING is scanned,
    since the files inside it bring no events of their own. Nothing under OUT is ever looked at."""

    def __init__(self, incoming: Path, intake: Intake, stability: Stability, recursive: bool = True,
                 out: Path | None = None):
        self.incoming, self.intake, self.stability = incoming, intake, stability
        self.recursive, self.out = recursive, out

    def _mine(self, path: str | bytes) -> Path | None:
        p = Path(os.fsdecode(path))
        return p if within(self.incoming, p, self.recursive, self.out) else None

    def on_opened(self, event: FileSystemEvent) -> None:
        if not event.is_directory and (p := self._mine(event.src_path)):
            self.stability.opened(p)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory and (p := self._mine(event.src_path)):
            self.stability.closed(p, wrote=True)
            self.stability.track(p)

    def on_closed_no_write(self, event: FileSystemEvent) -> None:
        if not event.is_directory and (p := self._mine(event.src_path)):
            self.stability.closed(p)

    def on_moved(self, event: FileSystemEvent) -> None:
        if (p := self._mine(event.src_path)) and not event.is_directory:
            self.stability.forget(p)
        if not (p := self._mine(event.dest_path)):
            return
        if event.is_directory:
            self._folder(p)
        elif self.stability.is_open(p):
            self.stability.track(p)
        else:
            self.intake.offer(p)

    def on_created(self, event: FileSystemEvent) -> None:
        if not (p := self._mine(event.src_path)):
            return
        if event.is_directory:
            self._folder(p)
        else:
            self.stability.track(p)

    def _folder(self, path: Path) -> None:
        """A folder made or moved in: scanned when subfolders are followed, else said to be skipped (its
        files would otherwise be read once, and what is added to it later never). A hidden folder (someone's
        work in progress) and OUT itself are never looked into, as in `backlog`."""
        if path.name.startswith(".") or path == self.out:
            return
        if self.recursive:
            scan(path, self.intake, self.stability, self.recursive, self.out)
        else:
            log.warning("subfolder %s of %s not looked into (recursive = false)", path_text(path.name),
                        self.incoming)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory and (p := self._mine(event.src_path)):
            self.stability.written(p)
            self.stability.track(p)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if not event.is_directory and (p := self._mine(event.src_path)):
            self.stability.forget(p)


def within(incoming: Path, path: Path, recursive: bool, out: Path | None) -> bool:
    """Is `path` a file of INCOMING's: a direct child, or (recursive) in a subfolder that is neither
    hidden (someone's work in progress) nor OUT itself (OUT may sit inside INCOMING; an INCOMING inside
    OUT is all INCOMING's)."""
    if path.parent == incoming:
        return True
    if not recursive or (out is not None and out.is_relative_to(incoming) and path.is_relative_to(out)):
        return False
    try:
        parts = path.relative_to(incoming).parts
    except ValueError:
        return False
    return not any(part.startswith(".") for part in parts[:-1])


class Unsettled(Exception):
    """The file changed while it was read: not what settled, so not an item yet."""


def load(path: Path, size: tuple[int, int], settings: Settings) -> Item | None:
    """Read the file once (never through a symlink), hash those bytes, decode them; None if gone.
    Raises `Unsettled` when the file grew, shrank or was touched while it was read."""
    item = Item(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if (reason := refusal(st, settings.max_file_bytes)) is not None:
        item.error = reason
        return item
    try:
        data, after = read_at_most(path, settings.max_file_bytes, st.st_size)
    except FileNotFoundError:
        return None
    except OSError as exc:
        item.error = "symlink: not followed" if exc.errno == errno.ELOOP else f"unreadable: {exc.strerror}"
        return item
    if len(data) > settings.max_file_bytes:  # grew since it was measured
        item.error = f"too-large: more than {settings.max_file_bytes:,} bytes"
        return item
    item.identity = Identity.of(after)
    if after.st_size != len(data) or (after.st_ino == st.st_ino and after.st_mtime_ns != st.st_mtime_ns):
        raise Unsettled(path)
    item.sha256 = hashlib.sha256(data).hexdigest()
    if not is_image_name(path.name):
        item.error = f"wrong-extension: {path.suffix or '(none)'}"
        return item
    try:
        item.image = decode(data, size, settings.max_pixels)
    except ImageError as exc:
        item.error = str(exc)
    return item


@dataclass
class Summary:
    routed: int = 0
    duplicates: int = 0
    rejected: int = 0
    held: int = 0
    recovered: int = 0
    left: dict[str, int] = field(default_factory=dict)  # files still in INCOMING at exit, by reason
    outputs: dict[str, dict] = field(default_factory=dict)  # per output: sent, failed, retried (this run)

    def line(self, dry_run: bool = False) -> str:
        """The one-line summary a run ends with."""
        verb = "would route" if dry_run else "routed"
        text = (f"{verb} {self.routed}, duplicates {self.duplicates}, rejected {self.rejected}, "
                f"held {self.held}, recovered {self.recovered}")
        if self.left:
            why = "; ".join(f"{n} {reason}" for reason, n in sorted(self.left.items(), key=lambda kv: -kv[1]))
            text += f"; {sum(self.left.values())} left in INCOMING ({why})"
        for name, stats in self.outputs.items():
            text += f"; {name}: sent {stats['sent']}, failed {stats['failed']}"
        return text


class FileOutcomes(Protocol):
    """What the router tells the source about each file of a batch, so retry state stays with the source."""

    def finished(self, path: Path) -> None: ...  # no longer in flight (routed, held, or to be read again)

    def moved(self, path: Path) -> None: ...  # reached OUT: any earlier hold is over

    def retry_later(self, path: Path, reason: str) -> None: ...  # left in INCOMING: offer again after a backoff

    def changed(self, path: Path) -> None: ...  # not the bytes that were scored: read again once it settles


class Router:
    """Records and moves classified batches: intents → moves → done, all through the writer."""

    def __init__(self, out: Path, writer: store.Writer, classifier: Classifier, files: FileOutcomes,
                 settings: Settings, dry_run: bool, source: str = "watch",
                 incoming: Path | None = None,
                 ledger: Ledger | None = None):
        self.out, self.writer, self.clf, self.files = out, writer, classifier, files
        self.ledger = ledger  # the configured outputs (None: none, or a dry run)
        self.settings, self.dry_run, self.source = settings, dry_run, source
        self.incoming = incoming  # log lines name a file by its path under INCOMING
        self.summary = Summary()
        self._finished: list[dict] = []  # outcomes of the last batch's moves, not yet committed

    def _row(self, item: Item, dst: Path, reuse: dict | None) -> dict:
        row = ItemRow(state=ItemState.DRY_RUN if self.dry_run else ItemState.INTENT, source=self.source,
                      received_at=item.received_at, source_path=path_text(item.path), sha256=item.sha256,
                      destination=path_text(dst), label=item.label, confidence=item.confidence,
                      verdict=item.verdict, scores=item.scores, ood_score=item.ood_score,
                      model_id=self.clf.model_id, model_sha256=self.clf.sha256, error=item.error)
        return row.retry_values(reuse["id"]) if reuse else row.values()

    def plan(self, db: Database, batch: list[Item], firsts: dict[str, dict]) -> list[dict]:
        """Decide duplicate-or-not and a free destination name for each item, as intent rows."""
        holds = store.held_rows(db, [path_text(i.path) for i in batch])
        seen: set[str] = set()
        taken: set[Path] = set()
        rows = []
        for item in batch:
            reuse = holds.get(path_text(item.path))
            if reuse and reuse["sha256"] != item.sha256:
                reuse = None
            if reuse:
                duplicate = reuse["duplicate_of"] is not None
            else:
                duplicate = item.sha256 is not None and (item.sha256 in firsts or item.sha256 in seen)
            if item.sha256:
                seen.add(item.sha256)
            try:
                folder = target_dir(self.out, item.verdict, item.label, item.error, duplicate)
            except ValueError as exc:  # a label that would leave OUT (cards refuse them): rejected, not moved out
                item.error = f"unsafe-destination: {exc}"
                folder = target_dir(self.out, item.verdict, item.label, item.error, duplicate)
            dst = free_name(folder, item.path.name, item.sha256, taken)
            taken.add(dst)
            rows.append(self._row(item, dst, reuse))
        return rows

    def _record(self, db: Database, batch: list[Item],
                finished: list[dict]) -> tuple[list[dict], list[int], dict[int, Planned]]:
        """One transaction, one fsync per batch: the previous batch's outcomes, then this batch's intents
        and the output deliveries they owe."""
        with store.immediate(db):
            store.mark_done(db, finished)
            firsts = store.first_rows(db, [i.sha256 for i in batch if i.sha256])
            rows = self.plan(db, batch, firsts)
            ids = store.write_intents(db, rows, firsts)
            return rows, ids, self._owed(db, batch, rows, ids)

    def _owed(self, db: Database, batch: list[Item], rows: list[dict], ids: list[int]) -> dict[int, Planned]:
        """Each routable item's event for the outputs its verdict fires (duplicates and rejects fire none)."""
        if self.ledger is None:
            return {}
        events = [event_of(item_id, {**row, "source": self.source, "received_at": item.received_at})
                  for item, row, item_id in zip(batch, rows, ids, strict=True)
                  if item.error is None and not self._duplicate(row)]
        return {p.event["item_id"]: p for p in self.ledger.plan(db, events)}

    def _duplicate(self, row: dict) -> bool:
        parts = stored_at(self.out, row["destination"]).relative_to(self.out).parts
        return bool(parts) and parts[0] == "duplicates"

    def route(self, batch: list[Item]) -> list[Item]:
        """Intents (committed) → moves; the outcomes are committed with the next batch's intents or by
        `flush`. A crash in between leaves intents whose files already moved: `recover` finds them done.
        Returns the items settled for good (not held in place for a retry that will see them again)."""
        finished, self._finished = self._finished, []
        try:
            rows, ids, owed = self.writer.call(lambda db: self._record(db, batch, finished))
        except Exception as exc:  # rolled back, nothing moved: keep the outcomes, try these files again later
            self._finished = finished
            reason = f"not recorded: {exc}"
            log.error("could not record a batch of %d (%s); the files stay in INCOMING, retry in ≥%.0f s",
                      len(batch), exc, self.settings.retry_seconds)
            log.debug("batch not recorded", exc_info=True)
            for item in batch:
                self.files.retry_later(item.path, reason)
                self.files.finished(item.path)
            return []
        settled = []
        for item, row, item_id in zip(batch, rows, ids, strict=True):
            dst = stored_at(self.out, row["destination"])
            if self.dry_run:
                self._log(item, dst, "would route")
                settled.append(item)
                continue
            outcome = self._move(item, dst, item_id)
            self._finished.append(outcome)
            if outcome.get("state") == ItemState.DONE:
                settled.append(item)
                if item_id in owed and outcome.get("destination") and self.ledger is not None:
                    self.ledger.fire([owed[item_id]])
        for item in batch:
            self.files.finished(item.path)
        return settled

    def has_outcomes(self) -> bool:
        return bool(self._finished)

    def flush(self) -> None:
        """Commit the last batch's outcomes now (nothing else is coming to carry them)."""
        finished, self._finished = self._finished, []
        if finished:
            try:
                self.writer.call(lambda db: store.mark_done(db, finished))
            except Exception:
                self._finished = finished + self._finished  # the next commit carries them
                raise

    def _move(self, item: Item, dst: Path, item_id: int) -> dict:
        done = {"id": item_id, "routed_at": store.now_iso()}
        for _ in range(3):
            try:
                move(item.path, dst, item.identity)
            except Changed as exc:  # not the bytes the row describes: forget the row, read the file again
                log.info("%s %s; read again once it settles", path_text(item.path.name), exc.strerror)
                self.files.changed(item.path)
                return {"id": item_id, "forget": True}
            except FileExistsError:  # another process took the name since we planned it
                dst = free_name(dst.parent, item.path.name, item.sha256)
                continue
            except FileNotFoundError:
                log.warning("vanished %s before it could be moved", item.path.name)
                return {**done, "state": ItemState.DONE, "destination": None, "error": "vanished-before-move"}
            except OSError as exc:
                reason = f"move-failed: {errno.errorcode.get(exc.errno or 0, 'OSError')} {exc.strerror}"
                log.error("held %s in place (%s); retry in ≥%.0f s", item.path.name, reason,
                          self.settings.retry_seconds)
                self.files.retry_later(item.path, reason)
                self.summary.held += 1
                return {**done, "state": ItemState.HELD, "destination": None, "routed_at": None,
                        "error": reason}
            self.files.moved(item.path)
            self._log(item, dst, "routed")
            return {**done, "state": ItemState.DONE, "destination": path_text(dst)}
        raise FileExistsError(f"could not find a free name for {item.path.name}")

    def _log(self, item: Item, dst: Path, verb: str) -> None:
        rel = dst.parent.relative_to(self.out)
        name = path_text(item.path.relative_to(self.incoming) if self.incoming else item.path.name)
        if rel.parts and rel.parts[0] == "duplicates":
            self.summary.duplicates += 1
            log.info("%s %s -> %s (duplicate)", verb, name, rel)
        elif item.error:
            self.summary.rejected += 1
            log.warning("%s %s -> %s (%s)", verb, name, rel, item.error)
        else:
            self.summary.routed += 1
            log.info("%s %s -> %s (%.2f)", verb, name, rel, item.confidence or 0.0)


def recover(out: Path, writer: store.Writer) -> int:
    """Finish every intent a crash left behind, before anything new is looked at. What sits at a row's
    source path is compared with the row's hash, never assumed: a new file that took the name while the
    daemon was down stays in INCOMING for the scan, and a row whose bytes were replaced is forgotten."""
    rows = writer.call(store.unfinished)
    updates: list[dict] = []
    for row in rows:
        src, dst = from_text(row["source_path"]), stored_at(out, row["destination"])
        update = {"id": row["id"], "state": ItemState.DONE, "routed_at": store.now_iso()}
        try:
            try:
                outcome = finish(src, dst, row["sha256"])
            except FileExistsError:
                dst = free_name(dst.parent, src.name, row["sha256"])
                move(src, dst)
                outcome = "moved"
        except OSError as exc:
            log.error("recovery of %s failed (%s); left in place", path_text(src.name), exc.strerror)
            update.update(state=ItemState.HELD, error=f"move-failed: {exc.strerror}", destination=None)
            updates.append(update)
            continue
        if outcome == "replaced":
            log.info("recovery: %s holds other bytes than its record; read as a new file", path_text(src.name))
            updates.append({"id": row["id"], "forget": True})
            continue
        if outcome == "lost":
            update.update(error="lost: neither source nor destination exists", destination=None)
        else:
            update["destination"] = path_text(dst)
        note = "already; a new file of that name stays in INCOMING" if outcome == "kept" else outcome
        log.info("recovered %s -> %s (%s)", path_text(src.name), path_text(dst), note)
        updates.append(update)
    if updates:
        writer.call(lambda db: store.mark_done(db, updates))
    return len(updates)


def backlog(incoming: Path, recursive: bool = True, out: Path | None = None) -> list[tuple[float, Path]]:
    """(mtime, path) of every file in INCOMING (and, recursive, its subfolders but hidden ones and OUT)."""
    found: list[tuple[float, Path]] = []
    folders = [incoming]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # vanished or unreadable meanwhile: its events (or the next scan) will tell
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if not entry.is_dir(follow_symlinks=False):
                    found.append((entry.stat(follow_symlinks=False).st_mtime, path))
                elif recursive and within(incoming, path / "x", recursive, out):
                    folders.append(path)
            except FileNotFoundError:
                continue
    return found


def scan(incoming: Path, intake: Intake, stability: Stability, recursive: bool = True,
         out: Path | None = None) -> int:
    """Offer the backlog oldest first; files changed within stable_seconds wait to settle."""
    found = backlog(incoming, recursive, out)
    now = time.time()
    for mtime, path in sorted(found):
        if now - mtime >= stability.stable:
            intake.offer(path)
        else:
            stability.track(path)
    if not recursive:
        skipped = sum(1 for entry in os.scandir(incoming) if entry.is_dir(follow_symlinks=False)
                      and not entry.name.startswith("."))
        if skipped:
            log.warning("%d subfolder(s) of %s not looked into (recursive = false)", skipped, incoming)
    return len(found)


class FolderSource:
    """Where watch's items come from: the backlog scanned at start (oldest first), then watchdog's events,
    each path offered once it has settled (`Stability`) to the deduplicating `Intake` the decoders take
    from. `--once` runs the scan alone. The router tells it what became of each file (`FileOutcomes`);
    the retry and settle state is the source's alone."""

    def __init__(self, incoming: Path, out: Path, settings: Settings, follow: bool):
        self.incoming, self.out, self.recursive, self.follow = incoming, out, settings.recursive, follow
        self.retry_seconds = settings.retry_seconds
        self.intake = Intake(settings.temp_suffixes)
        self.stability = Stability(settings.stable_seconds)
        self._observer: Any = None

    def start(self) -> None:
        if self.follow:  # before the scan, so nothing written meanwhile is missed
            self._observer = Observer()
            events = Events(self.incoming, self.intake, self.stability, self.recursive, self.out)
            self._observer.schedule(events, str(self.incoming), recursive=self.recursive)
            self._observer.start()
            log.info("ready: watching %s -> %s", self.incoming, self.out)
        scan(self.incoming, self.intake, self.stability, self.recursive, self.out)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()

    def tick(self) -> None:
        """Offer what settled or whose hold ran out since the last tick."""
        for path in self.stability.due() + self.intake.due_holds():
            self.intake.offer(path)

    def idle(self) -> bool:
        return self.intake.idle() and self.stability.empty()

    # FileOutcomes: what the router says became of a file
    def finished(self, path: Path) -> None:
        self.intake.done(path)

    def moved(self, path: Path) -> None:
        self.intake.release(path)

    def retry_later(self, path: Path, reason: str) -> None:
        self.intake.hold(path, self.retry_seconds, reason)

    def changed(self, path: Path) -> None:
        self.intake.release(path)
        self.stability.track(path)


class Watcher:
    """The daemon: a folder source and the shared stages (sorter.stages), wired once; `run` blocks until
    `stop` is set (or, with `once`, the backlog is done)."""

    def __init__(self, incoming: Path, out: Path, db: Path, classifier: Classifier,
                 rules: VerdictRules, settings: Settings, dry_run: bool = False,
                 telemetry: Telemetry | None = None, interpreters: int = 1):
        self.incoming, self.out = incoming.resolve(), out.resolve()
        self.telemetry = telemetry or Telemetry("watch")  # metrics (sorter.metrics), served or not
        self.clf, self.rules, self.settings = classifier, rules, settings
        self.clfs = [classifier] + [classifier.replica() for _ in range(interpreters - 1)]
        nice = settings.background_nice or None  # helpers fit around the interpreters (sorter.threads)
        outputs = settings.outputs  # built first: a bad output fails before any thread starts
        self.dispatcher = None if dry_run else Dispatcher(build_outputs(outputs), outputs.retries,
                                                          outputs.retry_seconds)
        try:
            self.writer = store.Writer(db, nice=nice)
        except Exception:
            if self.dispatcher is not None:
                self.dispatcher.close()
            raise
        self.ledger = Ledger(self.writer, self.dispatcher, outputs.resend_seconds) \
            if self.dispatcher and self.dispatcher.lanes else None
        self.source = FolderSource(self.incoming, self.out, settings, follow=True)
        self.intake, self.stability = self.source.intake, self.source.stability
        self.router = Router(self.out, self.writer, classifier, self.source, settings, dry_run,
                             incoming=self.incoming, ledger=self.ledger)
        self.decode = DecodeStage(lambda wait: self.intake.take_many(settings.batch_size, wait), self._load,
                                  settings.decode_workers, nice)
        self.record = RecordStage(self.router, self.telemetry, nice)
        self.score = ScoreStage(self.decode.queue, self.clfs, rules, settings.batch_size, settings.batch_ms,
                                self.record.put, self.telemetry)
        self.telemetry.queue_depth.set_function(self.decode.depth)
        self.ready = threading.Event()  # set once the observer runs and the backlog is queued

    def _load(self, path: Path) -> Item | None:
        """Read, hash and decode one file; None (and the path released) when it vanished."""
        try:
            item = load(path, self.clf.input_size, self.settings)
        except Unsettled:  # still being written: not an item until it settles again
            self.intake.done(path)
            self.stability.track(path)
            return None
        except Exception as exc:  # one bad file must never stop the daemon
            log.exception("could not load %s", path_text(path.name))
            item = Item(path, error=f"load-failed: {exc}")
        if item is None:
            self.intake.done(path)
        return item

    def _idle(self) -> bool:
        return self.source.idle() and self.decode.queue.empty() and not self.record.busy()

    def _close_outputs(self) -> None:
        """Queued events go out (bounded) and their outcomes are written, before the database closes."""
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.router.summary.outputs = self.dispatcher.stats()

    def run(self, stop: threading.Event, once: bool = False) -> Summary:
        """Recover, start the source and the stages, then process until stopped (or idle if once).
        The stages start in flow order on one ExitStack and stop in reverse: scoring finishes its
        batches, routing drains what was scored, then the source, the decoders, the outputs, the DB."""
        self.router.summary.recovered = recover(self.out, self.writer)
        if self.ledger is not None:  # what an earlier run owed its outputs goes out before anything new
            self.ledger.resume()
        one_image_per_thread()
        memory.recycle_buffers()
        warm_up_all(self.clfs, self.settings.batch_size)  # the first batch runs at full speed
        self.source.follow = not once
        with ExitStack() as running:
            running.callback(self.writer.close)
            running.callback(self._close_outputs)
            stages: tuple[Stage, ...] = (self.decode, self.source, self.record, self.score)
            for stage in stages:
                stage.start()
                running.callback(stage.stop)
            self.ready.set()
            self.telemetry.set_ready()
            while not stop.wait(TICK_S):
                self.source.tick()
                if self.ledger is not None:
                    self.ledger.tick()
                if once and self._idle():
                    break
        self.router.summary.left = self._left()
        return self.router.summary

    def _left(self) -> dict[str, int]:
        """Files still in INCOMING (temporary names aside) by why they are there: `--once` must not
        call a run finished that left work behind."""
        if self.router.dry_run:
            return {}
        reasons: dict[str, int] = {}
        for _, path in backlog(self.incoming, self.source.recursive, self.out):
            if ignored(path.name, self.settings.temp_suffixes):
                continue
            why = self.intake.why(path) or "not processed before the stop"
            reasons[why] = reasons.get(why, 0) + 1
        return reasons
