"""Audited accuracy weighted back to the line (issue 16): a known population in a real database, a
biased sample drawn by the real `audit sample`, the true labels imported through the real folder
import, and the real report. The weighted (1/p) estimate's interval holds the true accuracy; the plain
share of right audits, and its interval, do not. Also: accuracy per model version, per day."""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import sampling, store
from sorter.audit import import_folder, sample
from sorter.card import load_card
from sorter.cli import app
from sorter.report import ReportOptions, build_report
from sorter.weighting import combined_p, hajek
from tests.conftest import write_colour_jpeg
from tests.drift_helpers import OTHER, bundle
from tests.report_helpers import DAY, HI, LABELS, LO, t

runner = CliRunner()
WINDOW = (f"{DAY}T00:00:00.000+00:00", f"{DAY}T23:59:59.000+00:00")
# stratum: (predicted label, verdict, confidence, items, of which right, true label of the wrong ones)
POPULATION = [("freshred", "fresh", 0.97, 400, 388, "freshgreen"),
              ("freshgreen", "fresh", 0.7, 100, 80, "freshred"),
              ("rottenblue", "rotten", 0.9, 100, 90, "freshred"),
              ("freshgreen", "uncertain", 0.4, 100, 40, "rottenblue")]
TRUE_ACCURACY = (388 + 80 + 90 + 40) / 700  # 0.854286
COLOUR = {"freshred": "red", "freshgreen": "green", "rottenblue": "blue"}


def write_population(tmp: Path) -> tuple[Path, dict[str, str]]:
    """700 watch items with real, distinct image files; the true label of each content hash."""
    path = tmp / "line.db"
    db = store.open_writer(path)
    truth, rows, n = {}, [], 0
    for label, verdict, conf, count, right, wrong_as in POPULATION:
        for k in range(count):
            n += 1
            img = write_colour_jpeg(tmp / "out" / verdict / f"img{n:04d}.jpg", COLOUR[label], seed=n)
            sha = hashlib.sha256(img.read_bytes()).hexdigest()
            truth[sha] = label if k < right else wrong_as
            rows.append({"sha256": sha, "source_path": f"/in/img{n:04d}.jpg", "destination": str(img), "label": label,
                         "confidence": conf, "verdict": verdict, "model_id": "colour", "model_sha256": "a" * 64,
                         "source": "watch", "received_at": t(DAY, n % 24, n % 60), "state": "done"})
    store.insert_items(db, rows)
    db.close()
    return path, truth


def audit_truth(db: Path, folder: Path, truth: dict[str, str]) -> None:
    """What an operator does with a sample folder: each copy into <true label>/, then `audit folder`."""
    for copy in sorted(folder.glob("*.jpg")):
        label = truth[hashlib.sha256(copy.read_bytes()).hexdigest()]
        shutil.move(copy, folder / label / copy.name)
    result = import_folder(db, folder, LABELS, "ann")
    assert result.errors == [] and result.written


@pytest.fixture
def audited(tmp_path) -> tuple[Path, dict]:
    db, truth = write_population(tmp_path)
    drawn = sample(db, tmp_path / "sample", 80, *WINDOW, LABELS, seed=7)  # a typical draw: see the next test
    assert drawn.drawn == 80 and drawn.candidates == 700
    audit_truth(db, tmp_path / "sample", truth)
    card = load_card(bundle(tmp_path / "model", {"other_sources": {**OTHER, "accuracy": 0.86}}))
    return db, build_report(db, LO, HI, card, options=ReportOptions(margin=0.05, min_audited=20))


def test_weighted_estimate_covers_the_true_accuracy_and_the_unweighted_does_not(audited):
    db, report = audited
    a, w = report["audit"], report["audit"]["weighted"]
    assert (a["n"], w["with_p"], w["without_p"]) == (80, 80, 0)
    # the sample leans to uncertain items (stratum weight 4.5 against 0.55 for confident fresh ones)
    conn = store.open_reader(db)
    drawn = dict(conn.execute("SELECT stratum, COUNT(*) FROM audit_draws GROUP BY stratum").fetchall())
    assert drawn == {"fresh:>=0.95": 20, "fresh:0.5-0.8": 10, "rotten:0.8-0.95": 7, "uncertain:<0.5": 43}
    right = dict(conn.execute("SELECT d.stratum, SUM(i.label = a.true_label) FROM audit_draws d JOIN items i "
                              "ON i.id = d.item_id JOIN audits a ON a.item_id = i.id GROUP BY d.stratum").fetchall())
    conn.close()
    sizes = {"fresh:>=0.95": 400, "fresh:0.5-0.8": 100, "rotten:0.8-0.95": 100, "uncertain:<0.5": 100}
    # with p = n_h / N_h, the Hájek estimate is the stratified one: Σ N_h · (right_h / n_h) / N
    stratified = sum(sizes[h] * right[h] / drawn[h] for h in sizes) / 700
    assert w["accuracy"] == round(stratified, 6)
    assert a["accuracy"] == round(sum(right.values()) / 80, 6) == 0.6375  # the plain share: biased low
    assert w["accuracy"] == 0.850356 and w["accuracy_ci95"] == [0.752053, 0.914135]
    assert w["population"] == 700.0  # Σ 1/p: the audits stand for the whole line
    lo, hi = w["accuracy_ci95"]
    assert lo <= TRUE_ACCURACY <= hi  # 0.854 inside the weighted interval
    assert not a["accuracy_ci95"][0] <= TRUE_ACCURACY <= a["accuracy_ci95"][1]  # not inside the plain one
    assert abs(w["accuracy"] - TRUE_ACCURACY) < abs(a["accuracy"] - TRUE_ACCURACY)


def test_over_many_draws_the_weighted_estimate_is_unbiased_and_the_plain_one_is_not(tmp_path):
    """The draw is a seeded rank computed in SQL (`sampling.ranked_rows`): over 100 seeds the weighted
    estimate averages to the population's accuracy (the wrong items of each stratum are its last ids, so a
    rank that followed the id would miss them), the plain share stays far below, and no two seeds draw the
    same sample (a seed that only shifted the ranks would)."""
    db, truth = write_population(tmp_path)
    conn = store.open_reader(db)
    labels = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, sha256, label FROM items")}
    weighted, plain, samples = [], [], set()
    for seed in range(100):
        picked, _ = sampling.draw(conn, *WINDOW, 80, seed)
        right = {r["id"]: truth[labels[r["id"]][0]] == labels[r["id"]][1] for r in picked}
        weighted.append(sum(right[r["id"]] / r["p"] for r in picked) / sum(1 / r["p"] for r in picked))
        plain.append(sum(right.values()) / len(picked))
        samples.add(frozenset(right))
    conn.close()
    assert abs(statistics.mean(weighted) - TRUE_ACCURACY) < 0.012  # about 4 standard errors of the mean
    assert statistics.mean(plain) < TRUE_ACCURACY - 0.15 and len(samples) == 100


def test_the_weighted_figure_drives_the_drift_flag_and_every_output_says_so(audited, tmp_path):
    db, report = audited
    d = report["drift"]
    assert report["audit"]["accuracy_used"] == d["accuracy_used"] == "weighted"
    assert d["accuracy"] == report["audit"]["weighted"]["accuracy"]
    assert d["vs_card"]["accuracy_delta"] == round(0.850356 - 0.86, 6) and not d["flagged"]
    # the plain 63.8 % would have been 22.2 points below the card's 86 %: no flag, since the weighted one drives
    model = bundle(tmp_path / "model", {"other_sources": {**OTHER, "accuracy": 0.86}})
    cfg = tmp_path / "s.toml"
    cfg.write_text("[report]\ndrift_margin = 0.05\nmin_audited = 20\n")
    result = runner.invoke(app, ["report", "--db", str(db), "--from", "2026-01-10", "--to", "2026-01-11", "--out",
                                 str(tmp_path / "r"), "--model", str(model), "--config", str(cfg), "--fail-on-drift"])
    assert result.exit_code == 0, result.output
    assert ("weighted accuracy 0.850 (95% CI 0.752-0.914), unweighted 0.637 (n=80, 0 without a recorded draw, "
            "counted as p=1); drift uses the weighted one") in result.stdout
    assert json.loads((tmp_path / "r" / "report.json").read_text())["drift"]["accuracy_used"] == "weighted"
    page = (tmp_path / "r" / "report.html").read_text()
    assert '<p id="drift-uses">drift holds the weighted audited accuracy</p>' in page
    assert 'id="headline-weighted" data-value="0.850356">85.0%<' in page
    assert "80 of 80 audits have a recorded draw probability p and count 1/p each (standing for 700 items)" in page


def test_a_weighted_fall_is_flagged_under_that_name(audited, tmp_path):
    db, _ = audited
    card = load_card(bundle(tmp_path / "high", {"other_sources": {**OTHER, "accuracy": 0.95}}))
    d = build_report(db, LO, HI, card, options=ReportOptions(margin=0.05, min_audited=20))["drift"]
    assert d["flagged"] and d["flags"][0]["message"].startswith(
        "weighted accuracy 85.0% is 10.0 points below the model card's other-sources figure of 95.0%")


def test_audits_without_a_recorded_draw_count_as_one_and_are_counted(audited, tmp_path):
    db, _ = audited
    conn = store.open_reader(db)
    undrawn = conn.execute("SELECT id, destination, label FROM items WHERE id NOT IN "
                           "(SELECT item_id FROM audit_draws) ORDER BY id LIMIT 2").fetchall()
    conn.close()
    extra = tmp_path / "extra"
    for item_id, dest, label in undrawn:  # an operator audits two items no sample drew, both right
        (extra / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(dest, extra / label / f"{item_id}.jpg")
    assert import_folder(db, extra, LABELS, "bob").inserted == 2
    w = build_report(db, LO, HI, None)["audit"]["weighted"]
    assert (w["n"], w["with_p"], w["without_p"]) == (82, 80, 2)
    assert w["population"] == 702.0  # 700 from the weights, and the two counted once each


def test_the_estimator_by_hand():
    """Σ w·y / Σ w with w = 1/p; v = n/(n−1)·Σ(w(y−R)/Σw)²; Wilson at n* = R(1−R)/v."""
    est = hajek([True, False, True, True], [0.5, 0.5, 0.25, 1.0])  # w = 2, 2, 4, 1 → R = 7/9
    assert est.accuracy == round(7 / 9, 6) and est.population == 9.0
    z = [2 * (1 - 7 / 9) / 9, 2 * (0 - 7 / 9) / 9, 4 * (1 - 7 / 9) / 9, 1 * (1 - 7 / 9) / 9]
    var = 4 / 3 * sum(x * x for x in z)
    assert est.se == round(var ** 0.5, 6) and est.n_effective == round((7 / 9) * (2 / 9) / var, 3)
    assert hajek([True, True], [0.5, 0.25]).n_effective == round(36 / 20, 3)  # v = 0: Kish's (Σw)²/Σw²
    assert combined_p(0.02, [0.5, 0.5]) == 0.02 * 0.75 and combined_p(None, []) is None


# ---- accuracy per model version, over time ----

def write_two_versions(path: Path) -> Path:
    """Day 1: model A only; day 2: A until noon, then the retrained B (same name, another hash); day 3: B.
    Audited (no draws): A 3 of 4 right on day 1, 1 of 2 on day 2; B 2 of 2 on day 2, 4 of 4 on day 3."""
    db = store.open_writer(path)
    plan = [("2026-01-09", "a", 8, [True, True, True, False]),
            ("2026-01-10", "a", 4, [True, False]),
            ("2026-01-10", "b", 4, [True, True]),
            ("2026-01-11", "b", 6, [True, True, True, True])]
    n = 0
    for day, version, count, audits in plan:
        for k in range(count):
            n += 1
            hour = (13 + k) if version == "b" and day == "2026-01-10" else k
            rotten = k % 4 == 3
            label = "rottenblue" if rotten else "freshred"
            store.insert_item(db, {"id": n, "sha256": f"{n:064x}", "source_path": f"/in/{n}.jpg", "label": label,
                                "confidence": 0.9, "verdict": "rotten" if rotten else "fresh", "model_id": "colour",
                                "model_sha256": version * 64, "source": "watch", "received_at": t(day, hour),
                                "state": "done"})
            if k < len(audits):
                db["audits"].insert({"item_id": n, "sha256": f"{n:064x}", "auditor": "ann", "origin": "csv",
                                     "true_label": label if audits[k] else "freshgreen",
                                     "audited_at": t("2026-01-12", 9)})
    db.close()
    return path


def test_accuracy_per_model_version_and_per_day(tmp_path):
    from datetime import UTC, datetime

    db = write_two_versions(tmp_path / "two.db")
    lo, hi = datetime(2026, 1, 9, tzinfo=UTC), datetime(2026, 1, 12, tzinfo=UTC)
    report = build_report(db, lo, hi, None)
    versions = [(v["version"], v["items"], v["audited"], v["accuracy"], v["rotten_rate"], v["first"][:13])
                for v in report["by_model_version"]]
    assert versions == [(f"colour@{'a' * 12}", 12, 6, round(4 / 6, 6), 0.25, "2026-01-09T00"),
                        (f"colour@{'b' * 12}", 10, 6, 1.0, 0.2, "2026-01-10T13")]
    days = [(d["day"], d["version"][-3:], d["items"], d["audited"], d["accuracy"], d["weighted_accuracy"])
            for d in report["model_by_day"]]
    assert days == [("2026-01-09", "aaa", 8, 4, 0.75, 0.75), ("2026-01-10", "aaa", 4, 2, 0.5, 0.5),
                    ("2026-01-10", "bbb", 4, 2, 1.0, 1.0), ("2026-01-11", "bbb", 6, 4, 1.0, 1.0)]
    assert all(d["audits_with_p"] == 0 for d in report["model_by_day"])  # no draws: plain and weighted agree
    assert report["by_model_version"][0]["accuracy_ci95"] == [0.299988, 0.903231]  # Wilson, 4 of 6
    out = tmp_path / "r"
    result = runner.invoke(app, ["report", "--db", str(db), "--from", "2026-01-09", "--to", "2026-01-12",
                                 "--out", str(out), "--model", str(tmp_path / "none.tflite")])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "<h2>Model versions</h2>" in page
    assert (f"<tr><td>2026-01-10</td><td>colour@{'b' * 12}</td><td>4</td><td>25.0%</td><td>0.0%</td><td>2</td>"
            "<td>100.0%</td><td>—</td></tr>") in page
