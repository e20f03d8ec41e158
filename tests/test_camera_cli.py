"""`sorter camera` end to end on generated video files: exact decisions, rows, snapshots, outputs."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.cli import app
from sorter.imaging import resize_rgb
from sorter.model import Classifier
from sorter.triggers import Vote, Voter
from sorter.verdict import VerdictRules
from tests.camera_helpers import write_video

pytestmark = pytest.mark.timeout(60)
COLOURS = ["red"] * 6 + ["blue"] * 6 + ["grey"] * 6 + ["green"] * 6


def run(args: list[str]):
    result = CliRunner().invoke(app, ["camera", *args])
    assert result.exit_code == 0, result.output
    return result


def rows(db) -> list[dict]:
    conn = store.open_reader(db)
    return [dict(r) for r in conn.execute("SELECT * FROM items ORDER BY id")]


def test_replay_gives_exact_decisions_rows_and_snapshots(tmp_path, color_model):
    video = write_video(tmp_path / "belt.avi", COLOURS)
    marks = tmp_path / "fired.txt"
    cmd = f"{sys.executable} -c \"import os; open('{marks}', 'a').write(os.environ['SORTER_VERDICT'] + chr(10))\""
    run(["--device", str(video), "-m", str(color_model), "--interval-ms", "1", "--votes", "3", "--window", "5",
         "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps"), "--exec", cmd])
    got = rows(tmp_path / "s.db")
    assert [(r["verdict"], r["label"] if r["verdict"] != "uncertain" else None) for r in got] == [
        ("fresh", "freshred"), ("fresh", "freshred"), ("rotten", "rottenblue"), ("rotten", "rottenblue"),
        ("uncertain", None), ("uncertain", None), ("fresh", "freshgreen"), ("fresh", "freshgreen")]
    assert {r["source"] for r in got} == {"camera"} and {r["state"] for r in got} == {"done"}
    snaps = [r["destination"] for r in got]
    assert all(s is None for s, r in zip(snaps, got, strict=True) if r["verdict"] == "fresh")
    kept = [s for s in snaps if s]
    assert len(kept) == 4 and all(cv2.imread(s) is not None for s in kept)
    assert marks.read_text().split() == [r["verdict"] for r in got]  # the command fired once per decision
    conn = store.open_reader(tmp_path / "s.db")
    assert [r[0] for r in conn.execute("SELECT event FROM camera_events")] == ["online"]


def test_dry_run_records_but_fires_nothing(tmp_path, color_model):
    video = write_video(tmp_path / "belt.avi", ["blue"] * 4)
    marks = tmp_path / "fired.txt"
    result = run(["-d", str(video), "-m", str(color_model), "--interval-ms", "1", "--votes", "2", "--window", "2",
                  "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps"), "--dry-run", "--json",
                  "--exec", f"touch {marks}"])
    assert [(r["verdict"], r["state"]) for r in rows(tmp_path / "s.db")] == [("rotten", "dry-run")] * 2
    assert not marks.exists()
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert status["decisions"]["rotten"] == 2 and status["classified"] == 4


def test_roi_flag_and_bad_values(tmp_path, color_model):
    video = tmp_path / "split.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(3):
        frame = np.full((120, 160, 3), (0, 0, 255), np.uint8)
        frame[40:80, 100:140] = (255, 0, 0)
        writer.write(np.clip(frame + rng.integers(0, 6, frame.shape), 0, 255).astype(np.uint8))
    writer.release()
    base = ["-d", str(video), "-m", str(color_model), "--interval-ms", "1", "--votes", "1", "--window", "1",
            "--snapshots", str(tmp_path / "snaps")]
    run([*base, "--db", str(tmp_path / "a.db"), "--roi", "105,45,30,30"])
    run([*base, "--db", str(tmp_path / "b.db")])
    assert {r["label"] for r in rows(tmp_path / "a.db")} == {"rottenblue"}
    assert {r["label"] for r in rows(tmp_path / "b.db")} == {"freshred"}
    bad = CliRunner().invoke(app, ["camera", *base, "--db", str(tmp_path / "c.db"), "--roi", "1,2,3"])
    assert bad.exit_code == 2 and "roi" in bad.output
    assert CliRunner().invoke(app, ["camera", "-m", str(color_model)]).exit_code == 2  # no device


def test_fruit_photos_on_a_moving_belt_match_direct_classification(tmp_path, color_model, fruit_dev):
    """Real photos pasted on a scrolling belt; the camera path must decide exactly what classifying
    the same ROI crops directly and voting on them decides."""
    photos = sorted((fruit_dev / "test").rglob("*.jpg"))[::40][:4]
    if len(photos) < 2:
        pytest.skip("too few fruit photos")
    video = tmp_path / "fruit.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    stripes = np.indices((240, 640))[1] // 16 % 2 * 60 + 60
    for i, photo in enumerate(photos):
        fruit = cv2.resize(cv2.imread(str(photo)), (120, 120))
        for j in range(6):
            shift = (i * 6 + j) * 7
            frame = np.repeat(stripes[:, shift:shift + 320, None], 3, axis=2).astype(np.uint8)
            frame[60:180, 100:220] = fruit
            writer.write(frame)
    writer.release()
    run(["-d", str(video), "-m", str(color_model), "--interval-ms", "1", "--votes", "3", "--window", "5",
         "--roi", "100,60,120,120", "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps")])
    clf = Classifier(color_model, num_threads=1)
    rules = VerdictRules(frozenset(clf.card.rotten_labels))
    voter, expected = Voter(3, 5), []
    cap = cv2.VideoCapture(str(video))
    while (frame := cap.read()[1]) is not None:
        pred = clf.predict(resize_rgb(frame[60:180, 100:220], clf.input_size)[None])[0]
        if d := voter.add(Vote(pred.label, rules.decide(pred.label, pred.confidence), round(pred.confidence, 6))):
            expected.append((d.verdict, d.label))
    assert expected and [(r["verdict"], r["label"]) for r in rows(tmp_path / "s.db")] == expected
