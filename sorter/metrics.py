"""Health and Prometheus metrics on a local HTTP port, fed by small hooks in watch and camera.

Own registry (never the process-global one): two sorters in one test process, or a library
user with their own metrics, never collide. The server (sorter.web: uvicorn in a daemon thread)
never touches the pipeline's locks when scraped, only counters and a few plain attributes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sorter.web import LocalServer, guarded

log = logging.getLogger("sorter.metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ItemListener = Callable[[str | None, str | None, str | None], None]


def error_reason(error: str) -> str:
    """'too-large: 3 bytes' → 'too-large': a bounded label set, not one series per file."""
    return error.split(":", 1)[0].strip()[:40] or "unknown"


class Telemetry:
    """Counters for one sorter process plus the state /healthz reports."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.registry = CollectorRegistry(auto_describe=True)
        self.items = Counter("sorter_items", "Items decided, by verdict and label.", ["verdict", "label"],
                             registry=self.registry)
        self.errors = Counter("sorter_errors", "Items or frames that failed, by reason.", ["reason"],
                              registry=self.registry)
        self.latency = Histogram("sorter_inference_seconds", "Model time per batch (watch) or frame (camera).",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("sorter_queue_depth", "Items or frames waiting for the model.",
                                 registry=self.registry)
        self.dropped = Counter("sorter_dropped_frames", "Camera frames dropped because inference lagged.",
                               registry=self.registry)
        self.reconnects = Counter("sorter_camera_reconnects", "Camera reconnections.", registry=self.registry)
        self.up = Gauge("sorter_ready", "1 when the pipeline is ready.", registry=self.registry)
        self.ready = False
        self.model_loaded = False
        self.camera_online: bool | None = None  # None: no camera in this process
        self.last_item: float | None = None
        self.listeners: list[ItemListener] = []
        self._dropped_seen = 0

    def set_ready(self, ready: bool = True) -> None:
        self.ready = ready
        self.up.set(1 if ready else 0)

    def item(self, verdict: str | None, label: str | None, error: str | None = None) -> None:
        """One decided item (verdict+label) or one failed item (error)."""
        if error:
            self.errors.labels(reason=error_reason(error)).inc()
        if verdict:
            self.items.labels(verdict=verdict, label=label or "none").inc()
        self.last_item = time.time()
        for listener in self.listeners:
            try:
                listener(verdict, label, error)
            except Exception:  # a broken publisher must not stop sorting
                log.exception("item listener failed")

    def batch(self, items: list[Any]) -> None:
        """Hook for `sorter watch`: a routed batch of Items (the model's time is `latency`)."""
        for it in items:
            self.item(it.verdict, it.label, it.error)

    def camera_event(self, event: str) -> None:
        self.camera_online = event in ("online", "reconnect")
        if event == "reconnect":
            self.reconnects.inc()

    def dropped_total(self, total: int) -> None:
        """The capture queue keeps a running total; the counter follows it."""
        if total > self._dropped_seen:
            self.dropped.inc(total - self._dropped_seen)
            self._dropped_seen = total

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.ready and self.model_loaded and self.camera_online is not False
        last = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_item)) if self.last_item else None
        return ok, {"ready": self.ready, "model_loaded": self.model_loaded, "camera_online": self.camera_online,
                    "last_item_time": last, "source": self.source}


def metrics_routes(telemetry: Telemetry) -> list[Route]:
    """GET /metrics (Prometheus text) and GET /healthz (JSON; 503 until ready)."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(telemetry.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: Request) -> Response:
        ok, body = telemetry.health()
        return JSONResponse(body, 200 if ok else 503)

    return [Route("/metrics", guarded("/metrics", metrics), methods=["GET"]),
            Route("/healthz", guarded("/healthz", healthz), methods=["GET"])]


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("not found: try /healthz or /metrics\n", 404)


class MetricsServer(LocalServer):
    """`/healthz` and `/metrics` on host:port (port 0 = any free one; see `.port`)."""

    def __init__(self, telemetry: Telemetry, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(metrics_routes(telemetry), host, port, "metrics", exception_handlers={404: _not_found})

    def start(self, timeout: float = 10.0) -> MetricsServer:
        super().start(timeout)
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)
        return self
