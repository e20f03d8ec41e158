"""Capture watchdog on real OpenCV sources: video files and an MJPEG camera served by the test."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from sorter import store
from sorter.camera import CameraRunner
from sorter.capture import Capture, Frame, FrameQueue
from sorter.classify import rules_for
from sorter.config import CameraSettings
from sorter.model import Classifier
from sorter.outputs import Dispatcher
from tests.camera_helpers import MjpegCamera, colour_frame, write_video
from tests.watch_helpers import wait_for

pytestmark = pytest.mark.timeout(60)


def drain(cap: Capture, timeout: float = 10.0) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = cap.frames.get(0.05)
        if frame is not None:
            frames.append(frame)
        elif cap.ended.is_set() and not len(cap.frames):
            break
    return frames


def test_queue_drops_the_oldest_and_counts():
    q = FrameQueue(3)
    for seq in range(1, 7):
        q.put(Frame(np.zeros((2, 2, 3), np.uint8), seq))
    assert q.dropped == 3
    assert [q.get(0).seq for _ in range(3)] == [4, 5, 6]
    assert q.get(0.01) is None


def test_changed_area_tells_a_frozen_picture_from_a_noisy_live_one():
    from sorter.capture import changed_area

    a, b = colour_frame("red", seed=1), colour_frame("red", seed=2)
    assert changed_area(a, a.copy()) == 0.0
    assert changed_area(b, a) == 1.0  # sensor noise touches every cell
    clocked = a.copy()
    clocked[2:12, 4:40] = 255  # a clock overlay: 36×10 of 160×120 pixels
    assert 0 < changed_area(clocked, a) <= 0.05
    assert changed_area(a, None) == 1.0


def test_video_file_delivers_every_fresh_frame_then_ends(tmp_path):
    video = write_video(tmp_path / "v.avi", ["red"] * 5 + ["blue"] * 5)
    events: list[str] = []
    cap = Capture(str(video), stall_seconds=2, on_event=lambda e, d: events.append(e)).start()
    frames = drain(cap)
    cap.close()
    assert [f.seq for f in frames] == list(range(1, 11))
    assert frames[0].image[0, 0, 2] > 200 and frames[-1].image[0, 0, 0] > 200  # red first, blue last (BGR)
    assert cap.ended.is_set() and events == ["online"] and cap.stats.offline == 0


def test_repeated_frames_in_a_file_are_all_delivered(tmp_path):
    """Item 18: a replayed file is not a stalled camera (a held photo is many identical frames)."""
    import cv2

    path = tmp_path / "still.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    for i in [1, 2, 2, 2, 2, 3]:
        writer.write(colour_frame("green", seed=i))
    writer.release()
    cap = Capture(str(path), stall_seconds=2).start()
    frames = drain(cap)
    cap.close()
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5, 6] and cap.stats.stale == 0
    assert np.array_equal(frames[1].image, frames[4].image)  # identical frames, each delivered


def test_loop_replays_the_file(tmp_path):
    video = write_video(tmp_path / "v.avi", ["red", "green", "blue"])
    cap = Capture(str(video), stall_seconds=2, loop=True, queue_size=2).start()
    got = [cap.frames.get(2.0) for _ in range(8)]
    cap.close()
    assert all(f is not None for f in got) and not cap.ended.is_set()


class HangingCapture:
    """A fake cv2.VideoCapture whose read() blocks (a wedged USB driver); the real one cannot be
    made to hang on cue. The first connection gives two frames, then hangs until released."""

    def __init__(self, opened: list, release: threading.Event):
        self.n, self.release_evt, self.opened = 0, release, opened
        opened.append(self)

    def isOpened(self) -> bool:
        return True

    def read(self):
        self.n += 1
        if len(self.opened) == 1 and self.n > 2:
            self.release_evt.wait(30)
            return False, None
        return True, colour_frame("red", seed=len(self.opened) * 100 + self.n)

    def release(self) -> None:
        pass


def test_a_read_that_blocks_is_abandoned_at_the_deadline():
    opened: list = []
    unblock = threading.Event()
    events: list[tuple[str, float]] = []
    cap = Capture("fake-usb", stall_seconds=0.5, backoff_seconds=0.1,
                  on_event=lambda e, d: events.append((e, time.monotonic())),
                  opener=lambda dev, t: HangingCapture(opened, unblock))
    started = time.monotonic()
    cap.start()
    try:
        assert wait_for(lambda: [e for e, _ in events] == ["online", "offline", "reconnect"], 5)
        assert events[1][1] - started < 2.0  # declared offline near the 0.5 s deadline, not after 30 s
        assert len(opened) == 2  # a new connection while the first read is still stuck
    finally:
        unblock.set()
        cap.close()


def test_mjpeg_camera_unplug_goes_offline_and_reconnects_with_backoff(tmp_path):
    events: list[tuple[str, str]] = []
    with MjpegCamera() as cam:
        cap = Capture(cam.url, stall_seconds=1.0, backoff_seconds=0.2, backoff_max_seconds=0.8,
                      on_event=lambda e, d: events.append((e, d))).start()
        try:
            assert wait_for(lambda: cap.stats.fresh >= 5, 10), "no frames from the MJPEG server"
            cam.stop()
            assert wait_for(lambda: cap.state == "offline", 5)
            connects = cap.stats.connects
            time.sleep(1.0)  # backoff 0.2 → 0.4 → 0.8 (cap): a few retries, not a hot loop
            assert 1 <= cap.stats.connects - connects <= 5
            cam.start()
            assert wait_for(lambda: cap.state == "online", 10)
            seen = cap.stats.fresh
            assert wait_for(lambda: cap.stats.fresh > seen + 3, 5)
        finally:
            cap.close()
    assert [e for e, _ in events] == ["online", "offline", "reconnect"]


def test_a_frozen_stream_is_declared_offline(tmp_path):
    with MjpegCamera() as cam:
        cap = Capture(cam.url, stall_seconds=1.0, backoff_seconds=0.2).start()
        try:
            assert wait_for(lambda: cap.state == "online", 10)
            cam.mode = "freeze"  # connected, sending nothing
            t0 = time.monotonic()
            assert wait_for(lambda: cap.state == "offline", 5)
            assert time.monotonic() - t0 < 3.0
            cam.mode = "live"
            assert wait_for(lambda: cap.state == "online", 10)
        finally:
            cap.close()


def test_a_camera_repeating_one_frame_goes_offline_and_is_never_classified(tmp_path, color_model):
    clf = Classifier(color_model, num_threads=1)
    writer = store.Writer(tmp_path / "cam.db")
    settings = CameraSettings(stall_seconds=1.0, backoff_seconds=0.2, backoff_max_seconds=0.4, interval_ms=1,
                              votes=2, window=2, snapshots=tmp_path / "snaps")
    stop = threading.Event()
    with MjpegCamera(colour="blue") as cam:
        cam.mode = "repeat"  # the first frame, then the same bytes forever (and after every reconnect)
        runner = CameraRunner(cam.url, clf, rules_for(clf), settings, writer, Dispatcher([]))
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        try:
            assert wait_for(lambda: runner.capture.stats.offline >= 1, 10)
            assert wait_for(lambda: runner.capture.stats.connects >= 3, 10)  # it keeps trying...
            assert wait_for(lambda: runner.capture.stats.stale >= 20, 10)
        finally:
            stop.set()
            thread.join(10)
    writer.close()
    assert runner.status.classified == 1  # ...but only the one genuinely fresh frame was classified
    assert runner.capture.state == "offline" and runner.decisions == []
    conn = store.open_reader(tmp_path / "cam.db")
    rows = [tuple(r) for r in conn.execute("SELECT event, detail FROM camera_events ORDER BY id")]
    assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0
    assert rows[0][0] == "online" and rows[1][0] == "offline" and "same frame repeated" in rows[1][1]
    assert "reconnect" not in [r[0] for r in rows]


def test_a_frozen_picture_with_a_ticking_clock_goes_offline_and_is_never_classified(tmp_path, color_model):
    """Item 14: an IP camera whose sensor stalled keeps drawing its clock over the last picture.
    The frames differ (the clock), but the picture is frozen: stale, offline, never classified."""
    clf = Classifier(color_model, num_threads=1)
    writer = store.Writer(tmp_path / "cam.db")
    settings = CameraSettings(stall_seconds=1.0, backoff_seconds=0.2, backoff_max_seconds=0.4, interval_ms=1,
                              votes=1, window=1, snapshots=tmp_path / "snaps")
    stop = threading.Event()
    with MjpegCamera(colour="blue", size=(480, 640)) as cam:
        runner = CameraRunner(cam.url, clf, rules_for(clf), settings, writer, Dispatcher([]))
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        try:
            assert wait_for(lambda: runner.status.classified >= 1, 10), "no frames from the MJPEG server"
            cam.mode = "clock"
            assert wait_for(lambda: runner.capture.stats.offline >= 1, 10)
            classified = runner.status.classified
            assert wait_for(lambda: runner.capture.stats.stale >= 30 and cam.ticks >= 30, 10)
        finally:
            stop.set()
            thread.join(10)
    writer.close()
    assert runner.status.classified == classified  # nothing classified since the picture froze
    conn = store.open_reader(tmp_path / "cam.db")
    rows = [tuple(r) for r in conn.execute("SELECT event, detail FROM camera_events ORDER BY id")]
    assert rows[0][0] == "online" and rows[1][0] == "offline"
    assert "same picture repeated" in rows[1][1] and "frozen but for" in rows[1][1]


def test_a_live_camera_with_sensor_noise_stays_online_on_a_still_scene(tmp_path):
    """The frozen-picture guard must not take a working camera on an empty belt offline: its
    noise changes every cell of every frame (the helper's 'live' mode: one colour, fresh noise)."""
    with MjpegCamera(colour="grey", size=(480, 640)) as cam:
        cap = Capture(cam.url, stall_seconds=1.0, backoff_seconds=0.2).start()
        try:
            assert wait_for(lambda: cap.stats.fresh >= 40, 15)
        finally:
            cap.close()
    assert cap.stats.stale == 0 and cap.stats.offline == 0


def test_each_retry_says_why_the_last_attempt_failed(tmp_path, caplog):
    """Item 19: a camera that never answers is diagnosable from the log alone."""
    import logging
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.camera_helpers import free_port

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args) -> None:
            pass

    caplog.set_level(logging.INFO, logger="sorter.camera")
    closed = f"http://127.0.0.1:{free_port()}/stream.mjpg"  # nothing listens there
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    wrong_path = f"http://127.0.0.1:{server.server_address[1]}/nothere.mjpg"
    try:
        for url in (closed, wrong_path):
            cap = Capture(url, stall_seconds=1.0, backoff_seconds=0.05, backoff_max_seconds=0.1).start()
            try:
                assert wait_for(lambda c=cap: c.stats.connects >= 3, 20)
            finally:
                cap.close()
    finally:
        server.shutdown()
        server.server_close()
    retries = [r.getMessage() for r in caplog.records if "reconnecting in" in r.getMessage()]
    refused = [m for m in retries if closed.split("/stream")[0][7:] in m]
    wrong = [m for m in retries if str(server.server_address[1]) in m]
    assert len(refused) >= 2 and all("connection refused" in m for m in refused), retries
    assert len(wrong) >= 2 and all("answers, but no video stream opened" in m for m in wrong), retries
    assert any("still offline" in m for m in refused)


@pytest.mark.skipif(os.path.exists("/dev/video9"), reason="this machine has a /dev/video9")
def test_a_missing_local_camera_is_retried_saying_its_device_node_is_absent(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="sorter.camera")
    cap = Capture("9", stall_seconds=1.0, backoff_seconds=0.05, backoff_max_seconds=0.1).start()
    try:
        assert wait_for(lambda: cap.stats.connects >= 3, 20)  # a camera may be plugged in: retried
    finally:
        cap.close()
    retries = [r.getMessage() for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert len(retries) >= 2 and all("/dev/video9 does not exist" in m for m in retries), retries


def test_frozen_area_zero_counts_only_exact_repeats_as_stale():
    """The `frozen_area` setting has an effect: at 0 a clock overlay keeps a frozen picture fresh."""
    with MjpegCamera(colour="blue", size=(480, 640)) as cam:
        cap = Capture(cam.url, stall_seconds=1.0, backoff_seconds=0.2, frozen_area=0).start()
        try:
            assert wait_for(lambda: cap.stats.fresh >= 2, 10)
            cam.mode = "clock"
            assert wait_for(lambda: cam.ticks >= 30, 10)
        finally:
            cap.close()
    assert cap.stats.stale == 0 and cap.stats.offline == 0
