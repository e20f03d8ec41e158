"""`sorter camera` ends cleanly: no capture thread is left inside OpenCV when the interpreter exits.

Issue 18: on an MJPEG URL with `--max-items 4` the command printed `FATAL: exception not rethrown`
and died of SIGABRT (exit -6) every time: `Capture.close` joined the supervisor but not its reader,
still blocked in `VideoCapture.read()`, and a daemon thread ended inside OpenCV's C++ at exit aborts.
The command runs here as a user runs it: the installed `sorter` script against a real MJPEG stream
over HTTP (tests.camera_helpers) and a real video file, with the real TFLite model.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sorter.capture import CLOSE_MARGIN_S, Capture
from tests.camera_helpers import MjpegCamera, colour_frame, write_video
from tests.watch_helpers import wait_for

pytestmark = pytest.mark.timeout(120)
SORTER_SCRIPT = Path(sys.executable).parent / "sorter"


def run_camera(device: str, tmp_path: Path, color_model: Path) -> subprocess.CompletedProcess:
    """`sorter camera --max-items 4` on `device`; every frame is a new scene, so items come quickly."""
    env = {**os.environ, "SORTER_CAMERA__SCENE_CHANGE": "0"}
    return subprocess.run([str(SORTER_SCRIPT), "camera", "--device", device, "--max-items", "4",
                           "-m", str(color_model), "--db", str(tmp_path / "s.db"),
                           "--snapshots", str(tmp_path / "snaps"), "--interval-ms", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)


def test_an_mjpeg_camera_run_that_reaches_max_items_exits_0(tmp_path, color_model):
    with MjpegCamera(colour="blue") as cam:
        proc = run_camera(cam.url, tmp_path, color_model)
        assert cam.served > 0
    assert proc.returncode == 0, proc.stderr[-2000:]  # was -6 (SIGABRT)
    assert "FATAL" not in proc.stderr and "exception not rethrown" not in proc.stderr
    assert proc.stderr.count("rotten rottenblue") == 4 and "decisions: fresh 0, rotten 4" in proc.stderr


def test_a_video_file_run_that_reaches_max_items_exits_0(tmp_path, color_model):
    video = write_video(tmp_path / "blue.avi", ["blue"] * 40)
    proc = run_camera(str(video), tmp_path, color_model)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FATAL" not in proc.stderr and "decisions: fresh 0, rotten 4" in proc.stderr


class SlowCapture:
    """A fake cv2.VideoCapture whose every read takes `seconds` (a wedged driver, on cue: a real
    one cannot be made to block for a chosen time); it counts the readers still inside read()."""

    def __init__(self, seconds: float, inside: list[int]):
        self.seconds, self.inside = seconds, inside

    def isOpened(self) -> bool:
        return True

    def read(self):
        self.inside[0] += 1
        time.sleep(self.seconds)
        self.inside[0] -= 1
        return True, colour_frame("red", seed=int(time.monotonic() * 1000))

    def release(self) -> None:
        pass


def readers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("capture-") and t.is_alive()]


def test_close_waits_for_a_reader_blocked_in_read():
    inside = [0]
    cap = Capture("fake-usb", stall_seconds=2.0, opener=lambda dev, t: SlowCapture(1.0, inside)).start()
    assert wait_for(lambda: inside[0] == 1, 5)
    started = time.monotonic()
    cap.close()
    took = time.monotonic() - started
    assert readers() == [] and inside[0] == 0  # before: close returned with the reader still in read()
    assert 0.0 < took < 2.0 + CLOSE_MARGIN_S


def test_a_reader_that_outlives_the_bound_is_named_and_not_awaited(caplog):
    caplog.set_level(logging.ERROR, logger="sorter.camera")
    inside = [0]
    cap = Capture("fake-usb", stall_seconds=0.2, opener=lambda dev, t: SlowCapture(5.0, inside)).start()
    assert wait_for(lambda: inside[0] == 1, 5)
    started = time.monotonic()
    cap.close()
    took = time.monotonic() - started
    assert 0.2 + CLOSE_MARGIN_S - 0.1 < took < 0.2 + CLOSE_MARGIN_S + 1.0  # bounded: no hang
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "reader capture-1 still blocked in OpenCV" in lines[0], lines
    assert wait_for(lambda: readers() == [], 10)  # (let it finish before the next test)


def test_a_control_port_in_use_leaves_no_database_or_output_thread_behind(tmp_path, color_model):
    """serve() opens the database and the outputs before the control port: when the port is taken by
    another program, what was already started is closed again, in reverse order, not left running
    (one ExitStack, issue 17; before, the writer and the dispatcher's threads were left behind)."""
    import socket

    from sorter.camera import serve
    from sorter.classify import rules_for
    from sorter.config import Settings
    from sorter.model import Classifier

    video = write_video(tmp_path / "belt.avi", ["red"] * 3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings.model_validate({
            "outputs": {"jsonl": {"path": str(tmp_path / "events.jsonl")}},
            "camera": {"snapshots": str(tmp_path / "snaps"), "control_port": taken.getsockname()[1]}})
        clf = Classifier(color_model, num_threads=1)
        before = set(threading.enumerate())
        with pytest.raises(Exception):  # noqa: B017  (the server's own error, whatever its type)
            serve(str(video), clf, rules_for(clf), settings, tmp_path / "s.db", threading.Event())
    assert wait_for(lambda: not [t for t in set(threading.enumerate()) - before if t.is_alive()], 5), \
        [t.name for t in set(threading.enumerate()) - before]
