"""The dispatcher: each decision fanned out to every output that wants its verdict, one thread and its
retries per output, so a slow webhook never delays the GPIO pulse and a dead one never stops the line."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sorter.outputs.base import Output
from sorter.redact import mask_text

log = logging.getLogger("sorter.outputs")


@dataclass
class OutputStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    last_error: str | None = None


@dataclass
class _Lane:
    output: Output
    verdicts: frozenset[str]
    jobs: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1000))
    stats: OutputStats = field(default_factory=OutputStats)
    thread: threading.Thread | None = None


Outcome = Callable[[str, dict[str, Any], bool, int, str | None], None]
"""(output name, event, delivered, attempts made, last error): how `sorter.delivery` hears of each send."""


class Dispatcher:
    """Fan each decision out to every output that wants its verdict; `publish` never blocks or raises.
    `on_outcome`, when given, hears how each (event, output) ended, on that output's thread."""

    def __init__(self, outputs: Iterable[tuple[Output, Iterable[str]]], retries: int = 3,
                 retry_seconds: float = 0.5, dry_run: bool = False, on_outcome: Outcome | None = None):
        self.retries, self.retry_seconds, self.dry_run = retries, retry_seconds, dry_run
        self.on_outcome = on_outcome
        self._stop = threading.Event()
        self.lanes = [_Lane(out, frozenset(verdicts)) for out, verdicts in outputs]
        seen: dict[str, int] = {}
        for lane in self.lanes:  # two outputs alike (two webhooks to one URL): each its own name, its own rows
            seen[lane.output.name] = seen.get(lane.output.name, 0) + 1
            if seen[lane.output.name] > 1:
                lane.output.name = f"{lane.output.name} #{seen[lane.output.name]}"
        for lane in self.lanes:
            lane.thread = threading.Thread(target=self._work, args=(lane,), name=f"out-{lane.output.name}",
                                           daemon=True)
            lane.thread.start()

    def targets(self, event: dict[str, Any]) -> list[str]:
        """The names of the outputs that fire on this event's verdict (none in a dry run)."""
        return [] if self.dry_run else [lane.output.name for lane in self.lanes
                                        if event.get("verdict") in lane.verdicts]

    def publish(self, event: dict[str, Any], only: Iterable[str] | None = None) -> None:
        """Queue the event for every output that wants its verdict (`only`: those of these names)."""
        if self.dry_run:
            log.info("dry-run: %s %s (outputs not fired)", event.get("verdict"), event.get("label"))
            return
        names = None if only is None else set(only)
        for lane in self.lanes:
            if event.get("verdict") not in lane.verdicts or (names is not None and lane.output.name not in names):
                continue
            try:
                lane.jobs.put_nowait(event)
            except queue.Full:
                lane.stats.failed += 1
                log.error("%s: 1000 events waiting, not sending item %s now%s", lane.output.name,
                          event.get("item_id"), " (it stays pending in the database)" if self.on_outcome else "")
                self._told(lane, event, False, 0, "queue full")

    def _work(self, lane: _Lane) -> None:
        while True:
            event = lane.jobs.get()
            if event is None:
                return
            self._deliver(lane, event)

    def _deliver(self, lane: _Lane, event: dict[str, Any]) -> None:
        for attempt in range(self.retries + 1):
            try:
                lane.output.send(event)
                lane.stats.sent += 1
                self._told(lane, event, True, attempt + 1, None)
                return
            except Exception as exc:
                lane.stats.last_error = mask_text(f"{type(exc).__name__}: {exc}")  # shown in /status
                if attempt == self.retries or self._stop.is_set():
                    break
                lane.stats.retried += 1
                delay = self.retry_seconds * 2**attempt
                log.warning("%s failed (%s); retry %d/%d in %.1f s", lane.output.name, lane.stats.last_error,
                            attempt + 1, self.retries, delay)
                self._stop.wait(delay)
        lane.stats.failed += 1
        log.error("%s gave up on item %s: %s", lane.output.name, event.get("item_id"), lane.stats.last_error)
        self._told(lane, event, False, attempt + 1, lane.stats.last_error)

    def _told(self, lane: _Lane, event: dict[str, Any], ok: bool, attempts: int, error: str | None) -> None:
        if self.on_outcome is not None:
            try:
                self.on_outcome(lane.output.name, event, ok, attempts, error)
            except Exception:  # recording an outcome must never kill an output's thread
                log.exception("recording the outcome of %s for item %s", lane.output.name, event.get("item_id"))

    def stats(self) -> dict[str, dict]:
        return {lane.output.name: vars(lane.stats).copy() for lane in self.lanes}

    def close(self, timeout: float = 5.0) -> None:
        """Let queued events go out (bounded), then close every output."""
        for lane in self.lanes:
            lane.jobs.put(None)
        for lane in self.lanes:
            if lane.thread:
                lane.thread.join(timeout)
        self._stop.set()
        for lane in self.lanes:
            try:
                lane.output.close()
            except Exception:
                log.exception("closing %s", lane.output.name)
