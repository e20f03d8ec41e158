"""One row of the items table, as every source writes it: the only place its columns are named.

`sorter watch` (a file: recorded as an intent, then moved) and `sorter camera` (a decision: recorded
finished) both build an `ItemRow`; `sorter.store` turns it into SQL. A test holds its fields equal to
the schema the migrations leave (`store.ITEM_COLUMNS`), so a column added by a migration and forgotten
here, or a typo in a field name, fails before it reaches a line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sorter.states import ItemState
from sorter.verdict import Verdict

# Fixed when the item was first received: a retry that updates a held row keeps them.
FIRST_SEEN = ("id", "source", "received_at", "duplicate_of")


@dataclass
class ItemRow:
    """What one item was, what the model said of it, and where it went.

    source_path: the file under INCOMING, or `<device>#<frame>` for a camera decision.
    destination: where the file (or the camera's snapshot) lives now; None until it does.
    scores: every label's probability (stored as JSON text). keep_p: the share of this verdict whose
    image was kept for audits (camera); None means kept for sure (watch's routed files).
    duplicate_of: set by the store inside the write's transaction, never by a source.
    """

    state: ItemState
    source: str
    received_at: str
    source_path: str | None = None
    sha256: str | None = None
    destination: str | None = None
    label: str | None = None
    confidence: float | None = None
    verdict: Verdict | None = None
    scores: Mapping[str, float] | None = None
    ood_score: float | None = None
    keep_p: float | None = None
    model_id: str | None = None
    model_sha256: str | None = None
    routed_at: str | None = None
    error: str | None = None
    duplicate_of: int | None = None
    id: int | None = None

    def values(self) -> dict[str, Any]:
        """Column → value for an insert (no `id`: SQLite picks it)."""
        return {name: getattr(self, name) for name in COLUMNS if name != "id"}

    def retry_values(self, row_id: int) -> dict[str, Any]:
        """Column → value updating the held row `row_id` a retry of the same file reuses: everything
        but what was fixed when the file first came in."""
        return {"id": row_id, **{name: getattr(self, name) for name in COLUMNS if name not in FIRST_SEEN}}


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ItemRow))
