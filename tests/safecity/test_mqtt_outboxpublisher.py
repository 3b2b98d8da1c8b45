"""The outbox publisher against a real Mosquitto of the test's own: a broker killed (-9) and
restarted mid-drain loses nothing and keeps each destination's order; a refusal fails that
message only; results on the same session are taken before they are acknowledged; a
publisher stopped while its broker hangs leaves no thread behind."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support import wait_for_async

from control.stack import Mosquitto
from safecity.mqtt import Connection, Incoming, MqttClient, OutboxPublisher, PublishResult
from safecity.outbox import DeliveryStatus, Entry, Message, Outbox, Outcome, Result
from safecity.retry import Backoff

STEPS = "safecity/v1/tashkent/_incidents"
LANES, PER_LANE = 8, 50


def _outbox(path: Path) -> Outbox:
    return Outbox(path, owner="test-publisher", backoff=Backoff(base=0.05, cap=0.5))


def _messages() -> list[Message]:
    """PER_LANE messages on each of LANES topics, enqueued lane after lane interleaved."""
    return [
        Message(
            key=f"{lane}/{n}",
            channel="mqtt-test",
            recipient=f"{STEPS}/lane{lane}",
            payload={},
            body=json.dumps({"lane": lane, "n": n}).encode(),
        )
        for n in range(PER_LANE)
        for lane in range(LANES)
    ]


def _started(box: Outbox, broker: Mosquitto, client_id: str, **kw: Any) -> OutboxPublisher:
    """A started publisher of `box` on `broker` as the API's account (a clean session)."""
    connection = Connection(broker.mqtt_settings("_api"), client_id)
    publisher = OutboxPublisher(box, connection, name="test", poll_s=0.02, **kw)
    publisher.start()
    return publisher


def held_somewhere(entry: Entry, result: PublishResult) -> Outcome:
    """Delivered only when a subscriber's session holds it (0), else tried again."""
    return Outcome.delivered() if result.reason_code == 0 else Outcome.retry(result.reason)


class Reader:
    """A subscriber with a persistent session that records every message it gets."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = MqttClient(
            broker.mqtt_settings("_api"), "test-outbox-reader", clean_start=False,
            session_expiry=600,
        )  # fmt: skip
        self.got: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe([(f"{STEPS}/#", 1)])
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batch = await self.client.inbox.get_batch(1000, 0.2)
            self.got += [(m.topic, m.payload) for m in batch]

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.client.disconnect()


def _firsts(got: list[tuple[str, bytes]]) -> dict[int, list[int]]:
    """Each lane's messages in the order they first arrived (a resent copy may repeat)."""
    out: dict[int, list[int]] = {}
    for _, payload in got:
        body = json.loads(payload)
        seen = out.setdefault(body["lane"], [])
        if body["n"] not in seen:
            seen.append(body["n"])
    return out


@pytest.mark.timeout(120)
def test_a_broker_killed_mid_drain_loses_nothing_and_keeps_each_lanes_order(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    box = _outbox(tmp_path / "o.sqlite3")
    total = LANES * PER_LANE

    def delivered() -> int:
        return box.counts()[DeliveryStatus.DELIVERED]

    async def main() -> tuple[int, list[tuple[str, bytes]], int]:
        reader = Reader(own_broker)
        await reader.start()
        await asyncio.sleep(3.0)  # the broker's autosave (2 s) now holds the reader's session
        box.enqueue(_messages())
        publisher = _started(box, own_broker, "test-outbox-publisher", verdict=held_somewhere)
        await wait_for_async(_async(lambda: delivered() >= total // 4), 60, "a quarter sent")
        await asyncio.to_thread(own_broker.kill)
        at_kill = delivered()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(own_broker.start)
        await wait_for_async(_async(lambda: delivered() == total), 90, "everything delivered")
        everything = {lane: list(range(PER_LANE)) for lane in range(LANES)}
        await wait_for_async(_async(lambda: _firsts(reader.got) == everything), 30, "all read")
        assert publisher.client is not None
        connections = publisher.client.generation
        await publisher.stop()
        await publisher.stop()  # idempotent
        await reader.stop()
        return at_kill, reader.got, connections

    at_kill, got, connections = asyncio.run(main())
    assert 0 < at_kill < total  # the broker died mid-drain
    assert connections >= 2  # the publisher's session came back after the restart
    # Every message reached the reader, each lane in its order (a copy the broker had not
    # acknowledged is resent, right after its predecessor, never after a later one).
    assert _firsts(got) == {lane: list(range(PER_LANE)) for lane in range(LANES)}
    assert box.counts()[DeliveryStatus.DELIVERED] == total
    assert box.attempt_counts()[Result.FAILED] == 0
    box.close()


def _async(check: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    """A plain check as the awaitable condition `wait_for_async` polls."""

    async def run() -> Any:
        return check()

    return run


def test_a_refusal_fails_that_message_and_its_lane_goes_on(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    """The API's account may not write telemetry: 0x87 fails the message (the default
    verdict), the next one of the lane and the other lanes are delivered."""
    box = _outbox(tmp_path / "o.sqlite3")
    forbidden = "safecity/v1/tashkent/chilanzar/noise/noise-001/telemetry"
    box.enqueue([
        Message("bad", "mqtt-test", forbidden, {}, body=b"{}"),
        Message("after", "mqtt-test", forbidden, {}, body=b"{}"),
        Message("fine", "mqtt-test", f"{STEPS}/open", {}, body=b"{}"),
    ])  # fmt: skip

    async def main() -> None:
        publisher = _started(box, own_broker, "test-outbox-refused")
        await wait_for_async(
            _async(lambda: box.counts()[DeliveryStatus.PENDING] == 0), 20, "all settled"
        )
        await publisher.stop()

    asyncio.run(main())
    statuses = {e.key: (e.status, e.detail) for e in box.entries()}
    assert statuses["bad"][0] is DeliveryStatus.FAILED and "refused" in statuses["bad"][1]
    assert statuses["after"][0] is DeliveryStatus.FAILED  # the same topic: refused as well
    assert statuses["fine"][0] is DeliveryStatus.DELIVERED
    box.close()


def test_a_received_message_is_taken_before_it_is_acknowledged(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    """With subscriptions the publisher's persistent session receives: `receive` runs
    first, then the ack; a message whose `receive` never finished (the process stopped
    during it) comes again on the next session, an acknowledged one never."""
    box = _outbox(tmp_path / "o.sqlite3")
    taken: list[bytes] = []
    connection = Connection(
        own_broker.mqtt_settings("_api"), "test-outbox-receiver", session_expiry=600,
        subscriptions=((f"{STEPS}/#", 1),),
    )  # fmt: skip

    async def stuck(message: Incoming) -> None:
        await asyncio.Event().wait()  # never done: stopped before the ack

    async def take(message: Incoming) -> None:
        taken.append(message.payload)

    async def send(payload: bytes) -> None:
        sender = MqttClient(own_broker.mqtt_settings("_api"), "test-outbox-sender")
        await sender.connect()
        assert (await sender.publish(f"{STEPS}/open", payload, 1)).reason_code == 0
        await sender.disconnect()

    async def main() -> None:
        first = OutboxPublisher(box, connection, name="test", receive=stuck, poll_s=0.02)
        first.start()
        await wait_for_async(_async(first.connected.is_set), 20, "first session")
        await send(b"one")
        await asyncio.sleep(0.5)  # received, never acknowledged
        await first.stop()
        second = OutboxPublisher(box, connection, name="test", receive=take, poll_s=0.02)
        second.start()
        await wait_for_async(_async(lambda: taken == [b"one"]), 20, "the redelivery")
        await send(b"two")
        await wait_for_async(_async(lambda: taken == [b"one", b"two"]), 20, "the next")
        await second.stop()
        third = OutboxPublisher(box, connection, name="test", receive=take, poll_s=0.02)
        third.start()
        await wait_for_async(_async(third.connected.is_set), 20, "third session")
        await asyncio.sleep(1.0)  # anything unacknowledged would be here by now
        await third.stop()

    asyncio.run(main())
    assert taken == [b"one", b"two"]  # acknowledged once taken: never again
    box.close()


def _paho_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-")}


def test_stopped_while_the_broker_hangs_it_leaves_no_thread_and_spends_no_attempt(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    """A paused broker takes the TCP connection and never answers: `stop` during that
    CONNACK wait leaves no network thread reconnecting (and logging) behind; the message
    waits in the outbox, not one attempt spent on it."""
    box = _outbox(tmp_path / "o.sqlite3")
    box.enqueue([Message("step", "mqtt-test", f"{STEPS}/open", {}, body=b"{}")])
    own_broker.pause()
    before = _paho_threads()

    async def main() -> set[str]:
        publisher = _started(box, own_broker, "test-outbox-hung")
        await wait_for_async(
            _async(lambda: _paho_threads() - before), 20, "a network thread connecting"
        )
        connecting = _paho_threads() - before
        await publisher.stop(flush_s=0.5)
        return connecting

    connecting = asyncio.run(main())
    assert connecting == {"paho-mqtt-client-test-outbox-hung"}
    assert _paho_threads() - before == set()
    (entry,) = box.entries()
    assert (entry.status, entry.attempts) == (DeliveryStatus.PENDING, 0)
    box.close()
