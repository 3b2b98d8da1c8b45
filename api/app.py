"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan owns the clients.

Nothing is read or connected at import time: settings are passed in, the city
registries are loaded and one InfluxDB client per city (on that city's own database)
created when the app starts, and the clients (and the live streams' MQTT
subscriptions, opened on a city's first stream client) are closed when it stops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from api import docs as offline_docs
from api import errors, ngsild_errors
from api.apikeys import KeyStore
from api.audit import AuditLog, AuditMiddleware
from api.boardfeed import new_board, start_boards
from api.commandforward import CommandForwarder
from api.commandhop import open_hop
from api.commanding import start_commands, stop_commands
from api.delivery import LedgerIndex
from api.deps import client_of
from api.directory import Directory
from api.federation import local_cities, start_publisher
from api.headers import SecurityHeadersMiddleware
from api.lifecycle import Announcer
from api.limits import BodyLimitMiddleware
from api.live import Hub
from api.metrics import MetricsMiddleware
from api.oidc import OidcProvider
from api.people import CSRF_HEADER
from api.routes import (
    auth,
    commands,
    console,
    devices,
    events,
    export,
    grafana,
    health,
    incidents,
    keys,
    metrics,
    ngsild,
    ngsild_temporal,
    notifications,
    region,
    reports,
    stream,
)
from api.routes import cities as city_routes
from api.security import HEADER, RateLimiter, require
from api.sessions import Sessions
from api.settings import ApiSettings
from api.snapshotcache import SnapshotCache
from api.tenancy import CityRuntime, Tenancy, describe
from api.tiers import REPORTS_KEPT, Kept
from safecity import __version__
from safecity.deadletters import DeadLetterIndex, store_path
from safecity.errors import StorageError
from safecity.influx import InfluxClient
from safecity.registry import Cities, City, load_cities

log = logging.getLogger("safecity.api")

DESCRIPTION = """City-level telemetry of the safecity platform.

Every endpoint except `/healthz` and `/readyz` needs an API key in the `X-API-Key`
header (`safecity apikey create --name me --scopes read`, where `make run` runs or
with its SAFECITY_HOME; `make run` prints a local one), or a person's access token
from the city's identity provider (`Authorization: Bearer <JWT>`: audience and issuer
checked, roles and cities from its claims); the console signs people in (`/auth/login`).
Scopes: `read` < `operate` < `admin`. Errors always have the shape
`{"detail": "<reason>"}`: 401 missing/unknown key or a refused token (expired, wrong
audience or issuer, unknown signing key), 403 missing scope, no role in the token's
claims or no CSRF token, 404 unknown
city/district/device/incident, 409 a lifecycle step the incident's state refuses, 422
invalid or out-of-bounds parameter, 429 rate limited (Retry-After), 502/503 storage
trouble. Every call of an `operate`/`admin` route is written to the audit log.
"""


TAGS: list[dict[str, Any]] = [
    {"name": "cities", "description": "The city, its districts (GeoJSON), overviews and series."},
    {
        "name": "devices",
        "description": "The registry's devices, their status, latest reading, "
        "history and delivery accounting; cursor-paged.",
    },
    {"name": "events", "description": "Stored safe-city detections, newest first; cursor-paged."},
    {
        "name": "incidents",
        "description": "Incidents the alerts service opened and their "
        "lifecycle (acknowledge, dispatch, resolve: scope `operate`); cursor-paged.",
    },
    {
        "name": "export",
        "description": "A series or the events of a window as a CSV or NDJSON "
        "file (streamed, bounded).",
    },
    {
        "name": "reports",
        "description": "The annual air-quality report of a city against the WHO 2021 "
        "guidelines (JSON or CSV), from the rollup tiers.",
    },
    {
        "name": "stream",
        "description": "Live readings, events and alerts as Server-Sent Events, "
        "resumable with `Last-Event-ID`.",
    },
    {
        "name": "region",
        "description": "The cities a key may see side by side (local and federated) "
        "and the corridors' traffic KPIs.",
    },
    {
        "name": "commands",
        "description": "Commands to devices (scope `operate`): to one device or to every "
        "device of a kind in a district, with a status per device; cursor-paged.",
    },
    {
        "name": "notifications",
        "description": "Who was paged for an incident, on which channel, with what outcome; "
        "acknowledgement links.",
    },
    {"name": "keys", "description": "The calling API key and the audit log."},
    {
        "name": "auth",
        "description": "Console sign-in with the city's identity provider (OIDC, "
        "authorization code with PKCE), its session and CSRF token, sign-out.",
    },
    {
        "name": "ngsi-ld",
        "description": "The same data as NGSI-LD entities in the FIWARE Smart Data Models "
        "(read-only; errors as NGSI-LD problem details): docs/ngsi-ld.md.",
    },
    {"name": "health", "description": "Liveness and readiness probes (no key)."},
]


def operation_id(route: APIRoute) -> str:
    """The OpenAPI operationId of a route: its handler's name (unique, snake_case, stable)."""
    return route.name


def _bounded_openapi(app: FastAPI, max_page_size: int) -> None:
    """Publish the server's page-size bound: every `limit` parameter gets its maximum."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema["paths"].values():
                for operation in path.values():
                    for param in operation.get("parameters", []):
                        if param["in"] == "query" and param["name"] == "limit":
                            for branch in param["schema"].get("anyOf", [param["schema"]]):
                                if branch.get("type") == "integer":
                                    branch["maximum"] = max_page_size
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _runtimes(settings: ApiSettings, cities: Cities, base: InfluxClient) -> dict[str, CityRuntime]:
    runtimes: dict[str, CityRuntime] = {}
    for city in cities.values():
        # Each city's own database, over the one connection pool of `base`.
        influx = base.for_city(city.id, cities.ids)
        hub = Hub(
            city,
            settings.mqtt,
            settings.stream_queue_size,
            replay=settings.stream_replay,
            max_per_key=settings.stream_max_per_key,
        )
        board = new_board(city) if settings.overview_board else None
        runtimes[city.id] = CityRuntime(
            city, influx.settings.database, influx, Directory(city), hub, board
        )
    return runtimes


async def _ensure_retention_policies(runtimes: Iterable[CityRuntime]) -> None:
    """The measurement families' retention policies (incidents are written here); the
    database itself is ingest's to create: a missing one stays a 503."""
    for runtime in runtimes:
        try:
            await runtime.influx.ensure_retention_policies()
        except StorageError as exc:
            log.warning("retention policies of %s not ensured: %s", runtime.database, exc)


def _open_stores(app: FastAPI, settings: ApiSettings) -> OidcProvider | None:
    """Keys, rate limits, caches, delivery indexes and the identity provider on
    `app.state`; return the provider (None without one), which the lifespan closes."""
    app.state.keys = KeyStore(settings.api_keys_file)
    app.state.sessions = Sessions(settings.sessions_file, settings.oidc.session_ttl)
    app.state.keys.load()
    app.state.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
    app.state.snapshots = SnapshotCache(settings.overview_cache_ttl)
    app.state.reports = Kept(REPORTS_KEPT)  # annual reports served wholly by rollup tiers
    app.state.deadletters = DeadLetterIndex(store_path(settings.deadletter_dir))
    app.state.ledger = (
        LedgerIndex(settings.ledger_file) if settings.ledger_file is not None else None
    )
    oidc = app.state.oidc = OidcProvider(settings.oidc) if settings.oidc.issuer else None
    # The command hop: a replica signs the callers it passes on, the owner checks them.
    app.state.hop_key, app.state.hop_verifier = open_hop(settings)
    return oidc


def _load(settings: ApiSettings, city: City | None, cities: Cities | None) -> Cities:
    """The cities to serve: those given, else the registry of the settings."""
    if cities is not None:
        return cities
    if city is not None:
        return Cities((city,))
    return load_cities(settings.registry)


def _install_cities(
    app: FastAPI, settings: ApiSettings, loaded: Cities, base: InfluxClient
) -> dict[str, CityRuntime]:
    """Each city's runtime under `app.state.tenancy`; the home city's also by old names."""
    runtimes = _runtimes(settings, loaded, base)
    tenancy = app.state.tenancy = Tenancy(runtimes)
    home = runtimes[tenancy.home]
    # The home city's objects keep their old names: one city, as it always was.
    app.state.cities = loaded
    app.state.city = home.city
    app.state.directory = home.directory
    app.state.influx = home.influx
    app.state.hub = home.hub
    app.state.incident_lock = asyncio.Lock()
    return runtimes


def _log_started(app: FastAPI, settings: ApiSettings, loaded: Cities) -> None:
    tenancy: Tenancy = app.state.tenancy
    home = tenancy.runtimes[tenancy.home]
    log.info(
        "api started",
        extra={
            "city": home.city.id,
            "cities": describe(tenancy),
            "devices": sum(len(c.devices) for c in loaded.values()),
            "influx_url": settings.influx.url,
            "database": home.database,
            "api_keys": len(app.state.keys.records()),
            "env": settings.env,
            "audit_log": str(settings.audit_log_file),
            "oidc_issuer": settings.oidc.issuer,
        },
    )


def _lifespan(
    settings: ApiSettings, city: City | None, cities: Cities | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: load the cities, open the clients and tasks; close them all."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = _load(settings, city, cities)
        base = InfluxClient(settings.influx)
        runtimes = _install_cities(app, settings, loaded, base)
        await _ensure_retention_policies(runtimes.values())
        oidc = _open_stores(app, settings)
        _log_started(app, settings, loaded)
        figures = app.state.figures = metrics.start_incident_figures(app)
        federation = owned = boards = None
        try:  # what started is stopped below, even if what starts after it fails
            app.state.announcer.start()  # with the steps a previous run left unannounced
            boards = start_boards(settings, runtimes.values())
            # Off by default: publishes the city's indicators for a regional instance.
            federation = app.state.federation = start_publisher(settings, local_cities(app))
            # The command store and session belong to one process (commands.url: another's).
            if settings.commands.url is None:
                owned = start_commands(settings, loaded, lambda c: client_of(app, c))
                app.state.commands, app.state.command_service = owned
            # What is loaded by now (registries, models, clients) lives as long as the app:
            # left in the collector's generations, every full collection walked all of it
            # again, a 100+ ms pause in the p99 of every endpoint (benchmarks/README.md).
            gc.freeze()
            yield
        finally:
            gc.unfreeze()
            if owned is not None:
                await stop_commands(*owned)
            if federation is not None:
                await federation.stop()
            if boards is not None:
                await boards.stop()
            await asyncio.gather(figures.stop(), app.state.announcer.stop())
            if oidc is not None:
                await oidc.close()
            for runtime in runtimes.values():
                await runtime.hub.stop()
            await base.close()
            app.state.sessions.close_store()
            log.info("api stopped")

    return lifespan


def _add_middleware(app: FastAPI, settings: ApiSettings) -> None:
    """Body limit, CORS, audit, metrics and, outermost, the security headers."""
    if settings.commands.url is not None:
        app.add_middleware(CommandForwarder, url=settings.commands.url)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=[HEADER, CSRF_HEADER, "Authorization", "Content-Type"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
    app.add_middleware(AuditMiddleware, audit=app.state.audit)
    app.add_middleware(MetricsMiddleware)
    # Outermost: every response, the 413s and CORS answers included, gets the headers.
    app.add_middleware(SecurityHeadersMiddleware)


def _include_docs(app: FastAPI, production: bool) -> None:
    """The offline docs pages; in production none, and the OpenAPI document only for a key."""
    if not production:
        app.include_router(offline_docs.router_for(app))
        return

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require("read"))])
    async def openapi() -> dict[str, Any]:
        return app.openapi()


def _include_data_routers(app: FastAPI) -> None:
    """The data routes: a `read` key for the routers below, their own check for the rest."""
    read = [Depends(require("read"))]
    app.include_router(metrics.router, dependencies=[Depends(require("operate"))])
    app.include_router(city_routes.router, dependencies=read)
    app.include_router(devices.router, dependencies=read)
    app.include_router(events.router, dependencies=read)
    app.include_router(events.delivery_router)
    app.include_router(export.router, dependencies=read)
    app.include_router(reports.router, dependencies=read)
    app.include_router(incidents.router, dependencies=read)
    app.include_router(notifications.router, dependencies=read)
    # Acknowledgement links carry their own credential (a signed, single-use token).
    app.include_router(notifications.ack_router)
    # Lifecycle steps need `operate` (each handler takes the key: `by` is its id).
    app.include_router(incidents.operate_router)
    # Grafana's contact point: an `operate` key as a bearer token (see dashboards/).
    app.include_router(grafana.router)
    app.include_router(keys.router)
    # Sign-in with the identity provider: the console's session (no key: it makes one).
    app.include_router(auth.router)
    app.include_router(stream.router, dependencies=read)
    app.include_router(region.router, dependencies=read)
    # NGSI-LD beside /v1: the same keys, cities and limits; its @context needs no key.
    app.include_router(ngsild.router, dependencies=read)
    app.include_router(ngsild_temporal.router, dependencies=read)
    app.include_router(ngsild.context_router)
    # Commands to devices: every route needs `operate` (each handler takes the key).
    app.include_router(commands.router)
    # The console's page and assets hold no data: no key (its data calls need one).
    app.include_router(console.router)


def create_app(
    settings: ApiSettings, city: City | None = None, cities: Cities | None = None
) -> FastAPI:
    """Build the API app; `city` (one) or `cities` (several) override loading
    `settings.registry` at start-up."""
    production = settings.env == "production"
    # The docs pages are our own (offline assets, `api.docs`), never FastAPI's CDN ones.
    docs: dict[str, Any] = {"docs_url": None, "redoc_url": None}
    if production:
        docs["openapi_url"] = None
    app = FastAPI(
        title="safecity API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan(settings, city, cities),
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
        **docs,
    )
    _bounded_openapi(app, settings.max_page_size)
    app.state.settings = settings
    app.state.audit = AuditLog(settings.audit_log_file)
    # The lifecycle steps taken here, to the broker through a durable outbox.
    app.state.announcer = Announcer(settings.mqtt, settings.steps_outbox_file)
    app.state.oidc = None
    app.state.hop_key = app.state.hop_verifier = None
    errors.install(app)
    ngsild_errors.install(app)
    _add_middleware(app, settings)
    app.include_router(health.router)
    _include_docs(app, production)
    _include_data_routers(app)
    return app
