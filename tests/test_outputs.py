"""Outputs: command, webhook (with retries), GPIO pulse, serial line over a pty, dispatcher isolation."""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sorter.outputs import CommandOutput, Dispatcher, GpioOutput, SerialOutput, Spool, WebhookOutput, build_outputs
from tests.watch_helpers import wait_for

pytestmark = pytest.mark.timeout(60)
EVENT = {"item_id": 7, "time": "2026-01-01T00:00:00.000+00:00", "device": "0", "verdict": "rotten",
         "label": "rottenblue", "confidence": 0.996, "votes": "3/4", "snapshot": "/s/7.jpg"}


def test_command_gets_the_verdict_in_its_environment(tmp_path):
    out = tmp_path / "env.json"
    script = f"import json, os; json.dump({{k: v for k, v in os.environ.items() if k.startswith('SORTER_')}}, " \
             f"open({str(out)!r}, 'w'))"
    CommandOutput([sys.executable, "-c", script]).send(EVENT)
    env = json.loads(out.read_text())
    assert (env["SORTER_VERDICT"], env["SORTER_LABEL"], env["SORTER_ITEM_ID"]) == ("rotten", "rottenblue", "7")
    assert json.loads(env["SORTER_EVENT"]) == EVENT
    with pytest.raises(RuntimeError, match="exit 3"):
        CommandOutput([sys.executable, "-c", "raise SystemExit(3)"]).send(EVENT)


class Hook:
    """A local webhook receiver that answers 500 to the first `fail_first` requests."""

    def __init__(self, fail_first: int):
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(500 if len(hook.bodies) <= fail_first else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_is_retried_until_it_succeeds():
    hook = Hook(fail_first=2)
    dispatcher = Dispatcher([(WebhookOutput(hook.url, 2.0), ["rotten"])], retries=3, retry_seconds=0.05)
    try:
        dispatcher.publish(EVENT)
        assert wait_for(lambda: dispatcher.stats()[f"webhook {hook.url}"]["sent"] == 1, 10)
    finally:
        dispatcher.close()
        hook.close()
    assert hook.bodies == [EVENT] * 3
    assert dispatcher.stats()[f"webhook {hook.url}"] | {"last_error": None} == \
        {"sent": 1, "failed": 0, "retried": 2, "last_error": None}


class Broken:
    name = "broken"

    def __init__(self):
        self.calls = 0

    def send(self, event):
        self.calls += 1
        raise ConnectionError("diverter unreachable")

    def close(self):
        pass


class Recorder:
    name = "recorder"

    def __init__(self):
        self.events: list[dict] = []

    def send(self, event):
        self.events.append(event)

    def close(self):
        pass


def test_a_failing_output_is_retried_logged_and_never_blocks_the_others():
    broken, good = Broken(), Recorder()
    dispatcher = Dispatcher([(broken, ["rotten", "fresh"]), (good, ["fresh"])], retries=2, retry_seconds=0.01)
    started = time.monotonic()
    dispatcher.publish(EVENT)  # returns at once even though `broken` will take three attempts
    dispatcher.publish({**EVENT, "verdict": "fresh", "item_id": 8})
    assert time.monotonic() - started < 0.1
    assert wait_for(lambda: dispatcher.stats()["broken"]["failed"] == 2, 5)
    dispatcher.close()
    assert broken.calls == 6
    assert [e["item_id"] for e in good.events] == [8]  # verdict filter: no rotten events here
    assert "diverter unreachable" in dispatcher.stats()["broken"]["last_error"]


def test_dry_run_fires_nothing():
    good = Recorder()
    dispatcher = Dispatcher([(good, ["rotten"])], dry_run=True)
    dispatcher.publish(EVENT)
    dispatcher.close()
    assert good.events == []


def test_gpio_pulse_on_gpiozero_mock_pins():
    gpiozero = pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    previous = gpiozero.Device.pin_factory
    gpiozero.Device.pin_factory = MockFactory()
    try:
        out = GpioOutput(17, pulse_ms=50)
        pin = gpiozero.Device.pin_factory.pin(17)
        pin.clear_states()
        out.send(EVENT)
        states = [s.state for s in pin.states]
        assert states[-2:] == [True, False] and not pin.state
        assert pin.states[-1].timestamp >= 0.045  # high for the pulse length
        out.close()
    finally:
        gpiozero.Device.pin_factory = previous


class FakePin:
    """Stand-in for a gpiozero device where gpiozero is absent: records on/off with times."""

    def __init__(self):
        self.log: list[tuple[str, float]] = []

    def on(self):
        self.log.append(("on", time.monotonic()))

    def off(self):
        self.log.append(("off", time.monotonic()))


def test_gpio_output_through_its_interface_with_a_fake_pin():
    pin = FakePin()
    GpioOutput(5, pulse_ms=30, device=pin).send(EVENT)
    assert [s for s, _ in pin.log] == ["on", "off"] and pin.log[1][1] - pin.log[0][1] >= 0.025


def test_serial_line_over_a_pty():
    pytest.importorskip("serial")
    master, slave = os.openpty()
    try:
        out = SerialOutput(os.ttyname(slave), 9600)
        out.send(EVENT)
        out.send({**EVENT, "verdict": "uncertain", "label": None, "confidence": 0.36})
        data = b""
        while data.count(b"\n") < 2 and select.select([master], [], [], 5)[0]:
            data += os.read(master, 1024)
        out.close()
    finally:
        os.close(master)
        os.close(slave)
    assert data.decode().splitlines() == ["rotten rottenblue 0.996", "uncertain - 0.360"]


def test_spool_keeps_order_across_restarts(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.push("t/a", {"n": 1})
    spool.push("t/b", {"n": 2})
    again = Spool(tmp_path / "spool")
    again.push("t/c", {"n": 3})
    assert [json.loads(p.read_text())["payload"]["n"] for p in again.pending()] == [1, 2, 3]


def test_build_outputs_from_settings(tmp_path):
    from sorter.config import OutputSettings

    settings = OutputSettings.model_validate({"command": {"argv": ["true"]},
                                              "webhook": {"url": "http://127.0.0.1:9/x", "verdicts": ["rotten"]}})
    built = build_outputs(settings)
    assert [(o.name, v) for o, v in built] == [("command true", ["fresh", "rotten", "uncertain"]),
                                               ("webhook http://127.0.0.1:9/x", ["rotten"])]
