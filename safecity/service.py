"""What the long-running services (alerts, notify, rollups) share besides their stages:
one health server per process for any number of services (`serve`), the persistent MQTT
session of a consumer, and one city's share of a deployment of several.

Lifecycle: each service validates in its constructor, then `start` -> `run` -> `stop`
(idempotent); `serve` stops every service however the run ends (a signal cancels it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from prometheus_client import Gauge

from safecity import topics
from safecity.mqtt import MqttClient
from safecity.observability import HealthServer, Route
from safecity.settings import MqttSettings, StorageServiceSettings

log = logging.getLogger("safecity.service")
S = TypeVar("S", bound=StorageServiceSettings)


class Service(Protocol):
    """What `run_services` runs: a service's lifecycle and readiness."""

    def ready(self) -> bool:
        """True once the service works."""
        ...

    async def start(self) -> None:
        """Validate, connect, subscribe."""
        ...

    async def run(self) -> None:
        """Work until cancelled."""
        ...

    async def stop(self) -> None:
        """Stop; idempotent."""
        ...


async def run_services(
    services: Sequence[Service],
    host: str,
    port: int,
    *,
    routes: Mapping[str, Route] | None = None,
    started: Callable[[int], None] = lambda port: None,
) -> None:
    """Run several services in this process behind one health server on host:port (ready
    when all are) until cancelled; `started(port)` once all have started. Stops them all."""
    health = HealthServer(host, port, lambda: all(s.ready() for s in services), routes=routes)
    try:
        await health.start()
        for service in services:
            await service.start()
        started(health.port)
        await asyncio.gather(*(s.run() for s in services))
    finally:
        await asyncio.shield(asyncio.gather(*(s.stop() for s in services), health.stop()))


async def serve(
    name: str,
    services: Sequence[Service],
    host: str,
    port: int,
    *,
    routes: Mapping[str, Route] | None = None,
) -> None:
    """`run_services`, logging "<name> metrics" with the /metrics URL once all started."""

    def started(bound: int) -> None:
        log.info(f"{name} metrics", extra={"metrics": f"http://{host}:{bound}/metrics"})

    await run_services(services, host, port, routes=routes, started=started)


def session_client(
    settings: MqttSettings,
    service_id: str,
    *,
    session_expiry: int,
    receive_maximum: int,
    connected: Gauge,
) -> MqttClient:
    """A consumer's MQTT client: a persistent session (`safecity-<id>`), manual acks in
    receive order, at most `receive_maximum` unacked; `connected` set to 1 on connect."""
    return MqttClient(
        settings,
        client_id=f"safecity-{service_id}",
        clean_start=False,
        session_expiry=session_expiry,
        manual_ack=True,
        receive_maximum=receive_maximum,
        on_connect=lambda: connected.set(1),
    )


def subscriptions(group: str, filters: Iterable[str]) -> list[tuple[str, int]]:
    """QoS 1 subscriptions of `filters`, shared in `group` (empty: plain ones)."""
    return [(topics.shared(group, f) if group else f, 1) for f in filters]


def for_city(settings: S, id_field: str, city: str, cities: Collection[str]) -> S:
    """One city's share of a deployment of `cities`: its own database and, with several,
    its own id (`id_field` + `-<city>`: its own MQTT session)."""
    update: dict[str, object] = {"influx": settings.influx.for_city(city, cities)}
    if len(cities) > 1:
        update[id_field] = f"{getattr(settings, id_field)}-{city}"[:64]
    return settings.model_copy(update=update)
