"""The drift check holds audited accuracy against the card's other-sources figure when the card has one
(issue 15): a line's photos behave like other sources, not like the training photos' test split.

A real database with 20 audited items worked out by hand: 18 right (accuracy 0.90), one fresh item
called the other fresh class and one rotten item called fresh (fresh-vs-rotten 19/20 = 0.95)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.card import load_card
from sorter.cli import app
from sorter.report import ReportOptions, build_report
from tests.report_helpers import DAY, HI, LABELS, LO, t

runner = CliRunner()
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


@pytest.fixture
def db_path(tmp_path) -> Path:
    path = tmp_path / "drift.db"
    db = store.open_writer(path)
    rows = [(pred, true) for pred, true, n in AUDITED for _ in range(n)]
    for i, (pred, true) in enumerate(rows, start=1):
        db.table("items").insert({"id": i, "sha256": f"{i:064x}", "source_path": f"/in/item{i}.jpg", "label": pred,
                            "confidence": 0.9, "verdict": "rotten" if pred == "rottenblue" else "fresh",
                            "model_id": "colour", "source": "watch", "received_at": t(DAY, i % 24), "state": "done"})
        db.table("audits").insert({"item_id": i, "sha256": f"{i:064x}", "true_label": true, "auditor": "ann",
                             "audited_at": t("2026-01-11", 9), "origin": "csv"})
    db.close()
    return path


def drift_of(db_path: Path, tmp_path: Path, evaluation: dict | None) -> dict:
    card = load_card(bundle(tmp_path / ("eval" if evaluation else "old"), evaluation))
    return build_report(db_path, LO, HI, card, options=ReportOptions(margin=0.05, min_audited=20))["drift"]


def test_card_with_other_sources_is_compared_with_that_figure(db_path, tmp_path):
    d = drift_of(db_path, tmp_path, {"in_distribution": IN_DIST, "other_sources": OTHER})
    vs = d["vs_card"]
    assert vs["accuracy"] == 0.92 and vs["accuracy_delta"] == -0.02  # 0.90 − 0.92
    assert vs["fresh_vs_rotten_delta"] == -0.03  # 0.95 − 0.98
    assert vs["per_class_recall_delta"] == {"freshred": -0.025, "freshgreen": 0.05,
                                            "rottenblue": round(5 / 6 - 0.85, 6)}
    assert vs["baseline"] == "other_sources" and vs["baseline_n"] == 268
    assert vs["baseline_name"] == OTHER["name"] and vs["compared"] is True
    assert not d["flagged"] and d["flags"] == []  # 2 points is inside the 5-point margin


def test_card_without_evaluation_is_compared_with_its_test_score(db_path, tmp_path):
    d = drift_of(db_path, tmp_path, None)
    vs = d["vs_card"]
    assert vs["accuracy"] == 0.97 and vs["accuracy_delta"] == -0.07
    assert vs["fresh_vs_rotten_delta"] is None  # the test-split score has no fresh/rotten figure
    assert vs["baseline"] == "test" and vs["baseline_n"] == 360 and vs["baseline_name"] is None
    assert d["flagged"] and [f["kind"] for f in d["flags"]] == ["accuracy-vs-model-card"]
    assert d["flags"][0]["message"].startswith("accuracy 90.0% is 7.0 points below the model card's 97.0%")


def test_evaluation_without_other_sources_falls_back_to_the_test_score(db_path, tmp_path):
    d = drift_of(db_path, tmp_path, {"in_distribution": IN_DIST})
    assert d["vs_card"]["baseline"] == "test" and d["vs_card"]["accuracy_delta"] == -0.07 and d["flagged"]
    assert drift_of(db_path, tmp_path, {"other_sources": {"name": "x", "n": 5}})["vs_card"]["baseline"] == "test"


def test_a_fall_below_the_other_sources_figure_is_flagged_by_that_name(db_path, tmp_path):
    d = drift_of(db_path, tmp_path, {"other_sources": {**OTHER, "accuracy": 0.96}})
    assert d["vs_card"]["accuracy_delta"] == -0.06 and d["flagged"]
    assert [f["kind"] for f in d["flags"]] == ["accuracy-vs-model-card-other-sources"]
    assert d["flags"][0]["message"] == (
        "accuracy 90.0% is 6.0 points below the model card's other-sources figure of 96.0% "
        "(fruit_extra test share (training/splits/fruit_extra.tsv), 268 photos) (margin 5.0 points, 20 audited items)")


def test_text_output_and_page_name_the_card_figure_compared(db_path, tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[report]\ndrift_margin = 0.05\nmin_audited = 20\n")
    base = ["report", "--db", str(db_path), "--from", "2026-01-10", "--to", "2026-01-11", "--config", str(cfg),
            "--fail-on-drift"]
    model = bundle(tmp_path / "eval", {"in_distribution": IN_DIST, "other_sources": OTHER})
    new = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--model", str(model)])
    assert new.exit_code == 0, new.output  # no flag against 0.92
    shown = "card, other sources (fruit_extra test share (training/splits/fruit_extra.tsv), 268 photos): 92.0 %"
    assert f"compared with {shown}, audited -2.0 points" in new.stdout
    assert f'<p id="drift-card">compared with {shown}</p>' in (tmp_path / "a" / "report.html").read_text()
    old = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--model", str(bundle(tmp_path / "old", None))])
    assert old.exit_code == 1, old.output  # flagged against 0.97
    assert "compared with card, test split (360 photos): 97.0 %, audited -7.0 points" in old.stdout
    assert "compared with card, test split (360 photos): 97.0 %" in (tmp_path / "b" / "report.html").read_text()

