"""Prometheus exposition of the process's default registry; the incident figures behind it
are refreshed in the background (api.metrics.IncidentFigures), never by a scrape."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from api import metrics as api_metrics
from api.deps import client_of
from api.params import TimeRange, now
from api.settings import ApiSettings
from api.tenancy import Tenancy
from safecity import incidents as inc
from safecity.errors import StorageError

router = APIRouter(tags=["metrics"])
log = logging.getLogger("safecity.api")
FIGURES_WINDOW = timedelta(days=30)


async def refresh_incident_figures(app: FastAPI) -> bool:
    """Recompute the incident gauges from the incidents opened in the figures window."""
    settings: ApiSettings = app.state.settings
    tenancy: Tenancy = app.state.tenancy
    end = now()
    window = TimeRange(end - min(FIGURES_WINDOW, timedelta(seconds=settings.max_range)), end)
    found: list[inc.Incident] = []
    try:
        for city in tenancy.cities:
            influx = client_of(app, city.id)
            stored = await inc.IncidentStore(influx).query(city.id, window.start, window.end)
            found.extend(stored.values())
    except StorageError as exc:
        # The request metrics still matter when storage is away: keep the last figures.
        log.warning("incident figures not refreshed: %s", exc)
        return False
    # Every served city's incidents together: district ids are the cities' own.
    api_metrics.set_incident_figures(found)
    return True


def start_incident_figures(app: FastAPI) -> api_metrics.IncidentFigures:
    """Start refreshing the incident figures of this app in the background."""
    figures = api_metrics.IncidentFigures(lambda: refresh_incident_figures(app))
    figures.start()
    return figures


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus text format of every metric in the default registry (no storage query)."""
    return Response(content=generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
