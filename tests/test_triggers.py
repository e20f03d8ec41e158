"""Triggers, ROI and K-of-N voting: exact expected decisions, with the real colour model where it matters."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from sorter import store
from sorter.camera import CameraRunner
from sorter.capture import Frame
from sorter.classify import rules_for
from sorter.config import CameraSettings
from sorter.control import ControlServer
from sorter.model import Classifier
from sorter.outputs import Dispatcher
from sorter.triggers import IntervalTrigger, LineTrigger, MotionTrigger, Roi, Vote, Voter, parse_roi
from tests.camera_helpers import colour_frame
from tests.conftest import COLOURS_BGR


def v(label: str, verdict: str = "fresh", confidence: float = 0.9) -> Vote:
    return Vote(label, verdict, confidence)


def test_parse_roi_and_crop_clip_to_the_frame():
    assert parse_roi("10,20,30,40") == Roi(10, 20, 30, 40)
    assert parse_roi(None) is None
    for bad in ("1,2,3", "a,b,c,d", "1,2,0,5", "-1,2,3,4"):
        with pytest.raises(ValueError):
            parse_roi(bad)
    image = np.arange(100 * 50 * 3, dtype=np.uint8).reshape(100, 50, 3)
    assert Roi(40, 90, 30, 30).crop(image).shape == (10, 10, 3)  # clipped at the frame's edge
    assert np.array_equal(Roi(5, 6, 7, 8).crop(image), image[6:14, 5:12])
    with pytest.raises(ValueError, match="outside"):
        Roi(60, 0, 5, 5).crop(image)


def test_voter_acts_only_when_k_of_n_agree():
    voter = Voter(3, 5)
    assert voter.add(v("freshred")) is None
    assert voter.add(v("rottenblue", "rotten")) is None  # one bad frame fires nothing
    assert voter.add(v("freshred", confidence=0.8)) is None
    decision = voter.add(v("freshred", confidence=0.7))
    assert (decision.label, decision.verdict, decision.agreeing, decision.frames, decision.consensus) == \
        ("freshred", "fresh", 3, 4, True)
    assert decision.confidence == pytest.approx(0.8)
    assert len(voter) == 0  # acted: the next item needs its own K votes


def test_voter_window_slides_and_old_votes_fall_out():
    voter = Voter(2, 3)
    assert voter.add(v("freshred")) is None
    assert voter.add(v("rottenblue", "rotten")) is None
    assert voter.add(v("freshgreen")) is None
    assert voter.add(v("freshgreen")).label == "freshgreen"  # window: blue, green, green
    assert voter.add(v("freshred")) is None  # the first red fell out with the reset


def test_uncertain_frames_agree_with_each_other_and_no_consensus_is_uncertain():
    voter = Voter(2, 3)
    assert voter.add(v("freshred", "uncertain", 0.34)) is None
    decision = voter.add(v("freshgreen", "uncertain", 0.36))
    assert (decision.verdict, decision.consensus) == ("uncertain", True)
    assert voter.add(v("freshred")) is None
    assert voter.add(v("rottenblue", "rotten")) is None
    closed = voter.close()
    assert (closed.verdict, closed.consensus, closed.frames, closed.agreeing) == ("uncertain", False, 2, 1)
    assert voter.close() is None
    with pytest.raises(ValueError):
        Voter(4, 3)


def test_interval_trigger_fires_on_stream_time():
    trigger = IntervalTrigger(500)
    frame = np.zeros((4, 4, 3), np.uint8)
    fired = [trigger.fire(frame, t) for t in (0.0, 0.1, 0.25, 0.5, 0.55, 0.99, 1.0, 1.6)]
    assert fired == [True, False, False, True, False, False, True, True]


def test_motion_trigger_fires_once_per_arrival_inside_its_roi():
    belt = colour_frame("grey", seed=1)
    with_item = belt.copy()
    with_item[30:90, 40:100] = COLOURS_BGR["red"]
    outside = belt.copy()
    outside[0:20, 140:160] = COLOURS_BGR["red"]  # motion outside the ROI must not count
    trigger = MotionTrigger(threshold=0.05, pixel_delta=25, roi=Roi(30, 20, 80, 80))
    frames = [belt, colour_frame("grey", seed=2), outside, belt, with_item, with_item, belt, belt, with_item]
    fired = [trigger.fire(f, i) for i, f in enumerate(frames)]
    # noise (seed 2) and the corner are still; the item arrives (4), stays (5: re-arms), leaves (6), comes back (8)
    assert fired == [False, False, False, False, True, False, True, False, True]


def test_line_trigger_counts_pulses_and_control_port_queues_them():
    trigger = LineTrigger()
    frame = np.zeros((4, 4, 3), np.uint8)
    assert not trigger.fire(frame, 0)
    server = ControlServer(0, trigger, lambda: {"state": "online"}).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        for _ in range(2):
            req = urllib.request.Request(f"{base}/trigger", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 202
        with urllib.request.urlopen(f"{base}/status", timeout=5) as resp:
            assert json.loads(resp.read()) == {"state": "online"}
        assert server.socket.getsockname()[0] == "127.0.0.1"
    finally:
        server.close()
    assert [trigger.fire(frame, 0) for _ in range(3)] == [True, True, False]


@pytest.fixture
def runner_for(tmp_path, color_model):
    clf = Classifier(color_model, num_threads=1)
    writers = []

    def make(**camera) -> CameraRunner:
        writer = store.Writer(tmp_path / "cam.db")
        writers.append(writer)
        settings = CameraSettings(snapshots=tmp_path / "snaps", **camera)
        return CameraRunner("test", clf, rules_for(clf), settings, writer, Dispatcher([]))

    yield make
    for writer in writers:
        writer.close()


def _red_belt_with_blue_item() -> np.ndarray:
    frame = colour_frame("red")
    frame[40:80, 100:140] = colour_frame("blue")[40:80, 100:140]
    return frame


def test_roi_decides_what_the_model_sees(runner_for):
    on_item = runner_for(roi="100,40,40,40", interval_ms=1, votes=1, window=1)
    whole = runner_for(interval_ms=1, votes=1, window=1)
    clipped = runner_for(roi="150,100,40,40", interval_ms=1, votes=1, window=1)  # runs off the frame: red only
    image = _red_belt_with_blue_item()
    decision = on_item.on_frame(Frame(image, 1, 0.0))
    assert (decision.label, decision.verdict, decision.agreeing) == ("rottenblue", "rotten", 1)
    assert (whole.on_frame(Frame(image, 1, 0.0)).label, whole.status.classified) == ("freshred", 1)
    assert clipped.on_frame(Frame(image, 1, 0.0)).label == "freshred"


def test_line_trigger_classifies_only_the_window_after_a_pulse(runner_for):
    runner = runner_for(trigger="line", votes=2, window=3)
    frames = [colour_frame(c, seed=i) for i, c in enumerate(["red", "red", "blue", "red", "blue", "green"])]
    assert runner.on_frame(Frame(frames[0], 1, 0.0)) is None
    assert runner.status.classified == 0  # no pulse, no inference
    runner.trigger.pulse("test")
    decisions = [runner.on_frame(Frame(f, i, i / 10)) for i, f in enumerate(frames[1:], 2)]
    assert [d and (d.label, d.verdict, d.agreeing, d.frames) for d in decisions] == \
        [None, None, ("freshred", "fresh", 2, 3), None, None]
    assert runner.status.classified == 3

    runner.trigger.pulse("test")  # a window with no two frames agreeing is uncertain, not fresh
    out = [runner.on_frame(Frame(colour_frame(c, seed=9), 9, 1.0)) for c in ("red", "blue", "green")]
    assert out[:2] == [None, None]
    assert (out[2].verdict, out[2].consensus, out[2].frames) == ("uncertain", False, 3)


def test_scene_gate_ignores_noise_and_a_clock_but_not_a_new_item():
    from sorter.triggers import SceneGate
    from tests.camera_helpers import with_clock

    belt = colour_frame("grey", (240, 320), seed=1)
    gate = SceneGate(fraction=0.02, pixel_delta=25)
    assert gate.changed(belt)  # nothing decided yet
    gate.settle(with_clock(belt, 1))
    assert not gate.changed(with_clock(colour_frame("grey", (240, 320), seed=2), 37))  # noise + clock
    green = belt.copy()
    green[80:160, 120:200] = colour_frame("green", (80, 80), seed=3)  # about the grey's brightness
    assert gate.changed(green) and gate.last_fraction > 0.05
    off = SceneGate(fraction=0)
    off.settle(belt)
    assert off.changed(belt)


def test_interval_trigger_decides_a_scene_once_unless_scene_change_is_off(runner_for):
    """Item 14: the same picture again is not a new item; `scene_change = 0` samples regardless."""
    frames = [colour_frame("blue", seed=i) for i in range(4)] + [colour_frame("red", seed=9)]

    def labels(runner: CameraRunner) -> list[str | None]:
        return [d and d.label for d in (runner.on_frame(Frame(f, i, i / 10)) for i, f in enumerate(frames))]

    gated = runner_for(interval_ms=1, votes=1, window=1)
    assert labels(gated) == ["rottenblue", None, None, None, "freshred"]
    assert (gated.status.unchanged, gated.status.classified) == (3, 2)
    sampler = runner_for(interval_ms=1, votes=1, window=1, scene_change=0)
    assert labels(sampler) == ["rottenblue"] * 4 + ["freshred"] and sampler.status.unchanged == 0
