"""The services' scaffolding: one health server for the services of a process, each stopped
however the run ends; one city's share of several; shared subscriptions."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from support import wait_for_async

from safecity.service import for_city, serve, subscriptions
from safecity.settings import BrokerServiceSettings, InfluxSettings


class DemoSettings(BrokerServiceSettings):
    """A service's settings: the broker and InfluxDB groups and its own id."""

    demo_id: str = "demo-0"


class Worker:
    """A service that is ready once `go` is set, then works until cancelled (or, with
    `once`, returns): what `serve` sees of alerts, notify or rollups."""

    def __init__(self, *, once: bool = False) -> None:
        self.go = asyncio.Event()
        self.once = once
        self.started = self.stopped = 0

    def ready(self) -> bool:
        return self.started == 1 and self.go.is_set()

    async def start(self) -> None:
        self.started += 1

    async def run(self) -> None:
        if not self.once:
            await asyncio.Event().wait()

    async def stop(self) -> None:
        self.stopped += 1


async def _status(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(url)).status_code


def test_one_health_server_is_ready_when_every_service_is_and_a_cancel_stops_them_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        a, b = Worker(), Worker()
        task = asyncio.create_task(serve("demo", [a, b], "127.0.0.1", 0))

        async def announced() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage() == "demo metrics"]

        (record,) = await wait_for_async(announced, 10, 'the "demo metrics" line')
        base = str(record.__dict__["metrics"]).removesuffix("/metrics")
        assert await _status(f"{base}/healthz") == 200
        assert await _status(f"{base}/readyz") == 503
        a.go.set()
        assert await _status(f"{base}/readyz") == 503  # b is not ready yet
        b.go.set()
        assert await _status(f"{base}/readyz") == 200
        assert await _status(f"{base}/metrics") == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (a.stopped, b.stopped) == (1, 1)
        with pytest.raises(httpx.ConnectError):
            await _status(f"{base}/healthz")

    with caplog.at_level(logging.INFO, logger="safecity.service"):
        asyncio.run(main())


def test_a_run_that_returns_ends_serve_and_stops_every_service() -> None:
    async def main() -> None:
        once = Worker(once=True)
        await asyncio.wait_for(serve("once", [once], "127.0.0.1", 0), 10)
        assert (once.started, once.stopped) == (1, 1)

    asyncio.run(main())


def test_a_city_of_several_gets_its_own_database_and_id_one_city_keeps_both() -> None:
    settings = DemoSettings(influx=InfluxSettings(database="safecity"), demo_id="a" * 60)
    alone = for_city(settings, "demo_id", "tashkent", ["tashkent"])
    assert (alone.influx.database, alone.demo_id) == ("safecity", "a" * 60)
    shared = for_city(settings, "demo_id", "samarkand", ["tashkent", "samarkand"])
    assert shared.influx.database == "safecity_samarkand"
    assert shared.demo_id == f"{'a' * 60}-samarkand"[:64]
    assert len(shared.demo_id) == 64
    assert settings.demo_id == "a" * 60  # the deployment's own settings are unchanged


def test_subscriptions_are_shared_in_a_group_and_plain_without_one() -> None:
    filters = ["safecity/v1/tashkent/+/+/+/telemetry", "safecity/v1/tashkent/_incidents/+"]
    assert subscriptions("alerts", filters) == [(f"$share/alerts/{f}", 1) for f in filters]
    assert subscriptions("", filters) == [(f, 1) for f in filters]
