"""Output delivery per item, kept in the database: at least once, with an idempotency key, resumed at start.

A decision that only lives in an output's queue is lost when the daemon stops, and a daemon that does
not know what it sent sends nothing again or everything twice. So the rows come first: the item's
`deliveries` rows (one per output its verdict fires, migration m008) are written in the same transaction
as the item itself; the event goes to the `Dispatcher` once the item is routed; each output's outcome
(sent, or failed after its retries) is written back through the single writer. At the next start, and
every `resend_seconds` for failed ones, what is not sent goes out again. An event may so arrive twice
(sent, then the daemon died before recording it): it carries `idempotency_key` (the item id and the
first 16 hex digits of its content hash), the webhook sends it as an `Idempotency-Key` header too, so a
receiver can drop the repeat.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from sorter import store
from sorter.outputs import Dispatcher
from sorter.states import DeliveryState

log = logging.getLogger("sorter.delivery")


def idempotency_key(item_id: int, sha256: str | None) -> str:
    """`<item id>-<first 16 hex digits of the content hash>` (just the id where there is no file): unique
    in one database, and two boxes that number items alike still differ by their photos."""
    return f"{item_id}-{sha256[:16]}" if sha256 else str(item_id)


def event_of(item_id: int, row: dict[str, Any]) -> dict[str, Any]:
    """The event an item fires, from its row: what a PLC, a broker or a script needs to act on it."""
    return {"item_id": item_id, "idempotency_key": idempotency_key(item_id, row.get("sha256")),
            "time": row.get("received_at"), "source": row.get("source"), "file": row.get("source_path"),
            "destination": row.get("destination"), "sha256": row.get("sha256"), "verdict": row.get("verdict"),
            "label": row.get("label"), "confidence": row.get("confidence")}


@dataclass(frozen=True)
class Planned:
    """An event and the outputs it is owed to (those rows exist in the database)."""

    event: dict[str, Any]
    outputs: tuple[str, ...]


class Ledger:
    """The `deliveries` table in front of a dispatcher. `plan` runs inside the writer's transaction that
    records the item; `fire` after it commits; outcomes come back from the outputs' threads."""

    def __init__(self, writer: store.Writer, dispatcher: Dispatcher, resend_seconds: float = 60.0):
        self.writer, self.dispatcher, self.resend_seconds = writer, dispatcher, resend_seconds
        self._resend_at = time.monotonic() + resend_seconds
        dispatcher.on_outcome = self._outcome

    def plan(self, db: Database, events: Iterable[dict[str, Any]]) -> list[Planned]:
        """One pending row per (event, output that fires on its verdict); an existing row (an item
        routed again after a hold) is kept as it is."""
        now = store.now_iso()
        planned, rows = [], []
        for event in events:
            names = tuple(self.dispatcher.targets(event))
            if names:
                planned.append(Planned(event, names))
                rows += [(event["item_id"], name, event["idempotency_key"], json.dumps(event), now) for name in names]
        db.conn.executemany("INSERT OR IGNORE INTO deliveries (item_id, output, key, event, state, attempts, "
                            "created_at) VALUES (?, ?, ?, ?, 'pending', 0, ?)", rows)
        return planned

    def fire(self, planned: Iterable[Planned]) -> None:
        for p in planned:
            self.dispatcher.publish(p.event, p.outputs)

    @staticmethod
    def rewrite(db: Database, event: dict[str, Any]) -> None:
        """The event as finally sent (a camera decision gains its snapshot after the row): what a resend sends."""
        db.execute("UPDATE deliveries SET event = ? WHERE item_id = ?", [json.dumps(event), event["item_id"]])

    def tick(self) -> None:
        """From the daemon's loop: every `resend_seconds`, the deliveries that failed go out again."""
        if time.monotonic() >= self._resend_at:
            self.resume((DeliveryState.FAILED,))

    def _outcome(self, output: str, event: dict[str, Any], ok: bool, attempts: int, error: str | None) -> None:
        item_id = event["item_id"]
        if ok:
            sql = ("UPDATE deliveries SET state = 'sent', attempts = attempts + ?, delivered_at = ?, "
                   "last_error = NULL WHERE item_id = ? AND output = ?")
            params: list[Any] = [attempts, store.now_iso(), item_id, output]
        else:
            sql = ("UPDATE deliveries SET state = 'failed', attempts = attempts + ?, last_error = ? "
                   "WHERE item_id = ? AND output = ? AND state != 'sent'")
            params = [attempts, error, item_id, output]
        try:
            self.writer.submit(lambda db: db.execute(sql, params))
        except RuntimeError:  # the writer has closed: the row stays pending, the next start sends it again
            log.warning("could not record that %s %s item %s", output, "sent" if ok else "failed", item_id)

    def resume(self, states: tuple[DeliveryState, ...] = (DeliveryState.PENDING, DeliveryState.FAILED)) -> int:
        """Send again what the database says is owed (at start: pending and failed; later: failed), to
        the outputs configured now; rows of items that were never routed are cancelled. The count sent."""
        self._resend_at = time.monotonic() + self.resend_seconds
        names = [lane.output.name for lane in self.dispatcher.lanes]
        owed = self.writer.call(lambda db: _owed(db, states, names))
        for _, outputs, event in owed:
            self.dispatcher.publish(event, outputs)
        if owed:
            log.info("sending %d owed output event(s) again (%s)", len(owed), "/".join(states))
        return len(owed)


# an event planned with a destination (a file to move) is owed once the item got there; one without (a
# camera decision) once it is recorded
_ROUTED = ("i.state = 'done' AND (json_extract(d.event, '$.destination') IS NULL OR i.destination IS NOT NULL)")


def _owed(db: Database, states: tuple[str, ...], outputs: list[str]) -> list[tuple[int, list[str], dict]]:
    """Rows in `states` for these outputs whose item was routed (marked pending again), by item; rows of
    items that ended without reaching their destination (a file that vanished before its move) are
    cancelled."""
    if not outputs:
        return []
    marks_s, marks_o = ",".join("?" * len(states)), ",".join("?" * len(outputs))
    mine = f"d.state IN ({marks_s}) AND d.output IN ({marks_o})"
    with store.immediate(db):
        db.execute(f"UPDATE deliveries SET state = 'cancelled', last_error = 'the item was not routed' WHERE id IN "
                   f"(SELECT d.id FROM deliveries d JOIN items i ON i.id = d.item_id WHERE {mine} AND "
                   f"i.state = 'done' AND NOT ({_ROUTED}))", [*states, *outputs])
        rows = db.execute(f"SELECT d.id, d.item_id, d.output, d.event FROM deliveries d JOIN items i ON "
                          f"i.id = d.item_id WHERE {mine} AND {_ROUTED} ORDER BY d.item_id",
                          [*states, *outputs]).fetchall()
        ids = [r[0] for r in rows]
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            db.execute(f"UPDATE deliveries SET state = 'pending' WHERE id IN ({','.join('?' * len(part))})", part)
    by_item: dict[int, tuple[list[str], dict]] = {}
    for _, item_id, output, event in rows:
        by_item.setdefault(item_id, ([], json.loads(event)))[0].append(output)
    return [(item_id, outs, event) for item_id, (outs, event) in by_item.items()]
