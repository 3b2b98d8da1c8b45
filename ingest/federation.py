"""Regional consumer: federated indicators from the regional broker into the region's database.

The ingest mode of a regional instance (`SAFECITY_REGION__ENABLED=true`). It
subscribes `safecity/v1/+/_federation/#` on a persistent session (QoS 1, manual
acks), validates every message with the federation contract (`safecity.federation`),
writes the good ones into its own database and dead-letters the others with their
reason; a batch is acknowledged only once its points are written and its dead letters
fsync'd, so a crash or an InfluxDB outage redelivers instead of losing. A point's time
is its interval's start and its tags are (city, scope or segment), so a message
delivered twice (the bridge and QoS 1 promise at least once) overwrites itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime

from ingest.deadletter import DeadLetter, DeadLetterStore
from ingest.settings import IngestSettings
from safecity import federation as fed
from safecity.errors import FederationError, StorageError, WriteRejectedError
from safecity.influx import InfluxClient
from safecity.lineprotocol import FieldValue, Point, encode_many
from safecity.mqtt import Incoming, MqttClient
from safecity.observability import HealthServer
from safecity.readings import epoch_ms

log = logging.getLogger("safecity.ingest.federation")

SCOPES = "federated_scopes"
SEGMENTS = "federated_segments"
MEASUREMENTS = (SCOPES, SEGMENTS)


def _some(fields: dict[str, FieldValue | None]) -> dict[str, FieldValue]:
    return {k: v for k, v in fields.items() if v is not None}


def point(message: fed.Message) -> Point:
    """The message as one point: the validated JSON plus the figures Grafana charts."""
    common: dict[str, FieldValue | None] = {
        "payload": fed.encode(message).decode(),
        "interval_end_ms": epoch_ms(message.interval.end),
        "interval_s": message.interval.seconds,
    }
    at = epoch_ms(message.interval.start)
    if isinstance(message, fed.SegmentIndicators):
        return Point(
            SEGMENTS,
            {"city": message.city, "segment": message.segment},
            _some(
                {
                    **common,
                    "length_km": message.length_km,
                    "speed_kmh": message.speed_kmh,
                    "travel_time_s": message.travel_time_s,
                    "sensors": message.sensors,
                }
            ),
            at,
        )
    return Point(
        SCOPES,
        {"city": message.city, "scope": message.scope},
        _some(
            {
                **common,
                "aqi": message.air_quality.aqi.value,
                "avg_speed_kmh": message.traffic.avg_speed.value,
                "congestion_index": message.traffic.congestion_index.value,
                "laeq_db": message.noise.laeq.value,
                "noise_share_above_who": message.noise.share_above_who.value,
                "devices_total": message.devices.total,
                "devices_online": message.devices.online,
                "incidents_open": message.incidents.total,
                "tta_median_s": message.response.tta_median_s,
                "alerts": sum(message.activity.alerts.values()),
                "delivery_ratio": message.delivery.ratio,
            }
        ),
        at,
    )


def refusal(error: FederationError, incoming: Incoming, worker: str) -> DeadLetter:
    """A dead letter for a refused federation message (its reason from the contract)."""
    return DeadLetter(
        reason=error.reason,
        detail=error.detail,
        topic=incoming.topic,
        received_at=datetime.now(UTC),
        payload=incoming.payload,
        worker=worker,
        sha256=hashlib.sha256(incoming.payload).hexdigest(),
        size=len(incoming.payload),
    )


class Consumer:
    """Regional broker -> contract -> the region's InfluxDB (or the dead-letter store)."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.cfg = settings.region
        db = settings.influx.model_copy(update={"database": self.cfg.database})
        self.influx = InfluxClient(db)
        self.store = DeadLetterStore(settings.deadletter_dir)
        self.client = MqttClient(
            settings.mqtt,
            f"safecity-region-{settings.worker_id}",
            clean_start=False,
            session_expiry=settings.session_expiry,
            manual_ack=True,
            receive_maximum=self.cfg.receive_maximum,
        )
        self.health = HealthServer(settings.metrics_host, settings.metrics_port, self.ready)
        self.written = 0
        self.rejected = 0

    def ready(self) -> bool:
        """Connected to the regional broker."""
        return self.client.connected.is_set()

    async def start(self) -> None:
        """Create the database, connect and subscribe."""
        self.store.open()
        await self.influx.ensure_database()
        await self.client.connect()
        await self.client.subscribe([(fed.federation_filter(), 1)])
        await self.health.start()
        log.info("federation consumer started", extra={"database": self.cfg.database})

    async def stop(self) -> None:
        """Disconnect and close the database client."""
        await self.health.stop()
        await self.client.disconnect()
        await self.influx.close()

    async def run(self) -> None:
        """Take batches until cancelled."""
        while True:
            batch = await self.client.inbox.get_batch(self.cfg.batch_size, self.cfg.flush_interval)
            if batch:
                await self.handle(batch)

    async def handle(self, batch: list[Incoming]) -> None:
        """Validate, write (retrying until InfluxDB takes it), store refusals, then ack."""
        points: list[Point] = []
        sources: list[Incoming] = []
        letters: list[DeadLetter] = []
        for incoming in batch:
            try:
                points.append(point(fed.parse_message(incoming.topic, incoming.payload)))
                sources.append(incoming)
            except FederationError as exc:
                letters.append(refusal(exc, incoming, self.settings.worker_id))
        delay = 0.5
        while points:
            try:
                await self.influx.write(encode_many(points))
                break
            except WriteRejectedError as exc:
                # Refused for good (e.g. a field type conflict): retrying cannot help.
                error = FederationError("federation_refused", f"InfluxDB refused: {exc}")
                letters += [refusal(error, m, self.settings.worker_id) for m in sources]
                points = []
            except StorageError as exc:
                log.warning("federated indicators not written yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_delay)
        if letters:
            await asyncio.to_thread(self.store.append_many, letters)
            for letter in letters:
                log.warning(
                    "federation message dead-lettered",
                    extra={"reason": letter.reason, "topic": letter.topic[:200]},
                )
        self.client.ack_many(batch)
        self.written += len(points)
        self.rejected += len(letters)


async def run(settings: IngestSettings) -> None:
    """`safecity ingest` in federation mode: consume until SIGTERM/SIGINT."""
    consumer = Consumer(settings)
    await consumer.start()
    try:
        await consumer.run()
    except asyncio.CancelledError:
        pass
    finally:
        await consumer.stop()
