"""/healthz and /metrics over real HTTP, the Prometheus text parsed back, fed by a real watcher and camera."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sorter.camera import serve
from sorter.classify import rules_for
from sorter.config import Settings
from sorter.metrics import MetricsServer, Telemetry
from sorter.model import Classifier
from sorter.watch import Watcher
from tests.camera_helpers import free_port, write_video
from tests.watch_helpers import MODEL, SORTER, Running, jpeg, settings, wait_until

pytestmark = pytest.mark.timeout(60)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(port: int) -> dict[tuple[str, tuple], float]:
    status, text = get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_health_turns_ready_and_metrics_count_a_real_watcher(tmp_path):
    telemetry = Telemetry("watch")
    server = MetricsServer(telemetry, port=0).start()
    try:
        status, body = get(server.port, "/healthz")
        assert status == 503 and json.loads(body)["ready"] is False
        clf = Classifier(MODEL, num_threads=1)
        telemetry.model_loaded = True
        (tmp_path / "in").mkdir()
        watcher = Watcher(tmp_path / "in", tmp_path / "out", tmp_path / "db", clf, rules_for(clf), settings(),
                          telemetry=telemetry)
        running = Running(watcher)
        for i, colour in enumerate(["red", "red", "blue", "grey"]):
            (tmp_path / "in" / f"{i}.jpg").write_bytes(jpeg(colour, tag=str(i)))
        (tmp_path / "in" / "bad.jpg").write_bytes(b"not an image")
        wait_until(lambda: sum(v for (n, _), v in samples(server.port).items()
                               if n in ("sorter_items_total", "sorter_errors_total")) == 5, what="5 items counted")
        running.stop()
        status, body = get(server.port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["ready"] and health["model_loaded"] and health["last_item_time"]
        got = samples(server.port)
        assert got[("sorter_items_total", (("label", "freshred"), ("verdict", "fresh")))] == 2
        assert got[("sorter_items_total", (("label", "rottenblue"), ("verdict", "rotten")))] == 1
        assert sum(v for (n, lbl), v in got.items() if n == "sorter_items_total"
                   and dict(lbl)["verdict"] == "uncertain") == 1  # grey: below threshold, whatever its label
        errors = {dict(lbl)["reason"]: v for (n, lbl), v in got.items() if n == "sorter_errors_total"}
        assert sum(errors.values()) == 1
        assert got[("sorter_inference_seconds_count", ())] >= 1 and ("sorter_queue_depth", ()) in got
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.close()


def test_camera_hooks_report_online_and_decisions(tmp_path):
    video = write_video(tmp_path / "belt.avi", ["red"] * 6 + ["blue"] * 6)
    telemetry = Telemetry("camera")
    telemetry.model_loaded = True
    server = MetricsServer(telemetry, port=0).start()
    try:
        clf = Classifier(MODEL, num_threads=1)
        cfg = Settings(threads=1, camera={"interval_ms": 1, "votes": 3, "window": 5, "scene_change": 0,
                                          "snapshots": str(tmp_path / "snaps")})  # every frame is classified
        serve(str(video), clf, rules_for(clf), cfg, tmp_path / "db", threading.Event(), telemetry=telemetry)
        got = samples(server.port)
        counted = {dict(lbl)["verdict"]: v for (n, lbl), v in got.items() if n == "sorter_items_total"}
        assert counted.get("fresh", 0) >= 1 and counted.get("rotten", 0) >= 1
        assert got[("sorter_inference_seconds_count", ())] >= 12 and ("sorter_dropped_frames_total", ()) in got
        assert telemetry.camera_online is not None
    finally:
        server.close()


def test_watch_command_serves_the_endpoint_until_sigterm(tmp_path):
    port = free_port()
    (tmp_path / "in").mkdir()
    proc = subprocess.Popen([*SORTER, "watch", str(tmp_path / "in"), "--db", str(tmp_path / "db"), "-m", str(MODEL),
                             "--metrics-port", str(port)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("endpoint never became healthy")
        (tmp_path / "in" / "x.jpg").write_bytes(jpeg("blue"))
        wait_until(lambda: samples(port).get(("sorter_items_total", (("label", "rottenblue"), ("verdict", "rotten")))
                                             ) == 1, 20, "the rotten item counted")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_queue_depth_is_read_when_scraped_and_a_watcher_without_metrics_still_counts(tmp_path):
    """The gauge asks the queue at scrape time (nothing pushes it per batch); a watcher given no telemetry
    gets its own (a null check less in every stage), and it counts."""
    from prometheus_client import generate_latest

    from sorter.watch import Item

    (tmp_path / "in").mkdir()
    clf = Classifier(MODEL, num_threads=1)
    watcher = Watcher(tmp_path / "in", tmp_path / "out", tmp_path / "db", clf, rules_for(clf), settings())
    try:
        depth = lambda: [m.samples[0].value for m in text_string_to_metric_families(  # noqa: E731
            generate_latest(watcher.telemetry.registry).decode()) if m.name == "sorter_queue_depth"]
        assert depth() == [0.0]
        watcher.decode.queue.put([Item(tmp_path / "in" / f"{i}.jpg") for i in range(3)])
        assert depth() == [3.0]
        watcher.telemetry.batch([Item(tmp_path / "in" / "a.jpg", verdict="rotten", label="rottenblue")])
        assert watcher.telemetry.registry.get_sample_value(
            "sorter_items_total", {"verdict": "rotten", "label": "rottenblue"}) == 1
    finally:
        watcher.writer.close()
