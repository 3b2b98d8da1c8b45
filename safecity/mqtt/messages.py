"""The messages the MQTT boundary hands out, and the thread-safe inbox received ones wait in."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["NOT_SENT", "Inbox", "Incoming", "PublishResult", "Will"]

# Pseudo reason code for a publish paho could not even queue (not an MQTT code).
NOT_SENT = 0x100


@dataclass(frozen=True, slots=True)
class Will:
    """A last-will message the broker publishes if the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Incoming(msgspec.Struct, frozen=True, gc=False):
    """A received message; `generation` ties its ack to the connection it came on.

    A C-built struct, not a dataclass: one is made per received message, and a frozen
    dataclass's `__init__` (one `object.__setattr__` per field) cost several times more.
    """

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    duplicate: bool
    generation: int


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Outcome of a publish: the broker's reason code (PUBACK for QoS 1, 0 for QoS 0)."""

    reason_code: int
    reason: str

    @property
    def ok(self) -> bool:
        """True when the broker accepted the message (reason < 0x80)."""
        return self.reason_code < 0x80


class Inbox:
    """Thread-safe hand-off of received messages from paho's network thread to one consumer.

    The producer side (`put`) never blocks and schedules a loop callback only when the
    consumer is parked in `get_batch`; the consumer takes everything queued at once.
    Flow control is the broker's: with manual acks, at most Receive Maximum messages
    are unacknowledged, so the deque is bounded by it.
    """

    def __init__(self) -> None:
        self._items: deque[Incoming] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Incoming) -> None:
        """Append one message (any thread); wake the consumer if it is waiting."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.get_loop().is_closed():
            waiter.get_loop().call_soon_threadsafe(_set_result, waiter, None)

    def put_many(self, items: list[Incoming]) -> None:
        """Append messages in order (any thread): one lock and at most one wake-up per call."""
        with self._lock:
            self._items.extend(items)
            waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.get_loop().is_closed():
            waiter.get_loop().call_soon_threadsafe(_set_result, waiter, None)

    def get_nowait(self, max_items: int) -> list[Incoming]:
        """Up to `max_items` queued messages, oldest first (possibly none)."""
        items = self._items
        with self._lock:
            if max_items >= len(items):
                out = list(items)
                items.clear()
                return out
            popleft = items.popleft
            return [popleft() for _ in range(max_items)]

    async def get_batch(self, max_items: int, wait: float | None) -> list[Incoming]:
        """Wait up to `wait` s (None: forever) for messages; return up to `max_items`."""
        out = self.get_nowait(max_items)
        if out or wait == 0:
            return out
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._items:
                self._waiter = loop.create_future()
            waiter = self._waiter
        if waiter is not None:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), wait)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None
        return self.get_nowait(max_items)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)
