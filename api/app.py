"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan owns the clients.

Nothing is read or connected at import time: settings are passed in, the city
registry is loaded and the InfluxDB client created when the app starts, and the
client is closed when it stops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.directory import Directory
from api.metrics import MetricsMiddleware
from api.routes import devices, health, metrics
from safecity import __version__
from safecity.influx import InfluxClient
from safecity.registry import City, load_or_default
from safecity.settings import ApiSettings

log = logging.getLogger("safecity.api")


def create_app(settings: ApiSettings, city: City | None = None) -> FastAPI:
    """Build the API app; `city` overrides loading `settings.registry` at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = city if city is not None else load_or_default(settings.registry)
        influx = InfluxClient(settings.influx)
        app.state.city = loaded
        app.state.directory = Directory(loaded)
        app.state.influx = influx
        log.info(
            "api started",
            extra={
                "city": loaded.id,
                "devices": len(loaded.devices),
                "influx_url": settings.influx.url,
                "database": settings.influx.database,
            },
        )
        try:
            yield
        finally:
            await influx.close()
            log.info("api stopped")

    app = FastAPI(
        title="safecity API",
        version=__version__,
        description="City-level telemetry of the safecity platform.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(MetricsMiddleware)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(devices.router)
    return app
