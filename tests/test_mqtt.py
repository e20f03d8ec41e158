"""MQTT output against a real mosquitto broker on a free loopback port, started by the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mqtt_helpers import MOSQUITTO, Subscriber
from tests.watch_helpers import wait_for

pytestmark = pytest.mark.timeout(90)
if MOSQUITTO is None:
    pytest.skip("the mosquitto binary is missing (apt-get install mosquitto; .ci/run does this)",
                allow_module_level=True)
mqtt = pytest.importorskip("paho.mqtt.client")
REPO = Path(__file__).resolve().parent.parent
EVENT = {"item_id": 1, "verdict": "rotten", "label": "rottenblue", "confidence": 0.99}


def availability(msgs) -> list[tuple[str, bool]]:
    return [(p, r) for t, p, r in msgs if t == "sorter/availability"]


def test_verdicts_go_to_their_topic_and_availability_is_retained(broker, tmp_path):
    from sorter.outputs import MqttOutput

    out = MqttOutput("127.0.0.1", broker.port, "sorter", tmp_path / "spool", keepalive=5)
    try:
        assert out.connected.wait(10)
        out.send(EVENT)
        out.send({**EVENT, "item_id": 2, "verdict": "fresh", "label": "freshred"})
        watcher = Subscriber(broker.port)  # joins late: still sees "online", because it is retained
        assert watcher.wait(lambda m: ("online", True) in availability(m))
        late = Subscriber(broker.port)
        out.send({**EVENT, "item_id": 3})
        assert late.wait(lambda m: any(t == "sorter/verdict/rotten" for t, _, _ in m))
        assert [json.loads(p)["item_id"] for t, p, _ in late.messages if t.startswith("sorter/verdict/")] == [3]
        assert not list((tmp_path / "spool").glob("*.json"))  # acknowledged events leave the spool
    finally:
        out.close()
    assert watcher.wait(lambda m: availability(m)[-1:] == [("offline", False)])  # a clean goodbye
    watcher.close()
    late.close()


CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from sorter.outputs import MqttOutput
out = MqttOutput("127.0.0.1", {port}, "sorter", {spool!r}, client_id="doomed", keepalive=5)
assert out.connected.wait(10)
print("ready", flush=True)
time.sleep(60)
"""


def test_last_will_says_offline_when_the_sorter_dies(broker, tmp_path):
    watcher = Subscriber(broker.port)
    code = CHILD.format(repo=str(REPO), port=broker.port, spool=str(tmp_path / "spool"))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert watcher.wait(lambda m: availability(m)[-1:] == [("online", False)])
        os.kill(child.pid, signal.SIGKILL)  # no DISCONNECT packet: the broker must publish the will
        child.wait(10)
        assert watcher.wait(lambda m: availability(m)[-1:] == [("offline", False)], 10)
    finally:
        if child.poll() is None:
            child.kill()
        watcher.close()
    again = Subscriber(broker.port)  # retained: anyone asking later learns it is offline
    assert again.wait(lambda m: ("offline", True) in availability(m))
    again.close()


def test_events_are_buffered_on_disk_while_the_broker_is_down(broker, tmp_path):
    from sorter.outputs import MqttOutput

    spool = tmp_path / "spool"
    out = MqttOutput("127.0.0.1", broker.port, "sorter", spool, keepalive=5)
    try:
        assert out.connected.wait(10)
        broker.stop()
        deadline = time.monotonic() + 10
        while out.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not out.connected.is_set()
        for n in (1, 2, 3):
            out.send({**EVENT, "item_id": n})
        time.sleep(0.3)
        assert len(list(spool.glob("*.json"))) == 3  # on disk, not lost
        broker.start()
        watcher = Subscriber(broker.port)  # subscribed before the sorter's reconnect (≥ 1 s backoff)
        assert watcher.wait(lambda m: sum(t.startswith("sorter/verdict/") for t, _, _ in m) == 3, 30)
        ids = [json.loads(p)["item_id"] for t, p, _ in watcher.messages if t.startswith("sorter/verdict/")]
        assert ids == [1, 2, 3]
        assert wait_empty(spool)
        watcher.close()
    finally:
        out.close()


def wait_empty(spool: Path, timeout: float = 5) -> bool:
    return wait_for(lambda: not list(spool.glob("*.json")), timeout, 0.05)


def test_a_clean_close_sends_what_is_spooled_while_connected(broker, tmp_path):
    """Decisions made just before a clean stop (or the end of a video file) go out on close, not at
    the next start: close() lets the flusher empty the spool while the broker is there."""
    from sorter.outputs import MqttOutput

    watcher = Subscriber(broker.port)
    out = MqttOutput("127.0.0.1", broker.port, "sorter", tmp_path / "spool", keepalive=5)
    try:
        assert out.connected.wait(10)
        for n in (1, 2, 3):
            out.send({**EVENT, "item_id": n})
    finally:
        out.close()  # at once: the flusher has had no time of its own
    assert not list((tmp_path / "spool").glob("*.json"))
    assert watcher.wait(lambda m: sum(t.startswith("sorter/verdict/") for t, _, _ in m) == 3, 5)
    assert [json.loads(p)["item_id"] for t, p, _ in watcher.messages if t.startswith("sorter/verdict/")] == [1, 2, 3]
    watcher.close()
