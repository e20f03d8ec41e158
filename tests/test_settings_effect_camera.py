"""Every `[camera]` key has an effect (issue 14 item 22): each is written in a TOML config file and
changes what `sorter camera` does compared with its default.

Replays of generated video files go through the CLI (`sorter camera --config FILE`); live sources
(the MJPEG camera of camera_helpers, a port nothing listens on) go through `sorter.camera.serve`, the
function the CLI calls, with the settings `load_settings(FILE)` reads, so that the test can stop it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from sorter import store
from sorter.camera import serve
from sorter.classify import rules_for
from sorter.cli import app
from sorter.config import CameraSettings, load_settings
from sorter.model import Classifier
from tests.camera_helpers import MjpegCamera, colour_frame, free_port, write_frames, write_video
from tests.conftest import COLOR_INT8, COLOURS_BGR
from tests.watch_helpers import wait_for

KEYS_SHOWN: dict[str, str] = {
    "camera.device": "test_device_is_the_source_read",
    "camera.stall_seconds": "test_stall_seconds_declares_a_frozen_stream_offline",
    "camera.backoff_seconds": "test_backoff_seconds_is_the_first_retry_delay",
    "camera.backoff_max_seconds": "test_backoff_max_seconds_caps_the_retry_delay",
    "camera.queue_size": "test_queue_size_bounds_the_frames_read_ahead",
    "camera.trigger": "test_trigger_motion_decides_on_arrivals_and_departures",
    "camera.interval_ms": "test_interval_ms_is_the_sampling_period",
    "camera.motion_threshold": "test_motion_threshold_ignores_a_small_item",
    "camera.motion_pixel_delta": "test_motion_pixel_delta_ignores_a_faint_item",
    "camera.motion_roi": "test_motion_roi_watches_only_its_region",
    "camera.scene_change": "test_scene_change_is_how_much_must_change_for_a_new_item",
    "camera.frozen_area": "test_frozen_area_zero_keeps_a_clocked_picture_fresh",
    "camera.roi": "test_roi_is_what_the_model_sees",
    "camera.votes": "test_votes_is_the_agreement_needed",
    "camera.window": "test_window_is_the_frames_per_item",
    "camera.control_port": "test_control_port_serves_status_and_trigger",
    "camera.stdin_trigger": "test_stdin_trigger_pulses_once_per_line",
    "camera.gpio_trigger_pin": "test_gpio_trigger_pin_pulses_once_per_rising_edge",
    "camera.snapshots": "test_snapshots_is_the_folder_written",
    "camera.snapshot_retention_days": "test_snapshot_retention_days_prunes_older_snapshots",
    "camera.snapshot_max_files": "test_snapshot_max_files_keeps_the_newest",
    "camera.keep_share": "test_keep_share_is_the_share_of_each_verdict_kept",
    "camera.status_seconds": "test_status_seconds_is_the_status_log_period",
    "camera.loop": "test_loop_replays_the_file_with_decisions_on_each_pass",
}

pytestmark = pytest.mark.timeout(30)
ONE_VOTE = {"interval_ms": 1, "votes": 1, "window": 1}  # every frame sampled, each decided alone


# ---- the config file and the runs ----

def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(str(value)) if isinstance(value, str | Path) else repr(value)


def write_config(tmp: Path, **camera: Any) -> Path:
    """model, db and [camera] (snapshots in TMP unless given); a key given as None is left out."""
    camera = {"snapshots": tmp / "snaps", **camera}
    lines = [f"{key} = {_toml(value)}" for key, value in camera.items() if value is not None]
    path = tmp / "sorter.toml"
    path.write_text(f'model = "{COLOR_INT8}"\ndb = "{tmp / "cam.db"}"\n[camera]\n' + "\n".join(lines) + "\n")
    return path


def cli(cfg: Path, *args: str, stdin: str | None = None) -> tuple[str, dict]:
    """`sorter camera --config CFG --json ARGS`: everything printed, and the final status."""
    result = CliRunner().invoke(app, ["camera", "--config", str(cfg), "--json", *args], input=stdin)
    assert result.exit_code == 0, result.output
    return result.output, json.loads(result.stdout[result.stdout.index("{"):])


def decided(db: Path) -> list[tuple[int, str, str | None, str | None]]:
    """(frame seq, verdict, label, error) per recorded item."""
    if not db.exists():
        return []
    conn = store.open_reader(db)
    try:
        return [(int(r["source_path"].rsplit("#", 1)[1]), r["verdict"], r["label"], r["error"])
                for r in conn.execute("SELECT * FROM items ORDER BY id")]
    finally:
        conn.close()


def camera_events(db: Path) -> list[tuple[str, str]]:
    try:
        conn = store.open_reader(db)
    except (OSError, sqlite3.Error):  # not created yet
        return []
    try:
        return [(r["event"], r["detail"]) for r in conn.execute("SELECT event, detail FROM camera_events ORDER BY id")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


class Live:
    """`serve` on the settings read from CFG, in a thread, until `finish` (or `max_decisions`)."""

    def __init__(self, cfg: Path, max_decisions: int | None = None):
        self.settings = load_settings(cfg)
        self.db = self.settings.db
        clf = Classifier(self.settings.model, num_threads=1)
        self.stop = threading.Event()
        self.status: dict[str, Any] = {}
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.status = serve(str(self.settings.camera.device), clf, rules_for(clf, self.settings),
                                    self.settings, self.db, self.stop, max_decisions=max_decisions)
            except BaseException as exc:  # re-raised by finish()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [event for event, _ in camera_events(self.db)]

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "serve did not stop"
        if self.error is not None:
            raise self.error
        return self.status


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    """`sorter camera` in-process installs its SIGINT/SIGTERM handlers: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def _no_sorter_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("SORTER_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def camera_log(caplog):
    caplog.set_level(logging.INFO, logger="sorter.camera")
    return caplog


# ---- the videos ----

def _with_block(colour: str, box: tuple[int, int, int, int], seed: int) -> np.ndarray:
    frame = colour_frame("grey", seed=seed)
    x, y, w, h = box
    frame[y:y + h, x:x + w] = COLOURS_BGR[colour]
    return frame


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """two_items (25 fps, frame seq from 1): grey 1-4, a big red item on the left 5-8 (19 % of the
    picture, grey level 76 on 128), grey 9-12, a small blue item on the right 13-16 (5 %, level 29),
    grey 17-20."""
    folder = tmp_path_factory.mktemp("videos")
    big, small = (10, 30, 60, 60), (110, 45, 30, 30)
    items = ([colour_frame("grey", seed=s) for s in range(4)] + [_with_block("red", big, s) for s in range(4, 8)]
             + [colour_frame("grey", seed=s) for s in range(8, 12)]
             + [_with_block("blue", small, s) for s in range(12, 16)]
             + [colour_frame("grey", seed=s) for s in range(16, 20)])
    split = []
    for seed in range(3):
        frame = colour_frame("red", seed=seed)
        frame[40:80, 100:140] = colour_frame("blue", (40, 40), seed=seed + 10)
        split.append(frame)
    return {"two_items": write_frames(folder / "two_items.avi", items),
            "rgb": write_video(folder / "rgb.avi", ["red", "blue", "green"] * 5),
            "split": write_frames(folder / "split.avi", split),
            "red_blue": write_video(folder / "red_blue.avi", ["red"] * 3 + ["blue"] * 3),
            "red": write_video(folder / "red.avi", ["red"] * 30),
            "red_long": write_video(folder / "red_long.avi", ["red"] * 100),
            "blue": write_video(folder / "blue.avi", ["blue"] * 4)}


def seqs(db: Path) -> list[int]:
    return [seq for seq, *_ in decided(db)]


# ---- source and capture watchdog ----

def test_device_is_the_source_read(tmp_path, videos, monkeypatch):
    cfg = write_config(tmp_path, device=str(videos["red_blue"]), **ONE_VOTE)
    cli(cfg)  # no --device: the config's (without it: "no camera: pass --device", exit 2)
    assert [label for _, _, label, _ in decided(tmp_path / "cam.db")] == ["freshred", "rottenblue"]
    monkeypatch.setenv("SORTER_CAMERA__DEVICE", str(videos["blue"]))  # the environment outranks the file
    cli(cfg)
    assert [label for _, _, label, _ in decided(tmp_path / "cam.db")][2:] == ["rottenblue"]


def test_stall_seconds_declares_a_frozen_stream_offline(tmp_path):
    """No fresh frame for `stall_seconds` (the watchdog, and FFmpeg's read deadline for a network
    camera, whichever trips first) is offline; the default 5 s would not trip in this second."""
    with MjpegCamera() as cam:
        live = Live(write_config(tmp_path, device=cam.url, stall_seconds=0.4, backoff_seconds=0.1, **ONE_VOTE))
        try:
            assert wait_for(lambda: live.events() == ["online"], 10)
            cam.mode = "freeze"  # connected, sending nothing
            frozen = time.monotonic()
            wait_for(lambda: "offline" in live.events(), 3)
            offline_after = time.monotonic() - frozen
            cam.mode = "live"
            wait_for(lambda: "reconnect" in live.events(), 5)
        finally:
            live.finish()
    events = camera_events(live.db)
    assert [e for e, _ in events] == ["online", "offline", "reconnect"]
    assert 0.3 <= offline_after < 1.2, offline_after
    assert re.fullmatch(r"no fresh frame for 0\.\d s \(stall limit 0\.4 s\)|no frame \(closed or unreadable\)",
                        events[1][1]), events[1][1]


def _retry_delays(caplog) -> list[float]:
    return [float(m.group(1)) for r in caplog.records
            if (m := re.search(r"reconnecting in (\d+\.\d) s", r.getMessage()))]


def test_backoff_seconds_is_the_first_retry_delay(tmp_path, camera_log):
    live = Live(write_config(tmp_path, device=f"http://127.0.0.1:{free_port()}/stream.mjpg", backoff_seconds=0.2))
    try:
        wait_for(lambda: len(_retry_delays(camera_log)) >= 2, 5)
    finally:
        live.finish()
    assert _retry_delays(camera_log)[:2] == [0.2, 0.4]  # default: 0.5, 1.0


def test_backoff_max_seconds_caps_the_retry_delay(tmp_path, camera_log):
    live = Live(write_config(tmp_path, device=f"http://127.0.0.1:{free_port()}/stream.mjpg", backoff_seconds=0.1,
                             backoff_max_seconds=0.2))
    try:
        wait_for(lambda: len(_retry_delays(camera_log)) >= 4, 5)
    finally:
        live.finish()
    assert _retry_delays(camera_log)[:4] == [0.1, 0.2, 0.2, 0.2]  # default cap 30 s: 0.1, 0.2, 0.4, 0.8


def test_queue_size_bounds_the_frames_read_ahead(tmp_path, videos):
    """While the loop waits on the database (another process holds its write lock), a replay reads
    ahead only as far as the queue holds: the frame decided, `queue_size` queued, one waiting."""
    cfg = write_config(tmp_path, device=str(videos["red"]), queue_size=10, **ONE_VOTE)
    store.open_writer(tmp_path / "cam.db").close()
    holder = sqlite3.connect(tmp_path / "cam.db", check_same_thread=False, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    def release() -> None:
        wait_for(lambda: any(t.name == "capture-1" for t in threading.enumerate()), 20)
        time.sleep(0.6)  # the reader fills the queue in milliseconds
        holder.execute("COMMIT")

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        _, status = cli(cfg, "--max-items", "1")
    finally:
        releaser.join(25)
        holder.close()
    assert status["capture"]["fresh"] == 12  # default queue_size 4: 6
    assert len(decided(tmp_path / "cam.db")) == 1


def test_frozen_area_zero_keeps_a_clocked_picture_fresh(tmp_path):
    """A still picture with a ticking clock over it is stale by default (5 % of the cells may
    change): at 0 only exact repeats are, and the camera stays online."""
    with MjpegCamera(colour="blue", size=(480, 640)) as cam:
        live = Live(write_config(tmp_path, device=cam.url, frozen_area=0, stall_seconds=0.5, **ONE_VOTE))
        try:
            assert wait_for(lambda: live.events() == ["online"], 10)
            cam.mode = "clock"
            assert wait_for(lambda: cam.ticks >= 20, 10)
        finally:
            status = live.finish()
    assert (status["capture"]["stale"], status["capture"]["offline"]) == (0, 0)  # default: ≥ 19 stale, offline
    assert status["capture"]["fresh"] >= 20 and live.events() == ["online"]


# ---- trigger, ROI and voting ----

def test_trigger_motion_decides_on_arrivals_and_departures(tmp_path, videos):
    cli(write_config(tmp_path, device=str(videos["two_items"]), trigger="motion", votes=1, window=1))
    assert seqs(tmp_path / "cam.db") == [5, 9, 13, 17]  # default (interval 500 ms at 25 fps): [1, 14]


def test_interval_ms_is_the_sampling_period(tmp_path, videos):
    cli(write_config(tmp_path, device=str(videos["two_items"]), interval_ms=190, votes=1, window=1))
    assert seqs(tmp_path / "cam.db") == [1, 6, 11, 16]  # every 5th frame; default 500 ms: [1, 14]


def test_motion_threshold_ignores_a_small_item(tmp_path, videos):
    cli(write_config(tmp_path, device=str(videos["two_items"]), trigger="motion", motion_threshold=0.1,
                     votes=1, window=1))
    assert seqs(tmp_path / "cam.db") == [5, 9]  # the 5 % item is below 10 %; default 2 %: [5, 9, 13, 17]


def test_motion_pixel_delta_ignores_a_faint_item(tmp_path, videos):
    cli(write_config(tmp_path, device=str(videos["two_items"]), trigger="motion", motion_pixel_delta=70,
                     votes=1, window=1))
    assert seqs(tmp_path / "cam.db") == [13, 17]  # red differs from the belt by ~52 levels; default 25: all four


def test_motion_roi_watches_only_its_region(tmp_path, videos):
    cli(write_config(tmp_path, device=str(videos["two_items"]), trigger="motion", motion_roi="0,0,80,120",
                     votes=1, window=1))
    assert seqs(tmp_path / "cam.db") == [5, 9]  # the left half only; default (whole picture): [5, 9, 13, 17]


def test_scene_change_is_how_much_must_change_for_a_new_item(tmp_path, videos):
    _, status = cli(write_config(tmp_path, device=str(videos["two_items"]), scene_change=0.1, **ONE_VOTE))
    assert seqs(tmp_path / "cam.db") == [1, 5, 9]  # the 5 % item is no new scene; default 2 %: [1, 5, 9, 13, 17]
    assert (status["classified"], status["unchanged"]) == (3, 17)


def test_roi_is_what_the_model_sees(tmp_path, videos):
    cli(write_config(tmp_path, device=str(videos["split"]), roi="105,45,30,30", **ONE_VOTE))
    assert {label for _, _, label, _ in decided(tmp_path / "cam.db")} == {"rottenblue"}  # default: freshred


def test_votes_is_the_agreement_needed(tmp_path, videos):
    cli(write_config(tmp_path, device=str(videos["rgb"]), interval_ms=1, votes=2))
    assert [(seq, verdict, error) for seq, verdict, _, error in decided(tmp_path / "cam.db")] == [
        (4, "fresh", None), (8, "rotten", None), (12, "fresh", None), (15, "uncertain", "no-consensus: 1/3")]
    # default 3 of 5: no three agree in any window, [(5|10|15, "uncertain", "no-consensus: 2/5")]


def test_window_is_the_frames_per_item(tmp_path, videos):
    cli(write_config(tmp_path, device=str(videos["rgb"]), interval_ms=1, window=3))
    assert [(seq, verdict, error) for seq, verdict, _, error in decided(tmp_path / "cam.db")] == [
        (seq, "uncertain", "no-consensus: 1/3") for seq in (3, 6, 9, 12, 15)]  # default 5: 3 items of 2/5


# ---- external triggers ----

def _request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def _answers(url: str) -> bool:
    try:
        return _request(url)[0] == 200
    except OSError:
        return False


def test_control_port_serves_status_and_trigger(tmp_path):
    port = free_port()
    with MjpegCamera() as cam:
        live = Live(write_config(tmp_path, device=cam.url, trigger="line", control_port=port, votes=1, window=1),
                    max_decisions=1)
        try:
            assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}/status"), 10)  # default: no port
            assert _request(f"http://127.0.0.1:{port}/status")[1]["device"] == cam.url
            assert _request(f"http://127.0.0.1:{port}/trigger", b"{}") == (202, {"queued": True, "pending": 1})
            live.thread.join(10)  # one decision, then serve returns
        finally:
            status = live.finish()
    assert status["decisions"]["fresh"] == 1 and [v for _, v, _, _ in decided(live.db)] == ["fresh"]


def test_stdin_trigger_pulses_once_per_line(tmp_path, videos):
    cfg = write_config(tmp_path, device=str(videos["red_long"]), trigger="line", stdin_trigger=True, votes=1,
                       window=1)
    output, status = cli(cfg, "--max-items", "2", stdin="go\ngo\n")
    assert output.count("trigger from stdin") == 2  # default: stdin unread, no pulse, nothing classified
    assert (seqs(tmp_path / "cam.db"), status["classified"]) == ([1, 2], 2)


def test_gpio_trigger_pin_pulses_once_per_rising_edge(tmp_path, camera_log):
    gpiozero = pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    previous, gpiozero.Device.pin_factory = gpiozero.Device.pin_factory, MockFactory()
    try:
        pin = gpiozero.Device.pin_factory.pin(17)
        with MjpegCamera() as cam:
            live = Live(write_config(tmp_path, device=cam.url, trigger="line", gpio_trigger_pin=17, votes=1,
                                     window=1), max_decisions=1)
            try:
                deadline = time.monotonic() + 10
                while live.thread.is_alive() and time.monotonic() < deadline:  # until a pulse is decided
                    pin.drive_high()
                    time.sleep(0.05)
                    pin.drive_low()
                    time.sleep(0.1)
            finally:
                live.finish()
    finally:
        gpiozero.Device.pin_factory.close()
        gpiozero.Device.pin_factory = previous
    assert [v for _, v, _, _ in decided(live.db)] == ["fresh"]  # default (no pin): no pulse, no item
    assert "trigger from gpio 17" in [r.getMessage() for r in camera_log.records]


# ---- snapshots, status and replay ----

def test_snapshots_is_the_folder_written(tmp_path, videos, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cli(write_config(tmp_path, device=str(videos["blue"]), snapshots=tmp_path / "shots", **ONE_VOTE))
    written = sorted((tmp_path / "shots").glob("*/*.jpg"))
    assert [re.sub(r"^\d+_\d+-", "", p.name) for p in written] == ["1-rotten-rottenblue.jpg"]
    conn = store.open_reader(tmp_path / "cam.db")
    assert [r[0] for r in conn.execute("SELECT destination FROM items")] == [str(written[0])]
    assert not (tmp_path / "cwd" / "snapshots").exists()  # the default: `snapshots` in the working folder


def test_keep_share_is_the_share_of_each_verdict_kept(tmp_path, videos):
    cfg = write_config(tmp_path, device=str(videos["red_blue"]), **ONE_VOTE)
    cfg.write_text(cfg.read_text() + "keep_share = {fresh = 1.0, rotten = 0.0}\n")  # [camera] is the last table
    cli(cfg)
    conn = store.open_reader(tmp_path / "cam.db")
    rows = [(r["verdict"], r["keep_p"], r["destination"] is not None) for r in conn.execute("SELECT * FROM items")]
    assert rows == [("fresh", 1.0, True), ("rotten", 0.0, False)]  # default: fresh 0.02 (at random), rotten 1.0
    assert [re.sub(r"^\d+_\d+-", "", p.name) for p in (tmp_path / "snaps").glob("*/*.jpg")] == ["1-fresh-freshred.jpg"]


def _seed_snapshots(folder: Path, ages_hours: dict[str, float]) -> None:
    day = folder / "2026-01-01"
    day.mkdir(parents=True)
    for name, hours in ages_hours.items():
        (day / name).write_bytes(b"\xff\xd8 old snapshot")
        when = time.time() - hours * 3600
        os.utime(day / name, (when, when))


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*/*.jpg"))


def test_snapshot_retention_days_prunes_older_snapshots(tmp_path, videos):
    _seed_snapshots(tmp_path / "snaps", {"ten-days.jpg": 240, "two-days.jpg": 48})
    cli(write_config(tmp_path, device=str(videos["red_blue"]), snapshot_retention_days=5,
                     trigger="line"))
    assert _left(tmp_path / "snaps") == ["two-days.jpg"]  # default 30 days: both kept


def test_snapshot_max_files_keeps_the_newest(tmp_path, videos):
    _seed_snapshots(tmp_path / "snaps", {f"{age}h.jpg": age for age in (1, 2, 3, 4, 5)})
    cli(write_config(tmp_path, device=str(videos["red_blue"]), snapshot_max_files=2, trigger="line"))
    assert _left(tmp_path / "snaps") == ["1h.jpg", "2h.jpg"]  # default 10,000: all five


def test_status_seconds_is_the_status_log_period(tmp_path, camera_log):
    def lines() -> list[logging.LogRecord]:
        return [r for r in camera_log.records if r.getMessage().startswith("status {'device': ")]

    with MjpegCamera() as cam:
        live = Live(write_config(tmp_path, device=cam.url, status_seconds=0.2, **ONE_VOTE))
        try:
            wait_for(lambda: len(lines()) >= 3, 5)  # default 60 s: none in these 5 s
        finally:
            live.finish()
    got = lines()
    assert len(got) >= 3
    gaps = [b.created - a.created for a, b in itertools.pairwise(got)]
    assert all(0.19 <= gap < 0.6 for gap in gaps), gaps


def test_loop_replays_the_file_with_decisions_on_each_pass(tmp_path, videos):
    """Each pass is sampled again: the interval trigger's stream time runs on across a rewind (it
    used to go back to 0 there, and nothing after the first pass was ever classified)."""
    cli(write_config(tmp_path, device=str(videos["red_blue"]), loop=True, **ONE_VOTE), "--max-items", "5")
    assert [(seq, label) for seq, _, label, _ in decided(tmp_path / "cam.db")] == [
        (1, "freshred"), (4, "rottenblue"), (7, "freshred"), (10, "rottenblue"), (13, "freshred")]
    # default (no loop): [(1, "freshred"), (4, "rottenblue")], then the file ends


def test_keys_shown_names_every_camera_key_and_its_test():
    assert sorted(KEYS_SHOWN) == sorted(f"camera.{k}" for k in CameraSettings.model_fields)
    assert all(callable(globals().get(name)) for name in KEYS_SHOWN.values())
