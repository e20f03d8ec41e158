"""The camera's control port on 127.0.0.1: `POST /trigger` pulses the line trigger, `GET /status`.

Why the rules on POST: any web page the operator's browser opens can send a "simple" cross-site
POST (text/plain, a form) to a loopback port, and a DNS-rebinding page can even read answers. So
a trigger must say `Content-Type: application/json` (a browser sends that cross-site only after a
CORS preflight, which this server never grants), must come with a loopback Host (and Origin, if
any), and its body is at most `MAX_BODY` bytes of JSON (or empty). The trigger's queue is bounded
(`LineTrigger.max_pending`): a flood is answered 429, not turned into hundreds of decisions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sorter.web import LOOPBACK_HOSTS, BodyError, LocalServer, guarded, is_loopback_host, read_body

if TYPE_CHECKING:
    from sorter.triggers import LineTrigger

log = logging.getLogger("sorter.camera")
MAX_BODY = 1024
USAGE = {"error": "POST /trigger (Content-Type: application/json), GET /status"}


def _foreign(request: Request) -> str | None:
    """Why this request may come from a web page rather than a local client, or None."""
    if not is_loopback_host(request):
        return f"Host {request.headers.get('host')!r} is not this machine"
    origin = request.headers.get("origin")
    if origin is not None and (urlsplit(origin).hostname or origin) not in LOOPBACK_HOSTS:
        return f"Origin {origin!r} is not this machine"
    return None


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == "application/json"


def control_routes(trigger: LineTrigger | None, status: Callable[[], dict[str, Any]]) -> list[Route]:
    async def pulse(request: Request) -> Response:
        if (why := _foreign(request)) is not None:
            log.warning("control port: refused POST /trigger: %s", why)
            return JSONResponse({"error": why}, 403)
        if not _is_json(request):
            return JSONResponse({"error": "POST /trigger needs Content-Type: application/json"}, 415)
        body = await read_body(request, MAX_BODY)
        if body.strip():
            try:
                json.loads(body)
            except ValueError as exc:
                raise BodyError(400, f"body is not JSON: {exc}") from exc
        if trigger is None:
            return JSONResponse({"error": "trigger mode is not 'line'"}, 409)
        if not trigger.pulse("http"):
            return JSONResponse({"error": f"{trigger.max_pending} triggers already waiting"}, 429)
        return JSONResponse({"queued": True, "pending": trigger.pending}, 202)

    async def get_status(request: Request) -> Response:
        if (why := _foreign(request)) is not None:
            return JSONResponse({"error": why}, 403)
        return JSONResponse(status())

    return [Route("/trigger", guarded("/trigger", pulse), methods=["POST"]),
            Route("/status", guarded("/status", get_status), methods=["GET"])]


async def _usage(request: Request, exc: Exception) -> Response:
    return JSONResponse(USAGE, getattr(exc, "status_code", 404))


class ControlServer(LocalServer):
    """127.0.0.1 only: `POST /trigger` pulses the line trigger, `GET /status` returns JSON."""

    def __init__(self, port: int, trigger: LineTrigger | None, status: Callable[[], dict[str, Any]]):
        super().__init__(control_routes(trigger, status), "127.0.0.1", port, "control",
                         exception_handlers={404: _usage, 405: _usage})

    def start(self, timeout: float = 10.0) -> ControlServer:
        super().start(timeout)
        log.info("control port: http://127.0.0.1:%d (POST /trigger, GET /status)", self.port)
        return self
