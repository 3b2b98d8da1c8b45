"""The one way a service publishes what must not be lost: a durable outbox drained to the
broker (incident steps, device commands; `safecity.outbox` keeps them across restarts).

An `OutboxPublisher` owns one MQTT connection and one task. The task connects (while the
broker cannot be reached it retries with a capped, jittered backoff and claims nothing,
so an outage spends no attempt), subscribes to the connection's `subscriptions`, then
drains: each round it claims the due head of up to `lanes` lanes and publishes each at
QoS 1 on its lane's recipient (the topic), with its stored bytes and the time it has left
before its expiry, side by side across lanes. The caller's `Verdict` turns the broker's
answer into the outbox's outcome (delivered, retry, failed) and does whatever else a
delivered or failed message means to it. A lane's next message goes only once its head is
settled, so a destination gets its messages in order; one the broker has not acknowledged
when the connection drops is sent again by the client after it reconnects. Messages that
arrive on the same session are handed to `receive` and acknowledged once it returns, in
receive order.

A publisher without subscriptions connects only once something is due: an idle one holds
no connection. `stop` is idempotent: it may first wait for what can go now (`flush_s`),
then cancels the task and disconnects, a connection still being made included, so
nothing of it retries or logs afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from safecity.errors import MqttError, OutboxError
from safecity.mqtt.client import MqttClient
from safecity.mqtt.messages import NOT_SENT, Incoming, PublishResult
from safecity.outbox import Entry, Lease, Outbox, Outcome, Result
from safecity.retry import Backoff
from safecity.settings import MqttSettings

__all__ = ["Connection", "OutboxPublisher", "Verdict", "accepted_unless_refused", "wire_bytes"]

log = logging.getLogger("safecity.mqtt.outbox")

PUBLISHES = Counter(
    "safecity_outbox_publishes",
    "Outbox messages published to the broker, by publisher and by how the attempt ended "
    "(delivered; retry: not taken now; failed: refused, or out of tries).",
    ["publisher", "outcome"],
)

Verdict = Callable[[Entry, PublishResult], Outcome]
"""What one publish's answer means: the outcome the outbox records for the entry."""
Receive = Callable[[Incoming], Awaitable[None]]
"""Takes one received message (durably) before it is acknowledged; never raises."""


def accepted_unless_refused(entry: Entry, result: PublishResult) -> Outcome:
    """The default verdict: any success code delivers (0x10, no subscriber, too), a refusal
    fails, a publish that could not be made is retried."""
    if result.reason_code >= NOT_SENT:
        return Outcome.retry(result.reason)
    if result.ok:
        return Outcome.delivered()
    return Outcome.failed(f"the broker refused it: {result.reason}")


def wire_bytes(entry: Entry) -> bytes:
    """The bytes to publish: the stored ones; for an entry queued before entries carried
    them, its payload as compact JSON (what that version sent)."""
    if entry.body is not None:
        return entry.body
    return json.dumps(entry.payload, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Connection:
    """The MQTT session a publisher owns: a clean one, or a persistent one kept by the
    broker `session_expiry` seconds (messages for it wait there while it is away)."""

    settings: MqttSettings
    client_id: str
    session_expiry: int = 0
    subscriptions: tuple[tuple[str, int], ...] = ()


class OutboxPublisher:
    """Drains an outbox to the broker on a connection of its own (see the module doc)."""

    def __init__(
        self,
        outbox: Outbox,
        connection: Connection,
        *,
        name: str,
        verdict: Verdict = accepted_unless_refused,
        receive: Receive | None = None,
        lanes: int = 100,
        poll_s: float = 0.2,
        backoff: Backoff | None = None,
    ) -> None:
        self.outbox = outbox
        self.connection = connection
        self.name = name
        self.verdict = verdict
        self.receive = receive
        self.lanes = lanes
        self.poll_s = poll_s
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.client: MqttClient | None = None
        self.connected = asyncio.Event()
        self._quiet = asyncio.Event()  # set while nothing can go now
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    def start(self) -> None:
        """Start publishing (what a previous run left too); idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"outbox-{self.name}"
            )
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A task that died (a bug; `receive` must not raise) is logged, never silent."""
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox publisher stopped by an error", exc_info=task.exception(),
                      extra={"publisher": self.name})  # fmt: skip

    def wake(self) -> None:
        """Something was enqueued: `stop`'s flush waits for it."""
        self._quiet.clear()

    async def stop(self, flush_s: float = 0.0) -> None:
        """Publish what can go (for at most `flush_s`), stop the task, disconnect; idempotent."""
        if self._task is not None:
            if flush_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._quiet.wait(), flush_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # logged by _ended
                await self._task
            self._task = None
        if self.client is not None:
            await self.client.disconnect()
            self.client = None
        self.connected.clear()

    async def _run(self) -> None:
        if not self.connection.subscriptions:
            await self._until_due()
        client = await self._connect()
        busy = False
        while True:
            try:
                batch = await client.inbox.get_batch(500, 0 if busy else self.poll_s)
                await self._take(client, batch)
                busy = await self._drain(client)
            except OutboxError as exc:  # the disk, for a while: nothing is lost, try again
                log.error("outbox unavailable", extra={"publisher": self.name, "error": str(exc)})
                busy = False
                await asyncio.sleep(self.backoff.cap)

    async def _until_due(self) -> None:
        """Wait until the outbox has something due (no connection is held meanwhile)."""
        while True:
            try:
                due = self.outbox.next_due()
            except OutboxError as exc:  # read again after the pause
                log.error("outbox unavailable", extra={"publisher": self.name, "error": str(exc)})
                due = None
            if due is not None and due <= self.outbox.clock():
                return
            self._quiet.set()
            await asyncio.sleep(self.poll_s)

    async def _connect(self) -> MqttClient:
        """Connect (and subscribe), retrying with the backoff until the broker answers."""
        attempt = 0
        while True:
            try:
                client = await self._session()
            except (MqttError, TimeoutError) as exc:  # TimeoutError: no SUBACK in time
                self._quiet.set()  # nothing can go while the broker is away
                delay = self.backoff.delay(attempt, self._rng)
                if attempt < 3 or attempt % 10 == 0:
                    log.warning(
                        "outbox publisher cannot reach the broker; retrying",
                        extra={"publisher": self.name, "error": str(exc),
                               "attempt": attempt + 1, "retry_in_s": round(delay, 3)},
                    )  # fmt: skip
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self.connected.set()
            log.info("outbox publisher connected",
                     extra={"publisher": self.name, "client_id": client.client_id})  # fmt: skip
            return client

    async def _session(self) -> MqttClient:
        """One attempt at the connection and its subscriptions (raises if it failed)."""
        own = self.connection
        # Held before it connects: `stop` disconnects a connection still being made.
        client = self.client = MqttClient(
            own.settings,
            own.client_id,
            clean_start=own.session_expiry == 0,
            session_expiry=own.session_expiry,
            manual_ack=self.receive is not None,
        )
        try:
            await client.connect()
            if own.subscriptions:
                await client.subscribe(list(own.subscriptions))
        except (MqttError, TimeoutError):
            await client.disconnect()
            self.client = None
            raise
        return client

    async def _take(self, client: MqttClient, batch: list[Incoming]) -> None:
        """Hand each received message over, then acknowledge it (in receive order)."""
        if self.receive is None:
            return
        for message in batch:
            await self.receive(message)
            client.ack(message)

    async def _drain(self, client: MqttClient) -> bool:
        """One round: publish the due head of every idle lane; False if none was due."""
        leases = self.outbox.claim(lanes=self.lanes)
        if not leases:
            self._quiet.set()
            return False
        await asyncio.gather(*(self._deliver(client, lease) for lease in leases))
        return True

    async def _deliver(self, client: MqttClient, lease: Lease) -> None:
        (entry,) = lease.entries
        left = None if entry.expires_at is None else math.ceil(entry.expires_at - time.time())
        try:
            result = await client.publish(lease.recipient, wire_bytes(entry), 1, expiry_s=left)
        except MqttError as exc:
            result = PublishResult(NOT_SENT, str(exc))
        outcome = self.verdict(entry, result)
        self.outbox.settle(lease, outcome)
        PUBLISHES.labels(self.name, outcome.result.value).inc()
        if outcome.result is Result.FAILED:
            log.warning("outbox message failed",
                        extra={"publisher": self.name, "key": entry.key,
                               "topic": lease.recipient, "detail": outcome.detail})  # fmt: skip
