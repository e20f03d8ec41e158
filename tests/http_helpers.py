"""Raw-socket clients for the local HTTP servers: idle, slow, early-leaving and malformed ones."""

from __future__ import annotations

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def reset(sock: socket.socket) -> None:
    """Leave abruptly: SO_LINGER 0 makes close() send a RST, as a crashed or impatient client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Block (up to the socket's timeout) until the server closes; True if it did, False on timeout."""
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes or the timeout; (status, headers, body)."""
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < _expected(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _expected(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(data) + 1 if b"\r\n\r\n" not in data else len(data)


def post(port: int, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One POST over a fresh connection; (status, JSON body)."""
    fields = {"Host": f"127.0.0.1:{port}", "Content-Length": str(len(body)), "Connection": "close",
              **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    status, _, data = exchange(port, f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
    try:
        return status, json.loads(data or b"null")
    except ValueError:
        return status, {"raw": data.decode(errors="replace")}


class Hook:
    """A webhook receiver on loopback that records each body and its Authorization header."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[tuple[dict, str | None]] = []
        self.headers: list[dict[str, str]] = []  # each request's headers, in the order received
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.received.append((body, self.headers.get("Authorization")))
                hook.headers.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
