"""The fleet's drift compares with the card figure each line's own report compared with (issue 15).

Each line's report publishes `model.card_baseline` (which card figure, its name, n, accuracy, fresh-vs-rotten,
per-class recall); the merge compares the fleet with that figure, and a line still on older code (only
`card_accuracy`) merges against its card accuracy as before. Every line here is the 20-item database of
tests/test_report_drift.py (18 right: 0.90; fresh-vs-rotten 19/20), so a fleet of two is 36 of 40 = 0.90:
2 points below a card's other-sources 0.92 (no flag at a 5-point margin), 7 below its test split's 0.97 (flag).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter.card import load_card
from sorter.cli import app
from sorter.config import FleetSettings
from sorter.fleet import publish_report
from sorter.fleet_merge import merge
from sorter.report import ReportOptions, build_report
from sorter.report_html import render
from tests.drift_helpers import IN_DIST, OTHER, bundle, write_audited_db
from tests.report_helpers import DAY, HI, LO

pytestmark = pytest.mark.timeout(60)
OPTS = ReportOptions(margin=0.05, min_audited=20)
SHOWN = "card, other sources (fruit_extra test share (training/splits/fruit_extra.tsv), 268 photos): 92.0 %"


def line_db(folder: Path) -> Path:
    """A line's database: the 20 audited items of tests/drift_helpers.py, all inside DAY."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_audited_db(folder / "drift.db")


def line_report(tmp_path: Path, line: str, evaluation: dict | None, old: bool = False) -> dict:
    """A line's report.json as `sorter report` builds it (through JSON, as it travels). `old`: as a line still
    on older code sends it, its drift against the card's test score and no `model.card_baseline`, only
    `card_accuracy`."""
    card = load_card(bundle(tmp_path / line / "model", None if old else evaluation))
    report = json.loads(json.dumps(build_report(line_db(tmp_path / line), LO, HI, card, options=OPTS)))
    if old:
        del report["model"]["card_baseline"]
    return report


def test_two_lines_with_other_sources_cards_compare_the_fleet_with_0_92(tmp_path):
    evaluation = {"in_distribution": IN_DIST, "other_sources": OTHER}
    reports = {line: line_report(tmp_path, line, evaluation) for line in ("line-a", "line-b")}
    assert reports["line-a"]["model"]["card_baseline"] == {
        "baseline": "other_sources", "name": OTHER["name"], "n": 268, "accuracy": 0.92,
        "fresh_vs_rotten_accuracy": 0.98, "per_class": OTHER["per_class"]}  # what a line publishes
    r = merge(reports, OPTS)
    assert r["model"]["card_baseline"] == reports["line-a"]["model"]["card_baseline"]
    assert r["model"]["card_accuracy"] == 0.97  # still published as before, for older fleet code
    assert (r["audit"]["n"], r["audit"]["accuracy"]) == (40, 0.9)
    vs = r["drift"]["vs_card"]
    assert vs["accuracy"] == 0.92 and vs["accuracy_delta"] == -0.02 and vs["compared"] is True
    assert vs["fresh_vs_rotten_delta"] == -0.03  # 0.95 − 0.98
    assert vs["per_class_recall_delta"] == {"freshred": -0.025, "freshgreen": 0.05,
                                            "rottenblue": round(5 / 6 - 0.85, 6)}
    assert (vs["baseline"], vs["baseline_name"], vs["baseline_n"]) == ("other_sources", OTHER["name"], 268)
    assert r["drift"]["flags"] == [] and not r["drift"]["flagged"]  # against 0.97 it would be 7 points: a flag
    assert r["drift"]["note"] is None


def test_old_payloads_merge_against_card_accuracy(tmp_path):
    evaluation = {"in_distribution": IN_DIST, "other_sources": OTHER}
    old = {line: line_report(tmp_path, line, evaluation, old=True) for line in ("line-a", "line-b")}
    r = merge(old, OPTS)
    assert r["model"]["card_baseline"] == {"baseline": "test", "name": None, "n": None, "accuracy": 0.97}
    vs = r["drift"]["vs_card"]
    assert (vs["accuracy"], vs["accuracy_delta"], vs["baseline"]) == (0.97, -0.07, "test")
    assert [(f.get("line"), f["kind"]) for f in r["drift"]["flags"]] == [
        (None, "accuracy-vs-model-card"), ("line-a", "accuracy-vs-model-card"), ("line-b", "accuracy-vs-model-card")]
    assert r["drift"]["flags"][0]["message"].startswith("accuracy 90.0% is 7.0 points below the model card's 97.0%")
    # a rolling upgrade of lines on a card without other-sources figures: the same figure, the new line's n
    upgraded = {"line-a": old["line-a"], "line-c": line_report(tmp_path, "line-c", None)}
    mixed = merge(upgraded, OPTS)
    assert mixed["model"]["card_baseline"] == {"baseline": "test", "name": None, "n": 360, "accuracy": 0.97,
                                               "fresh_vs_rotten_accuracy": None,
                                               "per_class": {"freshred": {"recall": 0.98}}}
    assert (mixed["drift"]["vs_card"]["accuracy"], mixed["drift"]["vs_card"]["baseline_n"]) == (0.97, 360)


def test_lines_that_compared_with_different_figures_give_no_fleet_comparison(tmp_path):
    """Same card, one line on older code (its test split, 0.97) and one on new (other sources, 0.92):
    the lines did not compare with one figure, so the fleet compares with none, as for lines whose
    cards differ in accuracy."""
    evaluation = {"in_distribution": IN_DIST, "other_sources": OTHER}
    reports = {"line-a": line_report(tmp_path, "line-a", evaluation, old=True),
               "line-b": line_report(tmp_path, "line-b", evaluation)}
    r = merge(reports, OPTS)
    assert r["model"]["card_baseline"] is None and r["drift"]["vs_card"] is None
    assert r["drift"]["note"] == ("lines differ in the card figure their drift compares with (or have no card): "
                                  "no fleet comparison with a card")
    assert [(f["line"], f["kind"]) for f in r["drift"]["flags"]] == [("line-a", "accuracy-vs-model-card")]
    assert {line: row["card_figure"] for line, row in r["lines"].items()} == {"line-a": "test split 97.0 %",
                                                                              "line-b": "other sources 92.0 %"}
    page = render(r)
    assert "<th>card figure</th>" in page and "<td>other sources 92.0 %</td>" in page
    assert "no fleet comparison with a card" in page


def test_fleet_report_text_and_page_name_the_other_sources_figure(tmp_path, broker):
    evaluation = {"in_distribution": IN_DIST, "other_sources": OTHER}
    settings = FleetSettings(broker=f"127.0.0.1:{broker.port}")
    for line in ("line-a", "line-b"):
        publish_report(settings, line, line_report(tmp_path, line, evaluation))
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f"[report]\ndrift_margin = 0.05\nmin_audited = 20\n[fleet]\nbroker = '127.0.0.1:{broker.port}'\n")
    out = tmp_path / "fleet"
    result = CliRunner().invoke(app, ["fleet", "report", "-c", str(cfg), "--duration", "0.3", "--out", str(out),
                                      "--date", DAY, "--fail-on-drift"])
    assert result.exit_code == 0, result.output  # no flag against 0.92 (against 0.97: exit 1)
    assert f"compared with {SHOWN}, audited -2.0 points" in result.stdout
    assert f'<p id="drift-card">compared with {SHOWN}</p>' in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["drift"]["vs_card"]["accuracy"] == 0.92
