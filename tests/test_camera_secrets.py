"""A camera URL with a password, end to end: the live camera (a real MJPEG server over HTTP) is read
with it, and the password is nowhere else: not in logs, the database file, report.json/html, MQTT
and webhook payloads, /status, or the environment of the command output."""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from sorter.camera import serve
from sorter.classify import rules_for
from sorter.config import Settings
from sorter.model import Classifier
from sorter.report import generate
from tests.camera_helpers import MjpegCamera, free_port
from tests.http_helpers import Hook
from tests.watch_helpers import wait_for

pytestmark = pytest.mark.timeout(90)
SECRET = "s3cr3t-pw"
mqtt = pytest.importorskip("paho.mqtt.client")


class Subscriber:
    def __init__(self, port: int) -> None:
        self.payloads: list[str] = []
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.payloads.append(m.payload.decode())
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe("sorter/#", qos=1)
        self.client.connect("127.0.0.1", port, 10)
        self.client.loop_start()
        assert ready.wait(10), "no SUBACK from mosquitto"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_camera_password_stays_in_the_connection(tmp_path, color_model, broker, caplog, monkeypatch):
    caplog.set_level("INFO")
    monkeypatch.setenv("SORTER_OUTPUTS__MQTT__PASSWORD", SECRET)  # must not reach the command either
    env_file = tmp_path / "env.json"
    dump_env = f"import json, os; json.dump(dict(os.environ), open({str(env_file)!r}, 'w'))"
    hook, control_port, db = Hook(), free_port(), tmp_path / "cam.db"
    subscriber = Subscriber(broker.port)
    stop, statuses = threading.Event(), []
    clf = Classifier(color_model, num_threads=1)
    try:
        with MjpegCamera(colour="blue") as cam:
            url = cam.url.replace("http://", f"http://operator:{SECRET}@")
            cfg = Settings(threads=1, camera={
                "interval_ms": 1, "votes": 2, "window": 2, "snapshots": str(tmp_path / "snaps"),
                "scene_change": 0,  # one unchanging blue scene, decided again and again: outputs keep firing
                "control_port": control_port}, outputs={
                "retry_seconds": 0.05, "command": {"argv": [sys.executable, "-c", dump_env]},
                "webhook": {"url": hook.url()}, "mqtt": {"port": broker.port, "spool": str(tmp_path / "spool")}})
            thread = threading.Thread(target=lambda: statuses.append(
                serve(url, clf, rules_for(clf), cfg, db, stop)), daemon=True)
            thread.start()
            assert wait_for(lambda: len(hook.received) >= 2 and env_file.exists() and subscriber.payloads, 30), \
                "no decisions reached the outputs"
            with urllib.request.urlopen(f"http://127.0.0.1:{control_port}/status", timeout=5) as resp:
                status = json.loads(resp.read())
            stop.set()
            thread.join(30)
        written = generate(db, tmp_path / "report", datetime.now(UTC) - timedelta(hours=1),
                           datetime.now(UTC) + timedelta(minutes=1))
    finally:
        stop.set()
        hook.close()
        subscriber.close()
    shown = f"http://operator:***@127.0.0.1:{cam.port}/stream.mjpg"
    assert status["device"] == shown and status["decisions"]["rotten"] >= 1  # the camera was read
    places = {
        "logs": "\n".join(r.getMessage() for r in caplog.records),
        "/status": json.dumps(status), "final status": json.dumps(statuses),
        "webhook": json.dumps([body for body, _ in hook.received]),
        "mqtt": "\n".join(subscriber.payloads),
        "command env": env_file.read_text(),
        "report.json": (written.folder / "report.json").read_text(),
        "report.html": (written.folder / "report.html").read_text(),
    }
    for name in ("cam.db", "cam.db-wal"):
        if (tmp_path / name).exists():
            places[name] = (tmp_path / name).read_bytes().decode("latin-1")
    leaks = [where for where, text in places.items() if SECRET in text]
    assert leaks == []
    assert shown in places["webhook"] and shown in places["report.json"] and shown in places["logs"]
    assert "SORTER_OUTPUTS__MQTT__PASSWORD" not in json.loads(places["command env"])
