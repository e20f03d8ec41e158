"""`sorter camera` end to end on generated video files: exact decisions, rows, snapshots, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.classify import rules_for
from sorter.cli import app
from sorter.imaging import resize_rgb
from sorter.model import Classifier
from sorter.triggers import Vote, Voter
from sorter.verdict import VerdictRules
from tests.camera_helpers import with_clock, write_frames, write_video
from tests.conftest import REPO
from tests.watch_helpers import SORTER

pytestmark = pytest.mark.timeout(60)
COLOURS = ["red"] * 6 + ["blue"] * 6 + ["grey"] * 6 + ["green"] * 6


def run(args: list[str]):
    result = CliRunner().invoke(app, ["camera", *args])
    assert result.exit_code == 0, result.output
    return result


def rows(db) -> list[dict]:
    conn = store.open_reader(db)
    return [dict(r) for r in conn.execute("SELECT * FROM items ORDER BY id")]


def test_replay_gives_exact_decisions_rows_and_snapshots(tmp_path, color_model, monkeypatch):
    monkeypatch.setenv("SORTER_CAMERA__KEEP_SHARE", '{"fresh": 0}')  # no random fresh snapshot (test_keep_share)
    video = write_video(tmp_path / "belt.avi", COLOURS)
    marks = tmp_path / "fired.txt"
    cmd = f"{sys.executable} -c \"import os; open('{marks}', 'a').write(os.environ['SORTER_VERDICT'] + chr(10))\""
    run(["--device", str(video), "-m", str(color_model), "--interval-ms", "1", "--votes", "3", "--window", "5",
         "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps"), "--exec", cmd])
    got = rows(tmp_path / "s.db")
    # each colour is one item in view for 6 frames: one decision each, never one per 3 frames (item 14)
    assert [(r["verdict"], r["label"] if r["verdict"] != "uncertain" else None) for r in got] == [
        ("fresh", "freshred"), ("rotten", "rottenblue"), ("uncertain", None), ("fresh", "freshgreen")]
    assert {r["source"] for r in got} == {"camera"} and {r["state"] for r in got} == {"done"}
    snaps = [r["destination"] for r in got]
    assert all(s is None for s, r in zip(snaps, got, strict=True) if r["verdict"] == "fresh")
    kept = [s for s in snaps if s]
    assert len(kept) == 2 and all(cv2.imread(s) is not None for s in kept)
    assert marks.read_text().split() == [r["verdict"] for r in got]  # the command fired once per decision
    conn = store.open_reader(tmp_path / "s.db")
    assert [r[0] for r in conn.execute("SELECT event FROM camera_events")] == ["online"]


def test_dry_run_records_but_fires_nothing(tmp_path, color_model):
    video = write_video(tmp_path / "belt.avi", ["blue"] * 4)
    marks = tmp_path / "fired.txt"
    result = run(["-d", str(video), "-m", str(color_model), "--interval-ms", "1", "--votes", "2", "--window", "2",
                  "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps"), "--dry-run", "--json",
                  "--exec", f"touch {marks}"])
    assert [(r["verdict"], r["state"]) for r in rows(tmp_path / "s.db")] == [("rotten", "dry-run")]
    assert not marks.exists()
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert (status["decisions"]["rotten"], status["classified"], status["unchanged"]) == (1, 2, 2)


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
    expected = []
    cap = cv2.VideoCapture(str(video))
    for _photo in photos:  # one item per photo: its frames voted on until 3 of 5 agree or 5 are seen
        voter, decision = Voter(3, 5), None
        for _j in range(6):
            frame = cap.read()[1]
            if decision is None and len(voter) < 5:
                judged = rules.decide(clf.predict(resize_rgb(frame[60:180, 100:220], clf.input_size)[None])[0])
                decision = voter.add(Vote(judged.label, judged.verdict, round(judged.confidence, 6)))
        decision = decision or voter.close()
        expected.append((decision.verdict, decision.label))
    assert expected and [(r["verdict"], r["label"]) for r in rows(tmp_path / "s.db")] == expected


SAMPLES = REPO / "samples"
FRUIT_MODEL = REPO / "models" / "fruit-lite1-int8.tflite"


def sample_frame(name: str, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    image = cv2.imread(str(SAMPLES / name))
    assert image is not None, f"samples/{name} is missing"
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def test_a_frozen_picture_with_a_ticking_clock_fires_once(tmp_path):
    """Item 14: a frozen picture whose clock overlay changes every frame is one scene: one decision
    and one output, not one per three frames."""
    still = sample_frame("rottenapples_1.jpg")
    video = write_frames(tmp_path / "frozen.avi", [with_clock(still, tick) for tick in range(60)])
    marks = tmp_path / "fired.txt"
    cmd = f"{sys.executable} -c \"open('{marks}', 'a').write('x' + chr(10))\""
    result = run(["-d", str(video), "-m", str(FRUIT_MODEL), "--interval-ms", "1", "--votes", "3", "--window", "5",
                  "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps"), "--exec", cmd, "--json"])
    got = rows(tmp_path / "s.db")
    assert len(got) == 1 and marks.read_text().split() == ["x"]
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert (status["classified"], status["unchanged"]) == (3, 57)


def test_a_video_of_still_photos_gives_one_decision_per_photo(tmp_path):
    """Item 18: each photo held for 30 identical frames is one item; the decision is what the model
    says of that photo (a replayed file's identical frames are not a stalled camera's)."""
    names = ["freshapples_1.jpg", "rottenbanana_1.jpg", "freshoranges_1.jpg", "rottenapples_2.jpg"]
    stills = [sample_frame(n) for n in names]
    video = write_frames(tmp_path / "photos.avi", [s for s in stills for _ in range(30)])
    run(["-d", str(video), "-m", str(FRUIT_MODEL), "--interval-ms", "1", "--votes", "3", "--window", "5",
         "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps")])
    clf = Classifier(FRUIT_MODEL, num_threads=1)
    rules = rules_for(clf)
    cap, expected = cv2.VideoCapture(str(video)), []
    for i in range(len(names)):
        cap.set(cv2.CAP_PROP_POS_FRAMES, i * 30)
        judged = rules.decide(clf.predict(resize_rgb(cap.read()[1], clf.input_size)[None])[0])
        expected.append((judged.verdict, judged.label))
    assert [(r["verdict"], r["label"]) for r in rows(tmp_path / "s.db")] == expected
    assert [label for _, label in expected] == [n.split("_")[0] for n in names]  # the model knows these


def test_an_interval_window_without_agreement_is_an_uncertain_decision(tmp_path, color_model):
    """Item 18: under the interval trigger five frames with no three agreeing are one recorded
    `uncertain` item (no consensus), never a window that vanishes without a trace."""
    video = write_video(tmp_path / "mixed.avi", ["red", "blue", "green"] * 5)
    result = run(["-d", str(video), "-m", str(color_model), "--interval-ms", "1", "--votes", "3", "--window", "5",
                  "--db", str(tmp_path / "s.db"), "--snapshots", str(tmp_path / "snaps"), "--json"])
    got = rows(tmp_path / "s.db")
    assert [(r["verdict"], r["error"]) for r in got] == [("uncertain", "no-consensus: 2/5")] * 3
    status = json.loads(result.stdout[result.stdout.index("{"):])
    assert (status["decisions"]["uncertain"], status["no_consensus"], status["classified"]) == (3, 3, 15)
    assert "uncertain" in result.output and "2/5 agree" in result.output


def test_a_missing_or_undecodable_video_file_is_an_error_with_its_name(tmp_path, color_model):
    """Item 19: a mistyped path exits non-zero at once, naming the file (it used to retry for ever)."""
    base = [*SORTER, "camera", "-m", str(color_model), "--db", str(tmp_path / "s.db"),
            "--snapshots", str(tmp_path / "snaps")]
    missing = subprocess.run([*base, "--device", "nothere.mp4"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=30)
    assert missing.returncode == 2
    assert "no such video file: nothere.mp4" in missing.stderr and "Traceback" not in missing.stderr
    assert "reconnecting" not in missing.stderr
    (tmp_path / "notes.mp4").write_text("not a video\n")
    broken = subprocess.run([*base, "--device", "notes.mp4"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30)
    assert broken.returncode == 2 and "notes.mp4: could not open as a video" in broken.stderr
    assert "reconnecting" not in broken.stderr and "Traceback" not in broken.stderr


def test_probing_for_cameras_prints_no_opencv_warnings():
    """`sorter camera --list`: our one line, not two OpenCV [ WARN ] lines per absent index."""
    from pathlib import Path

    proc = subprocess.run([str(Path(sys.executable).parent / "sorter"), "camera", "--list"], capture_output=True,
                          text=True, timeout=60)
    assert "[ WARN" not in proc.stderr and "[ERROR" not in proc.stderr, proc.stderr
