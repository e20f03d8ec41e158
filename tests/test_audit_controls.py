"""Control photos of known label in audit samples (issue 16: audits that swap labels must be refused): placed
among the items and named like them, recognised by every import, scored, and checked by `sorter retrain`.
Real SQLite, real files, the real colour model (red → freshred, green → freshgreen, blue → rottenblue)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.audit import ControlSpec, import_csv, import_folder, sample
from sorter.cli import app
from sorter.labelstudio import TASKS, export_sample, import_export
from tests.conftest import COLOR_INT8, write_colour_jpeg

runner = CliRunner()
LABELS = ["freshred", "freshgreen", "rottenblue"]
COLOUR = {"freshred": "red", "freshgreen": "green", "rottenblue": "blue"}
SWAP = {"freshred": "freshgreen", "freshgreen": "rottenblue", "rottenblue": "freshred"}  # every label wrong
NOW = datetime.now(UTC)
WINDOW = ((NOW - timedelta(days=1)).isoformat(timespec="milliseconds"), NOW.isoformat(timespec="milliseconds"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _line(tmp: Path, per_label: int = 6) -> Path:
    """A database of watch items with their routed files, received an hour ago, and nothing else."""
    path = tmp / "line.db"
    db = store.open_writer(path)
    received = (NOW - timedelta(hours=1)).isoformat(timespec="milliseconds")
    for i, label in enumerate(LABELS * per_label, start=1):
        img = write_colour_jpeg(tmp / "sorted" / label / f"img{i:03d}.jpg", COLOUR[label], seed=i)
        store.insert_item(db, {"sha256": _sha(img), "source_path": f"/in/img{i:03d}.jpg", "destination": str(img),
                            "label": label, "confidence": 0.9,
                            "verdict": "rotten" if label == "rottenblue" else "fresh",
                            "source": "watch", "received_at": received, "state": "done",
                            "model_id": "color", "model_sha256": "ab" * 32})
    db.close()
    return path


def _control_data(tmp: Path, per_label: int = 4) -> dict[str, str]:
    """CONTROL/<label>/ photos of known label (named unlike the items); {sha256: label}."""
    known = {}
    for label in LABELS:
        for j in range(per_label):
            photo = write_colour_jpeg(tmp / "control" / label / f"known_{label}_{j}.jpg", COLOUR[label], seed=500 + j)
            known[_sha(photo)] = label
    return known


def _rows(conn_path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(conn_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def sampled(tmp_path):
    """A line database, control photos, and a sample of 9 items with 5 controls drawn through the CLI (a seed
    whose 9 drawn ids leave 5 undrawn ones between them, for the controls' names: `controls.place`)."""
    db = _line(tmp_path)
    known = _control_data(tmp_path)
    out = tmp_path / "root" / "sample"
    result = runner.invoke(app, ["audit", "sample", "--db", str(db), "--n", "9", "--out", str(out), "--seed", "1",
                                 "--control-data", str(tmp_path / "control"), "--model", str(COLOR_INT8)])
    assert result.exit_code == 0, result.output
    assert "and 5 control photos of known label" in result.output  # 10 % of 9 is 1: at least 5
    return db, out, known


def test_controls_are_placed_among_the_items_named_like_them_and_recorded(sampled):
    db, out, known = sampled
    manifest = list(csv.DictReader((out / "sample.csv").read_text().splitlines()))
    controls = [m for m in manifest if m["sha256"] in known]
    items = [m for m in manifest if m["sha256"] not in known]
    assert (len(items), len(controls)) == (9, 5)
    assert all(re.fullmatch(r"\d{6}-img\d{3}\.jpg", m["file"]) for m in manifest)  # one naming scheme
    assert len({m["file"] for m in manifest}) == 14 and all((out / m["file"]).is_file() for m in manifest)
    ids = [int(m["file"][:6]) for m in manifest]
    assert ids == sorted(ids)  # listed in id order, the controls' ids among the items'
    item_ids = [int(m["file"][:6]) for m in items]
    assert all(min(item_ids) < int(c["file"][:6]) < max(item_ids) for c in controls)
    # the model's own answer shown, as for items (the colour model gets a red photo right)
    assert [(c["predicted"], c["verdict"]) for c in controls] == \
        [(known[c["sha256"]], "rotten" if known[c["sha256"]] == "rottenblue" else "fresh") for c in controls]
    assert {known[c["sha256"]] for c in controls} == set(LABELS)  # spread over the labels
    rows = _rows(db, "SELECT sha256, true_label, name, answer, auditor FROM audit_controls ORDER BY name")
    assert rows == sorted([(c["sha256"], known[c["sha256"]], c["file"], None, "") for c in controls],
                          key=lambda r: r[2])
    assert _rows(db, "SELECT COUNT(*) FROM audit_draws") == [(9,)]  # controls are never draws
    assert _rows(db, "SELECT COUNT(*) FROM items") == [(18,)]  # nor items


def test_correct_answers_score_every_control_and_only_items_become_audits(sampled):
    db, out, known = sampled
    manifest = list(csv.DictReader((out / "sample.csv").read_text().splitlines()))
    for m in manifest:  # a careful auditor: the photo's true colour
        m["true_label"] = known.get(m["sha256"], m["predicted"])
    with open(out / "sample.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(manifest[0]))
        writer.writeheader()
        writer.writerows(manifest)
    result = runner.invoke(app, ["audit", "import", str(out / "sample.csv"), "--db", str(db), "--model",
                                 str(COLOR_INT8)])
    assert result.exit_code == 0, result.output
    assert "imported: 9 new, 0 changed, 0 unchanged, 0 skipped, 0 errors" in result.output
    assert "controls: 5 of 5 right (photos of known label among the sample)" in result.output
    assert _rows(db, "SELECT COUNT(*) FROM audits") == [(9,)]
    assert _rows(db, "SELECT COUNT(*), SUM(answer = true_label) FROM audit_controls") == [(5, 5)]
    again = import_csv(db, out / "sample.csv", LABELS)  # a re-import changes nothing
    assert (again.inserted, again.unchanged, again.controls and (again.controls.right, again.controls.total)) == \
        (0, 9, (5, 5))
    assert _rows(db, "SELECT COUNT(*) FROM audit_controls") == [(5,)]


def _sort_swapped(out: Path, known: dict[str, str]) -> None:
    """An auditor who gives every photo the wrong label: items (true label: their routed folder) and controls."""
    truth = {**{_sha(p): p.parent.name for p in (out.parents[1] / "sorted").rglob("*.jpg")}, **known}
    for photo in [p for p in out.iterdir() if p.suffix == ".jpg"]:
        label = SWAP[truth[_sha(photo)]]
        (out / label).mkdir(exist_ok=True)
        photo.rename(out / label / photo.name)


def test_swapped_answers_score_zero_and_retrain_refuses_them_before_training(sampled, tmp_path):
    db, out, known = sampled
    _sort_swapped(out, known)
    result = runner.invoke(app, ["audit", "folder", str(out), "--db", str(db), "--model", str(COLOR_INT8)])
    assert result.exit_code == 0, result.output  # no "unknown item" error for a control photo
    assert "imported: 9 new" in result.output
    assert "controls: 0 of 5 right (0%) — these answers disagree with photos of known label" in result.output
    refused = runner.invoke(app, ["retrain", "--db", str(db), "--base-data", str(tmp_path / "control"),
                                  "--model", str(COLOR_INT8), "--out", str(tmp_path / "retrain")])
    assert refused.exit_code == 1, refused.output
    assert "kept the current model, nothing trained: the auditors gave 0 of 5 control photos of known label " \
           "their label (0%, below --min-control-accuracy 90%)" in refused.output
    comparison = json.loads((tmp_path / "retrain" / "comparison.json").read_text())
    assert comparison["decision"]["install"] is False and comparison["challenger"] is None
    assert comparison["field_data"]["controls"] == {"audited": 9, "covered": 9, "samples": 1, "placed": 5,
                                                    "answered": 5, "right": 0, "accuracy": 0.0,
                                                    "min_accuracy": 0.9}
    assert not (tmp_path / "retrain" / "field").exists()  # nothing built, nothing trained


def test_retrain_without_answered_controls_warns_once_and_goes_on(tmp_path):
    db = _line(tmp_path, per_label=2)
    names = sorted((tmp_path / "sorted").rglob("*.jpg"))
    for photo in names:
        (tmp_path / "audit" / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "audit" / photo.parent.name / photo.name).write_bytes(photo.read_bytes())
    assert import_folder(db, tmp_path / "audit", LABELS).inserted == 6
    result = runner.invoke(app, ["retrain", "--db", str(db), "--base-data", str(tmp_path / "sorted"),
                                 "--model", str(COLOR_INT8), "--out", str(tmp_path / "retrain")])
    out = result.output.replace("\n", " ")
    assert out.count("warning: no audited item was drawn in a sample with control photos") == 1
    assert "kept the current model" not in out
    assert result.exit_code == 2 and "float" in out  # it went on, to the next step's error (no float weights)


def test_label_studio_tasks_and_import_treat_controls_as_items_show_them(sampled):
    db, out, known = sampled
    root = out.parent
    export = export_sample(db, out, root, LABELS)
    assert (export.tasks, export.pre_annotated, export.errors) == (14, 14, [])
    tasks = json.loads((out / TASKS).read_text())
    controls = [t for t in tasks if t["data"]["sha256"] in known]
    assert len(controls) == 5
    assert [sorted(t) for t in controls] == [["data", "predictions"]] * 5
    assert all(t["data"]["item_id"] == int(t["data"]["file"][:6]) for t in tasks)  # as an item's task is
    assert {t["predictions"][0]["model_version"] for t in controls} == \
        {f"color-int8@{hashlib.sha256(COLOR_INT8.read_bytes()).hexdigest()[:12]}"}
    for n, task in enumerate(tasks, start=1):
        truth = known.get(task["data"]["sha256"]) or task["predictions"][0]["result"][0]["value"]["choices"][0]
        label = SWAP[truth] if task in controls else truth  # right on items, wrong on every control
        task.update(id=n, annotations=[{"id": n, "completed_by": 7, "created_at": "2026-01-11T08:00:00Z",
                                        "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                                    "value": {"choices": [label]}}]}])
    (out / "export.json").write_text(json.dumps(tasks))
    result = import_export(db, out / "export.json", LABELS)
    assert (result.errors, result.inserted) == ([], 9)
    assert result.controls is not None and (result.controls.right, result.controls.total) == (0, 5)
    assert _rows(db, "SELECT DISTINCT auditor, origin FROM audit_controls") == [("labelstudio:7", "labelstudio")]


def test_a_second_auditor_gets_rows_of_their_own(sampled):
    db, out, known = sampled
    manifest = list(csv.DictReader((out / "sample.csv").read_text().splitlines()))
    for who, swap in (("ann", False), ("bob", True)):
        for m in manifest:
            truth = known.get(m["sha256"], m["predicted"])
            m["true_label"], m["auditor"] = (SWAP[truth] if swap and m["sha256"] in known else truth), who
        path = out / f"{who}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(manifest[0]))
            writer.writeheader()
            writer.writerows(manifest)
        import_csv(db, path, LABELS)
    assert _rows(db, "SELECT auditor, COUNT(*), SUM(answer = true_label) FROM audit_controls GROUP BY auditor") == \
        [("ann", 5, 5), ("bob", 5, 0)]


def test_m007_on_an_existing_database_keeps_its_rows(tmp_path):
    db_path = _line(tmp_path, per_label=2)
    assert sample(db_path, tmp_path / "s", 3, *WINDOW, LABELS, seed=1).drawn == 3
    db = store.open_writer(db_path)  # make it a database from before m007
    db.execute("DROP TABLE audit_controls")
    db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm007_audit_controls'")
    db.close()
    before = [_rows(db_path, f"SELECT * FROM {t} ORDER BY id") for t in ("items", "audit_draws")]
    result = sample(db_path, tmp_path / "s2", 3, *WINDOW, LABELS, seed=2,
                    control=ControlSpec(_control_data(tmp_path) and tmp_path / "control", 3, COLOR_INT8))
    assert result.controls == 3
    assert _rows(db_path, "SELECT * FROM items ORDER BY id") == before[0]
    assert _rows(db_path, "SELECT COUNT(*) FROM audit_draws")[0][0] == len(before[1]) + 3
    assert _rows(db_path, "SELECT COUNT(*) FROM audit_controls") == [(3,)]
    assert (tmp_path / "line.db.bak-m007_audit_controls").is_file()
