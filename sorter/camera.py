"""Stream source: fresh frames → trigger → classify → K-of-N vote → record, snapshot, outputs.

The capture watchdog (sorter.capture) guarantees only fresh frames arrive here; this loop owns
what happens to them. Everything after the vote is shared with `sorter watch`: the same
classifier, verdict rules and `items` table (source 'camera'), written by the single writer.
Camera rows are written finished ('done' or 'dry-run'): there is no file to move, so nothing for
`watch`'s crash recovery to pick up.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlite_utils import Database

from sorter import memory, store
from sorter.capture import Capture, Frame, check_source
from sorter.config import DEFAULT_KEEP_SHARE, CameraSettings, Settings
from sorter.control import ControlServer
from sorter.delivery import Ledger, Planned, event_of
from sorter.imaging import resize_rgb
from sorter.item_row import ItemRow
from sorter.metrics import Telemetry
from sorter.model import Classifier, warm_up_all
from sorter.outputs import Dispatcher, build_outputs
from sorter.redact import mask_text, mask_url
from sorter.scoring import score
from sorter.states import ItemState
from sorter.triggers import (
    Decision,
    IntervalTrigger,
    LineTrigger,
    MotionTrigger,
    Roi,
    SceneGate,
    Trigger,
    Vote,
    Voter,
    crop,
    follow_stdin,
    gpio_edge,
    parse_roi,
)
from sorter.verdict import VERDICTS, VerdictRules

log = logging.getLogger("sorter.camera")
DROPS_REPORT_S = 5.0


class SnapshotStore:
    """JPEGs of a random share of each verdict's items (`keep_share`: by default every rotten, uncertain
    and unknown one and 2 % of the fresh ones) for people to audit and for retraining, pruned by age and
    count. Confident fresh items are kept too, at random, because that is where costly escapes hide and
    an audit needs an image; the share drawn is recorded so the report can weight audits back (1/p)."""

    def __init__(self, folder: Path, retention_days: float = 30.0, max_files: int = 10_000,
                 keep_share: dict[str, float] | None = None, rng: random.Random | None = None):
        self.folder, self.max_files = Path(folder), max_files
        self.retention = timedelta(days=retention_days)
        self.keep_share = dict(DEFAULT_KEEP_SHARE if keep_share is None else keep_share)
        self.rng = rng if rng is not None else random.Random()  # injectable: a seeded one in tests
        self._saved = 0

    def share(self, verdict: str) -> float:
        """The probability that an item with this verdict is kept (`items.keep_p`)."""
        return float(self.keep_share.get(verdict, 0.0))

    def keeps(self, verdict: str) -> bool:
        """One draw: is this item's snapshot kept? A share of 1 or 0 draws nothing."""
        share = self.share(verdict)
        return share >= 1.0 or (share > 0.0 and self.rng.random() < share)

    def save(self, image: np.ndarray, verdict: str, label: str | None, item_id: int,
             when: datetime) -> tuple[Path, str]:
        """Write the JPEG; its path and the sha256 of its bytes (audits find camera items by content hash)."""
        day = self.folder / when.strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        path = day / f"{when.strftime('%H%M%S_%f')}-{item_id}-{verdict}-{label or 'none'}.jpg"
        ok, data = cv2.imencode(".jpg", image)
        if not ok:
            raise OSError(f"could not encode {path}")
        path.write_bytes(data.tobytes())
        self._saved += 1
        if self._saved % 100 == 0:
            self.prune()
        return path, hashlib.sha256(data.tobytes()).hexdigest()

    def prune(self, now: datetime | None = None) -> int:
        """Delete snapshots older than the retention, then the oldest beyond `max_files`."""
        if not self.folder.is_dir():
            return 0
        stamped = sorted((p.stat().st_mtime, p) for p in self.folder.glob("*/*.jpg"))  # one stat per file
        cutoff = ((now or datetime.now(UTC)) - self.retention).timestamp()
        doomed = [p for mtime, p in stamped if mtime < cutoff]
        keep = [p for mtime, p in stamped if mtime >= cutoff]
        doomed += keep[: max(0, len(keep) - self.max_files)]
        for path in doomed:
            path.unlink(missing_ok=True)
        return len(doomed)


def make_trigger(settings: CameraSettings) -> Trigger:
    if settings.trigger == "motion":
        return MotionTrigger(settings.motion_threshold, settings.motion_pixel_delta, parse_roi(settings.motion_roi))
    if settings.trigger == "line":
        return LineTrigger()
    return IntervalTrigger(settings.interval_ms)


@dataclass
class CameraStatus:
    state: str = "connecting"
    classified: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    no_consensus: int = 0
    unchanged: int = 0  # sampled frames not classified: the scene had not changed since the last decision
    snapshots: int = 0
    errors: int = 0


class CameraRunner:
    """One camera: owns the capture, trigger, voter and snapshot store; `run` blocks until done."""

    def __init__(self, device: str, classifier: Classifier, rules: VerdictRules, settings: CameraSettings,
                 writer: store.Writer, dispatcher: Dispatcher, dry_run: bool = False,
                 telemetry: Telemetry | None = None, rng: random.Random | None = None, ledger: Ledger | None = None):
        # what is shown and stored (rows, events, /status, outputs): the URL without its password;
        # only the capture below gets the real one (sorter.redact)
        self.device, self.clf, self.rules, self.settings = mask_url(device), classifier, rules, settings
        self.telemetry = telemetry or Telemetry("camera")  # metrics (sorter.metrics), served or not
        self.writer, self.dispatcher, self.dry_run = writer, dispatcher, dry_run
        self.ledger = ledger  # deliveries kept in the database (sorter.delivery); None: none configured
        self.roi: Roi | None = parse_roi(settings.roi)
        self.trigger = make_trigger(settings)
        self.voter = Voter(settings.votes, settings.window)
        self.gate = SceneGate(settings.scene_change, settings.motion_pixel_delta)
        self.snapshots = SnapshotStore(settings.snapshots, settings.snapshot_retention_days,
                                       settings.snapshot_max_files, settings.keep_share, rng)
        self.capture = Capture(device, settings.stall_seconds, settings.backoff_seconds,
                               settings.backoff_max_seconds, settings.queue_size, settings.loop,
                               on_event=self._camera_event, frozen_area=settings.frozen_area)
        self.status = CameraStatus()
        self.telemetry.queue_depth.set_function(lambda: len(self.capture.frames))  # read at scrape time
        self.decisions: list[dict[str, Any]] = []  # the events sent, for the summary and tests
        self._open = 0  # frames left in the current item's window (motion/line triggers)
        self._last_image: np.ndarray | None = None
        self._last_scores: dict[str, float] = {}
        self._last_ood: float | None = None
        self._drops_reported = 0
        self._ticks = {"drops": time.monotonic(), "status": time.monotonic()}

    def _camera_event(self, event: str, detail: str) -> None:
        self.status.state = "online" if event in ("online", "reconnect") else "offline"
        self.telemetry.camera_event(event)
        detail = mask_text(detail)  # an open error may quote the URL
        self.writer.submit(lambda db: store.record_camera_event(db, self.device, event, detail))

    def snapshot(self) -> dict[str, Any]:
        """Everything an operator asks first: is it online, how many frames, drops, decisions."""
        return {"device": self.device, **asdict(self.status), "capture": asdict(self.capture.stats),
                "dropped": self.capture.frames.dropped, "outputs": self.dispatcher.stats()}

    def _vote(self, image: np.ndarray) -> Decision | None:
        started = time.monotonic()
        judged = score(self.clf, self.rules, resize_rgb(image, self.clf.input_size)[None])[0]
        self.telemetry.latency.observe(time.monotonic() - started)
        self.status.classified += 1
        self._last_image, self._last_scores, self._last_ood = image, judged.scores, judged.ood_score
        return self.voter.add(Vote(judged.label, judged.verdict, judged.confidence))

    def _starts_item(self, frame: Frame, image: np.ndarray) -> bool | None:
        """Does this frame open an item's window? None: the interval trigger skips the frame."""
        if self.trigger.paced:
            if not self.trigger.fire(image, frame.clock):
                return None
            if self._open:
                return False
            new = self.gate.changed(image)  # the same scene as the last decision is not a new item
            self.status.unchanged += not new
            return new
        if self._open == 0 or self.trigger.tracks:
            return self.trigger.fire(frame.image, frame.clock)
        return False

    def on_frame(self, frame: Frame) -> Decision | None:
        """Trigger, classify and vote on one fresh frame; the decision if this frame completed one.

        Every trigger works in items: a window of up to `window` classified frames that ends with
        K agreeing votes or, failing that, an `uncertain` decision (never silently nothing).
        """
        image = crop(frame.image, self.roi)
        fired = self._starts_item(frame, image)
        if fired is None:
            return None
        if fired and self._open == 0:
            self.voter.reset()
            self._open = self.settings.window
        if self._open == 0:
            return None
        self._open -= 1
        decision = self._vote(image)
        if decision is None and self._open == 0:
            decision = self.voter.close()
        if decision is not None:
            self._open = 0
            self.gate.settle(image)
        return decision

    def act(self, decision: Decision, frame: Frame) -> dict[str, Any]:
        """Record the decision (with a snapshot when its verdict's keep draw says so), then hand it to the outputs."""
        when = datetime.fromtimestamp(frame.wall, UTC)
        error = None if decision.consensus else f"no-consensus: {decision.agreeing}/{decision.frames}"
        row = ItemRow(state=ItemState.DRY_RUN if self.dry_run else ItemState.DONE, source="camera",
                      received_at=when.isoformat(timespec="milliseconds"), source_path=f"{self.device}#{frame.seq}",
                      label=decision.label, confidence=decision.confidence, verdict=decision.verdict,
                      scores=self._last_scores, ood_score=self._last_ood,
                      keep_p=self.snapshots.share(decision.verdict), model_id=self.clf.model_id,
                      model_sha256=self.clf.sha256, routed_at=store.now_iso(), error=error).values()
        item_id, planned = self.writer.call(lambda db: self._record(db, row))
        snapshot = None
        if self._last_image is not None and self.snapshots.keeps(decision.verdict):
            try:
                path, sha = self.snapshots.save(self._last_image, decision.verdict, decision.label, item_id, when)
                snapshot = str(path)
                self.writer.call(lambda db: _record_snapshot(db, item_id, snapshot, sha))
                self.status.snapshots += 1
            except OSError as exc:
                log.error("snapshot for item %d failed: %s", item_id, exc)
        self.status.decisions[decision.verdict] += 1
        self.telemetry.item(decision.verdict, decision.label, error)
        self.status.no_consensus += not decision.consensus
        event = {**(planned.event if planned else self._event(item_id, row)), "snapshot": snapshot,
                 "votes": f"{decision.agreeing}/{decision.frames}"}
        log.info("item %d: %s %s (%.2f, %s agree)%s", item_id, decision.verdict, decision.label or "-",
                 decision.confidence, event["votes"], " [dry-run]" if self.dry_run else "")
        if planned is not None and self.ledger is not None:
            self.ledger.fire([Planned(event, planned.outputs)])
            self.writer.submit(lambda db: Ledger.rewrite(db, event))
        else:
            self.dispatcher.publish(event)
        self.decisions.append(event)
        return event

    def _event(self, item_id: int, row: dict[str, Any]) -> dict[str, Any]:
        return {**event_of(item_id, row), "device": self.device}

    def _record(self, db: Database, row: dict[str, Any]) -> tuple[int, Planned | None]:
        """The item and the deliveries its verdict owes the outputs, in one transaction (writer thread)."""
        with store.immediate(db):
            item_id = store.insert_item(db, row)
            if self.ledger is None:
                return item_id, None
            planned = self.ledger.plan(db, [self._event(item_id, row)])
        return item_id, planned[0] if planned else None

    def _tick(self) -> None:
        now = time.monotonic()
        if self.ledger is not None:
            self.ledger.tick()
        dropped = self.capture.frames.dropped
        self.telemetry.dropped_total(dropped)
        if dropped > self._drops_reported and now - self._ticks["drops"] >= DROPS_REPORT_S:
            detail = f"{dropped - self._drops_reported} frame(s) dropped (total {dropped}): inference is slower"
            self.writer.submit(lambda db: store.record_camera_event(db, self.device, "dropped", detail))
            self._drops_reported, self._ticks["drops"] = dropped, now
        if now - self._ticks["status"] >= self.settings.status_seconds:
            self._ticks["status"] = now
            log.info("status %s", self.snapshot())

    def run(self, stop: threading.Event, max_decisions: int | None = None) -> CameraStatus:
        """Until `stop`, the end of a (non-looping) file, or `max_decisions` decisions."""
        self.snapshots.prune()
        self.capture.start()
        last: Frame | None = None
        try:
            while not stop.is_set():
                if max_decisions is not None and len(self.decisions) >= max_decisions:
                    break
                self._tick()
                frame = self.capture.frames.get(timeout=0.1)
                if frame is None:
                    if self.capture.ended.is_set() and not len(self.capture.frames):
                        break
                    continue
                last = frame
                try:
                    decision = self.on_frame(frame)
                    if decision is not None:
                        self.act(decision, frame)
                except Exception as exc:  # one bad frame or a full disk must not stop the line
                    self.status.errors += 1
                    self.telemetry.errors.labels(reason=type(exc).__name__).inc()
                    log.exception("frame %d could not be processed", frame.seq)
            # the file ended mid-item, or a pulsed/moving item was in view at shutdown; an interval
            # window cut short by a stop is no item (each restart would record a spurious one)
            ended = self.capture.ended.is_set() or self.trigger.stop_ends_item
            if self._open and ended and last is not None and (decision := self.voter.close()) is not None:
                self.act(decision, last)
        finally:
            self.capture.close()
        if self.capture.error is not None:
            raise OSError(self.capture.error)
        return self.status


def _record_snapshot(db: Database, item_id: int, path: str, sha: str) -> None:
    """The snapshot's path and content hash on its row (writer thread). Bytes another first row already
    has (a looping video file's second pass) keep the row without a hash: the first one is the audit's."""
    try:
        store.update_item(db, item_id, {"destination": path, "sha256": sha})
    except sqlite3.IntegrityError:
        store.update_item(db, item_id, {"destination": path})


def serve(device: str, classifier: Classifier, rules: VerdictRules, settings: Settings, db: Path,
          stop: threading.Event, dry_run: bool = False, max_decisions: int | None = None,
          telemetry: Telemetry | None = None, rng: random.Random | None = None) -> dict[str, Any]:
    """Wire one camera to the database, the outputs and the external triggers; the final status."""
    cam = settings.camera
    check_source(device)  # before anything starts: a mistyped video path is an error, exit non-zero
    memory.recycle_buffers()
    warm_up_all([classifier], 1)  # the first item is scored at full speed
    with ExitStack() as running:  # whatever fails, what was started is closed, in reverse order
        writer = store.Writer(db)
        running.callback(writer.close)  # last: the outputs' outcomes are written before it closes
        dispatcher = Dispatcher([] if dry_run else build_outputs(settings.outputs), settings.outputs.retries,
                                settings.outputs.retry_seconds, dry_run=dry_run)
        running.callback(dispatcher.close)
        ledger = Ledger(writer, dispatcher, settings.outputs.resend_seconds) if dispatcher.lanes and not dry_run \
            else None
        runner = CameraRunner(device, classifier, rules, cam, writer, dispatcher, dry_run=dry_run,
                              telemetry=telemetry, rng=rng, ledger=ledger)
        if ledger is not None:  # what an earlier run owed its outputs goes out first
            ledger.resume()
        runner.telemetry.camera_online = False  # until the capture reports "online"
        runner.telemetry.set_ready()
        line = runner.trigger if isinstance(runner.trigger, LineTrigger) else None
        if cam.control_port is not None:
            running.callback(ControlServer(cam.control_port, line, runner.snapshot).start().close)
        if line is not None and cam.stdin_trigger:
            follow_stdin(line)
        if line is not None and cam.gpio_trigger_pin is not None:
            running.callback(gpio_edge(line, cam.gpio_trigger_pin).close)
        log.info("ready: camera %s, trigger %s, %d/%d votes%s", runner.device, cam.trigger, cam.votes, cam.window,
                 " (dry-run)" if dry_run else "")
        runner.run(stop, max_decisions)
    return runner.snapshot()
