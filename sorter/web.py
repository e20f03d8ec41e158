"""The local HTTP servers (/healthz + /metrics; the camera's /trigger + /status): Starlette on uvicorn.

Why not `http.server`: it held one thread per connection with no timeout (1,000 idle connections
were 1,013 threads), read any body it was sent into memory, and printed a raw traceback to stderr
whenever a client went away early. uvicorn serves every connection from one event loop in one
thread per server; what it lacks for a daemon on a shared box is added here:

- a deadline for each request head (uvicorn only times out a connection *after* a response, so a
  client that connects and sends nothing, or one byte a second, would stay for ever);
- a cap on open connections (each costs a file descriptor the daemon needs for its images);
- bounded, timed reading of request bodies (`read_body`);
- endpoints that never raise: a failure is one log line and a 500, never a traceback;
- uvicorn's own lines go through the root logger (our one-line text or JSON format), without
  its start-up chatter.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from uvicorn.protocols.http.h11_impl import H11Protocol

from sorter import threads

log = logging.getLogger("sorter.web")
IDLE_SECONDS = 5  # a connection must send its request head within this, and goes after this idle
BODY_SECONDS = 5.0  # and its body within this
MAX_CONNECTIONS = 64  # open at once; more are closed as they arrive
MAX_HEADER_BYTES = 16 * 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # "Started server process", "Waiting for…"


class BodyError(Exception):
    """A request body that is too large, too slow or malformed; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Refusals:
    """One log line per burst of refused connections (a flood must not flood the journal)."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s, self.count, self._last = every_s, 0, -float("inf")
        self._lock = threading.Lock()

    def note(self, open_now: int) -> None:
        with self._lock:
            self.count += 1
            now = time.monotonic()
            if now - self._last < self.every_s:
                return
            self._last, total = now, self.count
        log.warning("refusing connections: %d open (limit %d); %d refused so far", open_now, MAX_CONNECTIONS, total)


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a request-head deadline and a connection cap."""

    refusals = _Refusals()
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            self.connections.discard(self)
            self.refusals.note(len(self.connections))
            transport.abort()
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        """No (complete) request head in time: close, unless a request is being answered."""
        self._head_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request head arrived: the body has its own deadline
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the next request head on this keep-alive connection has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


async def read_body(request: Request, limit: int, timeout: float = BODY_SECONDS) -> bytes:
    """At most `limit` bytes within `timeout`: a declared or actual larger body is refused unread."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyError(413, f"body over {limit} bytes")

    async def collect() -> bytes:
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise BodyError(413, f"body over {limit} bytes")
        return data

    try:
        return await asyncio.wait_for(collect(), timeout)
    except TimeoutError as exc:
        raise BodyError(408, f"body not sent within {timeout:g} s") from exc
    except ClientDisconnect as exc:
        raise BodyError(400, "client went away while sending its body") from exc


def is_loopback_host(request: Request) -> bool:
    """The Host header names this machine (absent is fine): a DNS-rebinding page sends its own name."""
    host = request.headers.get("host")
    if host is None:
        return True
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_HOSTS


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(name: str, endpoint: Endpoint) -> Endpoint:
    """An endpoint that answers 500 with one log line instead of raising (no traceback in the journal)."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BodyError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        except Exception as exc:
            log.error("%s %s failed: %s: %s", request.method, name, type(exc).__name__, exc)
            return JSONResponse({"error": "internal error (see the daemon's log)"}, 500)

    return run


def _bind(host: str, port: int) -> socket.socket:
    """Bound now, so a port in use is an OSError for the caller to phrase, not a dead thread later."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=MAX_CONNECTIONS)
    sock.set_inheritable(False)
    return sock


class LocalServer:
    """One Starlette app served by uvicorn in a daemon thread; `port` is the bound one (0 = any free)."""

    def __init__(self, routes: Sequence[BaseRoute], host: str, port: int, name: str,
                 exception_handlers: dict[Any, Any] | None = None) -> None:
        self.name = name
        self.socket = _bind(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        app = Starlette(routes=list(routes), exception_handlers=exception_handlers)
        config = uvicorn.Config(app, http=_Protocol, loop="asyncio", lifespan="off", log_config=None,
                                access_log=False, proxy_headers=False, server_header=False,
                                timeout_keep_alive=IDLE_SECONDS, timeout_graceful_shutdown=2,
                                # uvicorn answers 503 at `>=` this; our own cap closes connection 65 already
                                limit_concurrency=MAX_CONNECTIONS + 1,
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        except BaseException as exc:  # uvicorn exits with SystemExit on a failed start
            log.error("%s server stopped: %s: %s", self.name, type(exc).__name__, exc)

    def start(self, timeout: float = 10.0) -> LocalServer:
        """Serve, and return once requests are answered (or the thread has died, logged)."""
        self._thread = threads.start(self._run, self.name)
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def close(self) -> None:
        """Stop accepting, let answers in flight finish (bounded), close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.socket.close()
