"""The report tests' shared database: ten classified items, errors, a duplicate, audits and camera
events at known times, so every figure of a report can be worked out by hand (report, HTML, fleet)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sorter import store
from sorter.card import ModelCard, write_card
from tests.conftest import write_colour_jpeg

LABELS = ["freshred", "freshgreen", "rottenblue"]
DAY = "2026-01-10"
LO, HI = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC)
# id: (label, verdict, confidence, hour, true label or None); colours for the thumbnails
ITEMS = {
    1: ("freshred", "fresh", 0.9, 0, "freshred"),
    2: ("freshred", "fresh", 0.8, 0, "freshgreen"),
    3: ("freshred", "fresh", 0.95, 1, "freshred"),
    4: ("freshgreen", "fresh", 0.7, 1, "freshgreen"),
    5: ("freshgreen", "uncertain", 0.45, 2, "rottenblue"),
    6: ("rottenblue", "rotten", 0.99, 2, "rottenblue"),
    7: ("rottenblue", "rotten", 0.6, 2, "freshred"),
    8: ("rottenblue", "rotten", 0.85, 3, None),
    9: ("freshred", "uncertain", 0.3, 3, None),
    10: ("freshgreen", "fresh", 0.65, 3, "freshgreen"),
}
COLOUR = {"freshred": "red", "freshgreen": "green", "rottenblue": "blue"}


def t(day: str, hour: int, minute: int = 0) -> str:
    """A UTC timestamp as the store writes it."""
    return f"{day}T{hour:02d}:{minute:02d}:00.000+00:00"


def card(accuracy: float | None = 0.9) -> ModelCard:
    return ModelCard(name="colour", labels=LABELS, rotten_labels=["rottenblue"],
                     input={"height": 32, "width": 32}, quantization="int8",
                     score={"accuracy": accuracy, "per_class": {"freshred": {"recall": 0.9}}})


def build_db(tmp: Path) -> Path:
    """Ten classified items, three errors, one duplicate, one item outside the window, audits,
    and a camera history; images on disk so the wrong ones can be shown."""
    path = tmp / "r.db"
    db = store.open_writer(path)
    for i, (label, verdict, conf, hour, _) in ITEMS.items():
        img = write_colour_jpeg(tmp / "sorted" / f"item{i}.jpg", COLOUR[label], seed=i)
        store.insert_item(db, {"id": i, "sha256": f"{i:064x}", "source_path": f"/in/item{i}.jpg",
                            "destination": str(img), "label": label, "confidence": conf, "verdict": verdict,
                            "model_id": "colour", "source": "watch", "received_at": t(DAY, hour, i),
                            "state": "done"})
    errors = {11: "wrong-extension: .txt", 12: "wrong-extension: .gif", 13: "too-large: 9,999 bytes"}
    for i, error in errors.items():
        store.insert_item(db, {"id": i, "sha256": f"{i:064x}", "source_path": f"/in/e{i}", "error": error,
                            "source": "watch", "received_at": t(DAY, 5), "state": "done"})
    store.insert_item(db, {"id": 14, "sha256": f"{1:064x}", "label": "freshred", "confidence": 0.9, "verdict": "fresh",
                        "duplicate_of": 1, "source": "watch", "received_at": t(DAY, 6), "state": "done"})
    store.insert_item(db, {"id": 15, "sha256": f"{15:064x}", "label": "freshred", "confidence": 0.9, "verdict": "fresh",
                        "source": "watch", "received_at": t("2026-01-09", 12), "state": "done"})
    audits = [(i, row[4], "ann", t("2026-01-11", 9)) for i, row in ITEMS.items() if row[4]]
    audits += [(2, "freshred", "bob", t("2026-01-11", 8)),  # older: ann's later freshgreen wins
               (15, "rottenblue", "ann", t("2026-01-11", 9))]  # outside the window: not counted
    for item_id, label, auditor, when in audits:
        db["audits"].insert({"item_id": item_id, "sha256": f"{item_id:064x}", "true_label": label,
                             "auditor": auditor, "audited_at": when, "origin": "csv"})
    events = [("2026-01-09", 23, "online", None), (DAY, 6, "offline", "stall"), (DAY, 7, "reconnect", None),
              (DAY, 8, "dropped", "5 frame(s) dropped (total 5)"), (DAY, 9, "dropped", "3 frame(s) dropped"),
              (DAY, 12, "offline", "unplugged")]
    for day, hour, event, detail in events:
        db["camera_events"].insert({"time": t(day, hour), "device": "cam0", "event": event, "detail": detail})
    db.close()
    return path


def card_bundle(tmp: Path, accuracy: float) -> Path:
    """An empty model file with a card claiming `accuracy`: enough for `--model` in reports."""
    model = tmp / "colour.tflite"
    model.write_bytes(b"")
    write_card(model, card(accuracy))
    return model
