"""Prometheus metrics of the API and the ASGI middleware that records them.

Metrics live in the process-wide default registry (one per process, as Prometheus
expects), so they are created once here, not per app. Labels use the route
*template* (`/v1/devices/{device_id}`), never the raw path, to bound cardinality.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "safecity_api_requests_total",
    "HTTP requests served by the API, by method, route template and status code.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "safecity_api_request_seconds",
    "Time to serve an HTTP request, by route template.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: Scope) -> str:
    """The route template the router matched for this request, or `<unmatched>`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Counts requests and times them; a pure ASGI middleware (streaming-safe)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request through the app and record its status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            method = scope.get("method", "")
            route = route_label(scope)
            REQUESTS.labels(method if method in _METHODS else "OTHER", route, str(status)).inc()
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - start)
