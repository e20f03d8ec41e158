"""The fleet's weighted (1/p) audited accuracy (issue 16): every line publishes its audits counted by
(p, true label, model label) in `audit.weighted.groups`; the fleet pools them, so its Hájek estimate is
Σ weights of right audits / Σ weights over all lines, with the interval of `sorter.weighting` on the pooled
weights, and its drift holds that figure when every line has weights. A line from older code (no groups)
makes the fleet fall back to plain counts, and the report says so.

Two real line databases, real `audit_draws` rows, real `sorter report` figures (through JSON, as they
travel). Shares are powers of two, so each p = 1 − (1 − share) is exact:
    line-a  p 0.5 right, 0.5 right, 0.25 wrong, 0.25 right            Σw 12, Σw·right  8 (0.667; plain 3/4)
    line-b  p 0.125 right, 0.125 wrong, 0.5 right ×3                  Σw 22, Σw·right 14 (0.636; plain 4/5)
    fleet   Σw 34, Σw·right 22: 22/34 = 0.647059 (plain 7/9 = 0.777778; the lines' mean 0.651515 is not it)
Interval by hand: R = 11/17, right weights² sum 100, wrong 80, so Σ zᵢ² = (100·(6/17)² + 80·(11/17)²)/34²,
v = 9/8 · Σ zᵢ² = 0.0447193, se 0.211469, n* = R(1 − R)/v = 5.107, Wilson at n*: [0.264508, 0.903343].
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.card import load_card
from sorter.cli import app
from sorter.config import FleetSettings
from sorter.fleet import publish_report
from sorter.fleet_merge import merge
from sorter.report import ReportOptions, build_report, wilson
from sorter.report_html import render
from sorter.weighting import hajek
from tests.drift_helpers import OTHER, bundle
from tests.report_helpers import DAY, HI, LO, t

pytestmark = pytest.mark.timeout(60)
# no line has 6 audits, so no line flags on its own; the fleet's 9 do
OPTS = ReportOptions(margin=0.05, min_audited=6)
CARD = {"other_sources": {**OTHER, "accuracy": 0.72}}  # weighted 0.647 is 7.3 points below; plain 0.778 is above
# line → (model label, true label, share of the stratum the audit sample drew it from)
LINES = {"line-a": [("freshred", "freshred", 0.5), ("freshred", "freshred", 0.5), ("freshgreen", "freshred", 0.25),
                    ("rottenblue", "rottenblue", 0.25)],
         "line-b": [("freshgreen", "freshgreen", 0.125), ("rottenblue", "freshgreen", 0.125),
                    ("freshred", "freshred", 0.5), ("freshred", "freshred", 0.5), ("rottenblue", "rottenblue", 0.5)]}
FLEET_CI = [0.264508, 0.903343]


def line_db(path: Path, audits: list[tuple[str, str, float]]) -> Path:
    """Classified items in DAY, each drawn once by an audit sample (`audit_draws`) and audited."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = store.open_writer(path)
    for i, (label, truth, share) in enumerate(audits, start=1):
        store.insert_item(db, {"id": i, "sha256": f"{i:064x}", "source_path": f"/in/{i}.jpg", "label": label,
                            "confidence": 0.9, "verdict": "rotten" if label == "rottenblue" else "fresh",
                            "model_id": "colour", "source": "watch", "received_at": t(DAY, i), "state": "done"})
        db["audit_draws"].insert({"item_id": i, "sample": "s1", "stratum": "x", "share": share, "p": share,
                                  "drawn_at": t(DAY, 20)})
        db["audits"].insert({"item_id": i, "sha256": f"{i:064x}", "true_label": truth, "auditor": "ann",
                             "audited_at": t("2026-01-11", 9), "origin": "folder"})
    db.close()
    return path


@pytest.fixture
def reports(tmp_path) -> dict[str, dict]:
    card = load_card(bundle(tmp_path / "model", CARD))
    return {line: json.loads(json.dumps(build_report(line_db(tmp_path / line / "r.db", audits), LO, HI, card,
                                                     options=OPTS)))
            for line, audits in LINES.items()}


def older(report: dict, weighted: bool = True) -> dict:
    """The report as a line on older code sends it: no `audit.weighted.groups` (the first weighted code),
    or, with `weighted=False`, no weighted figures and no `accuracy_used` at all (before issue 16)."""
    out = json.loads(json.dumps(report))
    if weighted:
        del out["audit"]["weighted"]["groups"]
    else:
        del out["audit"]["weighted"], out["audit"]["accuracy_used"], out["drift"]["accuracy_used"]
    return out


def test_each_line_publishes_its_audits_counted_by_p_and_labels(reports):
    assert reports["line-a"]["audit"]["weighted"]["groups"] == [
        {"p": 0.25, "true_label": "freshred", "label": "freshgreen", "n": 1},
        {"p": 0.5, "true_label": "freshred", "label": "freshred", "n": 2},
        {"p": 0.25, "true_label": "rottenblue", "label": "rottenblue", "n": 1}]
    assert [(g["p"], g["n"]) for g in reports["line-b"]["audit"]["weighted"]["groups"]] == [
        (0.125, 1), (0.125, 1), (0.5, 2), (0.5, 1)]
    w = {line: r["audit"]["weighted"] for line, r in reports.items()}
    assert (w["line-a"]["accuracy"], w["line-a"]["population"]) == (0.666667, 12.0)
    assert (w["line-b"]["accuracy"], w["line-b"]["population"]) == (0.636364, 22.0)
    assert [r["drift"]["flags"] for r in reports.values()] == [[], []]  # fewer than 6 audits each


def test_two_weighted_lines_merge_into_the_pooled_hajek_estimate(reports):
    r = merge(reports, OPTS)
    a, w = r["audit"], r["audit"]["weighted"]
    assert (a["n"], a["correct"], a["accuracy"]) == (9, 7, 0.777778) and a["accuracy_ci95"] == wilson(7, 9)
    assert w["accuracy"] == round(22 / 34, 6) == 0.647059  # Σ w·right / Σ w over both lines
    assert w["accuracy"] != round((0.666667 + 0.636364) / 2, 6)  # not the mean of the lines' figures
    assert (w["population"], w["n"], w["with_p"], w["without_p"]) == (34.0, 9, 9, 0)
    assert (w["se"], w["n_effective"], w["accuracy_ci95"]) == (0.211469, 5.107, FLEET_CI)
    pooled = hajek([True, True, False, True, True, False, True, True, True], [.5, .5, .25, .25, .125, .125, .5, .5, .5])
    assert (pooled.accuracy, pooled.ci95, pooled.se) == (w["accuracy"], w["accuracy_ci95"], w["se"])
    assert w["fresh_vs_rotten_accuracy"] == round(26 / 34, 6)  # line-b's rotten-for-freshgreen (w 8) is the miss
    assert w["per_class_recall"] == {"freshred": round(8 / 12, 6), "freshgreen": 0.5, "rottenblue": 1.0}
    assert sum(g["n"] for g in w["groups"]) == 9  # the fleet's groups: its report merges again the same way
    assert a["weighting"] == {"weighted_lines": ["line-a", "line-b"], "plain_lines": {}, "note": None}

    d = r["drift"]
    assert a["accuracy_used"] == d["accuracy_used"] == "weighted" and d["accuracy"] == 0.647059
    assert d["vs_card"]["accuracy_delta"] == round(0.647059 - 0.72, 6)
    assert [f.get("line") for f in d["flags"]] == [None]  # the fleet's flag; plain 77.8 % would raise none
    assert d["flags"][0]["message"].startswith("weighted accuracy 64.7% is 7.3 points below the model card's "
                                               "other-sources figure of 72.0%")
    assert d["note"] is None
    assert {line: (x["weighted_accuracy"], x["weighted_ci95"], x["accuracy_used"]) for line, x in r["lines"].items()} \
        == {line: (rep["audit"]["weighted"]["accuracy"], rep["audit"]["weighted"]["accuracy_ci95"], "weighted")
            for line, rep in reports.items()}
    page = render(r)
    assert 'id="headline-weighted" data-value="0.647059">64.7%<' in page
    assert '<p id="drift-uses">drift holds the weighted audited accuracy</p>' in page


def test_a_fleet_of_one_weighted_line_is_that_line(reports):
    one = reports["line-b"]
    merged = merge({"line-b": one}, OPTS)
    assert merged["audit"]["weighted"] == one["audit"]["weighted"]
    assert merged["audit"]["accuracy_used"] == one["audit"]["accuracy_used"] == "weighted"


@pytest.mark.parametrize("first_weighted_code", [True, False])
def test_a_line_without_groups_makes_the_fleet_fall_back_to_plain_and_say_so(reports, first_weighted_code):
    mixed = {"line-a": reports["line-a"], "line-b": older(reports["line-b"], first_weighted_code)}
    r = merge(mixed, OPTS)
    a = r["audit"]
    assert "weighted" not in a and a["accuracy_used"] == r["drift"]["accuracy_used"] == "unweighted"
    assert (a["n"], a["accuracy"]) == (9, 0.777778)  # line-b's matrix still counts, each audit once
    why = "its report has no audit.weighted.groups (an older sorter)"
    assert a["weighting"] == {"weighted_lines": ["line-a"], "plain_lines": {"line-b": why},
                              "note": f"no fleet weighted accuracy: line-b: {why}; those lines count plain, "
                                      "and the fleet's drift holds the unweighted accuracy"}
    d = r["drift"]
    assert d["accuracy"] == 0.777778 and d["flags"] == [] and d["vs_card"]["accuracy_delta"] == round(7 / 9 - 0.72, 6)
    assert d["note"] == a["weighting"]["note"]
    assert r["lines"]["line-b"]["accuracy_used"] == ("weighted" if first_weighted_code else "unweighted")
    assert r["lines"]["line-a"]["weighted_accuracy"] == 0.666667
    page = render(r)
    assert "no fleet weighted accuracy: line-b" in page and "headline-weighted" not in page


def test_groups_that_do_not_add_up_to_the_audits_count_plain(reports):
    bad = json.loads(json.dumps(reports["line-b"]))
    bad["audit"]["weighted"]["groups"][0]["n"] = 3
    r = merge({"line-a": reports["line-a"], "line-b": bad}, OPTS)
    assert "weighted" not in r["audit"]
    assert r["audit"]["weighting"]["plain_lines"] == {
        "line-b": "its audit.weighted.groups count 7 audits, its audit 5"}
    bad["audit"]["weighted"]["groups"][0].update(n=1, p=2.0)
    assert merge({"line-b": bad}, OPTS)["audit"]["weighting"]["plain_lines"] == {
        "line-b": "its audit.weighted.groups hold a p outside (0, 1]"}


def test_fleet_report_over_the_broker_prints_the_weighted_figure_and_flags(reports, tmp_path, broker):
    settings = FleetSettings(broker=f"127.0.0.1:{broker.port}")
    for line, report in reports.items():
        publish_report(settings, line, report)
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f"[report]\ndrift_margin = 0.05\nmin_audited = 6\n[fleet]\nbroker = '127.0.0.1:{broker.port}'\n")
    out = tmp_path / "fleet"
    result = CliRunner().invoke(app, ["fleet", "report", "-c", str(cfg), "--duration", "0.3", "--out", str(out),
                                      "--date", DAY, "--fail-on-drift"])
    assert result.exit_code == 1, result.output  # the weighted figure's flag
    assert ("weighted accuracy 0.647 (95% CI 0.265-0.903), unweighted 0.778 (n=9, 0 without a recorded draw, "
            "counted as p=1); drift uses the weighted one") in result.stdout
    saved = json.loads((out / "report.json").read_text())
    assert saved["audit"]["weighted"]["accuracy_ci95"] == FLEET_CI and saved["drift"]["accuracy_used"] == "weighted"


def test_fleet_report_over_the_broker_says_which_lines_fell_back_to_plain(reports, tmp_path, broker):
    settings = FleetSettings(broker=f"127.0.0.1:{broker.port}")
    publish_report(settings, "line-a", reports["line-a"])
    publish_report(settings, "line-b", older(reports["line-b"], weighted=False))
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f"[report]\ndrift_margin = 0.05\nmin_audited = 6\n[fleet]\nbroker = '127.0.0.1:{broker.port}'\n")
    result = CliRunner().invoke(app, ["fleet", "report", "-c", str(cfg), "--duration", "0.3", "--out",
                                      str(tmp_path / "fleet"), "--date", DAY])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("compared with card") for line in lines), result.stdout
    assert ("no fleet weighted accuracy: line-b: its report has no audit.weighted.groups (an older sorter); "
            "those lines count plain, and the fleet's drift holds the unweighted accuracy") in lines
