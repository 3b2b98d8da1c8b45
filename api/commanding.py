"""The command service: publishes stored commands to devices, files their results, expires.

It runs inside the API as the broker's `_command` role (the only account that may
publish commands) on one persistent MQTT v5 session (`safecity-api-commands`, results
subscribed at QoS 1 with manual acks): a result is committed to the store before it is
acknowledged, so results sent while the API is down wait at the broker. A delivery is
published once the store holds it, with the Message Expiry Interval of the time left;
0x10 (the device has no session at the broker yet) is tried again every `retry_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import Counter
from pydantic import SecretStr

from api.commandstore import CommandStore, Due
from api.settings import ApiSettings
from safecity import schema, topics
from safecity.commands import Command, CommandStatus, parse_result
from safecity.errors import CommandError, MqttError, StorageError, TopicError
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode
from safecity.mqtt import NOT_SENT, Incoming, MqttClient
from safecity.readings import epoch_ms
from safecity.registry import Cities, Device
from safecity.secrets import read_secrets

log = logging.getLogger("safecity.api.commands")

CLIENT_ID = "safecity-api-commands"
SESSION_EXPIRY = 7 * 86_400

PUBLISHED = Counter(
    "safecity_api_command_publishes",
    "Command deliveries published to the broker, by outcome (accepted, no_session, refused).",
    ["outcome"],
)
RESULTS = Counter(
    "safecity_api_command_results",
    "Command results received from devices, by what became of them (filed, stale, "
    "malformed, forged).",
    ["outcome"],
)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def wire_command(due: Due) -> Command:
    """The message one device gets for a stored command."""
    c = due.command
    return Command(
        id=c.id,
        name=c.name,
        params=c.params,
        issued_at=_from_ms(c.issued_ms),
        expires_at=_from_ms(c.expires_ms),
        idempotency_key=c.idempotency_key,
    )


def command_password(settings: ApiSettings) -> str | None:
    """The `_command` account's secret: its setting, else the MQTT secrets file."""
    own = settings.commands.password
    if own is not None:
        return own.get_secret_value()
    path = settings.mqtt.secrets_file
    return read_secrets(path).get(settings.commands.username) if path is not None else None


class CommandService:
    """Sends what the store says is due, files results, expires what waited too long."""

    def __init__(
        self,
        settings: ApiSettings,
        store: CommandStore,
        cities: Cities,
        influx_of: Callable[[str], InfluxClient],
    ) -> None:
        self.settings = settings
        self.store = store
        self.cities = cities
        self._influx_of = influx_of
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.client: MqttClient | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        """Start in the background (keeps trying to reach the broker)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="commands")

    def wake(self) -> None:
        """A new command is in the store: send it now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop sending and disconnect; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.client is not None:
            await self.client.disconnect()
            self.client = None

    async def _connect(self) -> MqttClient:
        password = command_password(self.settings)
        mqtt = self.settings.mqtt.model_copy(
            update={
                "username": self.settings.commands.username,
                "password": None if password is None else SecretStr(password),
            }
        )
        delay = 0.5
        while True:
            client = MqttClient(
                mqtt, CLIENT_ID, clean_start=False, session_expiry=SESSION_EXPIRY, manual_ack=True
            )
            try:
                await client.connect()
                await client.subscribe([(topics.result_filter(c), 1) for c in self.cities.ids])
                return client
            except MqttError as exc:
                log.warning("command service cannot reach the broker: %s", exc)
                await client.disconnect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _run(self) -> None:
        self.client = client = await self._connect()
        self.connected.set()
        log.info("command service connected", extra={"client_id": CLIENT_ID})
        last_sweep = 0.0
        while True:
            batch = await client.inbox.get_batch(500, 0.05)
            for message in batch:
                await self._file(message)
                client.ack(message)
            await self._send_due(client)
            if time.monotonic() - last_sweep >= 1.0:
                last_sweep = time.monotonic()
                grace = int(self.settings.commands.result_grace * 1000)
                self.store.expire(epoch_ms(datetime.now(UTC)), grace)

    async def _send_due(self, client: MqttClient) -> None:
        self._wake.clear()
        now = epoch_ms(datetime.now(UTC))
        due = self.store.due(now)
        if due:
            await asyncio.gather(*(self._publish(client, d, now) for d in due))

    async def _publish(self, client: MqttClient, due: Due, now_ms: int) -> None:
        t = due.target
        topic = topics.command_topic(due.command.city, t.district, t.kind, t.device_id)
        expiry = math.ceil((due.command.expires_ms - now_ms) / 1000)
        result = await client.publish(topic, wire_command(due).to_payload(), 1, expiry_s=expiry)
        code = result.reason_code
        if code == 0:
            PUBLISHED.labels("accepted").inc()
            self.store.mark_published(due.command.id, t.device_id)
        elif code < 0x80 or code >= NOT_SENT:
            # 0x10: the device has no session at the broker yet; or no connection now.
            PUBLISHED.labels("no_session").inc()
            retry = now_ms + int(self.settings.commands.retry * 1000)
            self.store.retry_later(due.command.id, t.device_id, retry)
        else:
            PUBLISHED.labels("refused").inc()
            self.store.settle(
                due.command.id, t.device_id, CommandStatus.FAILED,
                f"the broker refused the command: {result.reason}", now_ms,
            )  # fmt: skip

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
    """Open the store and start the command service (the API's lifespan stops both)."""
    store = CommandStore(settings.commands_file)
    service = CommandService(settings, store, cities, influx_of)
    service.start()
    return store, service


async def stop_commands(store: CommandStore, service: CommandService) -> None:
    """Stop the service, then close the store; idempotent."""
    await service.stop()
    store.close()
