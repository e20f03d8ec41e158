"""The drift check holds audited accuracy against the card's other-sources figure when the card has one
(issue 15): a line's photos behave like other sources, not like the training photos' test split.

A real database with 20 audited items worked out by hand: 18 right (accuracy 0.90), one fresh item
called the other fresh class and one rotten item called fresh (fresh-vs-rotten 19/20 = 0.95)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter.card import load_card
from sorter.cli import app
from sorter.report import ReportOptions, build_report
from tests.drift_helpers import IN_DIST, OTHER, bundle, write_audited_db
from tests.report_helpers import HI, LO

runner = CliRunner()
@pytest.fixture
def db_path(tmp_path) -> Path:
    return write_audited_db(tmp_path / "drift.db")


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

