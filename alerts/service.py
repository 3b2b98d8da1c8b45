"""Wires the alerts service: MQTT (own shared group) -> `batch.AlertBatcher` (validate ->
rules -> incidents -> acks), plus the supervised book refresher.

Each batch is evaluated in receive order; new incidents' alerts are published (QoS 1,
ids derived from the incident so a repeat is recognisable), then the openings, alerts
and auto-resolutions are written to InfluxDB, and only then is the batch acked in
receive order. At start the book is rebuilt from the stored log; the storage retries
and the task supervision are `safecity.retry`'s, shared with the ingest.

A deployment of several cities runs one such service per city in one process
(`run_cities`): each subscribes to its own city's topics only, with its own session,
rules, incident book and database; one health server answers for all of them
(`safecity.service.serve`, as for a single city).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TypeVar

from alerts import metrics
from alerts.batch import AlertBatcher
from alerts.book import Book
from alerts.engine import Engine
from alerts.rules import AnyRule, RuleSet
from alerts.settings import AlertsSettings
from safecity import incidents as inc
from safecity import topics
from safecity.influx import InfluxClient
from safecity.mqtt import Incoming
from safecity.registry import Cities, City
from safecity.retry import Supervisor, count_errors, retry_storage
from safecity.service import for_city, serve, session_client, subscriptions

log = logging.getLogger("safecity.alerts")
T = TypeVar("T")
CHANNELS = (topics.Channel.TELEMETRY, topics.Channel.EVENT, topics.Channel.STATUS)


class AlertsService:
    """One alerts worker on the `$share/<group>/...` subscription, persistent session."""

    def __init__(self, settings: AlertsSettings, city: City, rules: RuleSet) -> None:
        self.settings = settings
        self.city = city
        self.rules = rules
        self.engine = Engine(rules, city)
        self.book = Book(city.id)
        self.influx = InfluxClient(settings.influx)
        self.store = inc.IncidentStore(self.influx)
        self.mqtt = session_client(
            settings.mqtt,
            settings.alerts_id,
            session_expiry=settings.alerts_session_expiry,
            receive_maximum=settings.alerts_receive_maximum,
            connected=metrics.CONNECTED,
        )
        self._started = False
        self._stopped = False
        self.tasks = Supervisor()
        self._lock = asyncio.Lock()
        self.batcher = AlertBatcher(
            settings, city, self.engine, self.book, self.store, self.mqtt, self._lock
        )

    def ready(self) -> bool:
        """Ready once the book is rebuilt, the broker connection is up and the refresher runs."""
        return self._started and self.mqtt.connected.is_set() and self.tasks.healthy

    async def start(self) -> None:
        """Prepare InfluxDB, rebuild the book from storage, connect and subscribe."""
        await self._retry(self.influx.ensure_database, "prepare influxdb")
        await self.refresh()
        for incident in self.book.active.values():
            rule = self._rule(incident.rule_id)
            if rule is not None and rule.auto_resolve:
                self.engine.seed_firing(incident.rule_id, incident.place, incident.devices)
        await self.mqtt.connect()
        filters = (topics.device_filter(c, self.city.id) for c in CHANNELS)
        await self.mqtt.subscribe(subscriptions(self.settings.alerts_share_group, filters))
        self.tasks.start("refresh", self._refresher)
        self._started = True
        log.info(
            "alerts started",
            extra={
                "alerts_id": self.settings.alerts_id,
                "city": self.city.id,
                "rules": len(self.rules.rules),
                "open_incidents": len(self.book.active),
                "session_present": self.mqtt.session_present,
                "database": self.settings.influx.database,
            },
        )

    def _rule(self, rule_id: str) -> AnyRule | None:
        try:
            return self.rules.rule(rule_id)
        except KeyError:
            return None

    async def _retry(self, action: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_storage(
            action, what, on_error=count_errors(metrics.WRITE_ERRORS), logger=log
        )

    async def refresh(self) -> None:
        """Re-read the stored incidents: the book and the response-time figures."""
        # Under the lock: a batch's openings are decided and written under it too, so
        # the store read here can never miss an incident the book already holds.
        async with self._lock:
            stored = await self._load()
            self.book.load(stored.values())
        counts = dict.fromkeys((s.value for s in inc.State), 0)
        for incident in stored.values():
            counts[incident.state.value] += 1
        for state, count in counts.items():
            metrics.INCIDENTS.labels(state=state).set(count)
        for fig in inc.figures(stored.values()):
            for stat, tta, ttr in (
                ("mean", fig.tta_mean, fig.ttr_mean),
                ("median", fig.tta_median, fig.ttr_median),
                ("max", fig.tta_max, fig.ttr_max),
            ):
                if tta is not None:
                    metrics.TTA.labels(fig.rule_id, fig.district, stat).set(tta)
                if ttr is not None:
                    metrics.TTR.labels(fig.rule_id, fig.district, stat).set(ttr)

    async def _load(self) -> dict[str, inc.Incident]:
        return await self._retry(lambda: self.store.load(self.city.id), "loading incidents")

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alerts_refresh_interval)
            await self.refresh()  # retries storage errors itself

    # --- stop ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Disconnect and close; unacked messages stay with the broker; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self.tasks.stop()
        await self.mqtt.disconnect()
        await self.influx.close()
        metrics.CONNECTED.set(0)
        log.info("alerts stopped", extra={"alerts_id": self.settings.alerts_id})

    async def run(self) -> None:
        """Consume until cancelled."""
        await self.batcher.run()

    async def process(self, batch: list[Incoming]) -> None:
        """Evaluate, make the outcome durable, then ack the batch in receive order."""
        await self.batcher.process(batch)


def city_settings(settings: AlertsSettings, city: str, cities: Collection[str]) -> AlertsSettings:
    """One city's share of a deployment of several: its database, its own MQTT session."""
    return for_city(settings, "alerts_id", city, cities)


async def run_cities(
    settings: AlertsSettings, cities: Cities, rules: Mapping[str, RuleSet]
) -> None:
    """Run one alerts service per city in this process until cancelled; stops them all."""
    services = [
        AlertsService(city_settings(settings, c.id, cities.ids), c, rules[c.id])
        for c in cities.values()
    ]
    await serve("alerts", services, settings.alerts_metrics_host, settings.alerts_metrics_port)
