"""The stages an item passes through after its source: decode → score and decide → record and act.

Each stage owns its input queue and its threads and has `start` and `stop`; `stop` finishes what the
stage already holds, then returns. `sorter.watch.Watcher` starts them in flow order on an ExitStack, so
they stop in the reverse order whatever happens: scoring finishes its batches in flight, routing
drains everything scored, the source and the decoders stop, the outputs send what they were given,
the database closes last. One stop event (the daemon's) ends the run; each stage's own halt is an
internal detail of its `stop`.

    DecodeStage(take, load, workers, nice)        paths → chunks of decoded items
    ScoreStage(decoded, classifiers, rules, …)    chunks → scored batches (one worker per interpreter)
    RecordStage(route, telemetry, nice)           scored batches → recorded, moved, outputs fired
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from sorter import threads
from sorter.metrics import Telemetry
from sorter.model import Classifier
from sorter.scoring import score
from sorter.verdict import VerdictRules

if TYPE_CHECKING:
    from sorter.watch import Item, Router

log = logging.getLogger("sorter.watch")
TICK_S = 0.1
SCORED_BATCHES = 8  # scored batches waiting for the routing thread


class Stage(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...  # finish what it holds, then return


def queued(q: queue.Queue, limit: int) -> list:
    """Everything waiting in `q` right now (at most `limit`), without blocking."""
    out: list = []
    while len(out) < limit:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out


def put_until(q: queue.Queue, value: object, halt: threading.Event) -> None:
    """Put into a bounded queue, giving up once `halt` is set (its consumer may be gone)."""
    while not halt.is_set():
        try:
            q.put(value, timeout=TICK_S)
            return
        except queue.Full:
            continue


def score_items(items: list[Item], classifier: Classifier, rules: VerdictRules) -> None:
    """Score the decodable items of a batch in one call; fill label, confidence, verdict, scores."""
    ok = [i for i in items if i.image is not None]
    if not ok:
        return
    judged = score(classifier, rules, np.stack([i.image for i in ok if i.image is not None]))
    for item, j in zip(ok, judged, strict=True):
        item.label, item.confidence, item.verdict = j.label, j.confidence, j.verdict
        item.scores, item.ood_score = j.scores, j.ood_score


class DecodeStage:
    """Files → decoded items on `workers` threads, handed on in chunks of up to a batch: one hand-off
    (and one thread wake-up) per chunk instead of per image, CPU the interpreters get back on 2 cores."""

    def __init__(self, take: Callable[[float], list[Path]], load: Callable[[Path], Item | None],
                 workers: int, nice: int | None = None):
        self.queue: queue.Queue[list[Item]] = queue.Queue(maxsize=2)
        self._take, self._load, self._workers, self._nice = take, load, workers, nice
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threads.start(self._loop, f"decode-{i}", nice=self._nice) for i in range(self._workers)]

    def stop(self) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join()

    def depth(self) -> int:
        """Items decoded and waiting for an interpreter (read at scrape time)."""
        return sum(len(chunk) for chunk in list(self.queue.queue))

    def _loop(self) -> None:
        while not self._halt.is_set():
            chunk = [item for path in self._take(TICK_S) if (item := self._load(path)) is not None]
            if chunk:
                put_until(self.queue, chunk, self._halt)


class ScoreStage:
    """Decoded chunks → scored batches, one worker per interpreter: each gathers a batch (batch_size
    items, or batch_ms after the first) and scores it; on stop, the batch in flight is still finished."""

    def __init__(self, decoded: queue.Queue[list[Item]], classifiers: Sequence[Classifier], rules: VerdictRules,
                 batch_size: int, batch_ms: int, deliver: Callable[[list[Item]], None], telemetry: Telemetry):
        self.decoded, self.classifiers, self.rules = decoded, classifiers, rules
        self.batch_size, self.batch_ms, self.deliver, self.telemetry = batch_size, batch_ms, deliver, telemetry
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threads.start(self._loop, f"infer-{i}", clf) for i, clf in enumerate(self.classifiers)]

    def stop(self) -> None:
        self._halt.set()  # each worker finishes its batch in flight
        for thread in self._threads:
            thread.join()

    def gather(self, stop: threading.Event, carry: list[Item]) -> list[Item]:
        """Chunks until batch_size items or batch_ms after the first; what overflows the batch is left
        in `carry` (the worker's own) to start the next one. Items stay pending in the intake until
        routed, so `--once` never mistakes a carried item for an idle pipeline."""
        batch, carry[:] = carry[:], []
        deadline = time.monotonic() + self.batch_ms / 1000 if batch else None
        while len(batch) < self.batch_size and not stop.is_set():
            wait = TICK_S if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                batch.extend(self.decoded.get(timeout=wait))
            except queue.Empty:
                if deadline is None:
                    continue
                break
            if deadline is None:
                deadline = time.monotonic() + self.batch_ms / 1000
        carry[:] = batch[self.batch_size:]
        return batch[:self.batch_size]

    def process(self, batch: list[Item], clf: Classifier) -> None:
        started = time.monotonic()
        try:
            score_items(batch, clf, self.rules)
        except Exception as exc:  # a model failure rejects the batch, it does not kill the daemon
            log.exception("inference failed for a batch of %d", len(batch))
            for item in batch:
                item.error = item.error or f"inference-failed: {exc}"
        for item in batch:
            item.image = None  # pixels are done with; only the verdict travels on
        self.telemetry.latency.observe(time.monotonic() - started)  # counting waits for the routing thread
        self.deliver(batch)

    def _loop(self, clf: Classifier) -> None:
        carry: list[Item] = []
        while not self._halt.is_set():
            batch = self.gather(self._halt, carry)
            if batch:
                self.process(batch, clf)
        if carry:  # gathered before the stop: finish it too
            self.process(carry, clf)


class RecordStage:
    """Scored batches → recorded, moved and fired (`Router.route`: intent → move → done), on one thread
    so the next batch's scoring overlaps it. Commit batching lives here and in the router alone: the
    moves of a batch are committed with the next batch's intents (one fsync per batch), or on their own
    when nothing comes within a tick; batches that queued up behind a slow commit go in one transaction."""

    def __init__(self, router: Router, telemetry: Telemetry, nice: int | None = None):
        # deep enough to absorb a slow commit (fsync), shallow enough that routing (background work,
        # sorter.threads) cannot fall far behind scoring; what queues up is routed in one transaction.
        # (64 batches let routing lag half a 1,000-photo backlog: 2-3 % slower overall.)
        self.queue: queue.Queue[list[Item] | None] = queue.Queue(maxsize=SCORED_BATCHES)
        self.router, self.telemetry, self._nice = router, telemetry, nice
        self._thread: threading.Thread | None = None

    def put(self, batch: list[Item]) -> None:
        self.queue.put(batch)

    def busy(self) -> bool:
        """Batches handed over and not yet routed."""
        return self.queue.unfinished_tasks != 0

    def start(self) -> None:
        self._thread = threads.start(self.loop, "route", nice=self._nice)

    def stop(self) -> None:
        """Drain: every batch scored before the stop is routed, and its moves committed."""
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join()

    def loop(self) -> None:
        ended = False
        while not ended and (first := self._next()) is not None:
            batch, taken, ended = self._queued_behind(first)
            try:
                settled = self.router.route(batch)
                self.telemetry.batch(settled)  # counted once settled: a retried item is not counted twice
            except Exception:  # never lose the thread: the rows stay as intents and recover() finishes them
                log.exception("routing failed for a batch of %d", len(batch))
            finally:
                for _ in range(taken):
                    self.queue.task_done()
        self._flush()
        self.queue.task_done()

    def _flush(self) -> bool:
        """Commit the last batch's moves now; on failure they stay queued (the next batch's commit
        carries them, and a restart's recover() would mark them done). True if nothing is left."""
        try:
            self.router.flush()
        except Exception:
            log.exception("could not record the last batch's moves; the next commit carries them")
            return False
        return True

    def _next(self) -> list[Item] | None:
        """The next batch; when none comes within TICK_S the last moves are committed on their own.
        Under load they ride on the next batch's commit instead: one commit (fsync) per batch, not
        two. After a failed commit it waits for the next batch, which retries them: no retry loop."""
        retry_alone = True
        while True:
            wait = TICK_S if retry_alone and self.router.has_outcomes() else None
            try:
                return self.queue.get(timeout=wait)
            except queue.Empty:
                retry_alone = self._flush()

    def _queued_behind(self, batch: list[Item]) -> tuple[list[Item], int, bool]:
        """`batch` plus the batches already queued behind it (a queue's worth at most), to route in one
        transaction (one fsync): a routing thread that fell behind catches up instead of falling further
        behind. Returns the items, how many batches they are, and whether the end marker was met."""
        behind = queued(self.queue, SCORED_BATCHES - 1)
        ended = None in behind
        behind = behind[: behind.index(None)] if ended else behind
        return [*batch, *(item for more in behind for item in more)], 1 + len(behind), ended
