"""Watch stage: the broker's `$SYS` dropped counter, its log (-> `security_events`) and the
worker's own `ingest_stats` timer. Each is one long-running task the service supervises."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ingest import metrics
from ingest.brokerlog import BrokerLogEvent, EventClock, LogFollower, parse_line
from ingest.sink import Sink
from ingest.stats import BrokerDropped
from safecity import schema
from safecity.lineprotocol import Point
from safecity.mqtt import MqttClient
from safecity.registry import Cities, City, as_cities

log = logging.getLogger("safecity.ingest")

BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
BROKER_LOG_POLL_S = 0.5


class SysWatch:
    """Exports the broker's dropped-messages counter (published every sys_interval)."""

    def __init__(self, connect: Callable[[], MqttClient], dropped: BrokerDropped) -> None:
        # $SYS is per broker, not per share: a plain, non-persistent connection per run.
        self._make = connect
        self._dropped = dropped

    async def run(self) -> None:
        """Follow until cancelled; a refused connection raises (the supervisor retries)."""
        client = self._make()
        try:
            await client.connect()
            await client.subscribe([(BROKER_DROPPED_TOPIC, 0)])
            while True:
                for message in await client.inbox.get_batch(100, None):
                    with contextlib.suppress(ValueError):
                        value = int(message.payload.decode().strip())
                        metrics.BROKER_DROPPED.set(value)
                        self._dropped.observe(value)
        finally:
            await client.disconnect()


def _detail(event: BrokerLogEvent) -> str:
    """What a security event says: the topic published to or the filter subscribed to."""
    if event.topic is None:
        return event.message
    return f"{'subscribe' if event.access == 'subscribe' else 'topic'} {event.topic}"


class BrokerEvents:
    """Broker log lines -> `security_events` points (auth failures, ACL denials)."""

    def __init__(self, city: City | Cities) -> None:
        self._cities = as_cities(city)
        self._clock = EventClock()

    def points(self, lines: list[str]) -> list[Point]:
        """The points of some log lines; one per event, except past 999 events in a second,
        where the last millisecond's point carries the running count (latest only)."""
        by_time: dict[int, Point] = {}
        for line in lines:
            event = parse_line(line)
            if event is None:
                continue
            time_ms, count = self._clock.stamp_count(event.time_s)
            detail = _detail(event)
            # A registry device's event goes to its own city's data; any other client's
            # (a service, a stranger) to the home city's.
            city = self._cities.owner(event.client_id) or self._cities.first
            by_time[time_ms] = schema.security_event_point(
                city.id,
                event.type,
                time_ms,
                device=city.device(event.client_id),
                client_id=event.client_id,
                detail=detail,
                count=count,
            )
        return list(by_time.values())


class BrokerLogWatch:
    """Follows the broker's log file and stores its security events."""

    def __init__(self, path: Path, city: City | Cities, sink: Sink) -> None:
        self._path = path
        self._sink = sink
        self._follower = LogFollower(path)
        self._events = BrokerEvents(city)
        self._positioned = False

    async def run(self) -> None:
        """Follow until cancelled (a restart keeps the file position)."""
        if not self._positioned:
            await asyncio.to_thread(self._follower.read)  # position at the end
            self._positioned = True
        log.info("following the broker log", extra={"path": str(self._path)})
        while True:
            try:
                lines = await asyncio.to_thread(self._follower.read)
            except OSError as exc:
                log.warning(
                    "cannot read the broker log", extra={"path": str(self._path), "error": str(exc)}
                )
                lines = []
            points = self._events.points(lines)
            if points:
                await self._sink.store_own(points)
            await asyncio.sleep(BROKER_LOG_POLL_S)


class StatsTimer:
    """Writes an `ingest_stats` point every `schema.INGEST_STATS_INTERVAL_S` seconds."""

    def __init__(self, point: Callable[[], Point], sink: Sink) -> None:
        self._point = point
        self._sink = sink

    async def run(self) -> None:
        """Write until cancelled."""
        interval = schema.INGEST_STATS_INTERVAL_S
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + interval, time.monotonic())
            await self._sink.store_own([self._point()])
