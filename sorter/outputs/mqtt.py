"""QoS 1 to a broker, every event spooled on disk first and deleted only after the broker's PUBACK."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from sorter.outputs.base import OutputConfig
from sorter.secrets import read_secret, reveal

log = logging.getLogger("sorter.outputs")


class Config(OutputConfig):
    """`[outputs.mqtt]`: `<topic>/verdict/<verdict>` per decision, `<topic>/availability` retained."""

    type: Literal["mqtt"] = "mqtt"
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic: str = "sorter"
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    keepalive: int = Field(default=30, ge=5)
    spool: Path = Path("mqtt-spool")

    @model_validator(mode="after")
    def _password(self) -> Config:
        return read_secret(self, "password")


def build(config: Config) -> MqttOutput:
    return MqttOutput(config.host, config.port, config.topic, config.spool, config.client_id, config.username,
                      reveal(config.password), config.keepalive)


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

    def wake(self) -> None:
        """Send what is spooled now, not at the flusher's next wake-up (a caller about to close)."""
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
