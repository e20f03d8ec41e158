"""Shared by the drift tests of one line's report and of the fleet roll-up (issue 15): the 20 audited
items worked out by hand (18 right: accuracy 0.90; fresh-vs-rotten 19/20 = 0.95), card figures, bundles."""

from __future__ import annotations

import json
from pathlib import Path

from sorter import store
from tests.report_helpers import DAY, LABELS, t

# (predicted, true label, how many)
AUDITED = [("freshred", "freshred", 7), ("freshgreen", "freshred", 1), ("freshgreen", "freshgreen", 6),
           ("rottenblue", "rottenblue", 5), ("freshred", "rottenblue", 1)]
OTHER = {"name": "fruit_extra test share (training/splits/fruit_extra.tsv)", "root": "fruit_extra", "n": 268,
         "accuracy": 0.92, "fresh_vs_rotten_accuracy": 0.98, "uncertain_rate": 0.04, "unknown_rate": 0.02,
         "decided_accuracy": 0.94,
         "per_class": {"freshred": {"recall": 0.9, "support": 90}, "freshgreen": {"recall": 0.95, "support": 90},
                       "rottenblue": {"recall": 0.85, "support": 88}}}
IN_DIST = {"name": "fruit_dev/test", "root": "fruit_dev", "n": 360, "accuracy": 0.97,
           "fresh_vs_rotten_accuracy": 0.99, "uncertain_rate": 0.03, "unknown_rate": 0.01, "decided_accuracy": 0.98,
           "per_class": {"freshred": {"recall": 0.97, "support": 120}}}


def card_json(evaluation: dict | None) -> dict:
    """A card as the exporter writes it: test-split score 0.97, and `evaluation` when given."""
    out = {"format": "sorter-card/1", "name": "colour", "labels": LABELS, "rotten_labels": ["rottenblue"],
           "input": {"height": 32, "width": 32}, "quantization": "int8",
           "score": {"accuracy": 0.97, "n_test": 360, "per_class": {"freshred": {"recall": 0.98}}}}
    return {**out, "evaluation": evaluation} if evaluation is not None else out


def bundle(folder: Path, evaluation: dict | None) -> Path:
    """An empty model file with its card JSON beside it: enough for `--model` in `sorter report`."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "colour.tflite"
    model.write_bytes(b"")
    (folder / "colour.card.json").write_text(json.dumps(card_json(evaluation), indent=2))
    return model


def write_audited_db(path: Path) -> Path:
    """A real database holding the AUDITED items, all received on DAY, each with its audit."""
    db = store.open_writer(path)
    rows = [(pred, true) for pred, true, n in AUDITED for _ in range(n)]
    for i, (pred, true) in enumerate(rows, start=1):
        store.insert_item(db, {"id": i, "sha256": f"{i:064x}", "source_path": f"/in/item{i}.jpg", "label": pred,
                                  "confidence": 0.9, "verdict": "rotten" if pred == "rottenblue" else "fresh",
                                  "model_id": "colour", "source": "watch", "received_at": t(DAY, i % 24),
                                  "state": "done"})
        db.table("audits").insert({"item_id": i, "sha256": f"{i:064x}", "true_label": true, "auditor": "ann",
                                   "audited_at": t("2026-01-11", 9), "origin": "csv"})
    db.close()
    return path
