"""Batch-and-ack stage: receive, validate, make the batch durable, then ack it in order.

Every message of a batch is acked, in receive order, only after the whole batch is
durable: its valid points written to InfluxDB (or fsync'd into the spool, see
`ingest.sink`) and its rejections fsync'd into the dead-letter store. The attacks
among the rejections become `security_events` points of the same batch, durable
before its acks too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import cast

from ingest import metrics
from ingest.deadletter import DeadLetter, DeadLetterOutput, dead_letter, refused_letters
from ingest.redact import Redactor
from ingest.settings import IngestSettings
from ingest.sink import Sink, encode_own
from ingest.spool import SpoolBatch
from ingest.stats import Totals
from ingest.validate import Accepted, Rejected, Validator, claimed_city, claimed_device_id
from ingest.watermark import Watermarks  # end-to-end acks
from safecity import schema, topics
from safecity.errors import StorageError
from safecity.mqtt import Incoming, MqttClient
from safecity.quarantine import STAGE_HOOKS, Poisoned, attempt, poisoned, run_hooks
from safecity.readings import Rejection, RejectReason, now_ms
from safecity.registry import Cities, City, as_cities

log = logging.getLogger("safecity.ingest")

AFTER_DURABLE: list[Callable[[int], None]] = []
"""Called with the number of durable writes so far, after a batch is durable and before
its acks. Empty in production; fault tests install a crash here (tests/helpers)."""


_CHANNEL = attrgetter("channel")
_DUPLICATE = attrgetter("duplicate")
_LINE = attrgetter("line")
_TIME_MS = attrgetter("time_ms")
_MEASUREMENT = attrgetter("measurement")
_TOPIC = attrgetter("topic")
_PAYLOAD = attrgetter("payload")
_QOS = attrgetter("qos")


@dataclass
class _Batch:
    """Received messages and their outcomes, side by side in receive order."""

    messages: list[Incoming] = field(default_factory=list)
    outcomes: list[Accepted | Rejected] = field(default_factory=list)
    opened: float = 0.0


class Batcher:
    """Consumes the MQTT inbox in batches, by size and by time."""

    def __init__(
        self,
        settings: IngestSettings,
        city: City | Cities,
        validator: Validator,
        mqtt: MqttClient,
        sink: Sink,
        deadletters: DeadLetterOutput,
        redactor: Redactor,
        totals: Totals,
    ) -> None:
        self._settings = settings
        self._cities = as_cities(city)
        self._validator = validator
        self._mqtt = mqtt
        self._sink = sink
        self._deadletters = deadletters
        self._redactor = redactor
        self._totals = totals
        self._batch = _Batch()
        self._last_event_ms = 0
        self._durable_writes = 0
        self.watermarks: Watermarks | None = None  # end-to-end acks (set by the service)
        self.lag = 0.0
        """Wall clock minus the newest written reading's timestamp (s)."""

    @property
    def pending(self) -> int:
        """Messages received and not yet acked."""
        return len(self._batch.messages)

    async def run(self) -> None:
        """Consume until cancelled, flushing by size and by time."""
        inbox = self._mqtt.inbox
        interval = self._settings.flush_interval
        # The broker sends at most Receive Maximum unacked messages: a batch that holds
        # them all cannot grow until it is acked, so waiting for the timer would only idle.
        size = min(self._settings.batch_size, self._settings.receive_maximum)
        while True:
            wait: float | None = None
            if self._batch.messages:
                wait = max(0.0, self._batch.opened + interval - time.monotonic())
            received = await inbox.get_batch(size - len(self._batch.messages), wait)
            if received:
                self._take(received)
            if len(self._batch.messages) >= size or (
                self._batch.messages and time.monotonic() >= self._batch.opened + interval
            ):
                await self.flush()

    def _validate(self, received: list[Incoming]) -> list[Accepted | Rejected]:
        """The validation stage of a bulk: each message's outcome, never an exception (a
        message that makes it raise is validated alone, then quarantined)."""
        now = datetime.now(UTC)  # one clock reading per bulk (the window check)
        try:
            if STAGE_HOOKS:
                for message in received:
                    run_hooks("validate", message)
            return _qos0_refused(received, self._validator.validate_many(received, now))
        except Exception as exc:  # one message's failure must not stop the worker
            log.warning("validation of a bulk raised", extra={"error": type(exc).__name__})
            metrics.STAGE_RETRIES.labels(stage="validate").inc()
        validate = self._validator.validate
        outcomes: list[Accepted | Rejected] = []
        for message in received:
            got = attempt(
                "validate",
                lambda m: validate(m.topic, m.payload, now, redelivery=m.duplicate),
                message,
                self._settings.poison_attempts,
            )
            outcomes.append(self._poison(message, None, got) if isinstance(got, Poisoned) else got)
        return _qos0_refused(received, outcomes)

    def _poison(
        self, message: Incoming, before: Accepted | Rejected | None, got: object
    ) -> Accepted | Rejected:
        """The `poison` outcome of a quarantined message (`got`, a `Poisoned`); `before` is
        what validation made of it, if it got that far (its seq is acked)."""
        assert isinstance(got, Poisoned)
        metrics.POISON.labels(stage=got.stage).inc()
        seq = before.seq if before is not None else None
        channel = before.channel if before is not None else message.topic.rsplit("/", 1)[-1]
        return Rejected(got.rejection(seq), str(channel))

    def _take(self, received: list[Incoming]) -> None:
        batch = self._batch
        if not batch.messages:
            batch.opened = time.monotonic()
        outcomes = self._validate(received)
        batch.messages += received
        batch.outcomes += outcomes
        # Metrics per bulk, not per message: prometheus-client takes a lock each time.
        for channel, count in Counter(map(_CHANNEL, outcomes)).items():
            metrics.received(str(channel)).inc(count)
        self._totals.received += len(received)
        redelivered = sum(map(_DUPLICATE, received))
        if redelivered:
            metrics.REDELIVERED.inc(redelivered)
            self._totals.redelivered += redelivered
        metrics.PENDING.set(len(batch.messages))

    async def flush(self) -> None:
        """Make the current batch durable, then ack all of it in receive order.

        A batch whose handling raises is retried whole `poison_attempts` times, then one
        message at a time; a message that still fails alone is quarantined as `poison`
        (dead-lettered, acked). Storage and machine failures are not a message's fault:
        they propagate as before (the sink retries and spools storage errors itself)."""
        batch, self._batch = self._batch, _Batch()
        if batch.messages:
            await self._flush_guarded(batch)

    async def _flush_guarded(self, batch: _Batch) -> None:
        attempts = self._settings.poison_attempts
        failure: Exception | None = None
        for _ in range(attempts):
            try:
                await self._flush(batch)
                return
            except (StorageError, OSError):
                raise
            except Exception as exc:  # a message's failure must not stop the worker
                failure = exc
                metrics.STAGE_RETRIES.labels(stage="store").inc()
                log.warning("a batch raised; retrying", extra={"error": type(exc).__name__})
        assert failure is not None
        if len(batch.messages) > 1:
            for pair in zip(batch.messages, batch.outcomes, strict=True):
                await self._flush_guarded(_Batch([pair[0]], [pair[1]]))
            return
        message, outcome = batch.messages[0], batch.outcomes[0]
        quarantined = self._poison(message, outcome, poisoned("store", failure, attempts))
        await self._flush(_Batch([message], [quarantined]), hooks=False)

    async def _flush(self, batch: _Batch, *, hooks: bool = True) -> None:
        messages, outcomes = batch.messages, batch.outcomes
        if hooks and STAGE_HOOKS:
            for message in messages:
                run_hooks("store", message)
        started = time.monotonic()
        worker = self._settings.worker_id
        accepted: list[Accepted] = [o for o in outcomes if type(o) is Accepted]
        sources = messages
        letters: list[DeadLetter] = []
        own: list[tuple[str, int]] = []
        if len(accepted) < len(messages):
            pairs = list(zip(messages, outcomes, strict=True))
            sources = [m for m, o in pairs if type(o) is Accepted]
            rejected = [(m, o) for m, o in pairs if type(o) is not Accepted]
            letters = [
                dead_letter(o.rejection, m.topic, m.payload, worker, redactor=self._redactor)
                for m, o in cast(list[tuple[Incoming, Rejected]], rejected)
            ]
            own = self._rejection_events(
                cast(list[tuple[Incoming, Rejected]], rejected), [d.detail for d in letters]
            )
        refused: list[tuple[int, str]] = []
        spooled = False
        if accepted or own:
            extra = len(own)
            lines = list(map(_LINE, accepted)) + [line for line, _ in own]
            topic_list = list(map(_TOPIC, sources)) + [""] * extra
            payload_list = list(map(_PAYLOAD, sources)) + [b""] * extra
            stored = await self._sink.store(
                SpoolBatch(
                    lines,
                    list(map(_TIME_MS, accepted)) + [t for _, t in own],
                    topic_list,
                    payload_list,
                )
            )
            refused, spooled = stored.refused, stored.spooled
            if refused:
                pairs_back = list(zip(topic_list, payload_list, strict=True))
                letters += refused_letters(refused, lines, pairs_back, worker, self._redactor)
        await self._deadletters.send(letters)
        if accepted and not spooled:
            if refused:
                bad = {i for i, _ in refused}
                accepted = [o for i, o in enumerate(accepted) if i not in bad]
            self._count_written(accepted)
        self._ack_durable(messages, outcomes, started)

    def _ack_durable(
        self, messages: list[Incoming], outcomes: list[Accepted | Rejected], started: float
    ) -> None:
        """The batch is durable: watermarks, hooks, then the acks in receive order."""
        if self.watermarks is not None:  # end-to-end acks: the batch is durable now
            self.watermarks.add_batch(zip(messages, outcomes, strict=True))
        self._durable_writes += 1
        for hook in AFTER_DURABLE:
            hook(self._durable_writes)
        acked, stale = self._mqtt.ack_many(messages)
        metrics.ACKED.inc(acked)
        if stale:
            metrics.STALE_ACKS.inc(stale)
        metrics.PENDING.set(0)
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)

    def _count_written(self, outcomes: list[Accepted]) -> None:
        now_ms = time.time() * 1000
        for measurement, count in Counter(map(_MEASUREMENT, outcomes)).items():
            metrics.written(measurement).inc(count)
        self._totals.written += len(outcomes)
        telemetry = topics.Channel.TELEMETRY
        times = [o.time_ms for o in outcomes if o.channel is telemetry]
        if times:
            metrics.E2E_LAG.observe_ages(now_ms, times)
            self.lag = max(0.0, (now_ms - max(times)) / 1000)
            metrics.LAG.set(self.lag)

    def _event_ms(self) -> int:
        """Wall-clock ms, strictly increasing within this worker (no two own points of one
        series share a timestamp, which would overwrite one with the other)."""
        self._last_event_ms = max(now_ms(), self._last_event_ms + 1)
        return self._last_event_ms

    def _rejection_events(
        self, rejected: list[tuple[Incoming, Rejected]], details: list[str]
    ) -> list[tuple[str, int]]:
        """One `security_events` line (and its time) per attack type and device of a batch;
        `details` are the rejections' redacted details (as in their dead letters).

        An event goes to the database of the device's own city (its operators answer for
        it), else of the city the topic names if served, else of the home city."""
        groups: dict[tuple[str, str, str | None], list[tuple[str, str]]] = {}
        cities = self._cities
        for (incoming, outcome), detail in zip(rejected, details, strict=True):
            reason = outcome.rejection.reason.value
            if reason not in schema.INGEST_SECURITY_REASONS:
                continue
            claimed = claimed_device_id(incoming.topic)
            owner = cities.owner(claimed)
            city = owner or cities.get(claimed_city(incoming.topic)) or cities.first
            key = (city.id, reason, claimed if owner is not None else None)
            groups.setdefault(key, []).append((claimed, detail))
        if not groups:
            return []
        time_ms = self._event_ms()
        out: list[tuple[str, int]] = []
        for (city_id, reason, device_id), items in groups.items():
            claimed, detail = items[-1]
            point = schema.security_event_point(
                city_id,
                reason,
                time_ms,
                device=cities.device(city_id, device_id) if device_id is not None else None,
                client_id=claimed,
                detail=detail,
                count=len(items),
                worker_id=self._settings.worker_id,
            )
            line = encode_own(point)
            if line is not None:
                out.append((line, time_ms))
        return out


def _qos0_refused(
    received: list[Incoming], outcomes: list[Accepted | Rejected]
) -> list[Accepted | Rejected]:
    """`outcomes`, with each message published at QoS 0 refused as `qos0` (whatever
    validation said of it, which the detail keeps): the broker cannot refuse it, so it
    is counted and dead-lettered here, never stored or lost silently."""
    if all(map(_QOS, received)):
        return outcomes
    out = list(outcomes)
    for i, message in enumerate(received):
        if not message.qos:
            was = outcomes[i]
            said = "valid" if type(was) is Accepted else was.rejection.reason.value  # type: ignore[union-attr]
            detail = f"published at QoS 0; device topics take QoS 1 (the message was {said})"
            out[i] = Rejected(Rejection(RejectReason.QOS0, detail, was.seq), str(was.channel))
    return out
