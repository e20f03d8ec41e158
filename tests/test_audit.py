"""Audits: CSV and folder imports (validated, idempotent, never touching predictions) and sampling."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import sampling, store
from sorter.audit import import_csv, import_folder, sample
from sorter.card import ModelCard, write_card
from sorter.cli import app
from sorter.sampling import allocate, stratum_weight
from tests.conftest import write_colour_jpeg

runner = CliRunner()
LABELS = ["freshred", "freshgreen", "rottenblue"]
COLOUR = {"freshred": "red", "freshgreen": "green", "rottenblue": "blue"}
RECEIVED = "2026-01-10T10:00:00.000+00:00"


def _items(tmp: Path, specs: list[tuple[str, str, float]]) -> tuple[Path, list[dict]]:
    """Items with real files under tmp/out; (label, verdict, confidence) each."""
    path = tmp / "a.db"
    db = store.open_writer(path)
    made = []
    for i, (label, verdict, conf) in enumerate(specs, start=1):
        img = write_colour_jpeg(tmp / "out" / verdict / f"img{i:03d}.jpg", COLOUR[label], seed=i)
        sha = hashlib.sha256(img.read_bytes()).hexdigest()
        row = {"sha256": sha, "source_path": f"/in/img{i:03d}.jpg", "destination": str(img), "label": label,
               "confidence": conf, "verdict": verdict, "source": "watch", "received_at": RECEIVED, "state": "done"}
        row["id"] = store.insert_item(db, row)
        made.append(row)
    db.close()
    return path, made


def _audits(db: Path) -> list[dict]:
    conn = store.open_reader(db)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audits ORDER BY item_id, auditor")]
    finally:
        conn.close()


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


@pytest.fixture
def seeded(tmp_path):
    return _items(tmp_path, [("freshred", "fresh", 0.9), ("freshgreen", "fresh", 0.8),
                             ("rottenblue", "rotten", 0.7), ("freshred", "uncertain", 0.4)])


def test_csv_import_validates_every_row_and_writes_nothing_on_error(seeded, tmp_path):
    db, items = seeded
    bad = _write_csv(tmp_path / "bad.csv", ["sha256", "file", "true_label", "auditor"], [
        [items[0]["sha256"], "", "freshred", "ann"],
        ["", "img002.jpg", "rottenblu", "ann"],        # row 3: misspelt label
        ["f" * 64, "", "freshred", "ann"],             # row 4: unknown item
        ["", "nope.jpg", "freshgreen", "ann"],         # row 5: unknown file name
    ])
    result = import_csv(db, bad, LABELS)
    assert not result.written and result.inserted == 0
    assert result.errors[0].startswith("row 3: unknown label 'rottenblu' (did you mean 'rottenblue'?)")
    assert result.errors[1].startswith("row 4: unknown item sha256 ffffffffffff")
    assert result.errors[2].startswith("row 5: unknown item 'nope.jpg'")
    assert _audits(db) == []


def test_csv_import_matches_hash_name_and_path_and_is_idempotent(seeded, tmp_path):
    db, items = seeded
    rows = [[items[0]["sha256"], "", "freshred", "ann", "2026-01-11T08:00:00"],
            ["", "img002.jpg", "rottenblue", "ann", ""],            # by file name
            ["", items[2]["destination"], "rottenblue", "", ""],     # by path on disk (hashed)
            ["", "img004.jpg", "", "", ""]]                           # not filled in: skipped
    good = _write_csv(tmp_path / "good.csv", ["SHA256", "Path", "True label", "Auditor", "Time"], rows)
    first = import_csv(db, good, LABELS)
    assert (first.inserted, first.updated, first.unchanged, first.skipped, first.errors) == (3, 0, 0, 1, [])
    again = import_csv(db, good, LABELS)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)
    audits = _audits(db)
    assert [(a["item_id"], a["true_label"]) for a in audits] == [(1, "freshred"), (2, "rottenblue"),
                                                                 (3, "rottenblue")]
    assert audits[0]["audited_at"] == "2026-01-11T08:00:00.000+00:00"
    rows[1][2] = "freshgreen"  # ann corrects herself: her audit changes, no second row
    fixed = import_csv(db, _write_csv(tmp_path / "fixed.csv", ["sha256", "file", "label", "auditor", "time"], rows),
                       LABELS)
    assert (fixed.inserted, fixed.updated, fixed.unchanged) == (0, 1, 2)
    assert len(_audits(db)) == 3
    conn = store.open_reader(db)
    assert conn.execute("SELECT label FROM items WHERE id = 2").fetchone()[0] == "freshgreen"
    assert conn.execute("SELECT label FROM items WHERE id = 3").fetchone()[0] == "rottenblue"  # prediction kept
    conn.close()


def test_folder_import_by_content_hash(seeded, tmp_path):
    db, items = seeded
    audit_dir = tmp_path / "audit"
    for label, item in (("freshgreen", items[0]), ("rottenblue", items[3]), ("bogus", items[1])):
        (audit_dir / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(item["destination"], audit_dir / label / f"renamed-{item['id']}.jpg")
    write_colour_jpeg(audit_dir / "freshred" / "stranger.jpg", "red", seed=999)
    (audit_dir / "freshred" / "notes.txt").write_text("not an image")
    result = import_folder(db, audit_dir, LABELS, auditor="bob")
    assert not result.written
    assert result.errors[0].startswith("bogus/: unknown label 'bogus'")
    assert result.errors[1] == "freshred/stranger.jpg: unknown item (its content is not in the database)"
    partial = import_folder(db, audit_dir, LABELS, auditor="bob", partial=True)
    assert partial.written and partial.inserted == 2 and partial.skipped == 1
    assert [(a["item_id"], a["true_label"], a["auditor"], a["origin"]) for a in _audits(db)] == [
        (1, "freshgreen", "bob", "folder"), (4, "rottenblue", "bob", "folder")]
    assert import_folder(db, audit_dir, LABELS, auditor="bob", partial=True).unchanged == 2


def test_cli_audit_import_reports_errors_and_exit_codes(seeded, tmp_path):
    db, items = seeded
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    write_card(model, ModelCard(name="m", labels=LABELS, rotten_labels=["rottenblue"],
                                input={"height": 32, "width": 32}, quantization="int8"))
    bad = _write_csv(tmp_path / "b.csv", ["sha256", "true_label"], [[items[0]["sha256"], "banana"]])
    result = runner.invoke(app, ["audit", "import", str(bad), "--db", str(db), "--model", str(model)])
    assert result.exit_code == 1 and "row 2: unknown label 'banana'" in result.output
    ok = _write_csv(tmp_path / "o.csv", ["sha256", "true_label"], [[items[0]["sha256"], "freshred"]])
    result = runner.invoke(app, ["audit", "import", str(ok), "--db", str(db), "--model", str(model)])
    assert result.exit_code == 0 and "1 new" in result.output
    nolabel = _write_csv(tmp_path / "n.csv", ["sha256", "auditor"], [[items[0]["sha256"], "x"]])
    result = runner.invoke(app, ["audit", "import", str(nolabel), "--db", str(db), "--model", str(model)])
    assert result.exit_code == 2 and "no label column" in result.output
    for args in (["audit"], ["audit", "import"], ["audit", "folder"], ["audit", "sample"], ["report"]):
        assert len(runner.invoke(app, [*args, "--help"]).output) > 100, args


def test_allocate_weights_caps_and_minimum_one():
    assert allocate({"fresh": 100, "uncertain": 10, "rotten": 0}, {"uncertain": 3}, 13) == {"fresh": 10,
                                                                                          "uncertain": 3}
    assert allocate({"fresh": 100, "uncertain": 100}, {"uncertain": 3}, 20) == {"fresh": 5, "uncertain": 15}
    assert allocate({"fresh": 50, "uncertain": 3}, {"uncertain": 3}, 30) == {"fresh": 27, "uncertain": 3}  # capped
    assert allocate({"fresh": 3, "rotten": 1}, {}, 50) == {"fresh": 3, "rotten": 1}  # fewer than asked


def test_allocation_prefers_low_confidence_within_a_verdict():
    sizes = {"fresh:0.5-0.8": 100, "fresh:>=0.95": 100}
    # weighted 100×1.0 : 100×0.55: 13 of 20; 10 each if unweighted
    assert allocate(sizes, {k: stratum_weight(k) for k in sizes}, 20) == {"fresh:0.5-0.8": 13, "fresh:>=0.95": 7}


def test_each_item_of_a_stratum_is_drawn_equally_often_over_seeds(tmp_path):
    """The draw happens in SQL by a seeded rank: over many seeds every item of a stratum comes up about
    quota/size of the time (a rank that followed the id would favour the first or the last items)."""
    db, _ = _items(tmp_path, [("freshred", "fresh", 0.97)] * 40)
    conn = store.open_reader(db)
    counts = dict.fromkeys(range(1, 41), 0)
    for seed in range(400):
        picked, candidates = sampling.draw(conn, "2026-01-10", "2026-01-11", 4, seed)
        assert candidates == 40 and len(picked) == 4 and {r["share"] for r in picked} == {0.1}
        for row in picked:
            counts[row["id"]] += 1
    conn.close()
    assert min(counts.values()) >= 20 and max(counts.values()) <= 65  # 40 expected; ±3.9 sd
    first_half = sum(n for i, n in counts.items() if i <= 20)
    assert 720 <= first_half <= 880  # 800 expected


def test_a_drawn_item_whose_image_has_gone_is_passed_over_and_the_share_says_so(tmp_path):
    db, items = _items(tmp_path, [("freshred", "fresh", 0.97)] * 40)
    for row in items[::2]:  # retention took every other image
        Path(row["destination"]).unlink()
    conn = store.open_reader(db)
    picked, candidates = sampling.draw(conn, "2026-01-10", "2026-01-11", 30, seed=3)
    conn.close()
    assert candidates == 40 and len(picked) == 20  # every image that is left, no more
    assert all(Path(r["destination"]).is_file() for r in picked)
    assert {r["share"] for r in picked} == {1.0}  # all 20 of the 20 with an image: p = 1, not 20/40


def test_sample_copies_files_writes_manifest_and_round_trips(tmp_path):
    specs = [("freshred", "fresh", 0.95)] * 30 + [("rottenblue", "rotten", 0.9)] * 10 + \
            [("freshgreen", "uncertain", 0.4)] * 10
    db, _ = _items(tmp_path, specs)
    window = ("2026-01-10T00:00:00.000+00:00", "2026-01-11T00:00:00.000+00:00")
    out = tmp_path / "sample"
    result = sample(db, out, 12, *window, LABELS, seed=7)
    # strata fresh:>=0.95, rotten:0.8-0.95, uncertain:<0.5 weighted 30×0.55 : 10×0.7 : 10×3×1.5 of 12 → 1 each
    # first, then 9 split 16.5:7:45 → 2/0/5, the last 2 to the largest share (uncertain)
    assert result.drawn == 12 and result.candidates == 50
    assert result.by_verdict == {"fresh": 3, "rotten": 1, "uncertain": 8}
    manifest = list(csv.DictReader(result.manifest.read_text().splitlines()))
    assert len(manifest) == 12 and all((out / m["file"]).is_file() for m in manifest)
    assert all((out / label).is_dir() for label in LABELS)
    again = sample(db, tmp_path / "again", 12, *window, LABELS, seed=7)
    assert [m["sha256"] for m in csv.DictReader(again.manifest.read_text().splitlines())] == \
        [m["sha256"] for m in manifest]
    for m in manifest:  # a person fills in the truth
        m["true_label"] = m["predicted"]
    with open(result.manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(manifest[0]))
        writer.writeheader()
        writer.writerows(manifest)
    assert import_csv(db, result.manifest, LABELS).inserted == 12
    assert sample(db, tmp_path / "next", 100, *window, LABELS).candidates == 38  # audited items left out
    outside = sample(db, tmp_path / "none", 5, "2026-02-01T00:00:00.000+00:00", "2026-02-02T00:00:00.000+00:00",
                     LABELS)
    assert outside.drawn == 0


def test_sample_records_each_draw_with_its_stratum_and_probability(tmp_path):
    """Issue 16: every drawn item's inclusion probability is kept (`audit_draws`): its stratum's
    drawn/available share times the chance its image was kept (`keep_p`; a watch item's NULL is 1)."""
    specs = [("freshred", "fresh", 0.97)] * 30 + [("freshgreen", "fresh", 0.6)] * 10 + \
            [("rottenblue", "rotten", 0.9)] * 10 + [("freshgreen", "uncertain", 0.4)] * 10
    db, _ = _items(tmp_path, specs)
    writer = store.open_writer(db)
    writer.execute("UPDATE items SET keep_p = 0.5 WHERE confidence = 0.6")  # kept at random, half of them
    writer.close()
    window = ("2026-01-10T00:00:00.000+00:00", "2026-01-11T00:00:00.000+00:00")
    result = sample(db, tmp_path / "s1", 12, *window, LABELS, seed=3)
    conn = store.open_reader(db)
    draws = [dict(r) for r in conn.execute("SELECT * FROM audit_draws ORDER BY item_id")]
    by_stratum = {}
    for d in draws:
        by_stratum.setdefault(d["stratum"], set()).add((d["share"], d["p"]))
    # weights 16.5 : 10 : 7 : 45 of 12 → 1 each, then 8 split → 1/1/0/4, the last 3 → uncertain
    assert {k: len([d for d in draws if d["stratum"] == k]) for k in by_stratum} == {
        "fresh:>=0.95": 2, "fresh:0.5-0.8": 2, "rotten:0.8-0.95": 1, "uncertain:<0.5": 7}
    assert by_stratum == {"fresh:>=0.95": {(2 / 30, 2 / 30)}, "fresh:0.5-0.8": {(0.2, 0.1)},
                          "rotten:0.8-0.95": {(0.1, 0.1)}, "uncertain:<0.5": {(0.7, 0.7)}}
    assert {d["sample"] for d in draws} == {result.sample_id} and len(result.sample_id) == 32
    manifest = list(csv.DictReader(result.manifest.read_text().splitlines()))
    assert sorted(d["item_id"] for d in draws) == sorted(int(m["file"][:6]) for m in manifest)
    again = sample(db, tmp_path / "s2", 3, *window, LABELS, seed=4)  # nothing audited yet: drawn again, a new sample
    assert again.sample_id != result.sample_id
    assert conn.execute("SELECT COUNT(*) FROM audit_draws WHERE sample = ?", [again.sample_id]).fetchone()[0] == 3
    conn.close()


def test_csv_import_never_opens_paths_it_names(seeded, tmp_path):
    """Item 13: a CSV row names a file by path; only paths the database records match, nothing named
    is opened or hashed, and the message is the same whether the file exists or not."""
    db, items = seeded
    stranger = tmp_path / "elsewhere" / "copy.jpg"  # same bytes as item 1, at a path no row records
    stranger.parent.mkdir()
    shutil.copy(items[0]["destination"], stranger)
    fifo = tmp_path / "elsewhere" / "pipe.jpg"  # opening it would block the import for ever
    os.mkfifo(fifo)
    missing = tmp_path / "elsewhere" / "missing.jpg"
    names = [str(stranger), str(fifo), str(missing), "/etc/shadow", "../elsewhere/copy.jpg"]
    rows = [[name, "freshred"] for name in names]
    result = import_csv(db, _write_csv(tmp_path / "paths.csv", ["file", "true_label"], rows), LABELS)
    assert not result.written and _audits(db) == []
    assert result.errors == [f"row {n}: unknown item '{name}' (no record with that file name)"
                             for n, name in enumerate(names, start=2)]


def test_stratum_sizes_hold_for_more_audits_than_sql_variables(tmp_path):
    """A long window's audits can outnumber SQLite's bound parameters (32,766 in many builds; 90 days at
    0.5 % audited is 260,000): the audited items are subtracted through a subquery, not one `?` each."""
    path = tmp_path / "big.db"
    db = store.open_writer(path)
    rows = [(f"{i:064x}", f"/out/{i}.jpg", "freshred", 0.97, "fresh", "watch", RECEIVED, "done") for i in range(1500)]
    with store.immediate(db):
        db.conn.executemany("INSERT INTO items (sha256, destination, label, confidence, verdict, source, received_at, "
                            "state) VALUES (?,?,?,?,?,?,?,?)", rows)
        db.conn.execute("INSERT INTO audits (item_id, sha256, true_label, auditor, audited_at) "
                        "SELECT id, sha256, label, 'ana', 't' FROM items WHERE id <= 1200")
    db.close()
    conn = store.open_reader(path)
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # what many SQLite builds allow
    window = ("2026-01-10T00:00:00.000+00:00", "2026-01-11T00:00:00.000+00:00")
    ids = store.window_ids(conn, *window)
    audited = sampling.audited_ids(conn, ids)
    assert len(audited) == 1200
    assert sampling.stratum_sizes(conn, *window, ids, audited) == {"fresh:3": 300}
    conn.close()
