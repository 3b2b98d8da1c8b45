"""A flag a coroutine waits on: what a fleet of thousands needs of an asyncio.Event."""

from __future__ import annotations

import asyncio


class Flag:
    """An asyncio.Event's set, clear and wait, without the Event's deque of waiters (600+
    bytes a device): one future, made only while someone waits."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        """Return once set (at once if it is)."""
        if self._set:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        # Shielded: one waiter's timeout must not cancel the future the others wait on.
        await asyncio.shield(self._waiter)
