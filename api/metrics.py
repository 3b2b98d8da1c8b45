"""Prometheus metrics of the API and the ASGI middleware that records them.

Metrics live in the process-wide default registry (one per process, as Prometheus
expects), so they are created once here, not per app. Labels use the route
*template* (`/v1/devices/{device_id}`), never the raw path, to bound cardinality.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safecity import incidents as inc

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

# The overview's moving window in memory (api/boardfeed.py), per city.
BOARD_READY = Gauge(
    "safecity_api_board_ready",
    "1 while the city's board is seeded and serves the moving overview (0: read InfluxDB).",
    ["city"],
)
BOARD_POINTS = Counter(
    "safecity_api_board_points_total",
    "Announced points of written readings and statuses the city's board took.",
    ["city"],
)
BOARD_REFUSED = Counter(
    "safecity_api_board_refused_total",
    "Messages on a _stored topic the board could not read (logged; nothing taken from them).",
)
BOARD_SEEDS = Counter(
    "safecity_api_board_seeds_total",
    "Seeds of the city's board from InfluxDB (one at start, one after each reconnection).",
    ["city"],
)
BOARD_SEED_SECONDS = Gauge(
    "safecity_api_board_seed_seconds", "How long the city's last board seed took.", ["city"]
)

# Incident response times (safecity.incidents.figures), refreshed in the background
# (IncidentFigures, every FIGURES_REFRESH_S) from the incidents opened in the last
# FIGURES window, never by a scrape; and, as histograms, each step taken through this
# API (labels: rule = the incident type, district).
INCIDENTS = Gauge(
    "safecity_api_incidents",
    "Incidents opened in the figures window, by current state.",
    ["state"],
)
TTA = Gauge(
    "safecity_api_incident_time_to_acknowledge_seconds",
    "Time from opening to first acknowledgement, by type (rule), district and stat.",
    ["rule", "district", "stat"],
)
TTR = Gauge(
    "safecity_api_incident_time_to_resolve_seconds",
    "Time from opening to resolution, by type (rule), district and stat.",
    ["rule", "district", "stat"],
)
FIGURES_REFRESHED = Gauge(
    "safecity_api_incident_figures_refreshed_timestamp_seconds",
    "When the incident figures were last recomputed from storage (0 = not yet).",
)
FIGURES_REFRESH_FAILURES = Counter(
    "safecity_api_incident_figures_refresh_failures_total",
    "Background refreshes of the incident figures that failed (the last figures are kept).",
)
_RESPONSE_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
ACK_SECONDS = Histogram(
    "safecity_api_incident_acknowledge_seconds",
    "Time to acknowledge of incidents acknowledged through this API.",
    ["rule", "district"],
    buckets=_RESPONSE_BUCKETS,
)
RESOLVE_SECONDS = Histogram(
    "safecity_api_incident_resolve_seconds",
    "Time to resolve of incidents resolved through this API.",
    ["rule", "district"],
    buckets=_RESPONSE_BUCKETS,
)


def set_incident_figures(incidents: Iterable[inc.Incident]) -> None:
    """Replace the incident gauges with the figures of these incidents."""
    stored = list(incidents)
    counts = dict.fromkeys((s.value for s in inc.State), 0)
    for incident in stored:
        counts[incident.state.value] += 1
    for state, count in counts.items():
        INCIDENTS.labels(state=state).set(count)
    TTA.clear()
    TTR.clear()
    for fig in inc.figures(stored):
        for stat, tta, ttr in (
            ("mean", fig.tta_mean, fig.ttr_mean),
            ("median", fig.tta_median, fig.ttr_median),
            ("max", fig.tta_max, fig.ttr_max),
        ):
            if tta is not None:
                TTA.labels(fig.rule_id, fig.district, stat).set(tta)
            if ttr is not None:
                TTR.labels(fig.rule_id, fig.district, stat).set(ttr)


log = logging.getLogger("safecity.api")
# The figures span 30 days: a minute of staleness is invisible in them, and storage is
# asked once a minute whatever the scrape rate.
FIGURES_REFRESH_S = 60.0


class IncidentFigures:
    """Recomputes the incident gauges in the background, so a scrape never queries storage.

    `refresh` reads storage and sets the gauges (False or an exception keeps the last
    ones); it runs at start, every `interval` seconds, and soon after a `poke` (an
    incident changed through this API), until `stop`.
    """

    def __init__(
        self, refresh: Callable[[], Awaitable[bool]], interval: float | None = None
    ) -> None:
        self._refresh = refresh
        self.interval = FIGURES_REFRESH_S if interval is None else interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Ask for a refresh now rather than at the next interval."""
        self._wake.set()

    def start(self) -> None:
        """Start the refresh loop on the running event loop."""
        self._task = asyncio.create_task(self._run(), name="safecity-api-incident-figures")

    async def _run(self) -> None:
        while True:
            try:
                ok = await self._refresh()
            except Exception:  # a refresh bug must not end the loop: log, count, retry
                log.exception("incident figures refresh failed")
                ok = False
            if ok:
                FIGURES_REFRESHED.set(time.time())
            else:
                FIGURES_REFRESH_FAILURES.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def stop(self) -> None:
        """Stop the refresh loop; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def observe_step(incident: inc.Incident, state: inc.State) -> None:
    """Record the response time of a step just taken through the API."""
    labels = (incident.rule_id, incident.district)
    if state is inc.State.ACKNOWLEDGED and incident.time_to_acknowledge is not None:
        ACK_SECONDS.labels(*labels).observe(max(0.0, incident.time_to_acknowledge))
    if state is inc.State.RESOLVED and incident.time_to_resolve is not None:
        RESOLVE_SECONDS.labels(*labels).observe(max(0.0, incident.time_to_resolve))


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
