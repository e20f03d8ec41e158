"""Acting on a decision: one small `Output` interface, its implementations, and the dispatcher.

Each output gets its own worker thread and retries, so a slow webhook never delays the GPIO
pulse and a dead one never stops classification. MQTT spools every event to disk first and
deletes it only after the broker's PUBACK, so events survive a broker outage (and a restart).
Hardware libraries (gpiozero, pyserial) are imported only when their output is configured.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from sorter.config import OutputSettings, reveal
from sorter.redact import mask_text, mask_url

log = logging.getLogger("sorter.outputs")


class Output(Protocol):
    name: str

    def send(self, event: dict[str, Any]) -> None:
        """Deliver one decision; raise on failure (the dispatcher retries)."""
        ...

    def close(self) -> None: ...


def event_env(event: dict[str, Any]) -> dict[str, str]:
    """SORTER_VERDICT, SORTER_LABEL, … plus SORTER_EVENT (the whole event as JSON)."""
    env = {f"SORTER_{k.upper()}": "" if v is None else str(v) for k, v in event.items()
           if isinstance(v, str | int | float) or v is None}
    env["SORTER_EVENT"] = json.dumps(event)
    return env


# What a child needs to find programs and speak the locale; nothing else of the daemon's environment
# (which holds SORTER_OUTPUTS__MQTT__PASSWORD and the like) reaches it unless named in `pass_env`.
CHILD_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME")


def child_env(event: dict[str, Any], pass_env: Iterable[str] = (), environ: dict[str, str] | None = None,
              ) -> dict[str, str]:
    """The decision's SORTER_* variables plus CHILD_ENV, LC_* and the names in `pass_env`."""
    source = os.environ if environ is None else environ
    wanted = {*CHILD_ENV, *pass_env}
    env = {k: v for k, v in source.items() if k in wanted or k.startswith("LC_")}
    return {**env, **event_env(event)}


class CommandOutput:
    """Run a program with the decision in its environment; a non-zero exit is a failure."""

    def __init__(self, argv: list[str], timeout_seconds: float = 5.0, pass_env: Iterable[str] = ()):
        self.argv, self.timeout, self.name = argv, timeout_seconds, f"command {argv[0]}"
        self.pass_env = tuple(pass_env)

    def send(self, event: dict[str, Any]) -> None:
        done = subprocess.run(self.argv, env=child_env(event, self.pass_env), timeout=self.timeout,
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-200:]}")

    def close(self) -> None:
        pass


def split_credentials(url: str) -> tuple[str, str | None]:
    """`https://user:pass@host/x` → (`https://host/x`, "Basic …"); urllib would take `user:pass@host`
    for the host name and never deliver. A URL without credentials comes back with None."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return bare, "Basic " + base64.b64encode(pair.encode()).decode()


class WebhookOutput:
    """POST the decision as JSON; anything but 2xx (or no answer in time) is a failure.

    Credentials in the URL (`https://user:pass@host/hook`) are sent as HTTP basic auth, a `token`
    as a bearer token (not both); the name shown in logs and /status is the masked URL."""

    def __init__(self, url: str, timeout_seconds: float = 2.0, token: str | None = None):
        self.url, basic = split_credentials(url)
        self.timeout, self.name = timeout_seconds, f"webhook {mask_url(url)}"
        self._headers = {"Content-Type": "application/json"}
        if token and basic:
            raise ValueError("webhook: credentials in the URL and a token: give one of them")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif basic:
            self._headers["Authorization"] = basic

    def send(self, event: dict[str, Any]) -> None:
        headers = self._headers
        if key := event.get("idempotency_key"):  # the same decision sent twice carries the same key
            headers = {**headers, "Idempotency-Key": str(key)}
        request = urllib.request.Request(self.url, data=json.dumps(event).encode(), method="POST",
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # raises on 4xx/5xx
            response.read()

    def close(self) -> None:
        pass


class Spool:
    """Events on disk, one JSON file each, oldest first; written atomically (tmp + rename + fsync)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.stem) for p in self.folder.glob("*.json") if p.stem.isdigit()]
        self._next = max(numbers, default=0) + 1
        self._lock = threading.Lock()

    def push(self, topic: str, payload: dict[str, Any]) -> Path:
        with self._lock:
            path = self.folder / f"{self._next:012d}.json"
            self._next += 1
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"topic": topic, "payload": payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.json"))


class MqttOutput:
    """QoS 1 to `<topic>/verdict/<verdict>`; `<topic>/availability` is retained "online", with a
    last will of "offline" that the broker publishes if this process dies without saying goodbye."""

    def __init__(self, host: str, port: int, topic: str, spool: Path, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, keepalive: int = 30):
        import paho.mqtt.client as mqtt

        self.name, self.topic = f"mqtt {host}:{port}", topic.rstrip("/")
        self.availability = f"{self.topic}/availability"
        self.spool = Spool(spool)
        self.connected, self._wake, self._stop = threading.Event(), threading.Event(), threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "")
        if username:
            self.client.username_pw_set(username, password)
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(host, port, keepalive)
        self.client.loop_start()
        self._flusher = threading.Thread(target=self._flush_loop, name="mqtt-flush", daemon=True)
        self._flusher.start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("%s refused the connection: %s", self.name, reason_code)
            return
        client.publish(self.availability, "online", qos=1, retain=True)
        log.info("%s connected; %d spooled event(s) to send", self.name, len(self.spool.pending()))
        self.connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("%s disconnected (%s); spooling events on disk", self.name, reason_code)
        self.connected.clear()

    def send(self, event: dict[str, Any]) -> None:
        self.spool.push(f"{self.topic}/verdict/{event['verdict']}", event)
        self._wake.set()

    def _publish(self, path: Path) -> bool:
        record = json.loads(path.read_text())
        info = self.client.publish(record["topic"], json.dumps(record["payload"]), qos=1)
        try:
            info.wait_for_publish(timeout=5.0)
        except (RuntimeError, ValueError):
            return False
        if not info.is_published():
            return False
        path.unlink()
        return True

    def _flush_loop(self) -> None:
        """Send spooled events in order while connected; on trouble wait for the next wake-up."""
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            for path in self.spool.pending():
                if self._stop.is_set() or not self.connected.is_set() or not self._publish(path):
                    break

    def close(self, drain_seconds: float = 5.0) -> None:
        """While connected, let the flusher send what is spooled (bounded: a decision made just before
        a clean stop, or the end of a video file, goes out now, not at the next start); then say
        "offline" ourselves (retained) and disconnect cleanly. What is left stays for next time."""
        deadline = time.monotonic() + drain_seconds
        while self.connected.is_set() and self.spool.pending() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._flusher.join(timeout=6.0)
        if self.connected.is_set():
            self.client.publish(self.availability, "offline", qos=1, retain=True).wait_for_publish(2.0)
        self.client.disconnect()
        self.client.loop_stop()


class GpioOutput:
    """A pulse of `pulse_ms` on a pin (gpiozero; pass `device` to drive any object with on/off)."""

    def __init__(self, pin: int | str, pulse_ms: int = 200, device: Any = None):
        if device is None:
            from gpiozero import DigitalOutputDevice

            device = DigitalOutputDevice(pin)
        self.device, self.pulse, self.name = device, pulse_ms / 1000, f"gpio {pin}"
        self._halt = threading.Event()

    def send(self, event: dict[str, Any]) -> None:
        self.device.on()
        try:
            self._halt.wait(self.pulse)
        finally:
            self.device.off()

    def close(self) -> None:
        self._halt.set()
        closer = getattr(self.device, "close", None)
        if closer:
            closer()


class SerialOutput:
    """One line per decision, `<verdict> <label> <confidence>\\n`, on a serial port (pyserial)."""

    def __init__(self, port: str, baud: int = 9600):
        self.port, self.baud, self.name = port, baud, f"serial {port}"
        self._serial: Any = None

    def send(self, event: dict[str, Any]) -> None:
        import serial

        if self._serial is None:
            self._serial = serial.serial_for_url(self.port, baudrate=self.baud, timeout=1, write_timeout=2)
        line = f"{event['verdict']} {event.get('label') or '-'} {event.get('confidence') or 0:.3f}\n"
        try:
            self._serial.write(line.encode())
            self._serial.flush()
        except Exception:
            self.close()  # reopen on the next attempt: the adapter may have been replugged
            raise

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None


@dataclass
class OutputStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    last_error: str | None = None


@dataclass
class _Lane:
    output: Output
    verdicts: frozenset[str]
    jobs: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1000))
    stats: OutputStats = field(default_factory=OutputStats)
    thread: threading.Thread | None = None


Outcome = Callable[[str, dict[str, Any], bool, int, str | None], None]
"""(output name, event, delivered, attempts made, last error): how `sorter.delivery` hears of each send."""


class Dispatcher:
    """Fan each decision out to every output that wants its verdict; `publish` never blocks or raises.
    `on_outcome`, when given, hears how each (event, output) ended, on that output's thread."""

    def __init__(self, outputs: Iterable[tuple[Output, Iterable[str]]], retries: int = 3,
                 retry_seconds: float = 0.5, dry_run: bool = False, on_outcome: Outcome | None = None):
        self.retries, self.retry_seconds, self.dry_run = retries, retry_seconds, dry_run
        self.on_outcome = on_outcome
        self._stop = threading.Event()
        self.lanes = [_Lane(out, frozenset(verdicts)) for out, verdicts in outputs]
        for lane in self.lanes:
            lane.thread = threading.Thread(target=self._work, args=(lane,), name=f"out-{lane.output.name}",
                                           daemon=True)
            lane.thread.start()

    def targets(self, event: dict[str, Any]) -> list[str]:
        """The names of the outputs that fire on this event's verdict (none in a dry run)."""
        return [] if self.dry_run else [lane.output.name for lane in self.lanes
                                        if event.get("verdict") in lane.verdicts]

    def publish(self, event: dict[str, Any], only: Iterable[str] | None = None) -> None:
        """Queue the event for every output that wants its verdict (`only`: those of these names)."""
        if self.dry_run:
            log.info("dry-run: %s %s (outputs not fired)", event.get("verdict"), event.get("label"))
            return
        names = None if only is None else set(only)
        for lane in self.lanes:
            if event.get("verdict") not in lane.verdicts or (names is not None and lane.output.name not in names):
                continue
            try:
                lane.jobs.put_nowait(event)
            except queue.Full:
                lane.stats.failed += 1
                log.error("%s: 1000 events waiting, not sending item %s now%s", lane.output.name,
                          event.get("item_id"), " (it stays pending in the database)" if self.on_outcome else "")
                self._told(lane, event, False, 0, "queue full")

    def _work(self, lane: _Lane) -> None:
        while True:
            event = lane.jobs.get()
            if event is None:
                return
            self._deliver(lane, event)

    def _deliver(self, lane: _Lane, event: dict[str, Any]) -> None:
        for attempt in range(self.retries + 1):
            try:
                lane.output.send(event)
                lane.stats.sent += 1
                self._told(lane, event, True, attempt + 1, None)
                return
            except Exception as exc:
                lane.stats.last_error = mask_text(f"{type(exc).__name__}: {exc}")  # shown in /status
                if attempt == self.retries or self._stop.is_set():
                    break
                lane.stats.retried += 1
                delay = self.retry_seconds * 2**attempt
                log.warning("%s failed (%s); retry %d/%d in %.1f s", lane.output.name, lane.stats.last_error,
                            attempt + 1, self.retries, delay)
                self._stop.wait(delay)
        lane.stats.failed += 1
        log.error("%s gave up on item %s: %s", lane.output.name, event.get("item_id"), lane.stats.last_error)
        self._told(lane, event, False, attempt + 1, lane.stats.last_error)

    def _told(self, lane: _Lane, event: dict[str, Any], ok: bool, attempts: int, error: str | None) -> None:
        if self.on_outcome is not None:
            try:
                self.on_outcome(lane.output.name, event, ok, attempts, error)
            except Exception:  # recording an outcome must never kill an output's thread
                log.exception("recording the outcome of %s for item %s", lane.output.name, event.get("item_id"))

    def stats(self) -> dict[str, dict]:
        return {lane.output.name: vars(lane.stats).copy() for lane in self.lanes}

    def close(self, timeout: float = 5.0) -> None:
        """Let queued events go out (bounded), then close every output."""
        for lane in self.lanes:
            lane.jobs.put(None)
        for lane in self.lanes:
            if lane.thread:
                lane.thread.join(timeout)
        self._stop.set()
        for lane in self.lanes:
            try:
                lane.output.close()
            except Exception:
                log.exception("closing %s", lane.output.name)


def build_outputs(settings: OutputSettings) -> list[tuple[Output, list[str]]]:
    """The configured outputs, each with the verdicts it fires on."""
    built: list[tuple[Output, list[str]]] = []
    if (c := settings.command) is not None:
        built.append((CommandOutput(c.argv, c.timeout_seconds, c.pass_env), c.verdicts))
    if (w := settings.webhook) is not None:
        built.append((WebhookOutput(w.url, w.timeout_seconds, reveal(w.token)), w.verdicts))
    if (m := settings.mqtt) is not None:
        built.append((MqttOutput(m.host, m.port, m.topic, m.spool, m.client_id, m.username, reveal(m.password),
                                 m.keepalive), m.verdicts))
    if (g := settings.gpio) is not None:
        built.append((GpioOutput(g.pin, g.pulse_ms), g.verdicts))
    if (s := settings.serial) is not None:
        built.append((SerialOutput(s.port, s.baud), s.verdicts))
    return built
