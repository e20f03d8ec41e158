"""`sorter report`: every figure of report.json against values worked out by hand from the database
in tests/report_helpers.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.report import ReportOptions, build_report, window
from tests.report_helpers import HI, LABELS, LO, build_db, card, card_bundle

runner = CliRunner()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return build_db(tmp_path)


def test_counts_rates_throughput_and_histograms(db_path):
    r = build_report(db_path, LO, HI, card())
    assert r["items"] == {"received": 14, "classified": 10, "duplicates": 1, "errors": 3, "dry_run": 0}
    assert r["by_label"] == {"freshred": 4, "freshgreen": 3, "rottenblue": 3}
    assert r["by_verdict"] == {"fresh": 5, "rotten": 3, "uncertain": 2}
    assert r["rotten_rate"] == 0.3 and r["uncertain_rate"] == 0.2
    assert r["errors_by_reason"] == {"wrong-extension": 2, "too-large": 1}
    assert r["throughput"]["per_hour"] == round(10 / 24, 6)
    hourly = r["throughput"]["hourly"]
    assert len(hourly) == 24 and hourly[0]["hour"] == "2026-01-10T00:00Z"
    assert [h["items"] for h in hourly[:5]] == [2, 2, 3, 3, 0]
    assert hourly[2] == {"hour": "2026-01-10T02:00Z", "items": 3, "rotten": 2, "uncertain": 1, "unknown": 0}
    assert r["throughput"]["peak_per_hour"] == 3
    hist = r["confidence_histogram"]["by_verdict"]
    assert hist["fresh"] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]  # .65 .7 .8 .9 .95
    assert hist["uncertain"] == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]  # .3 .45
    assert hist["rotten"] == [0, 0, 0, 0, 0, 0, 1, 0, 1, 1]  # .6 .85 .99


def test_camera_online_time_and_drops(db_path):
    cam = build_report(db_path, LO, HI)["camera"]["cam0"]
    # online from the window start (event the day before) to 06:00, then 07:00 to 12:00 = 11 h
    assert cam["online_seconds"] == 11 * 3600
    assert cam["online_fraction"] == round(11 / 24, 6)
    assert (cam["offline_events"], cam["reconnects"], cam["drop_reports"], cam["dropped_frames"]) == (2, 1, 2, 8)


def test_audited_accuracy_confusion_and_per_class(db_path):
    a = build_report(db_path, LO, HI, card())["audit"]
    # audited (true, predicted): 1 (fr,fr) 2 (fg,fr) 3 (fr,fr) 4 (fg,fg) 5 (rb,fg) 6 (rb,rb) 7 (fr,rb) 10 (fg,fg)
    assert a["n"] == 8 and a["correct"] == 5 and a["accuracy"] == 0.625
    assert a["confusion_matrix"]["labels"] == LABELS
    assert a["confusion_matrix"]["matrix"] == [[2, 0, 1], [1, 2, 0], [0, 1, 1]]
    assert a["fresh_vs_rotten_accuracy"] == 0.75  # only 5 (rotten called fresh) and 7 (fresh called rotten) wrong
    pc = a["per_class"]
    assert pc["freshred"] == {"precision": round(2 / 3, 6), "recall": round(2 / 3, 6), "f1": round(2 / 3, 6),
                              "support": 3}
    assert pc["freshgreen"]["precision"] == round(2 / 3, 6) and pc["freshgreen"]["recall"] == round(2 / 3, 6)
    assert pc["rottenblue"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert a["macro_f1"] == round((2 / 3 + 2 / 3 + 0.5) / 3, 6)
    # Wilson 95 % for 5/8: centre (p + z²/2n)/(1 + z²/n), half z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    z, n, p = 1.96, 8, 0.625
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    assert a["accuracy_ci95"] == [round(centre - half, 6), round(centre + half, 6)]
    assert a["accuracy_ci95"] == pytest.approx([0.3057, 0.8632], abs=1e-4)  # published value for 5/8
    assert sorted(w["id"] for w in a["wrong"]) == [2, 5, 7]
    assert {w["id"]: w["true_label"] for w in a["wrong"]}[2] == "freshgreen"  # the latest audit wins


def test_drift_flag_on_and_off(db_path):
    on = build_report(db_path, LO, HI, card(0.9), options=ReportOptions(margin=0.05, min_audited=5))["drift"]
    assert on["flagged"] and [f["kind"] for f in on["flags"]] == ["accuracy-vs-model-card"]
    assert on["vs_card"]["accuracy_delta"] == round(0.625 - 0.9, 6)
    assert on["vs_card"]["per_class_recall_delta"]["freshred"] == round(2 / 3 - 0.9, 6)
    wide = build_report(db_path, LO, HI, card(0.9), options=ReportOptions(margin=0.3, min_audited=5))["drift"]
    assert not wide["flagged"] and wide["flags"] == []  # fall 0.275 is inside a 0.3 margin
    few = build_report(db_path, LO, HI, card(0.9), options=ReportOptions(margin=0.05, min_audited=9))["drift"]
    assert not few["flagged"] and "only 8 audited" in few["note"]
    nocard = build_report(db_path, LO, HI, None, options=ReportOptions(min_audited=5))["drift"]
    assert nocard["vs_card"] is None and not nocard["flagged"]


def test_drift_against_previous_report(db_path):
    opts = ReportOptions(margin=0.05, min_audited=5)
    prev = {"generated_at": "x", "rotten_rate": 0.1, "uncertain_rate": 0.25,
            "audit": {"n": 40, "accuracy": 0.7, "fresh_vs_rotten_accuracy": 0.8, "per_class": {}}}
    d = build_report(db_path, LO, HI, card(0.6), prev, opts)["drift"]
    assert [f["kind"] for f in d["flags"]] == ["accuracy-vs-previous-report"]  # 0.7 → 0.625: fell 0.075
    assert d["vs_previous"]["accuracy_delta"] == -0.075
    assert d["vs_previous"]["rotten_rate_delta"] == 0.2 and d["vs_previous"]["uncertain_rate_delta"] == -0.05
    prev["audit"]["accuracy"] = 0.65
    assert not build_report(db_path, LO, HI, card(0.6), prev, opts)["drift"]["flagged"]  # fell 0.025 only


def test_window_parsing():
    now = datetime(2026, 1, 11, 6, tzinfo=UTC)
    assert window("24h", now=now) == (datetime(2026, 1, 10, 6, tzinfo=UTC), now)
    assert window(None, "2026-01-10", "2026-01-11", now) == (LO, HI)
    with pytest.raises(ValueError):
        window(None, "2026-01-11", "2026-01-10", now)
    with pytest.raises(ValueError):
        window("soon", now=now)


def test_cli_fail_on_drift_exit_codes(db_path, tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[report]\nmin_audited = 5\n")
    base = ["report", "--db", str(db_path), "--from", "2026-01-10", "--to", "2026-01-11", "--config", str(cfg),
            "--fail-on-drift"]
    flagged = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--model", str(card_bundle(tmp_path, 0.9))])
    assert flagged.exit_code == 1, flagged.output
    assert "drift" in flagged.output and json.loads((tmp_path / "a" / "report.json").read_text())["drift"]["flagged"]
    calm = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--model", str(card_bundle(tmp_path, 0.6))])
    assert calm.exit_code == 0, calm.output
    assert (tmp_path / "b" / "report.html").stat().st_size > 1000
    bad = runner.invoke(app, ["report", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_dated_folders_previous_and_keep(db_path, tmp_path):
    reports = tmp_path / "reports"
    for day in range(1, 6):
        folder = reports / f"2026-01-0{day}"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps({"audit": {"n": 50, "accuracy": 0.5 + day / 100}}))
    (reports / "notes").mkdir()
    result = runner.invoke(app, ["report", "--db", str(db_path), "--from", "2026-01-10", "--to", "2026-01-11",
                                 "--out", str(reports), "--dated", "--keep", "2", "--model",
                                 str(card_bundle(tmp_path, 0.6))])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in reports.iterdir()) == ["2026-01-05", "2026-01-10", "notes"]
    r = json.loads((reports / "2026-01-10" / "report.json").read_text())
    assert r["drift"]["vs_previous"]["accuracy"] == 0.55  # the newest earlier dated report


def test_systemd_units_call_a_valid_report_command(db_path, tmp_path):
    deploy = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
    service = (deploy / "sorter-report.service").read_text()
    timer = (deploy / "sorter-report.timer").read_text()
    assert "OnCalendar=" in timer and "Unit=sorter-report.service" in timer and "Persistent=true" in timer
    line = next(x for x in service.splitlines() if x.startswith("ExecStart="))
    args = line.removeprefix("ExecStart=").split()
    assert args[0].endswith("/sorter") and args[1] == "report" and "--dated" in args and "--keep" in args
    swap = {"--db": str(db_path), "--out": str(tmp_path / "nightly"), "--config": str(tmp_path / "none.toml")}
    args = [swap.get(args[i - 1], a) for i, a in enumerate(args)]
    (tmp_path / "none.toml").write_text("")
    result = runner.invoke(app, [*args[1:], "--model", str(card_bundle(tmp_path, 0.6))])
    assert result.exit_code == 0, result.output  # every flag the unit uses exists and works
