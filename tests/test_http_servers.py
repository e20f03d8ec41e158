"""The local HTTP servers under attack: cross-site POSTs, huge and bad bodies, trigger floods, idle,
slow and early-leaving clients. Real servers on loopback, real sockets and real HTTP clients."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sorter.control import ControlServer
from sorter.metrics import MetricsServer, Telemetry
from sorter.triggers import LineTrigger
from tests.http_helpers import closed_by_server, connect, exchange, post, reset

pytestmark = pytest.mark.timeout(60)
JSON = {"Content-Type": "application/json"}
FRAME = np.zeros((4, 4, 3), np.uint8)


@pytest.fixture
def control():
    trigger = LineTrigger()
    server = ControlServer(0, trigger, lambda: {"state": "online"}).start()
    yield server, trigger
    server.close()


def fired(trigger: LineTrigger) -> int:
    n = 0
    while trigger.fire(FRAME, 0):
        n += 1
    return n


def test_a_web_page_cannot_trigger_the_diverter(control):
    server, trigger = control
    port = server.port
    # what any page the operator opens may send cross-site without a CORS preflight
    assert post(port, "/trigger", b"x", {"Content-Type": "text/plain"})[0] == 415
    assert post(port, "/trigger", b"a=1", {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert post(port, "/trigger")[0] == 415  # no content type at all
    # a DNS-rebinding page (its own host name) or a foreign origin, even with the right type
    assert post(port, "/trigger", b"{}", {**JSON, "Host": "evil.example:80"})[0] == 403
    assert post(port, "/trigger", b"{}", {**JSON, "Origin": "https://evil.example"})[0] == 403
    assert post(port, "/trigger", b"not json", JSON)[0] == 400
    assert fired(trigger) == 0
    status, body = post(port, "/trigger", b'{"source": "plc"}', {**JSON, "Origin": f"http://127.0.0.1:{port}"})
    assert (status, body["queued"]) == (202, True)
    assert post(port, "/trigger", b"", {"Content-Type": "application/json; charset=utf-8"})[0] == 202
    assert fired(trigger) == 2


def test_bodies_are_bounded_and_read_with_a_deadline(control):
    server, trigger = control
    # 200 MB announced: refused at once, unread (the old server read it all into memory)
    head = (f"POST /trigger HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {200_000_000}\r\n\r\n").encode()
    status, _, body = exchange(server.port, head + b"{" * 1000)
    assert status == 413 and b"over 1024 bytes" in body
    # chunked, no length announced: counted while read
    chunk = b"{" * 4000
    chunked = (b"POST /trigger HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    assert exchange(server.port, chunked)[0] == 413
    assert fired(trigger) == 0


def test_content_length_minus_one_is_a_clear_400_not_a_hang(control):
    server, trigger = control
    raw = b"POST /trigger HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n"
    assert exchange(server.port, raw)[0] == 400
    assert fired(trigger) == 0
    metrics = MetricsServer(Telemetry("watch")).start()
    try:
        assert exchange(metrics.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")[0] == 400
    finally:
        metrics.close()


def test_a_trigger_flood_is_bounded(control):
    server, trigger = control
    answers = [post(server.port, "/trigger", b"{}", JSON)[0] for _ in range(30)]
    queued = answers.count(202)
    assert fired(trigger) == queued < 30  # 30 POSTs are not 30 decisions (the old server: 30)
    assert answers == [202] * trigger.max_pending + [429] * (30 - trigger.max_pending)
    assert (trigger.received, trigger.refused) == (trigger.max_pending, 30 - trigger.max_pending)
    assert post(server.port, "/trigger", b"{}", JSON)[0] == 202  # room again once windows opened


def test_wrong_paths_and_methods_answer_json_and_status_refuses_rebinding(control):
    server, _ = control
    status, _, body = exchange(server.port, b"GET /trigger HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 405 and "POST /trigger" in json.loads(body)["error"]
    status, _, body = exchange(server.port, b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 404 and "GET /status" in json.loads(body)["error"]
    status, _, _ = exchange(server.port, b"GET /status HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert status == 403


def test_a_failing_status_is_one_log_line_and_a_500(caplog):
    def broken() -> dict:
        raise RuntimeError("writer gone")

    server = ControlServer(0, None, broken).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/status", timeout=5) as resp:
            raise AssertionError(f"answered {resp.status}")
    except urllib.error.HTTPError as exc:
        assert exc.code == 500 and "internal error" in json.loads(exc.read())["error"]
    finally:
        server.close()
    problems = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert [r.getMessage() for r in problems] == ["GET /status failed: RuntimeError: writer gone"]
    assert problems[0].exc_info is None  # no traceback for a known failure


def test_idle_connections_cost_no_thread_and_are_capped():
    metrics = MetricsServer(Telemetry("watch")).start()
    try:
        before = threading.active_count()
        idle = [connect(metrics.port) for _ in range(63)]
        status, _, _ = exchange(metrics.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 200  # the 64th connection is still answered
        assert threading.active_count() == before  # the old server: one thread each (63 more)
        extra = [connect(metrics.port) for _ in range(30)]  # past the 64 open connections allowed
        assert sum(closed_by_server(s) for s in extra) >= 28  # (the 64th slot may be free again)
        for sock in idle + extra:
            sock.close()
    finally:
        metrics.close()


def test_silent_and_slow_clients_are_disconnected(control):
    server, _ = control
    silent = connect(server.port, timeout=30)  # connects, never sends a byte
    slow = connect(server.port, timeout=30)
    slow.sendall(b"GET /status HTTP/1.1\r\n")  # starts a request head, never finishes it
    kept = connect(server.port, timeout=30)
    kept.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive: a response, then idle
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    assert closed_by_server(silent) and closed_by_server(slow) and closed_by_server(kept)
    for sock in (silent, slow, kept):
        sock.close()


SERVE = """
import sys
from sorter.logs import setup
setup("json")
from sorter.metrics import MetricsServer, Telemetry
from sorter.triggers import LineTrigger
from sorter.control import ControlServer
metrics = MetricsServer(Telemetry("watch")).start()
control = ControlServer(0, LineTrigger(), lambda: {"state": "online"}).start()
print(metrics.port, control.port, flush=True)
sys.stdin.read()
control.close()
metrics.close()
"""


def test_early_disconnects_print_no_traceback_and_logs_stay_json(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path.cwd())
    try:
        metrics_port, control_port = map(int, proc.stdout.readline().split())
        for port in (metrics_port, control_port):
            sock = connect(port)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a head, then gone
            reset(sock)
            sock = connect(port)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # a request, gone before the answer
            reset(sock)
        sock = connect(control_port)
        sock.sendall(b"POST /trigger HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")  # gone halfway through the body
        reset(sock)
        bad = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n"
        answers = [exchange(control_port, bad)[0],  # one malformed request: a 400 and one line
                   exchange(metrics_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0]]
    finally:
        _, err = proc.communicate("", timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    entries = [json.loads(line) for line in err.splitlines()]  # every line one JSON object
    assert not [e for e in entries if "exc" in e]
    assert len([e for e in entries if e["level"] in ("WARNING", "ERROR")]) == 1, err
    assert answers == [400, 503]
