"""The closed sets of words the database stores, as enums: the code compares and writes these, and
migration m009 makes SQLite refuse anything else (CHECK constraints built from the same enums).

    ItemState      an item row's life: intent → done, or held (file not moved yet), or dry-run
    DeliveryState  one (item, output) delivery: pending → sent, or failed (sent again), or cancelled
    CameraEvent    a line of camera history

StrEnum members are str: they bind as TEXT in SQLite, encode as plain JSON strings and equal their
value, so rows read back as text compare equal to them.
"""

from __future__ import annotations

from enum import StrEnum


class ItemState(StrEnum):
    INTENT = "intent"  # recorded before its file moved; recovered at start if the move never happened
    DONE = "done"  # the file reached `destination` (camera rows are written done)
    HELD = "held"  # recorded, but the file could not be moved: left in INCOMING, retried later
    DRY_RUN = "dry-run"  # decided and logged, nothing moved or fired


class DeliveryState(StrEnum):
    PENDING = "pending"  # planned with the item, not yet taken by the output
    SENT = "sent"  # the output took it (2xx, exit 0, or MQTT's spool until PUBACK)
    FAILED = "failed"  # retries spent: sent again every resend interval and at the next start
    CANCELLED = "cancelled"  # the item was never routed, so its outputs never fire


class CameraEvent(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    RECONNECT = "reconnect"
    DROPPED = "dropped"


def sql_in(column: str, values: type[StrEnum], *, nullable: bool = False) -> str:
    """`column IN ('a', 'b')` for a CHECK constraint (or a WHERE), from the enum itself."""
    listed = ", ".join(f"'{member.value}'" for member in values)
    test = f"{column} IN ({listed})"
    return f"{column} IS NULL OR {test}" if nullable else test
