"""Fleet: real sorter processes publish to one real mosquitto; the fleet report adds up exactly.

Three `sorter watch` processes publish verdicts and hourly counters; three `sorter report`
processes publish their nightly reports, which `sorter fleet report` merges into one report whose
every figure is worked out by hand below.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.cli import app
from sorter.config import FleetSettings
from sorter.fleet import FleetPublisher, aggregate, collect, hour_key, listen, publish_report
from sorter.fleet_merge import merge
from sorter.report import ReportOptions, build_report, wilson
from tests.camera_helpers import free_port
from tests.report_helpers import DAY, HI, LO, build_db, card, card_bundle, t
from tests.watch_helpers import MODEL, SORTER, jpeg

pytestmark = pytest.mark.timeout(120)
LINES = {"line-a": ["red", "red", "blue"], "line-b": ["green", "blue", "blue", "grey"], "line-c": ["red"]}


def start_sorter(tmp_path, line: str, colours: list[str], port: int) -> subprocess.Popen:
    root = tmp_path / line
    (root / "in").mkdir(parents=True)
    for i, colour in enumerate(colours):
        (root / "in" / f"{i}.jpg").write_bytes(jpeg(colour, tag=f"{line}-{i}"))
    (root / "s.toml").write_text(f"line = '{line}'\nthreads = 1\ndb = '{root / 'db'}'\nout = '{root / 'out'}'\n"
                                 f"[fleet]\nbroker = '127.0.0.1:{port}'\nspool = '{root / 'spool'}'\n")
    return subprocess.Popen([*SORTER, "watch", str(root / "in"), "--once", "-c", str(root / "s.toml"),
                             "-m", str(MODEL)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_sorters_one_broker_exact_report(tmp_path, broker):
    live: dict = {}
    listener = threading.Thread(target=lambda: live.update(collect(f"127.0.0.1:{broker.port}", 12)))
    listener.start()
    procs = [start_sorter(tmp_path, line, colours, broker.port) for line, colours in LINES.items()]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["fleet", "report", "--broker", f"127.0.0.1:{broker.port}",
                                      "--duration", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no line published a report for any day: hourly counters only" in result.output
    report = json.loads((out / "report.json").read_text())["live"]  # no `sorter report` ran: counters only
    lines = report["lines"]
    assert set(lines) == set(LINES)
    assert lines["line-a"]["by_verdict"] == {"fresh": 2, "rotten": 1}
    assert lines["line-a"]["by_label"] == {"freshred": 2, "rottenblue": 1}
    assert lines["line-b"]["by_verdict"] == {"fresh": 1, "rotten": 2, "uncertain": 1}
    assert lines["line-c"]["by_verdict_label"] == {"fresh/freshred": 1}
    assert report["total"]["items"] == 8 and report["total"]["by_verdict"] == {"fresh": 4, "rotten": 3,
                                                                                "uncertain": 1}
    assert all(len(line["runs"]) == 1 for line in lines.values())
    page = (out / "report.html").read_text()
    assert 'id="fleet-items" data-value="8"' in page
    assert all(f"<td>{name}</td>" in page for name in LINES)
    listener.join(30)
    assert live["live_events"] == {"line-a": 3, "line-b": 4, "line-c": 1}  # every verdict arrived live too
    assert live["total"] == report["total"]


def test_aggregate_sums_runs_and_hours():
    counters = {
        "t/a/counters/h1/r1": {"line": "a", "run": "r1", "hour": "h1", "counts": {"fresh": {"x": 2}}},
        "t/a/counters/h2/r2": {"line": "a", "run": "r2", "hour": "h2", "counts": {"rotten": {"y": 1}}},
    }
    report = aggregate(counters)
    assert report["lines"]["a"]["items"] == 3 and report["lines"]["a"]["hours"] == {"h1": 2, "h2": 1}
    assert report["lines"]["a"]["runs"] == ["r1", "r2"]


# ---- nightly reports: three `sorter report` processes publish, `sorter fleet report` merges ----

# line → rows of (label, verdict, confidence, hour, true label); line-a is tests/test_report.py's database
LINE_B = [("freshred", "fresh", 0.92, 0, "freshred"), ("freshgreen", "fresh", 0.81, 0, "freshgreen"),
          ("rottenblue", "rotten", 0.97, 1, "rottenblue"), ("rottenblue", "rotten", 0.55, 2, "rottenblue")]
LINE_C = [("freshgreen", "fresh", 0.75, 2, "rottenblue"), ("freshred", "uncertain", 0.42, 2, "freshred"),
          ("rottenblue", "rotten", 0.88, 5, "freshgreen")]


def line_db(folder: Path, rows: list[tuple]) -> Path:
    """A line's results database: classified items in DAY, each audited."""
    folder.mkdir(parents=True)
    path = folder / "r.db"
    db = store.open_writer(path)
    for i, (label, verdict, conf, hour, truth) in enumerate(rows, 1):
        store.insert_item(db, {"id": i, "sha256": f"{i:064x}", "source_path": f"/in/{i}.jpg", "label": label,
                            "confidence": conf, "verdict": verdict, "model_id": "colour", "source": "watch",
                            "received_at": t(DAY, hour, i), "state": "done"})
        db["audits"].insert({"item_id": i, "sha256": f"{i:064x}", "true_label": truth, "auditor": "ann",
                             "audited_at": t("2026-01-11", 9), "origin": "csv"})
    db.close()
    return path


def line_report(tmp_path: Path, line: str, db: Path, bundle: Path, port: int) -> subprocess.Popen:
    """`sorter report` for DAY as its own process, configured to publish to the fleet broker."""
    cfg = tmp_path / f"{line}.toml"
    cfg.write_text(f"line = '{line}'\ndb = '{db}'\n[report]\nmin_audited = 3\n"
                   f"[fleet]\nbroker = '127.0.0.1:{port}'\n")
    return subprocess.Popen([*SORTER, "report", "--out", str(tmp_path / line / "report"), "--from", DAY,
                             "--to", "2026-01-11", "-c", str(cfg), "--model", str(bundle)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fleet(tmp_path: Path, port: int, out: str, *args: str):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f"[report]\nmin_audited = 5\n[fleet]\nbroker = '127.0.0.1:{port}'\n")
    result = CliRunner().invoke(app, ["fleet", "report", "-c", str(cfg), "--duration", "0.3",
                                      "--out", str(tmp_path / out), *args])
    return result, json.loads((tmp_path / out / "report.json").read_text())


def test_three_line_reports_merge_into_one_exact_report(tmp_path, broker):
    bundle = card_bundle(tmp_path, 0.9)
    dbs = {"line-a": build_db(tmp_path / "line-a"), "line-b": line_db(tmp_path / "line-b", LINE_B),
           "line-c": line_db(tmp_path / "line-c", LINE_C)}
    procs = {line: line_report(tmp_path, line, db, bundle, broker.port) for line, db in dbs.items()}
    for line, proc in procs.items():
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert f"published to sorter/fleet/{line}/report/{DAY}" in out
    older = json.loads((tmp_path / "line-b" / "report" / "report.json").read_text())
    older["window"] = {**older["window"], "from": "2026-01-09T00:00:00.000+00:00"}
    publish_report(FleetSettings(broker=f"127.0.0.1:{broker.port}"), "line-b", older)

    result, r = fleet(tmp_path, broker.port, "fleet", "--date", DAY, "--fail-on-drift")
    assert result.exit_code == 1, result.output  # drift flags raised, as `sorter report` would
    assert r["format"] == "sorter-report/1" and r["date"] == DAY and list(r["lines"]) == list(dbs)
    # line-a: 10 classified of 14 received (3 errors, 1 duplicate); line-b 4; line-c 3
    assert r["items"] == {"received": 21, "classified": 17, "duplicates": 1, "errors": 3, "dry_run": 0}
    assert list(r["by_verdict"].items()) == [("fresh", 8), ("rotten", 6), ("uncertain", 3)]
    assert r["rotten_rate"] == round(6 / 17, 6) and r["uncertain_rate"] == round(3 / 17, 6)
    assert r["by_label"] == {"freshred": 6, "freshgreen": 5, "rottenblue": 6}
    assert r["errors_by_reason"] == {"wrong-extension": 2, "too-large": 1}
    assert list(r["camera"]) == ["line-a/cam0"] and r["camera"]["line-a/cam0"]["online_seconds"] == 11 * 3600
    # hourly: line-a 2,2,3,3 · line-b 2,1,1 in hours 0-2 · line-c 2 at 02:00 and 1 at 05:00
    assert [h["items"] for h in r["throughput"]["hourly"][:7]] == [4, 3, 6, 3, 0, 1, 0]
    assert len(r["throughput"]["hourly"]) == 24 and r["throughput"]["peak_per_hour"] == 6
    assert r["throughput"]["per_hour"] == round(17 / 24, 6)
    hist = r["confidence_histogram"]["by_verdict"]
    assert hist["fresh"] == [0, 0, 0, 0, 0, 0, 1, 2, 2, 3]  # a: .65 .7 .8 .9 .95, b: .92 .81, c: .75
    assert hist["rotten"] == [0, 0, 0, 0, 0, 1, 1, 0, 2, 2]  # a: .6 .85 .99, b: .97 .55, c: .88
    assert hist["uncertain"] == [0, 0, 0, 1, 2, 0, 0, 0, 0, 0]  # a: .3 .45, c: .42
    assert {v: sum(b) for v, b in hist.items()} == {"fresh": 8, "rotten": 6, "uncertain": 3}

    a = r["audit"]
    assert a["confusion_matrix"]["labels"] == ["freshred", "freshgreen", "rottenblue"]
    # a [[2,0,1],[1,2,0],[0,1,1]] + b [[1,0,0],[0,1,0],[0,0,2]] + c [[1,0,0],[0,0,1],[0,1,0]]
    assert a["confusion_matrix"]["matrix"] == [[4, 0, 1], [1, 3, 1], [0, 2, 3]]
    assert (a["n"], a["correct"]) == (15, 10)  # 5 of 8 + 4 of 4 + 1 of 3
    assert a["accuracy"] == round(10 / 15, 6) and a["accuracy_ci95"] == wilson(10, 15)
    assert a["per_class"]["freshred"] == {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 5}
    assert (a["per_class"]["rottenblue"]["precision"], a["per_class"]["rottenblue"]["recall"]) == (0.6, 0.6)
    assert a["macro_f1"] == round((0.8 + 0.6 + 0.6) / 3, 6)
    assert a["fresh_vs_rotten_accuracy"] == round(11 / 15, 6)  # 6 of 8 + 4 of 4 + 1 of 3
    assert sorted((w["line"], w["id"]) for w in a["wrong"]) == [("line-a", 2), ("line-a", 5), ("line-a", 7),
                                                               ("line-c", 1), ("line-c", 3)]

    d = r["drift"]
    assert d["vs_card"]["accuracy"] == 0.9 and d["vs_card"]["accuracy_delta"] == round(10 / 15 - 0.9, 6)
    assert [(f.get("line"), f["kind"]) for f in d["flags"]] == [(None, "accuracy-vs-model-card"),
                                                                ("line-a", "accuracy-vs-model-card"),
                                                                ("line-c", "accuracy-vs-model-card")]
    assert d["flags"][1]["message"].startswith("line-a: accuracy 62.5% is 27.5 points below the model card's 90.0%")
    assert d["flags"][2]["message"].startswith("line-c: accuracy 33.3%")
    assert {k: v["drift_flagged"] for k, v in r["lines"].items()} == {"line-a": True, "line-b": False,
                                                                       "line-c": True}
    assert r["lines"]["line-b"] == {**r["lines"]["line-b"], "items": 4, "audit_n": 4, "accuracy": 1.0,
                                    "rotten_rate": 0.5, "model": "colour"}
    assert r["live"]["total"]["items"] == 0  # no watch ran: the counters view is there, empty

    page = (tmp_path / "fleet" / "report.html").read_text()
    assert 'id="headline-accuracy" data-value="0.666667">66.7%<' in page
    assert all(f"<td>{line}</td>" in page for line in dbs)
    assert "line-a: accuracy 62.5%" in page and "Fleet report (3 lines)" in page

    result, newest = fleet(tmp_path, broker.port, "newest")  # no --date: the newest day reported
    assert result.exit_code == 0, result.output
    assert newest["date"] == DAY and newest["audit"]["confusion_matrix"] == a["confusion_matrix"]
    result, day9 = fleet(tmp_path, broker.port, "day9", "--date", "2026-01-09")
    assert result.exit_code == 0, result.output
    assert list(day9["lines"]) == ["line-b"] and day9["audit"]["n"] == 4
    result, none = fleet(tmp_path, broker.port, "none", "--date", "2025-12-31", "--fail-on-drift")
    assert result.exit_code == 0 and "audit" not in none
    assert "no line published a report for 2025-12-31: hourly counters only" in result.output


def test_merge_of_one_report_is_that_report(tmp_path):
    opts = ReportOptions(min_audited=5)
    one = build_report(build_db(tmp_path), LO, HI, card(0.9), options=opts)
    merged = merge({"line-a": one}, opts)
    same = ["format", "window", "model", "items", "by_label", "by_verdict", "by_model", "rotten_rate",
            "uncertain_rate", "throughput", "confidence_histogram", "errors_by_reason"]
    assert {k: merged[k] for k in same} == {k: one[k] for k in same}
    assert merged["camera"] == {f"line-a/{dev}": fig for dev, fig in one["camera"].items()}
    assert {k: v for k, v in merged["audit"].items() if k not in {"wrong", "weighting"}} == {
        k: v for k, v in one["audit"].items() if k != "wrong"}  # the weighted figures and accuracy_used too
    assert merged["audit"]["weighting"] == {"weighted_lines": ["line-a"], "plain_lines": {}, "note": None}
    assert merged["audit"]["wrong"] == [{**w, "line": "line-a"} for w in one["audit"]["wrong"]]
    assert merged["drift"]["vs_card"]["accuracy_delta"] == one["drift"]["vs_card"]["accuracy_delta"] == -0.275
    assert [f["message"] for f in merged["drift"]["flags"]] == [
        one["drift"]["flags"][0]["message"], "line-a: " + one["drift"]["flags"][0]["message"]]
    assert merged["lines"]["line-a"]["accuracy"] == 0.625 and merged["lines"]["line-a"]["audit_n"] == 8


@pytest.mark.parametrize("breakage, where", [
    (lambda r: r.pop("audit"), "audit: Field required"),
    (lambda r: r["audit"]["confusion_matrix"].update(matrix="lots"), "audit.confusion_matrix.matrix"),
    (lambda r: r["items"].update(classified="ten"), "items.classified"),
    (lambda r: r["window"].pop("from"), "window.from"),
], ids=["no-audit", "matrix-not-a-list", "count-not-a-number", "no-window-start"])
def test_a_line_report_that_is_not_the_format_is_left_out_and_named(tmp_path, breakage, where):
    """One hand-edited or foreign report on the fleet topic neither stops the merge nor enters its sums:
    the other lines merge as if it were absent, and `refused_lines` says which line and why."""
    opts = ReportOptions(min_audited=5)
    good = build_report(build_db(tmp_path), LO, HI, card(0.9), options=opts)
    bad = json.loads(json.dumps(good))
    breakage(bad)
    merged = merge({"line-a": good, "line-b": bad}, opts)
    alone = merge({"line-a": good}, opts)
    assert list(merged["lines"]) == ["line-a"] and merged["items"] == alone["items"] == good["items"]
    assert merged["audit"]["n"] == alone["audit"]["n"] == good["audit"]["n"]
    assert list(merged["refused_lines"]) == ["line-b"]
    assert merged["refused_lines"]["line-b"].startswith("line-b's report is not a sorter-report/1: ")
    assert where in merged["refused_lines"]["line-b"] and "\n" not in merged["refused_lines"]["line-b"]
    with pytest.raises(ValueError, match="no line reports to merge: line-b's report"):
        merge({"line-b": bad}, opts)


def test_report_with_an_unreachable_broker_still_writes_its_files(tmp_path):
    db = build_db(tmp_path)
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"line = 'line-a'\n[report]\nmin_audited = 5\n[fleet]\nbroker = '127.0.0.1:{free_port()}'\n")
    base = ["report", "--db", str(db), "--from", DAY, "--to", "2026-01-11", "-c", str(cfg), "--fail-on-drift"]
    calm = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a"), "--model", str(card_bundle(tmp_path, 0.6))])
    assert calm.exit_code == 0, calm.output
    assert json.loads((tmp_path / "a" / "report.json").read_text())["audit"]["accuracy"] == 0.625
    assert (tmp_path / "a" / "report.html").stat().st_size > 1000
    warnings = [line for line in calm.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "report not published to 127.0.0.1:" in warnings[0]
    flagged = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b"), "--model", str(card_bundle(tmp_path, 0.9))])
    assert flagged.exit_code == 1 and "not published" in flagged.stderr  # the drift exit code stays as it was
    quiet = CliRunner().invoke(app, [*base, "--no-publish", "--out", str(tmp_path / "c"),
                                     "--model", str(card_bundle(tmp_path, 0.6))])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_publisher_forgets_published_hours_after_a_day(tmp_path, broker):
    """Months of running must not mean one in-memory counter set per hour since start: hours more
    than a day old are published (if changed) and then forgotten; the broker keeps them retained."""
    settings = FleetSettings(broker=f"127.0.0.1:{broker.port}", spool=tmp_path / "spool", counters_seconds=3600)
    pub = FleetPublisher(settings, "l1", "watch")
    try:
        assert pub.out.connected.wait(10)
        pub._last_push = time.time()  # the next push is the explicit one below
        now = time.time()
        stale, changed, yesterday = (hour_key(now - h * 3600) for h in (30, 26, 20))
        pub.hours[stale]["fresh"]["freshred"] = 7  # published long ago, unchanged since
        pub.hours[changed]["rotten"]["rottenblue"] = 2
        pub.hours[yesterday]["fresh"]["freshgreen"] = 1
        pub._dirty.update({changed, yesterday})
        pub.on_item("fresh", "freshred", None)
        this_hour = max(pub.hours)
        infos = pub.push_counters()
        assert len(infos) == 3
        for info in infos:
            info.wait_for_publish(10)
        assert sorted(pub.hours) == [yesterday, this_hour]
        heard = listen(settings.broker, 0.5).counters
        assert {topic.split("/")[4]: payload["counts"] for topic, payload in heard.items()} == {
            changed: {"rotten": {"rottenblue": 2}}, yesterday: {"fresh": {"freshgreen": 1}},
            this_hour: {"fresh": {"freshred": 1}}}
    finally:
        pub.close(5)


def test_published_reports_are_retained_and_pruned_days_are_cleared(broker):
    settings = FleetSettings(broker=f"127.0.0.1:{broker.port}")
    report = {"window": {"from": "2026-01-09T00:00:00.000+00:00"}, "audit": {"n": 0}}
    assert publish_report(settings, "l1", report) == "sorter/fleet/l1/report/2026-01-09"
    assert set(listen(settings.broker, 0.3).reports) == {"2026-01-09"}  # retained: a late subscriber gets it
    later = {**report, "window": {"from": "2026-01-10T00:00:00.000+00:00"}}
    publish_report(settings, "l1", later, clear=["2026-01-09"])
    heard = listen(settings.broker, 0.3)
    assert list(heard.reports) == ["2026-01-10"] and heard.reports["2026-01-10"]["l1"]["line"] == "l1"
