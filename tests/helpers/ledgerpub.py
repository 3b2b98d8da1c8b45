"""A test publisher that records a ground-truth ledger: safecity.mqtt.MqttClient + LedgerEntry.

It runs its own asyncio loop in a thread, so a sync test can kill and restart
processes while messages flow; every PUBACK reason code lands in the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from safecity import topics
from safecity.ledger import LedgerEntry, LedgerWriter
from safecity.mqtt import NOT_SENT, MqttClient
from safecity.readings import format_ts
from safecity.registry import City, Device
from safecity.settings import MqttSettings
from simulators.generators import generate

TELEMETRY_KINDS = ("air_quality", "noise", "parking", "traffic", "waste", "weather", "crowd")


@dataclass(frozen=True)
class Outgoing:
    """One message to publish and what the ledger should say about it."""

    device: Device
    topic: str
    payload: bytes
    seq: int | None
    ts_ms: int | None
    intended_reason: str | None
    values: dict[str, Any] | None = None
    fault: str | None = None

    def ledger_entry(self, puback: int) -> LedgerEntry:
        """What the ledger records for this message, given its final PUBACK code."""
        return LedgerEntry(
            device_id=self.device.id,
            channel="telemetry",
            topic=self.topic,
            seq=self.seq,
            ts_ms=self.ts_ms,
            sha256=hashlib.sha256(self.payload).hexdigest(),
            intended_reason=self.intended_reason,
            puback=puback,
            values=self.values,
            fault=self.fault,
        )


class Background:
    """Runs a coroutine in its own asyncio loop on a thread; `join` re-raises its error."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _start(self, name: str, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        def body() -> None:
            try:
                asyncio.run(make())
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=body, name=name, daemon=True)
        self._thread.start()

    def _join(self, timeout: float, what: str) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{what} did not finish in time"
        if self._error is not None:
            raise self._error


async def paced(items: Sequence[Outgoing], rate: float | None) -> AsyncIterator[Outgoing]:
    """`items` in order, the i-th not before i/rate seconds after the first (no pacing if None)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index, item in enumerate(items):
        if rate is not None:
            delay = started + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        yield item


def good_readings(
    city: City, count: int, *, devices: int = 60, start: datetime | None = None, seed: int = 1
) -> list[Outgoing]:
    """`count` valid telemetry readings, round-robin over `devices` devices, 1 s apart each."""
    pool = [d for d in city.devices if d.kind in TELEMETRY_KINDS][:devices]
    rng = random.Random(seed)
    base = start or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    out = []
    for i in range(count):
        device = pool[i % len(pool)]
        k = i // len(pool)
        ts = base + timedelta(seconds=k, milliseconds=(i % len(pool)))
        values = dict(generate(device, rng, ts))
        out.append(reading(city, device, seq=seed * 10_000_000 + k, ts=ts, values=values))
    return out


def reading(
    city: City,
    device: Device,
    *,
    seq: int,
    ts: datetime,
    values: dict[str, Any],
    intended_reason: str | None = None,
    raw: bytes | None = None,
    topic: str | None = None,
) -> Outgoing:
    """One reading (or, with `raw`, arbitrary bytes) on a device's telemetry topic."""
    payload = (
        raw
        or json.dumps(
            {"ts": format_ts(ts), "seq": seq, "values": values}, separators=(",", ":")
        ).encode()
    )
    ts_ms = int(ts.timestamp() * 1000)
    return Outgoing(
        device,
        topic or topics.telemetry_topic(city.id, device.district, device.kind, device.id),
        payload,
        seq,
        ts_ms,
        intended_reason,
        values if intended_reason is None else None,
    )


class LedgerPublisher(Background):
    """Publishes messages at QoS 1 with a window of unacknowledged ones; writes the ledger."""

    def __init__(
        self, settings: MqttSettings, ledger: Path, window: int = 200, client_id: str = ""
    ) -> None:
        # An account that may publish on every device's topic (the simulator's, in tests),
        # or a device's own (then `client_id` is the device id: the broker requires it).
        super().__init__()
        self.settings = settings
        self.client_id = client_id
        self.ledger_path = ledger
        self.window = window
        self.sent = 0
        self._stopping = threading.Event()

    def start(self, messages: Sequence[Outgoing], rate: float | None = None) -> None:
        """Publish `messages` in a background thread, at most `rate` per second."""
        self._start("ledger-publisher", lambda: self._publish(messages, rate))

    def stop(self) -> None:
        """Publish nothing more (what is in flight is still awaited): the stream was long
        enough, e.g. the fault it had to outlast is over. The ledger has what was sent."""
        self._stopping.set()

    def join(self, timeout: float = 60) -> None:
        """Wait until everything was published and acknowledged (or given up)."""
        self._join(timeout, "publisher")

    def run(self, messages: Sequence[Outgoing], rate: float | None = None) -> None:
        """Publish and wait."""
        self.start(messages, rate)
        self.join()

    async def _publish(self, messages: Sequence[Outgoing], rate: float | None) -> None:
        client = MqttClient(
            self.settings,
            self.client_id or f"test-ledger-{secrets.token_hex(4)}",
            clean_start=False,
            session_expiry=300,
        )
        await client.connect()
        writer = LedgerWriter(self.ledger_path)
        slots = asyncio.Semaphore(self.window)

        async def one(message: Outgoing) -> None:
            try:
                result = await asyncio.wait_for(client.publish(message.topic, message.payload), 45)
                code = result.reason_code
            except Exception:  # timeout or client stopped: not acknowledged
                code = NOT_SENT
            finally:
                slots.release()
            writer.write(message.ledger_entry(code))
            self.sent += 1

        tasks = []
        try:
            async for message in paced(messages, rate):
                if self._stopping.is_set():
                    break
                await slots.acquire()
                tasks.append(asyncio.create_task(one(message)))
            await asyncio.gather(*tasks)
        finally:
            writer.close()
            await client.disconnect()


def chunks(items: Sequence[Outgoing], size: int) -> Iterator[Sequence[Outgoing]]:
    """Consecutive slices of `items`."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
