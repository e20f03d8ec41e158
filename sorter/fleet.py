"""Many conveyor lines, one broker: each sorter publishes verdicts and hourly counters; one report.

Topics under `fleet.topic` (default sorter/fleet), per line:
    <topic>/<line>/verdict/<verdict>             every decision, QoS 1, spooled on disk (MqttOutput)
    <topic>/<line>/counters/<hour>/<run>         RETAINED running totals for that UTC hour and process run
Retained hourly counters are the source of truth for `sorter fleet report`: a report that
subscribes at any time gets every line's totals at once, and a restarted sorter (a new `run`)
never overwrites the counts of the run before it. Verdict events are the live stream.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sorter.config import FleetSettings
from sorter.outputs import MqttOutput

log = logging.getLogger("sorter.fleet")
Counts = dict[str, dict[str, int]]  # verdict → label → n


def parse_broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "1883")
    if not host or not port.isdigit():
        raise ValueError(f"broker '{text}' is not HOST[:PORT]")
    return host, int(port)


def hour_key(when: float | None = None) -> str:
    return datetime.fromtimestamp(when or time.time(), UTC).strftime("%Y-%m-%dT%H")


class FleetPublisher:
    """Listener for `Telemetry.listeners`: one call per decided item; `close` drains (bounded)."""

    def __init__(self, settings: FleetSettings, line: str, source: str) -> None:
        host, port = parse_broker(settings.broker or "")
        self.line, self.settings = line, settings
        self.base = f"{settings.topic.rstrip('/')}/{line}"
        self.run = f"{source}-{os.getpid()}-{int(time.time())}"
        password = settings.password.get_secret_value() if settings.password else None
        self.out = MqttOutput(host, port, self.base, settings.spool / source, client_id=f"sorter-{line}-{self.run}",
                              username=settings.username, password=password)
        self.hours: dict[str, Counts] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        self._dirty: set[str] = set()
        self._last_push = 0.0
        self._lock = threading.Lock()

    def on_item(self, verdict: str | None, label: str | None, error: str | None) -> None:
        if verdict is None:
            return  # rejected files are errors in /metrics, not produce
        now = time.time()
        hour = hour_key(now)
        with self._lock:
            self.hours[hour][verdict][label or "none"] += 1
            self._dirty.add(hour)
        self.out.send({"line": self.line, "run": self.run, "verdict": verdict, "label": label,
                       "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")})
        if now - self._last_push >= self.settings.counters_seconds:
            self.push_counters()

    def push_counters(self) -> list[Any]:
        """Publish each changed hour's totals, retained; the MQTTMessageInfo of each (to wait on)."""
        self._last_push = time.time()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            payloads = {h: {"line": self.line, "run": self.run, "hour": h,
                            "counts": {v: dict(labels) for v, labels in self.hours[h].items()}} for h in dirty}
        return [self.out.client.publish(f"{self.base}/counters/{h}/{self.run}", json.dumps(p), qos=1, retain=True)
                for h, p in payloads.items()]

    def close(self, timeout: float = 10.0) -> bool:
        """Final counters and the spooled verdicts out before exit; False if the broker never took them."""
        deadline = time.monotonic() + timeout
        self.out.connected.wait(timeout)
        infos = self.push_counters()
        while self.out.spool.pending() and time.monotonic() < deadline:
            self.out._wake.set()
            time.sleep(0.05)
        delivered = not self.out.spool.pending()
        for info in infos:
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                delivered = False
            delivered = delivered and info.is_published()
        self.out.close()
        if not delivered:
            log.warning("fleet: broker did not take every message before exit; verdicts stay spooled")
        return delivered


def _empty() -> dict[str, Any]:
    return {"items": 0, "by_verdict": {}, "by_label": {}, "by_verdict_label": {}}


def _add(into: dict[str, Any], counts: Counts) -> None:
    for verdict, labels in counts.items():
        for label, n in labels.items():
            into["items"] += n
            into["by_verdict"][verdict] = into["by_verdict"].get(verdict, 0) + n
            into["by_label"][label] = into["by_label"].get(label, 0) + n
            key = f"{verdict}/{label}"
            into["by_verdict_label"][key] = into["by_verdict_label"].get(key, 0) + n


def aggregate(counters: dict[str, dict[str, Any]], live: dict[str, int] | None = None) -> dict[str, Any]:
    """Counter messages (latest per topic) → per-line and fleet totals by verdict and label."""
    lines: dict[str, dict[str, Any]] = {}
    total = _empty()
    for payload in counters.values():
        line = lines.setdefault(payload["line"], {**_empty(), "hours": {}, "runs": set()})
        _add(line, payload["counts"])
        _add(total, payload["counts"])
        line["hours"][payload["hour"]] = line["hours"].get(payload["hour"], 0) + sum(
            sum(labels.values()) for labels in payload["counts"].values())
        line["runs"].add(payload["run"])
    for line in lines.values():
        line["runs"] = sorted(line["runs"])
    return {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "lines": dict(sorted(lines.items())),
            "total": total, "live_events": dict(sorted((live or {}).items()))}


def collect(broker: str, duration: float, topic: str = "sorter/fleet",
            username: str | None = None, password: str | None = None) -> dict[str, Any]:
    """Subscribe for `duration` seconds: retained counters arrive at once, live verdicts as they come."""
    import paho.mqtt.client as mqtt

    host, port = parse_broker(broker)
    counters: dict[str, dict[str, Any]] = {}
    live: dict[str, int] = defaultdict(int)
    lock, subscribed = threading.Lock(), threading.Event()
    base = topic.rstrip("/")

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.removeprefix(base + "/").split("/")
        try:
            payload = json.loads(msg.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        with lock:
            if len(parts) == 4 and parts[1] == "counters":
                counters[msg.topic] = payload
            elif len(parts) == 3 and parts[1] == "verdict":
                live[parts[0]] += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sorter-fleet-report-{os.getpid()}")
    if username:
        client.username_pw_set(username, password)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe([(f"{base}/+/counters/#", 1), (f"{base}/+/verdict/#", 1)])
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port, 30)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise ConnectionError(f"no subscription acknowledged by {broker}")
        time.sleep(duration)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return aggregate(dict(counters), dict(live))


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """report.json for machines and report.html for people, written beside each other."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, written[0])
    from sorter.report_html import render_fleet

    html = out / "report.html"
    html.write_text(render_fleet(report))
    written.append(html)
    return written
