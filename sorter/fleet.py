"""Many conveyor lines, one broker: each sorter publishes verdicts, hourly counters and its nightly
report; `sorter fleet report` turns them into one report.

Topics under `fleet.topic` (default sorter/fleet), per line:
    <topic>/<line>/verdict/<verdict>             every decision, QoS 1, spooled on disk (MqttOutput)
    <topic>/<line>/counters/<hour>/<run>         RETAINED running totals for that UTC hour and process run
    <topic>/<line>/report/<YYYY-MM-DD>           RETAINED report.json of `sorter report` (window start date)
Retained messages are what `sorter fleet report` reads: whenever it subscribes it gets every
line's reports and totals at once, and a restarted sorter (a new `run`) never overwrites the
counts of the run before it. The per-line reports are merged (`fleet_merge`) into the same
report `sorter report` writes; the hourly counters stay beside it as the `live` view.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sorter.config import FleetSettings
from sorter.outputs import MqttOutput
from sorter.secrets import reveal

if TYPE_CHECKING:
    from sorter.report import ReportOptions

log = logging.getLogger("sorter.fleet")
Counts = dict[str, dict[str, int]]  # verdict → label → n


def parse_broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "1883")
    if not host or not port.isdigit():
        raise ValueError(f"broker '{text}' is not HOST[:PORT]")
    return host, int(port)


FORGET_AFTER_S = 24 * 3600


def hour_key(when: float | None = None) -> str:
    return datetime.fromtimestamp(when or time.time(), UTC).strftime("%Y-%m-%dT%H")


class FleetPublisher:
    """Listener for `Telemetry.listeners`: one call per decided item; `close` drains (bounded)."""

    def __init__(self, settings: FleetSettings, line: str, source: str) -> None:
        host, port = parse_broker(settings.broker or "")
        self.line, self.settings = line, settings
        self.base = f"{settings.topic.rstrip('/')}/{line}"
        self.run = f"{source}-{os.getpid()}-{int(time.time())}"
        password = reveal(settings.password)
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
            self._forget_past_hours()
        return [self.out.client.publish(f"{self.base}/counters/{h}/{self.run}", json.dumps(p), qos=1, retain=True)
                for h, p in payloads.items()]

    def _forget_past_hours(self) -> None:
        """Hours more than a day old, already published: a daemon that runs for months keeps a day of
        counters, not one set per hour since it started. A day, not an hour, so that a clock stepped
        back (NTP on a box without a real-time clock) finds its hour's total and does not republish
        a smaller one. Called with the lock held, after the changed hours' payloads are taken."""
        keep = hour_key(time.time() - FORGET_AFTER_S)
        for hour in [h for h in self.hours if h < keep]:
            del self.hours[hour]

    def close(self, timeout: float = 10.0) -> bool:
        """Final counters and the spooled verdicts out before exit; False if the broker never took them."""
        deadline = time.monotonic() + timeout
        self.out.connected.wait(timeout)
        infos = self.push_counters()
        while self.out.spool.pending() and time.monotonic() < deadline:
            self.out.wake()
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


def _client(client_id: str, username: str | None, password: str | None, timeout: float = 10.0) -> Any:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect_timeout = timeout
    if username:
        client.username_pw_set(username, password)
    return client


def check_day(text: str | None) -> str | None:
    """A YYYY-MM-DD day (the key of a line's retained report), or ValueError."""
    if text is not None and date.fromisoformat(text).isoformat() != text:
        raise ValueError(f"{text!r} is not a YYYY-MM-DD day")
    return text


def report_topic(topic: str, line: str, day: str) -> str:
    return f"{topic.rstrip('/')}/{line}/report/{day}"


def publish_report(settings: FleetSettings, line: str, report: dict[str, Any], clear: Iterable[str] = (),
                   timeout: float = 10.0) -> str:
    """Publish a line's report.json (retained, QoS 1) and wait for the broker's acknowledgement.

    Retained, so a fleet report run at any time finds every line's report for a day; `clear`
    names days whose retained reports are removed (the dated folders `--keep` pruned), so the
    broker does not hoard a year of reports. Raises OSError (ConnectionError, TimeoutError)
    when the broker is unreachable or does not acknowledge within `timeout`.
    """
    host, port = parse_broker(settings.broker or "")
    password = reveal(settings.password)
    day = report["window"]["from"][:10]
    client = _client(f"sorter-report-{line}-{os.getpid()}", settings.username, password, timeout)
    accepted, answer = threading.Event(), {}

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        answer["reason"] = reason
        accepted.set()

    client.on_connect = on_connect
    client.connect(host, port, 30)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        if not accepted.wait(timeout) or answer["reason"].is_failure:
            raise ConnectionError(f"broker {host}:{port} refused the connection: {answer.get('reason', 'no answer')}")
        topic = report_topic(settings.topic, line, day)
        infos = [client.publish(topic, json.dumps({**report, "line": line}), qos=1, retain=True)]
        infos += [client.publish(report_topic(settings.topic, line, old), b"", qos=1, retain=True)
                  for old in clear if old != day]
        for info in infos:
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise ConnectionError(f"broker {host}:{port}: {exc}") from exc
            if not info.is_published():
                raise TimeoutError(f"broker {host}:{port} did not acknowledge within {timeout:g} s")
        return topic
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass
class Heard:
    """What one subscription brought: latest counters per topic, live verdicts per line, reports by day."""

    counters: dict[str, dict[str, Any]] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reports: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # day → line → report


def listen(broker: str, duration: float, topic: str = "sorter/fleet", username: str | None = None,
           password: str | None = None, day: str | None = None) -> Heard:
    """Subscribe for `duration` seconds: retained counters and reports arrive at once, live verdicts as they
    come. With `day`, only that day's reports are asked for."""
    host, port = parse_broker(broker)
    heard, lock, subscribed = Heard(), threading.Lock(), threading.Event()
    base = topic.rstrip("/")

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.removeprefix(base + "/").split("/")
        try:
            payload = json.loads(msg.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return  # an emptied retained topic, or not ours
        with lock:
            if len(parts) == 4 and parts[1] == "counters":
                heard.counters[msg.topic] = payload
            elif len(parts) == 3 and parts[1] == "verdict":
                heard.live[parts[0]] += 1
            elif len(parts) == 3 and parts[1] == "report" and isinstance(payload, dict) and "audit" in payload:
                heard.reports.setdefault(parts[2], {})[payload.get("line") or parts[0]] = payload

    client = _client(f"sorter-fleet-report-{os.getpid()}", username, password)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe([(f"{base}/+/counters/#", 1), (f"{base}/+/verdict/#", 1),
                                                   (f"{base}/+/report/{day or '#'}", 1)])
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
        return Heard(dict(heard.counters), dict(heard.live), {d: dict(r) for d, r in heard.reports.items()})


def collect(broker: str, duration: float, topic: str = "sorter/fleet",
            username: str | None = None, password: str | None = None) -> dict[str, Any]:
    """The hourly-counter view alone (per line and fleet totals by verdict and label)."""
    heard = listen(broker, duration, topic, username, password)
    return aggregate(heard.counters, heard.live)


def build_fleet_report(heard: Heard, day: str | None = None, options: ReportOptions | None = None) -> dict[str, Any]:
    """The merged report of `day` (default: the newest day any line reported) with the counters as `live`;
    only `live` and a `note` when no line reported that day."""
    from sorter.fleet_merge import merge

    live = aggregate(heard.counters, heard.live)
    day = day or max(heard.reports, default=None)
    reports = heard.reports.get(day, {}) if day else {}
    if not reports:
        return {"date": day, "generated_at": live["generated_at"], "live": live,
                "note": f"no line published a report for {day or 'any day'}: hourly counters only"}
    return {**merge(reports, options), "date": day, "live": live}


def write_report(report: dict[str, Any], out: Path, max_thumbnails: int = 24) -> list[Path]:
    """report.json for machines and report.html for people, written beside each other."""
    from sorter.report import write_json
    from sorter.report_html import write_html

    return [write_json(report, out), write_html(report, out, max_thumbnails)]
