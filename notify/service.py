"""Wires the notification service: MQTT lifecycle steps -> `intake` (plan the openings,
close the rest, enqueue, ack) -> the outbox -> `dispatch` (channels), with `watch`
reconciling against the incident log now and then.

One service per city (its own outbox file `<city>.outbox.db`, routing and session);
several cities run side by side in one process behind one health server. The clock is
injectable: escalation times, retries and leases all read it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from notify import metrics
from notify.channels.base import Channel
from notify.channels.build import build_all
from notify.dispatch import Dispatcher
from notify.intake import Intake
from notify.listing import Listing
from notify.plan import Planner
from notify.routing import Routing
from notify.settings import NotifySettings
from notify.watch import Watcher
from safecity import acklinks, topics
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.notifications import outbox_path
from safecity.outbox import DeliveryStatus, Outbox
from safecity.registry import City
from safecity.retry import Supervisor
from safecity.service import for_city, serve, session_client, subscriptions

log = logging.getLogger("safecity.notify")


class NotifyService:
    """One city's notifier on the `$share/<group>/.../_incidents/+` subscription."""

    def __init__(
        self,
        settings: NotifySettings,
        city: City,
        routing: Routing,
        *,
        clock: Callable[[], float] = time.time,
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        self.settings, self.city, self.routing, self.clock = settings, city, routing, clock
        self.channels = channels or build_all(routing, settings.notify_dir / "console.jsonl")
        self.outbox = Outbox(
            outbox_path(settings.notify_dir, city.id),
            owner=settings.notify_id,
            clock=clock,
            max_attempts=settings.notify_max_attempts,
            max_age_s=settings.notify_max_age,
        )
        key = acklinks.ensure_key(settings.ack_key_file)
        self.planner = Planner(
            routing, lambda claim: acklinks.sign(key, claim), settings.notify_ack_base_url
        )
        self.mqtt = session_client(
            settings.mqtt,
            settings.notify_id,
            session_expiry=settings.notify_session_expiry,
            receive_maximum=1000,
            connected=metrics.CONNECTED,
        )
        self.intake = Intake(self.mqtt, self.planner, self.outbox, city.id, clock)
        rates = {name: spec.rate_per_s for name, spec in routing.channels.items()}
        self.dispatcher = Dispatcher(
            self.outbox,
            self.channels,
            rates,
            digest_max=routing.digest_max,
            max_in_flight=settings.notify_max_in_flight,
            clock=clock,
        )
        self.influx = InfluxClient(settings.influx)
        self.watcher = Watcher(
            inc.IncidentStore(self.influx),
            self.outbox,
            self.intake.closer,
            city.id,
            settings.notify_max_age,
        )
        self.tasks = Supervisor()
        self._started = self._stopped = False

    def ready(self) -> bool:
        """Ready once subscribed, connected, and dispatch and watch run."""
        return self._started and self.mqtt.connected.is_set() and self.tasks.healthy

    async def start(self) -> None:
        """Connect, subscribe to the city's incident steps, start dispatching and watching."""
        await self.mqtt.connect()
        steps = topics.incident_filter(self.city.id)
        await self.mqtt.subscribe(subscriptions(self.settings.notify_share_group, [steps]))
        self.tasks.start(f"dispatch-{self.city.id}", self.dispatcher.run)
        interval = self.settings.notify_refresh_interval
        self.tasks.start(f"watch-{self.city.id}", lambda: self.watcher.run(interval))
        self._started = True
        counts = self.outbox.counts()
        for status, count in counts.items():
            metrics.OUTBOX.labels(status=status.value).set(count)
        log.info(
            "notify started",
            extra={
                "notify_id": self.settings.notify_id,
                "city": self.city.id,
                "channels": sorted(self.channels),
                "outbox": str(self.outbox.path),
                "pending": counts[DeliveryStatus.PENDING],
                "session_present": self.mqtt.session_present,
            },
        )

    async def run(self) -> None:
        """Consume until cancelled."""
        await self.intake.run()

    async def stop(self) -> None:
        """Stop the tasks, disconnect, close channels and the outbox; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self.tasks.stop()
        await self.mqtt.disconnect()
        for channel in self.channels.values():
            await channel.close()
        await self.influx.close()
        self.outbox.close()
        metrics.CONNECTED.set(0)
        log.info("notify stopped", extra={"notify_id": self.settings.notify_id})


def city_settings(settings: NotifySettings, city: str, cities: list[str]) -> NotifySettings:
    """One city's share: its database and, with several cities, its own id and session."""
    return for_city(settings, "notify_id", city, cities)


async def run_cities(
    settings: NotifySettings, cities: list[City], routings: Mapping[str, Routing]
) -> None:
    """Run one notifier per city in this process until cancelled; stops them all."""
    ids = [c.id for c in cities]
    services = [
        NotifyService(city_settings(settings, c.id, ids), c, routings[c.id]) for c in cities
    ]
    routes = {"/notifications": Listing(settings.notify_dir, ids)}
    host, port = settings.notify_metrics_host, settings.notify_metrics_port
    await serve("notify", services, host, port, routes=routes)
