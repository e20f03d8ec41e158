"""Every [outputs] key has an effect (issue 14 item 22): each key, written in a TOML file and read by
`load_settings`, changes what the outputs `sorter camera` builds (sorter.outputs.build_outputs and its
Dispatcher) do to real programs, a real HTTP server, a real mosquitto, mock GPIO pins and real ptys."""

from __future__ import annotations

import json
import os
import pwd
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sorter.camera import serve
from sorter.classify import rules_for
from sorter.config import ConfigError, OutputSettings, Settings, load_settings
from sorter.model import Classifier
from sorter.outputs import Dispatcher, build_outputs
from sorter.outputs.registry import FIRST
from sorter.outputs.registry import types as output_types
from tests.camera_helpers import free_port, write_video
from tests.http_helpers import Hook
from tests.mqtt_helpers import MOSQUITTO
from tests.settings_helpers import settings_keys
from tests.watch_helpers import MODEL, SORTER, wait_for

# every key of [outputs] → the test below that shows its effect (the lead's meta test reads this table)
KEYS_SHOWN: dict[str, str] = {
    "outputs.retries": "test_outputs_retries",
    "outputs.retry_seconds": "test_outputs_retry_seconds",
    "outputs.resend_seconds": "test_outputs_resend_seconds",
    "outputs.targets": "test_outputs_targets",
    "outputs.command.argv": "test_outputs_command_argv",
    "outputs.command.timeout_seconds": "test_outputs_command_timeout_seconds",
    "outputs.command.pass_env": "test_outputs_command_pass_env",
    "outputs.command.verdicts": "test_outputs_command_verdicts",
    "outputs.webhook.url": "test_outputs_webhook_url",
    "outputs.webhook.token": "test_outputs_webhook_token",
    "outputs.webhook.token_file": "test_outputs_webhook_token_file",
    "outputs.webhook.timeout_seconds": "test_outputs_webhook_timeout_seconds",
    "outputs.webhook.verdicts": "test_outputs_webhook_verdicts",
    "outputs.mqtt.host": "test_outputs_mqtt_host",
    "outputs.mqtt.port": "test_outputs_mqtt_port",
    "outputs.mqtt.topic": "test_outputs_mqtt_topic",
    "outputs.mqtt.client_id": "test_outputs_mqtt_client_id_and_keepalive",
    "outputs.mqtt.keepalive": "test_outputs_mqtt_client_id_and_keepalive",
    "outputs.mqtt.username": "test_outputs_mqtt_credentials",
    "outputs.mqtt.password": "test_outputs_mqtt_credentials",
    "outputs.mqtt.password_file": "test_outputs_mqtt_credentials",
    "outputs.mqtt.spool": "test_outputs_mqtt_spool",
    "outputs.mqtt.verdicts": "test_outputs_mqtt_verdicts",
    "outputs.gpio.pin": "test_outputs_gpio_pin",
    "outputs.gpio.pulse_ms": "test_outputs_gpio_pulse_ms",
    "outputs.gpio.verdicts": "test_outputs_gpio_verdicts",
    "outputs.serial.port": "test_outputs_serial_port",
    "outputs.serial.baud": "test_outputs_serial_baud",
    "outputs.serial.verdicts": "test_outputs_serial_verdicts",
}

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
EVENT = {"item_id": 7, "time": "2026-01-01T00:00:00.000+00:00", "device": "belt.avi", "verdict": "rotten",
         "label": "rottenblue", "confidence": 0.996, "votes": "3/4", "snapshot": None}
THREE = [{**EVENT, "item_id": n, "verdict": v} for n, v in enumerate(("rotten", "fresh", "uncertain"), 1)]

# python -c programs for [outputs.command]: each appends one JSON line to its first argument
RECORD = ("import json, os, sys, time\n"
          "open(sys.argv[1], 'a').write(json.dumps({'argv': sys.argv[2:], 'at': time.time(),"
          " 'pid': os.getpid(), 'env': dict(os.environ)}) + '\\n')\n")
FLAKY = RECORD + "sys.exit(len(open(sys.argv[1]).readlines()) < int(sys.argv[2]))\n"  # fails until try N
SLOW = RECORD + "time.sleep(float(sys.argv[2]))\nopen(sys.argv[1] + '.done', 'w').close()\n"


def toml(value: Any) -> str:
    """A TOML value (strings, numbers, lists of them): JSON's spelling is TOML's for these."""
    return json.dumps(str(value) if isinstance(value, Path) else value)


def settings_from(tmp_path: Path, text: str, name: str = "sorter.toml") -> Settings:
    """TEXT as a config file, read the way every command reads one."""
    path = tmp_path / name
    path.write_text(text)
    return load_settings(path)


def dispatcher_for(settings: Settings) -> Dispatcher:
    """The outputs as `sorter camera` wires them (sorter.camera.serve)."""
    return Dispatcher(build_outputs(settings.outputs), settings.outputs.retries, settings.outputs.retry_seconds)


def fire(settings: Settings, events: list[dict]) -> dict[str, Any]:
    """Publish EVENTS, let them go out (Dispatcher.close waits for them), and the one output's stats."""
    dispatcher = dispatcher_for(settings)
    for event in events:
        dispatcher.publish(event)
    dispatcher.close()
    [stats] = dispatcher.stats().values()
    return stats


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def command(tmp_path: Path, marks: Path, program: str = RECORD, *args: Any, extra: str = "") -> str:
    return (f"[outputs]\nretries = 0\nretry_seconds = 0.05\n[outputs.command]\n"
            f"argv = {toml([PY, '-c', program, str(marks), *map(str, args)])}\n{extra}")


# ---- [outputs]: retries and retry_seconds, through `serve` (the `sorter camera` loop) on a video ----

@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(MODEL, num_threads=1)


def camera_run(tmp_path: Path, classifier: Classifier, outputs: str, tag: str) -> dict[str, Any]:
    """`serve` on two blue frames (one rotten decision) with this [outputs] text; the final status."""
    video = tmp_path / "blue.avi"
    if not video.exists():
        write_video(video, ["blue", "blue"])
    settings = settings_from(tmp_path, f"threads = 1\ndb = {toml(tmp_path / (tag + '.db'))}\n[camera]\n"
                             f"interval_ms = 1\nvotes = 2\nwindow = 2\nsnapshots = {toml(tmp_path / 'snaps')}\n"
                             f"{outputs}", f"{tag}.toml")
    status = serve(str(video), classifier, rules_for(classifier, settings), settings, settings.db,
                   threading.Event())
    assert status["decisions"]["rotten"] == 1
    return status


def test_outputs_retries(tmp_path, classifier):
    """A command that fails its first two tries: retries = 2 delivers on the third, retries = 0 gives up."""
    got = {}
    for retries in (0, 2):
        marks = tmp_path / f"tries-{retries}"
        status = camera_run(tmp_path, classifier, f"[outputs]\nretries = {retries}\nretry_seconds = 0.05\n"
                            f"[outputs.command]\nargv = {toml([PY, '-c', FLAKY, str(marks), '3'])}\n", f"r{retries}")
        [stats] = status["outputs"].values()
        got[retries] = (len(records(marks)), stats["sent"], stats["failed"], stats["retried"])
    assert got == {0: (1, 0, 1, 0), 2: (3, 1, 0, 2)}  # (tries, sent, failed, retried)


def test_outputs_retry_seconds(tmp_path, classifier):
    """The wait before the first retry is retry_seconds (then doubles): 0.05 s against 1.2 s."""
    gaps = {}
    for wait in (0.05, 1.2):
        marks = tmp_path / f"tries-{wait}"
        camera_run(tmp_path, classifier, f"[outputs]\nretries = 1\nretry_seconds = {wait}\n"
                   f"[outputs.command]\nargv = {toml([PY, '-c', FLAKY, str(marks), '2'])}\n", f"w{wait}")
        first, second = records(marks)
        gaps[wait] = second["at"] - first["at"]
    assert gaps[0.05] < 0.9 <= 1.2 <= gaps[1.2] < 3, gaps


# ---- [outputs.command] ----

def test_outputs_command_argv(tmp_path):
    for args in (["belt", "7"], ["--line", "b"]):
        marks = tmp_path / f"argv-{args[0]}"
        stats = fire(settings_from(tmp_path, command(tmp_path, marks, RECORD, *args)), [EVENT])
        assert stats["sent"] == 1 and [r["argv"] for r in records(marks)] == [args]


def test_outputs_command_timeout_seconds(tmp_path):
    """A command still running at timeout_seconds is killed and counts as failed; the default 5 s lets
    the same one-second command finish."""
    marks = tmp_path / "short"
    stats = fire(settings_from(tmp_path, command(tmp_path, marks, SLOW, 1.0, extra="timeout_seconds = 0.5\n")),
                 [EVENT])
    assert (stats["sent"], stats["failed"]) == (0, 1) and "timed out after 0.5 seconds" in stats["last_error"]
    [started] = records(marks)  # it ran, and is gone: killed (and reaped), not left to finish
    with pytest.raises(ProcessLookupError):
        os.kill(started["pid"], 0)
    assert not Path(f"{marks}.done").exists()
    marks = tmp_path / "default"
    stats = fire(settings_from(tmp_path, command(tmp_path, marks, SLOW, 1.0)), [EVENT])
    assert (stats["sent"], stats["failed"]) == (1, 0) and Path(f"{marks}.done").exists()


def test_outputs_command_pass_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BELT_SPEED", "fast")
    monkeypatch.setenv("BELT_TOKEN", "not-for-children")
    seen = {}
    for pass_env in ([], ["BELT_SPEED"]):
        marks = tmp_path / f"env-{len(pass_env)}"
        fire(settings_from(tmp_path, command(tmp_path, marks, extra=f"pass_env = {toml(pass_env)}\n")), [EVENT])
        [rec] = records(marks)
        seen[len(pass_env)] = {k: v for k, v in rec["env"].items() if k.startswith("BELT_")}
        assert rec["env"]["SORTER_VERDICT"] == "rotten"
    assert seen == {0: {}, 1: {"BELT_SPEED": "fast"}}


def test_outputs_command_verdicts(tmp_path):
    fired = {}
    for lines in ("", 'verdicts = ["fresh", "uncertain"]\n'):
        marks = tmp_path / f"v-{len(lines)}"
        fire(settings_from(tmp_path, command(tmp_path, marks, extra=lines)), THREE)
        fired[lines] = sorted(r["env"]["SORTER_VERDICT"] for r in records(marks))
    assert list(fired.values()) == [["fresh", "rotten", "uncertain"], ["fresh", "uncertain"]]


# ---- [outputs.webhook] ----

def webhook(url: str, extra: str = "") -> str:
    return f"[outputs]\nretries = 0\n[outputs.webhook]\nurl = {toml(url)}\n{extra}"


@pytest.fixture
def hooks() -> Iterator[tuple[Hook, Hook]]:
    pair = Hook(), Hook()
    yield pair
    for hook in pair:
        hook.close()


def test_outputs_webhook_url(tmp_path, hooks):
    """The URL picks the receiver; user:password in it is sent as basic auth."""
    a, b = hooks
    assert fire(settings_from(tmp_path, webhook(b.url())), [EVENT])["sent"] == 1
    assert (a.received, b.received) == ([], [(EVENT, None)])
    fire(settings_from(tmp_path, webhook(a.url("op:pw@"))), [EVENT])
    assert a.received == [(EVENT, "Basic b3A6cHc=")] and len(b.received) == 1  # base64("op:pw")


def test_outputs_targets(tmp_path, hooks):
    """[[outputs.targets]]: any number of any type, told apart by `type`: two webhooks (one beside the
    [outputs.webhook] table) and a command, each with its verdicts, each delivering on its own."""
    a, b = hooks
    marks = tmp_path / "marks"
    text = (f'[outputs]\nretries = 0\n[outputs.webhook]\nurl = {toml(a.url())}\nverdicts = ["rotten"]\n'
            f'[[outputs.targets]]\ntype = "webhook"\nurl = {toml(b.url())}\nverdicts = ["fresh", "uncertain"]\n'
            f'[[outputs.targets]]\ntype = "webhook"\nurl = {toml(b.url())}\nverdicts = ["rotten"]\n'
            f'[[outputs.targets]]\ntype = "command"\nargv = {toml([PY, "-c", RECORD, str(marks)])}\n')
    dispatcher = dispatcher_for(settings_from(tmp_path, text))
    for event in THREE:
        dispatcher.publish(event)
    dispatcher.close()
    assert [e["verdict"] for e, _ in a.received] == ["rotten"]
    assert sorted(e["verdict"] for e, _ in b.received) == ["fresh", "rotten", "uncertain"]
    assert len(records(marks)) == 3
    assert list(dispatcher.stats()) == [f"webhook {a.url()}", f"webhook {b.url()}", f"webhook {b.url()} #2",
                                        f"command {PY}"]  # two alike: each its own name (its own deliveries)
    with pytest.raises(ConfigError, match=r"outputs\.targets\.0: Unable to extract tag using discriminator 'type'"):
        settings_from(tmp_path, f'[[outputs.targets]]\nurl = {toml(b.url())}\n', "untyped.toml")


def test_outputs_webhook_token(tmp_path, hooks):
    hook, _ = hooks
    fire(settings_from(tmp_path, webhook(hook.url())), [EVENT])
    fire(settings_from(tmp_path, webhook(hook.url(), 'token = "tok-1"\n')), [EVENT])
    assert [auth for _, auth in hook.received] == [None, "Bearer tok-1"]


def test_outputs_webhook_token_file(tmp_path, hooks):
    hook, _ = hooks
    secret = tmp_path / "hook-token"
    for token in ("from-file-1", "from-file-2"):
        secret.write_text(token + "\n")
        fire(settings_from(tmp_path, webhook(hook.url(), f"token_file = {toml(secret)}\n")), [EVENT])
    assert [auth for _, auth in hook.received] == ["Bearer from-file-1", "Bearer from-file-2"]


class SlowHook:
    """A receiver that answers 200 only after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.received = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                hook.received += 1
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_outputs_webhook_timeout_seconds(tmp_path):
    hook = SlowHook(0.8)
    try:
        short = fire(settings_from(tmp_path, webhook(hook.url, "timeout_seconds = 0.2\n")), [EVENT])
        default = fire(settings_from(tmp_path, webhook(hook.url)), [EVENT])  # 2 s
    finally:
        hook.close()
    assert (short["sent"], short["failed"]) == (0, 1) and "timed out" in short["last_error"]
    assert (default["sent"], default["failed"]) == (1, 0) and hook.received == 2


def test_outputs_webhook_verdicts(tmp_path, hooks):
    everything, rotten = hooks
    fire(settings_from(tmp_path, webhook(everything.url())), THREE)
    fire(settings_from(tmp_path, webhook(rotten.url(), 'verdicts = ["rotten"]\n')), THREE)
    assert sorted(b["verdict"] for b, _ in everything.received) == ["fresh", "rotten", "uncertain"]
    assert [b["verdict"] for b, _ in rotten.received] == ["rotten"]


# ---- [outputs.mqtt], against a real mosquitto ----

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="the mosquitto binary is missing "
                                     "(apt-get install mosquitto; tools/install-test-deps.sh does this)")
CONNECTED = re.compile(r"New client connected from \S+ as (\S+) \(p\d+, c\d+, k(\d+)(?:, u'([^']*)')?\)")


class Mosquitto:
    """A real mosquitto bound to HOST, optionally with one user in a password file; it logs each
    connection (client id, keepalive, user name) to a file the tests read."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", user: tuple[str, str] | None = None):
        self.host, self.port, self.log = host, free_port(), folder / "mosquitto.log"
        conf = [f"listener {self.port} {host}", "persistence false", f"log_dest file {self.log}",
                "log_type all", "connection_messages true",
                f"user {pwd.getpwuid(os.getuid()).pw_name}"]  # as root it would drop to `mosquitto`
        if user is not None:
            passwd = folder / "mosquitto.passwd"
            passwd.write_text(f"{user[0]}:{user[1]}\n")
            tool = shutil.which("mosquitto_passwd", path=os.environ.get("PATH", "") + ":/usr/sbin")
            assert tool, "mosquitto_passwd is missing (it comes with mosquitto)"
            subprocess.run([tool, "-U", str(passwd)], check=True, capture_output=True)  # hash it
            conf += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            conf.append("allow_anonymous true")
        self.conf = folder / "mosquitto-effect.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_for(self._answers, 10, 0.05):
            raise RuntimeError("mosquitto did not start")
        return self

    def _answers(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), 0.2).close()
            return True
        except OSError:
            return False

    def connections(self) -> list[tuple[str, int, str | None]]:
        """(client id, keepalive, user) of every client the broker accepted."""
        text = self.log.read_text() if self.log.exists() else ""
        return [(m[1], int(m[2]), m[3]) for m in CONNECTED.finditer(text)]

    def refused(self) -> int:
        return (self.log.read_text() if self.log.exists() else "").count("not authorised")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """Everything (#) on a broker, as (topic, payload) pairs."""

    def __init__(self, broker: Mosquitto, user: tuple[str, str] | None = None):
        mqtt = pytest.importorskip("paho.mqtt.client")
        self.messages: list[tuple[str, str]] = []
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber")
        if user:
            self.client.username_pw_set(*user)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode()))
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe("#", qos=1)
        self.client.connect(broker.host, broker.port, 10)
        self.client.loop_start()
        assert ready.wait(10), "no SUBACK from mosquitto"

    def verdicts(self) -> list[tuple[str, int]]:
        return [(t, json.loads(p)["item_id"]) for t, p in list(self.messages) if "/verdict/" in t]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def brokers(tmp_path: Path, **kwargs: Any) -> Iterator[tuple[Mosquitto, Subscriber]]:
    broker = Mosquitto(tmp_path, **kwargs).start()
    subscriber = None
    try:
        subscriber = Subscriber(broker, kwargs.get("user"))
        yield broker, subscriber
    finally:
        if subscriber is not None:
            subscriber.close()
        broker.stop()


def mqtt_section(tmp_path: Path, port: int, extra: str = "", spool: str = "spool") -> str:
    return f"[outputs.mqtt]\nport = {port}\nspool = {toml(tmp_path / spool)}\n{extra}"


def mqtt_fire(settings: Settings, events: list[dict], delivered: Callable[[], bool] | None) -> bool:
    """Publish EVENTS through the configured MQTT output; True if it connected and, when DELIVERED is
    given, that came true before the output closed."""
    dispatcher = dispatcher_for(settings)
    try:
        [lane] = dispatcher.lanes
        connected = lane.output.connected.wait(5 if delivered else 1.5)  # type: ignore[attr-defined]
        for event in events:
            dispatcher.publish(event)
        return connected and (delivered is None or wait_for(delivered, 15))
    finally:
        dispatcher.close()


@needs_mosquitto
def test_outputs_mqtt_host(tmp_path):
    """A broker listening on 127.0.0.2 only: reached with host = "127.0.0.2", not with the default."""
    with brokers(tmp_path, host="127.0.0.2") as (broker, sub):
        default = settings_from(tmp_path, mqtt_section(tmp_path, broker.port, spool="spool-default"))
        assert not mqtt_fire(default, [EVENT], None)
        assert len(list((tmp_path / "spool-default").glob("*.json"))) == 1  # kept for later, not sent
        chosen = settings_from(tmp_path, mqtt_section(tmp_path, broker.port, 'host = "127.0.0.2"\n'))
        assert mqtt_fire(chosen, [EVENT], lambda: sub.verdicts() == [("sorter/verdict/rotten", 7)])
    assert len(broker.connections()) == 2  # the subscriber and the host = "127.0.0.2" one


@needs_mosquitto
def test_outputs_mqtt_port(tmp_path):
    with brokers(tmp_path) as (broker, sub):
        elsewhere = settings_from(tmp_path, mqtt_section(tmp_path, free_port(), spool="spool-elsewhere"))
        assert not mqtt_fire(elsewhere, [EVENT], None)
        assert sub.verdicts() == [] and len(list((tmp_path / "spool-elsewhere").glob("*.json"))) == 1
        here = settings_from(tmp_path, mqtt_section(tmp_path, broker.port))
        assert mqtt_fire(here, [EVENT], lambda: sub.verdicts() == [("sorter/verdict/rotten", 7)])


@needs_mosquitto
def test_outputs_mqtt_topic(tmp_path):
    with brokers(tmp_path) as (broker, sub):
        settings = settings_from(tmp_path, mqtt_section(tmp_path, broker.port, 'topic = "plant2/line7"\n'))
        assert mqtt_fire(settings, [EVENT], lambda: sub.verdicts() == [("plant2/line7/verdict/rotten", 7)])
        assert ("plant2/line7/availability", "online") in sub.messages
        settings = settings_from(tmp_path, mqtt_section(tmp_path, broker.port))
        assert mqtt_fire(settings, [EVENT], lambda: sub.verdicts()[-1:] == [("sorter/verdict/rotten", 7)])


@needs_mosquitto
def test_outputs_mqtt_client_id_and_keepalive(tmp_path):
    """The broker's own record of each connection: the id and keepalive the file gave, else the defaults."""
    with brokers(tmp_path) as (broker, _):
        lines = 'client_id = "belt-7"\nkeepalive = 17\n'
        assert mqtt_fire(settings_from(tmp_path, mqtt_section(tmp_path, broker.port, lines)), [], None)
        assert mqtt_fire(settings_from(tmp_path, mqtt_section(tmp_path, broker.port)), [], None)
        wait_for(lambda: len(broker.connections()) == 3, 5)
    subscriber, chosen, default = broker.connections()
    assert subscriber[0] == "test-subscriber" and chosen == ("belt-7", 17, None)
    assert default[0] not in ("belt-7", "") and default[1] == 30  # an id the broker made up; 30 s


CREDENTIALS = {  # config lines → accepted by a broker that knows only sorter:hunter2
    "outputs.mqtt.username": ('username = "intruder"\npassword = "hunter2"\n',
                              'username = "sorter"\npassword = "hunter2"\n'),
    "outputs.mqtt.password": ('username = "sorter"\npassword = "wrong"\n',
                              'username = "sorter"\npassword = "hunter2"\n'),
    "outputs.mqtt.password_file": ('username = "sorter"\npassword_file = "{wrong}"\n',
                                   'username = "sorter"\npassword_file = "{right}"\n'),
}


@needs_mosquitto
@pytest.mark.parametrize("key", list(CREDENTIALS), ids=list(CREDENTIALS))
def test_outputs_mqtt_credentials(tmp_path, key):
    (tmp_path / "wrong").write_text("hunter3\n")
    (tmp_path / "right").write_text("hunter2\n")
    refused, accepted = (t.format(wrong=tmp_path / "wrong", right=tmp_path / "right") for t in CREDENTIALS[key])
    with brokers(tmp_path, user=("sorter", "hunter2")) as (broker, sub):
        bad = settings_from(tmp_path, mqtt_section(tmp_path, broker.port, refused, "spool-refused"))
        assert not mqtt_fire(bad, [EVENT], None)
        assert broker.refused() >= 1 and len(list((tmp_path / "spool-refused").glob("*.json"))) == 1
        good = settings_from(tmp_path, mqtt_section(tmp_path, broker.port, accepted))
        assert mqtt_fire(good, [EVENT], lambda: sub.verdicts() == [("sorter/verdict/rotten", 7)])
    assert [user for _, _, user in broker.connections()] == ["sorter", "sorter"]  # subscriber, output


@needs_mosquitto
def test_outputs_mqtt_spool(tmp_path, monkeypatch):
    """While the broker is down events wait in the configured folder (not the default one), and a
    restarted sorter sends them from there."""
    monkeypatch.chdir(tmp_path)  # where the default, relative `mqtt-spool` would be
    broker = Mosquitto(tmp_path)  # its port chosen, not started yet
    section = f"[outputs.mqtt]\nport = {broker.port}\nspool = {toml(tmp_path / 'belt-spool')}\n"
    down = settings_from(tmp_path, section)
    assert not mqtt_fire(down, THREE, None)
    spooled = [json.loads(p.read_text()) for p in sorted((tmp_path / "belt-spool").glob("*.json"))]
    assert [(s["topic"], s["payload"]["item_id"]) for s in spooled] == [
        ("sorter/verdict/rotten", 1), ("sorter/verdict/fresh", 2), ("sorter/verdict/uncertain", 3)]
    assert not (tmp_path / "mqtt-spool").exists()
    assert not mqtt_fire(settings_from(tmp_path, f"[outputs.mqtt]\nport = {broker.port}\n"), [EVENT], None)
    assert len(list((tmp_path / "mqtt-spool").glob("*.json"))) == 1  # the default folder, for comparison
    broker.start()
    try:
        sub = Subscriber(broker)
        assert mqtt_fire(down, [], lambda: [i for _, i in sub.verdicts()] == [1, 2, 3])
        assert wait_for(lambda: not list((tmp_path / "belt-spool").glob("*.json")), 5)
        sub.close()
    finally:
        broker.stop()


@needs_mosquitto
def test_outputs_mqtt_verdicts(tmp_path):
    """Fresh goes out before rotten when chosen: once rotten has arrived, a fresh one would have too."""
    order = [THREE[1], THREE[0]]  # fresh (2), then rotten (1)
    with brokers(tmp_path) as (broker, sub):
        only = settings_from(tmp_path, mqtt_section(tmp_path, broker.port, 'verdicts = ["rotten"]\n'))
        assert mqtt_fire(only, order, lambda: any(i == 1 for _, i in sub.verdicts()))
        assert sub.verdicts() == [("sorter/verdict/rotten", 1)]
        sub.messages.clear()
        every = settings_from(tmp_path, mqtt_section(tmp_path, broker.port))
        assert mqtt_fire(every, order, lambda: any(i == 1 for _, i in sub.verdicts()))
        assert sub.verdicts() == [("sorter/verdict/fresh", 2), ("sorter/verdict/rotten", 1)]


# ---- [outputs.gpio], on gpiozero's mock pins ----

@pytest.fixture
def pins():
    gpiozero = pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    previous = gpiozero.Device.pin_factory
    gpiozero.Device.pin_factory = factory = MockFactory()
    yield factory
    gpiozero.Device.pin_factory = previous


def pulses(settings: Settings, events: list[dict], factory, numbers: tuple[int, ...]) -> dict[int, list[float]]:
    """Fire EVENTS; how long each pin in NUMBERS was high, pulse by pulse."""
    dispatcher = dispatcher_for(settings)
    watched = {n: factory.pin(n) for n in numbers}
    for pin in watched.values():
        pin.clear_states()
    for event in events:
        dispatcher.publish(event)
    dispatcher.close()
    return {n: [now.timestamp for was, now in zip(pin.states, pin.states[1:], strict=False)
                if was.state and not now.state] for n, pin in watched.items()}


def test_outputs_gpio_pin(tmp_path, pins):
    for pin, other in ((17, 22), (22, 17)):
        got = pulses(settings_from(tmp_path, f"[outputs.gpio]\npin = {pin}\n"), [EVENT], pins, (pin, other))
        assert (len(got[pin]), got[other]) == (1, []), got


def test_outputs_gpio_pulse_ms(tmp_path, pins):
    [[short]] = pulses(settings_from(tmp_path, "[outputs.gpio]\npin = 17\npulse_ms = 40\n"), [EVENT], pins,
                       (17,)).values()
    [[default]] = pulses(settings_from(tmp_path, "[outputs.gpio]\npin = 17\n"), [EVENT], pins, (17,)).values()
    assert 0.04 <= short < 0.19 and 0.2 <= default < 0.5, (short, default)


def test_outputs_gpio_verdicts(tmp_path, pins):
    default = pulses(settings_from(tmp_path, "[outputs.gpio]\npin = 17\npulse_ms = 5\n"), THREE, pins, (17,))
    chosen = pulses(settings_from(tmp_path, '[outputs.gpio]\npin = 17\npulse_ms = 5\nverdicts = ["fresh", '
                                  '"uncertain"]\n'), THREE, pins, (17,))
    assert (len(default[17]), len(chosen[17])) == (1, 2)  # default: rotten only


# ---- [outputs.serial], on real ptys ----

@pytest.fixture
def ptys() -> Iterator[list[tuple[int, int, str]]]:
    """Two ptys as (master, slave, slave's path): the slave is what a USB-serial adapter would be."""
    pytest.importorskip("serial")
    pairs = [os.openpty() for _ in range(2)]
    yield [(m, s, os.ttyname(s)) for m, s in pairs]
    for m, s in pairs:
        os.close(m)
        os.close(s)


def read_lines(master: int, wait: float = 2.0) -> list[str]:
    data = b""
    while select.select([master], [], [], wait)[0]:
        data += os.read(master, 4096)
        wait = 0.2  # after the first bytes, only what follows at once
    return data.decode().splitlines()


def serial_section(port: str, extra: str = "") -> str:
    return f"[outputs]\nretries = 0\n[outputs.serial]\nport = {toml(port)}\n{extra}"


def test_outputs_serial_port(tmp_path, ptys):
    (a, _, a_path), (b, _, b_path) = ptys
    for master, path in ((b, b_path), (a, a_path)):
        assert fire(settings_from(tmp_path, serial_section(path)), [EVENT])["sent"] == 1
        assert read_lines(master) == ["rotten rottenblue 0.996"]
    assert read_lines(a, 0.1) == read_lines(b, 0.1) == []  # each line went to one port only


def test_outputs_serial_baud(tmp_path, ptys):
    import termios

    (master, slave, path), _ = ptys
    speeds = []
    for extra in ("baud = 19200\n", ""):
        fire(settings_from(tmp_path, serial_section(path, extra)), [EVENT])
        assert read_lines(master) == ["rotten rottenblue 0.996"]
        speeds.append(termios.tcgetattr(slave)[5])  # the line speed the port was set to
    assert speeds == [termios.B19200, termios.B9600]


def test_outputs_serial_verdicts(tmp_path, ptys):
    (master, _, path), _ = ptys
    fire(settings_from(tmp_path, serial_section(path)), THREE)
    assert [line.split()[0] for line in read_lines(master)] == ["rotten", "fresh", "uncertain"]
    fire(settings_from(tmp_path, serial_section(path, 'verdicts = ["uncertain"]\n')), THREE)
    assert [line.split()[0] for line in read_lines(master)] == ["uncertain"]


# ---- the table, and the whole way through `sorter camera --config FILE` ----

def test_keys_shown_names_every_outputs_key_and_a_test_here():
    others = set(output_types()) - set(FIRST)  # a later type's keys are shown by its own tests/test_outputs_<type>.py
    assert sorted(KEYS_SHOWN) == sorted(k for k in settings_keys(OutputSettings, "outputs.")
                                        if k.split(".")[1] not in others)
    assert {name for name in KEYS_SHOWN.values() if not callable(globals().get(name))} == set()


@needs_mosquitto
def test_sorter_camera_fires_the_outputs_of_its_config_file(tmp_path, ptys):
    """`sorter camera --config FILE`, nothing else on the command line: a red then a blue item on a
    video file reach the command, the webhook (with its token), MQTT (its topic) and the serial port."""
    video = write_video(tmp_path / "belt.avi", ["red"] * 3 + ["blue"] * 3)
    marks, (master, _, port) = tmp_path / "fired", ptys[0]
    hook, cwd = Hook(), tmp_path / "cwd"
    cwd.mkdir()
    with brokers(tmp_path) as (broker, sub):
        cfg = tmp_path / "sorter.toml"
        cfg.write_text(f"model = {toml(MODEL)}\ndb = {toml(tmp_path / 'cam.db')}\nthreads = 1\n"
                       f"[camera]\ndevice = {toml(video)}\ninterval_ms = 1\nvotes = 2\nwindow = 2\n"
                       f"snapshots = {toml(tmp_path / 'snaps')}\n"
                       f"[outputs]\nretries = 1\nretry_seconds = 0.05\n"
                       f"[outputs.command]\nargv = {toml([PY, '-c', RECORD, str(marks)])}\n"
                       f"[outputs.webhook]\nurl = {toml(hook.url())}\ntoken = \"line7-token\"\n"
                       f"[outputs.serial]\nport = {toml(port)}\nbaud = 19200\n"
                       f"[outputs.mqtt]\nport = {broker.port}\ntopic = \"line7\"\nclient_id = \"line7-cam\"\n"
                       f"spool = {toml(tmp_path / 'spool')}\n")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("SORTER_CONFIG", None)
        try:
            done = subprocess.run([*SORTER, "camera", "--config", str(cfg)], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert "decisions: fresh 1, rotten 1, uncertain 0" in done.stderr
            assert not list((tmp_path / "spool").glob("*.json"))  # all sent before it exited
            assert wait_for(lambda: len(sub.verdicts()) == 2, 5)
        finally:
            hook.close()
    assert [r["env"]["SORTER_VERDICT"] for r in records(marks)] == ["fresh", "rotten"]
    assert [(b["verdict"], auth) for b, auth in hook.received] == [("fresh", "Bearer line7-token"),
                                                                  ("rotten", "Bearer line7-token")]
    assert [line.split()[:2] for line in read_lines(master)] == [["fresh", "freshred"], ["rotten", "rottenblue"]]
    assert [t for t, _ in sub.verdicts()] == ["line7/verdict/fresh", "line7/verdict/rotten"]
    assert "line7-cam" in [cid for cid, _, _ in broker.connections()]


# ---- [outputs] resend_seconds: `sorter watch` sends failed deliveries again while it runs ----

def _resent_within(tmp: Path, resend_seconds: float, wait: float) -> int:
    """A webhook down for the first try and up after it: how many events reach it within `wait` s."""
    from sorter.watch import Watcher
    from tests.watch_helpers import drop, jpeg

    port = free_port()
    cfg = Settings(stable_seconds=0.2, threads=1, outputs={
        "retries": 0, "resend_seconds": resend_seconds,
        "webhook": {"url": f"http://127.0.0.1:{port}/hook", "verdicts": ["rotten"]}})
    clf = Classifier(MODEL, num_threads=1)
    (tmp / "in").mkdir(parents=True)
    drop(tmp / "in", "b.jpg", jpeg("blue"))
    watcher = Watcher(tmp / "in", tmp / "out", tmp / "db.sqlite", clf, rules_for(clf), cfg)
    stop = threading.Event()
    runner = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    runner.start()
    hook = None
    try:
        assert wait_for(lambda: watcher.dispatcher is not None and
                        next(iter(watcher.dispatcher.stats().values()))["failed"] == 1, 15)
        hook = Hook(port)
        wait_for(lambda: len(hook.received) == 1, wait)
        return len(hook.received)
    finally:
        stop.set()
        runner.join(15)
        if hook is not None:
            hook.close()


def test_outputs_resend_seconds(tmp_path):
    """0.3 s: the failed delivery goes out again within 3 s of the receiver's return; 60 s: not yet."""
    assert _resent_within(tmp_path / "quick", 0.3, 3.0) == 1
    assert _resent_within(tmp_path / "slow", 60.0, 2.0) == 0
