"""`sorter dataset build`: audited items as class folders with a manifest, exact files and rows."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.audit import Audit, write_audits
from sorter.cli import app
from sorter.dataset import COLUMNS, MANIFEST, build_dataset, read_manifest
from tests.conftest import write_colour_jpeg

runner = CliRunner()
NOW = datetime.now(UTC)
RECENT = (NOW - timedelta(days=1)).isoformat(timespec="milliseconds")
OLD = (NOW - timedelta(days=40)).isoformat(timespec="milliseconds")
COLOUR = {"freshred": "red", "freshgreen": "green", "rottenblue": "blue"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Line:
    """A real results database with real photos under tmp/out, written through the store."""

    def __init__(self, tmp: Path):
        self.tmp, self.path = tmp, tmp / "sorter.db"
        self.db = store.open_writer(self.path)
        self.n = 0

    def item(self, label: str, verdict: str, conf: float, received: str = RECENT, *, sha: str | None = None,
             photo: Path | None = None, duplicate_of: int | None = None, source: str = "watch") -> dict:
        self.n += 1
        if photo is None:
            photo = write_colour_jpeg(self.tmp / "out" / verdict / label / f"img{self.n:03d}.jpg", COLOUR[label],
                                      seed=self.n)
        row = {"sha256": sha if sha is not None else _sha(photo), "source_path": f"/in/img{self.n:03d}.jpg",
               "destination": str(photo), "label": label, "confidence": conf, "verdict": verdict, "source": source,
               "received_at": received, "state": "done", "duplicate_of": duplicate_of}
        if source == "camera":
            row["sha256"] = None
            row["source_path"] = f"0#{self.n}"
        row["id"] = store.insert_item(self.db, row)
        return row

    def audit(self, row: dict, label: str, auditor: str, when: str) -> None:
        write_audits(self.db, [Audit(row["id"], row["sha256"], label, auditor, when, "csv")])

    def close(self) -> Path:
        self.db.close()
        return self.path


@pytest.fixture
def line(tmp_path):
    return Line(tmp_path)


def test_audited_items_become_hard_linked_class_folders_with_an_exact_manifest(line, tmp_path):
    a = line.item("freshred", "fresh", 0.91)
    b = line.item("freshgreen", "fresh", 0.62)                        # the model was wrong: it is rotten
    c = line.item("rottenblue", "rotten", 0.88)
    dup = line.item("freshred", "fresh", 0.91, sha=a["sha256"], duplicate_of=a["id"],
                    photo=shutil.copy2(a["destination"], tmp_path / "out" / "dup.jpg"))
    line.item("freshred", "fresh", 0.99)                               # never audited: left out by default
    line.audit(a, "freshred", "ann", "2026-01-10T08:00:00.000+00:00")
    line.audit(dup, "freshred", "bob", "2026-01-10T09:00:00.000+00:00")  # the same bytes again: one photo
    line.audit(b, "rottenblue", "ann", "2026-01-10T08:01:00.000+00:00")
    line.audit(c, "rottenblue", "", "2026-01-10T08:02:00.000+00:00")
    db = line.close()

    out = tmp_path / "field"
    ds = build_dataset(db, out, line="line-3")

    sa, sb, sc = a["sha256"], b["sha256"], c["sha256"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([MANIFEST, f"freshred/{sa[:16]}.jpg", f"rottenblue/{sb[:16]}.jpg",
                            f"rottenblue/{sc[:16]}.jpg"])
    # hard links, not copies: a's bytes come from the row whose audit won (bob's, on the duplicate row)
    for sha, label, src in ((sa, "freshred", dup), (sb, "rottenblue", b), (sc, "rottenblue", c)):
        assert (out / label / f"{sha[:16]}.jpg").stat().st_ino == Path(src["destination"]).stat().st_ino
    assert (ds.linked, ds.copied) == (3, 0)
    assert read_manifest(out) == [
        dict(zip(COLUMNS, values, strict=True)) for values in [
            [sa, f"freshred/{sa[:16]}.jpg", "freshred", "freshred", "0.91", "bob",
             "2026-01-10T09:00:00.000+00:00", dup["source_path"], "line-3", "0"],
            *sorted([[sb, f"rottenblue/{sb[:16]}.jpg", "rottenblue", "freshgreen", "0.62", "ann",
                      "2026-01-10T08:01:00.000+00:00", b["source_path"], "line-3", "0"],
                     [sc, f"rottenblue/{sc[:16]}.jpg", "rottenblue", "rottenblue", "0.88", "",
                      "2026-01-10T08:02:00.000+00:00", c["source_path"], "line-3", "0"]])]]
    assert (out / MANIFEST).read_text().splitlines()[0] == "\t".join(COLUMNS)
    assert ds.counts() == {"freshred": 1, "rottenblue": 2}
    assert ds.skipped == [] and ds.conflicts == []
    pairs = sorted([(sa, "freshred"), (sb, "rottenblue"), (sc, "rottenblue")])
    assert ds.fingerprint() == hashlib.sha256("".join(f"{s}\t{lab}\n" for s, lab in pairs).encode()).hexdigest()
    assert [p.file for p in ds.photos] == [out / "freshred" / f"{sa[:16]}.jpg",
                                           *sorted([out / "rottenblue" / f"{sb[:16]}.jpg",
                                                    out / "rottenblue" / f"{sc[:16]}.jpg"])]


def test_disagreeing_auditors_latest_wins_and_is_listed(line, tmp_path):
    a = line.item("freshred", "fresh", 0.7)
    line.audit(a, "freshred", "ann", "2026-01-10T08:00:00.000+00:00")
    line.audit(a, "rottenblue", "bob", "2026-01-11T08:00:00.000+00:00")
    ds = build_dataset(line.close(), tmp_path / "field")
    assert [(p.true_label, p.auditor) for p in ds.photos] == [("rottenblue", "bob")]
    assert ds.conflicts == [(a["sha256"], "auditors disagree (freshred, rottenblue); latest wins: rottenblue by bob")]


def test_since_keeps_recent_items_only(line, tmp_path):
    recent = line.item("freshred", "fresh", 0.8)
    old = line.item("freshgreen", "fresh", 0.8, received=OLD)
    line.audit(recent, "freshred", "ann", RECENT)
    line.audit(old, "freshgreen", "ann", RECENT)   # audited lately, but the photo is 40 days old
    db = line.close()
    assert [p.sha256 for p in build_dataset(db, tmp_path / "f30", since=timedelta(days=30)).photos] == \
        [recent["sha256"]]
    assert sorted(p.sha256 for p in build_dataset(db, tmp_path / "all").photos) == \
        sorted([recent["sha256"], old["sha256"]])


def test_pseudo_labels_only_confident_fresh_or_rotten_unaudited_items(line, tmp_path):
    audited = line.item("freshred", "fresh", 0.99)
    line.audit(audited, "rottenblue", "ann", RECENT)
    line.item("freshred", "fresh", 0.99, sha=audited["sha256"], duplicate_of=audited["id"],
              photo=shutil.copy2(audited["destination"], tmp_path / "dup.jpg"))  # audited bytes: never pseudo
    sure = line.item("freshgreen", "fresh", 0.97)
    line.item("freshred", "fresh", 0.80)                 # below the floor
    line.item("rottenblue", "uncertain", 0.99)           # uncertain: the model's label is not trusted
    edge = line.item("rottenblue", "rotten", 0.95)       # exactly at the floor: in
    store.insert_item(line.db, {"sha256": None, "source_path": "0#5", "destination": None, "label": "freshred",
                                "confidence": 0.99, "verdict": "fresh", "source": "camera", "received_at": RECENT,
                                "state": "done"})        # a camera item whose snapshot was not kept: not a skip
    ds = build_dataset(line.close(), tmp_path / "field", include_unaudited_confident=0.95)
    got = {(p.sha256, p.true_label, p.pseudo, p.auditor) for p in ds.photos}
    assert got == {(audited["sha256"], "rottenblue", False, "ann"), (sure["sha256"], "freshgreen", True, ""),
                   (edge["sha256"], "rottenblue", True, "")}
    rows = {r["sha256"]: r for r in read_manifest(tmp_path / "field")}
    assert [rows[s]["pseudo_label"] for s in (audited["sha256"], sure["sha256"], edge["sha256"])] == ["0", "1", "1"]
    assert rows[sure["sha256"]]["audited_at"] == "" and rows[sure["sha256"]]["confidence"] == "0.97"
    assert ds.skipped == []


def test_missing_and_changed_files_are_reported_not_fatal(line, tmp_path):
    gone = line.item("freshred", "fresh", 0.8)
    changed = line.item("freshgreen", "fresh", 0.8)
    kept = line.item("rottenblue", "rotten", 0.8)
    for row in (gone, changed, kept):
        line.audit(row, row["label"], "ann", RECENT)
    os.unlink(gone["destination"])
    write_colour_jpeg(Path(changed["destination"]), "red", seed=99)   # other bytes under the same name
    ds = build_dataset(line.close(), tmp_path / "field")
    assert [p.sha256 for p in ds.photos] == [kept["sha256"]]
    assert ds.skipped == [(gone["sha256"], f"file missing or unreadable: {gone['destination']}"),
                          (changed["sha256"], f"file changed since it was classified: {changed['destination']}")]


def test_camera_snapshots_are_hashed_where_they_lie(line, tmp_path):
    snap = line.item("rottenblue", "rotten", 0.9, source="camera")
    line.audit(snap, "rottenblue", "ann", RECENT)
    ds = build_dataset(line.close(), tmp_path / "field")
    assert [(p.sha256, p.source) for p in ds.photos] == [(_sha(Path(snap["destination"])), snap["source_path"])]


def test_copies_across_filesystems(line, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) to copy across")
    a = line.item("freshred", "fresh", 0.8)
    line.audit(a, "freshred", "ann", RECENT)
    db = line.close()
    out = Path(tempfile.mkdtemp(dir=shm)) / "field"
    try:
        ds = build_dataset(db, out)
        placed = out / "freshred" / f"{a['sha256'][:16]}.jpg"
        assert (ds.linked, ds.copied) == (0, 1)
        assert placed.stat().st_ino != Path(a["destination"]).stat().st_ino
        assert _sha(placed) == a["sha256"]
    finally:
        shutil.rmtree(out.parent)


def test_rebuild_replaces_the_previous_build_and_refuses_a_foreign_folder(line, tmp_path):
    a = line.item("freshred", "fresh", 0.8)
    line.audit(a, "freshred", "ann", RECENT)
    out = tmp_path / "field"
    build_dataset(line.path, out)
    line.audit(a, "freshgreen", "ann", NOW.isoformat(timespec="milliseconds"))  # ann corrects her label
    build_dataset(line.close(), out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert files == [MANIFEST, "freshgreen", f"freshgreen/{a['sha256'][:16]}.jpg"]  # freshred/ is gone
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "mine.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"holds no MANIFEST\.tsv"):
        build_dataset(line.path, foreign)
    assert (foreign / "mine.jpg").read_bytes() == b"x"


def test_cli_prints_the_summary_and_skips(line, tmp_path):
    a = line.item("freshred", "fresh", 0.8)
    b = line.item("freshgreen", "fresh", 0.8)
    gone = line.item("rottenblue", "rotten", 0.8)
    line.item("rottenblue", "rotten", 0.99)
    line.audit(a, "freshred", "ann", RECENT)
    line.audit(b, "rottenblue", "ann", RECENT)
    line.audit(gone, "rottenblue", "ann", RECENT)
    os.unlink(gone["destination"])
    db = line.close()
    result = runner.invoke(app, ["dataset", "build", "--db", str(db), "--out", str(tmp_path / "field"),
                                 "--since", "30d", "--include-unaudited-confident", "0.9"])
    assert result.exit_code == 0, result.output
    rows = [text.replace("│", " ").split() for text in result.output.splitlines()]
    assert ["freshred", "1", "0", "0"] in [r[:4] for r in rows]
    assert ["rottenblue", "1", "1", "1"] in [r[:4] for r in rows]
    assert f"skipped {gone['sha256'][:12]}: file missing or unreadable: {gone['destination']}" in result.output
    bad = runner.invoke(app, ["dataset", "build", "--db", str(db), "--out", str(tmp_path / "x"), "--since", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output


def test_photos_routed_by_a_real_watch_and_audited_by_folder(tmp_path):
    """The whole path on the runtime's own rows: `Watcher` routes photos (one pair with the same bytes),
    `audit folder` imports what people sorted, and the data set holds each audited photo once, linked to
    where watch put it."""
    import threading
    import time

    from sorter.audit import import_folder
    from tests.watch_helpers import jpeg, make_watcher, rows

    w = make_watcher(tmp_path)
    data = {"red0.jpg": jpeg("red", tag="0"), "blue1.jpg": jpeg("blue", tag="1"),
            "red0-again.jpg": jpeg("red", tag="0"), "green2.jpg": jpeg("green", tag="2")}
    for name, payload in data.items():
        (tmp_path / "in" / name).write_bytes(payload)
        os.utime(tmp_path / "in" / name, (time.time() - 60, time.time() - 60))
    summary = w.run(threading.Event(), once=True)
    assert (summary.routed, summary.duplicates) == (3, 1)
    db = tmp_path / "db.sqlite"
    routed = {Path(r["source_path"]).name: r for r in rows(db)}
    red, again = sorted((routed["red0.jpg"], routed["red0-again.jpg"]), key=lambda r: r["duplicate_of"] is not None)
    assert again["duplicate_of"] == red["id"] and "duplicates" in again["destination"]
    sorted_by_people = tmp_path / "audit"
    for name, label in (("red0-again.jpg", "freshred"), ("blue1.jpg", "freshgreen")):  # blue was not rotten
        (sorted_by_people / label).mkdir(parents=True, exist_ok=True)
        (sorted_by_people / label / name).write_bytes(data[name])
    assert import_folder(db, sorted_by_people, ["freshred", "freshgreen", "rottenblue"], auditor="ann").inserted == 2

    ds = build_dataset(db, tmp_path / "field")
    blue = routed["blue1.jpg"]
    assert [(p.file.relative_to(tmp_path / "field").as_posix(), p.model_label, p.source) for p in ds.photos] == [
        (f"freshgreen/{blue['sha256'][:16]}.jpg", "rottenblue", blue["source_path"]),
        (f"freshred/{red['sha256'][:16]}.jpg", "freshred", red["source_path"])]
    assert (tmp_path / "field" / "freshred" / f"{red['sha256'][:16]}.jpg").stat().st_ino == \
        Path(red["destination"]).stat().st_ino
    assert ds.skipped == []
