"""The command service: publishes stored commands to devices, files their results, expires.

It runs inside the API as the broker's `_command` role (the only account that may
publish commands) on one persistent MQTT v5 session (`safecity-api-commands`, results
subscribed at QoS 1 with manual acks): a result is committed to the store before it is
acknowledged, so results sent while the API is down wait at the broker.

Delivery is the shared durable outbox's (`safecity.outbox`), drained by the platform's one
MQTT outbox publisher (`safecity.mqtt.OutboxPublisher`, which owns that session, its
reconnects and the results' acks): a stored command becomes one outbox message per device
(its lane is the device's command topic, its key `<command id>/<device id>`, its expiry
the command's), committed before it is published, retried until the broker takes it,
never sent after its expiry. The broker's PUBACK settles it (`verdict`): 0 delivered (the
device or its persistent session holds it), 0x10 (no session yet) retried with a growing
wait (`retry` up to `retry_max`) at most `max_tries` times, then failed; a refusal failed.
The store keeps each device's status; its sweep expires what no device answered in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from prometheus_client import Counter
from pydantic import SecretStr

from api.commandstore import CommandStore, StoredCommand, Target
from api.settings import ApiSettings
from safecity import schema, topics
from safecity.commands import Command, CommandStatus, parse_result
from safecity.errors import CommandError, StorageError, TopicError
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode
from safecity.mqtt import NOT_SENT, Connection, Incoming, OutboxPublisher, PublishResult
from safecity.outbox import Entry, Message, Outbox, Outcome
from safecity.readings import epoch_ms, from_epoch_ms
from safecity.registry import Cities, Device
from safecity.retry import Backoff
from safecity.secrets import read_secrets

log = logging.getLogger("safecity.api.commands")

CLIENT_ID = "safecity-api-commands"
SESSION_EXPIRY = 7 * 86_400
CHANNEL = "mqtt-command"
"""The outbox channel of commands (its recipients are device command topics)."""

RESULTS = Counter(
    "safecity_api_command_results",
    "Command results received from devices, by what became of them (filed, stale, "
    "malformed, forged).",
    ["outcome"],
)


def wire_command(c: StoredCommand) -> Command:
    """The message every device of a stored command gets."""
    return Command(
        id=c.id,
        name=c.name,
        params=c.params,
        issued_at=from_epoch_ms(c.issued_ms),
        expires_at=from_epoch_ms(c.expires_ms),
        idempotency_key=c.idempotency_key,
    )


def outbox_messages(command: StoredCommand, targets: Sequence[Target]) -> list[Message]:
    """A stored command as outbox messages: one per device, on its command topic, each
    carrying the wire bytes (encoded once) and the command id the service settles by."""
    body = wire_command(command).to_payload()
    return [
        Message(
            key=f"{command.id}/{t.device_id}",
            channel=CHANNEL,
            recipient=topics.command_topic(command.city, t.district, t.kind, t.device_id),
            payload={"command_id": command.id},
            group=command.id,
            expires_at=command.expires_ms / 1000,
            body=body,
        )
        for t in targets
    ]


def open_outbox(settings: ApiSettings) -> Outbox:
    """The API's command outbox, next to the store: while a device has no session, retried
    after `retry` seconds, then ever more rarely up to `retry_max` apart, at most
    `max_tries` times (the message's own expiry may end it first)."""
    own = settings.commands
    return Outbox(
        settings.commands_file.with_name(settings.commands_file.stem + ".outbox.sqlite3"),
        owner=CLIENT_ID,
        backoff=Backoff(base=own.retry, cap=max(own.retry, own.retry_max)),
        max_attempts=own.max_tries,
        max_age_s=own.max_expiry + 60.0,
    )


def command_password(settings: ApiSettings) -> str | None:
    """The `_command` account's secret: its setting, else the MQTT secrets file."""
    own = settings.commands.password
    if own is not None:
        return own.get_secret_value()
    path = settings.mqtt.secrets_file
    return read_secrets(path).get(settings.commands.username) if path is not None else None


def command_connection(settings: ApiSettings, cities: Cities) -> Connection:
    """The `_command` role's persistent session, subscribed to every city's results."""
    password = command_password(settings)
    mqtt = settings.mqtt.model_copy(
        update={
            "username": settings.commands.username,
            "password": None if password is None else SecretStr(password),
        }
    )
    results = tuple((topics.result_filter(c), 1) for c in cities.ids)
    return Connection(mqtt, CLIENT_ID, session_expiry=SESSION_EXPIRY, subscriptions=results)


class CommandService:
    """Sends what the store says is due, files results, expires what waited too long."""

    def __init__(
        self,
        settings: ApiSettings,
        store: CommandStore,
        outbox: Outbox,
        cities: Cities,
        influx_of: Callable[[str], InfluxClient],
    ) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.cities = cities
        self._influx_of = influx_of
        self.publisher = OutboxPublisher(
            outbox,
            command_connection(settings, cities),
            name="commands",
            verdict=self.verdict,
            receive=self._file,
            lanes=settings.commands.max_group,
            poll_s=0.05,
        )
        self._sweep: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start in the background (the publisher keeps trying to reach the broker)."""
        self.publisher.start()
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().create_task(self._expire(), name="sweep")

    def submit(self, command: StoredCommand, targets: Sequence[Target]) -> None:
        """Hand a stored command to the outbox (durable on return); the publisher sends it."""
        self.outbox.enqueue(outbox_messages(command, targets))
        self.publisher.wake()

    def recover(self) -> int:
        """After a crash between storing a command and handing it over: hand over what is
        pending and unexpired (the outbox ignores what it holds already); how many new."""
        now = epoch_ms(datetime.now(UTC))
        return sum(
            self.outbox.enqueue(outbox_messages(command, targets))
            for command, targets in self.store.pending(now)
        )

    async def stop(self) -> None:
        """Stop sending and sweeping, disconnect; idempotent."""
        if self._sweep is not None:
            self._sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep
            self._sweep = None
        await self.publisher.stop()

    async def _expire(self) -> None:
        """Each second: what no device answered in time ends expired (or failed)."""
        grace = int(self.settings.commands.result_grace * 1000)
        while True:
            self.store.expire(epoch_ms(datetime.now(UTC)), grace)
            await asyncio.sleep(1.0)

    def verdict(self, entry: Entry, result: PublishResult) -> Outcome:
        """The broker's answer to one device's copy: delivered only when something holds it
        (0); no session yet, or not sent, retried up to `max_tries`; a refusal failed."""
        code = result.reason_code
        if code == 0:
            return Outcome.delivered()
        own = self.settings.commands
        if code < 0x80 or code >= NOT_SENT:
            # 0x10: the device has no session at the broker yet; or no connection now.
            if entry.attempts < own.max_tries:
                return Outcome.retry(result.reason, retry_after=own.retry)
            return self._fail(entry, f"no session at the broker after "
                              f"{entry.attempts} tries: {result.reason}")  # fmt: skip
        return self._fail(entry, f"the broker refused the command: {result.reason}")

    def _fail(self, entry: Entry, reason: str) -> Outcome:
        """The device's status failed for `reason`; the outbox stops trying."""
        device_id = topics.parse_command_topic(entry.recipient).device_id
        now = epoch_ms(datetime.now(UTC))
        # An entry queued before entries carried their bytes has the wire command itself.
        command_id = str(entry.payload.get("command_id") or entry.payload["id"])
        self.store.settle(command_id, device_id, CommandStatus.FAILED, reason, now)
        return Outcome.failed(reason)

    async def _file(self, message: Incoming) -> None:
        """One result from a device: filed, or refused (malformed, forged); never raises."""
        try:
            address = topics.parse_result_topic(message.topic)
            result = parse_result(message.payload)
        except (TopicError, CommandError) as exc:
            RESULTS.labels("malformed").inc()
            log.warning("malformed command result", extra={"topic": message.topic[:200],
                                                           "error": str(exc)[:200]})  # fmt: skip
            return
        device = self.cities.device(address.city, address.device_id)
        found = self.store.get(result.command_id)
        targets = {d.device_id: d for d in found[1]} if found is not None else {}
        if (
            device is None
            or (device.district, device.kind) != (address.district, address.kind)
            or found is None
            or found[0].city != address.city
            or address.device_id not in targets
        ):
            RESULTS.labels("forged").inc()
            await self._security_event(address, device, result.command_id)
            return
        status = CommandStatus(result.status.value)
        now = epoch_ms(datetime.now(UTC))
        filed = self.store.settle(result.command_id, device.id, status, result.reason, now)
        RESULTS.labels("filed" if filed else "stale").inc()

    async def _security_event(
        self, address: topics.DeviceAddress, device: Device | None, command_id: str
    ) -> None:
        log.warning(
            "command result refused: not a command of that device",
            extra={"device_id": address.device_id, "command_id": command_id},
        )
        if self.cities.get(address.city) is None:
            return
        point = schema.security_event_point(
            address.city,
            "command_forgery",
            epoch_ms(datetime.now(UTC)),
            device=device,
            client_id=address.device_id,
            detail=f"result for {command_id} on {address.district}/{address.kind}/"
            f"{address.device_id}",
        )
        rp = schema.retention_policy_of(schema.SECURITY_EVENTS)
        try:
            await self._influx_of(address.city).write(encode(point).encode(), rp=rp)
        except StorageError as exc:
            log.error("security event not written: %s", exc)


def start_commands(
    settings: ApiSettings, cities: Cities, influx_of: Callable[[str], InfluxClient]
) -> tuple[CommandStore, CommandService]:
    """Open the store and the outbox, hand over what a crash left, start the service (the
    API's lifespan stops it)."""
    store = CommandStore(settings.commands_file)
    service = CommandService(settings, store, open_outbox(settings), cities, influx_of)
    recovered = service.recover()
    if recovered:
        log.warning("commands handed to the outbox after a crash", extra={"count": recovered})
    service.start()
    return store, service


async def stop_commands(store: CommandStore, service: CommandService) -> None:
    """Stop the service, then close the outbox and the store; idempotent."""
    await service.stop()
    service.outbox.close()
    store.close()
