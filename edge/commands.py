"""A device's side of commands: receive from its own command topic, execute once, answer.

Each command is answered on the device's own result topic: `delivered` on receipt,
then `executed`, or `failed` with a reason (the handler raised), or `expired` (it arrived
after its expiry: never executed). A command id seen before is never executed twice: the
device answers again with the outcome it had (the platform may have published it twice
after a crash, or lost the first answer). Answers wait in the agent's memory until the
broker acknowledges them, so a lost connection delays them; a device restart loses
them (the platform then reports the command failed for want of an outcome).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from safecity.commands import (
    Command,
    CommandResult,
    ResultStatus,
    parse_command,
    validate_params,
)
from safecity.errors import CommandError

log = logging.getLogger("edge.commands")

REMEMBERED = 1024
"""Command ids a device remembers for de-duplication (far more than ever in flight)."""


class CommandFailed(Exception):  # noqa: N818 - an outcome, not a bug
    """Raised by a handler: the command was understood but could not be carried out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Handler = Callable[[Command], Awaitable[None]]
"""Carries out one command; raises CommandFailed(reason) when it cannot."""


class CommandExecutor:
    """Executes the commands of one device, each at most once, and answers each."""

    __slots__ = (
        "_clock", "_handler", "_reply", "_seen", "_tasks", "device_id", "duplicates",
        "executed", "kind", "malformed", "received", "result_topic",
    )  # fmt: skip

    def __init__(
        self,
        device_id: str,
        kind: str,
        result_topic: str,
        reply: Callable[[str, bytes], None],
        handler: Handler,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.device_id = device_id
        self.kind = kind
        self.result_topic = result_topic
        self._reply = reply
        self._handler = handler
        self._clock = clock
        # Plain dicts (insertion-ordered; a dict used as a set): a fleet holds an executor
        # a device, and an OrderedDict and a set weigh 344 bytes against 128.
        self._seen: dict[str, CommandResult | None] = {}
        self._tasks: dict[asyncio.Task[None], None] = {}
        self.received = 0
        self.executed = 0
        self.malformed = 0
        self.duplicates = 0

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def receive(self, payload: bytes) -> None:
        """One message from the command topic (called on the event loop; never raises)."""
        try:
            command = parse_command(payload)
        except CommandError as exc:
            # No id to answer to: counted and logged, nothing executed.
            self.malformed += 1
            log.warning("malformed command", extra={"device_id": self.device_id,
                                                     "error": str(exc)[:200]})  # fmt: skip
            return
        self.received += 1
        if command.id in self._seen:
            self.duplicates += 1
            outcome = self._seen[command.id]
            if outcome is not None:
                self._answer(outcome)
            return
        self._seen[command.id] = None
        while len(self._seen) > REMEMBERED:
            del self._seen[next(iter(self._seen))]
        now = self._clock()
        if command.expired(now):
            self._finish(command, ResultStatus.EXPIRED, "arrived after its expiry")
            return
        self._answer(self._result(command, ResultStatus.DELIVERED, None))
        try:
            # The device checks too: a command of another kind, or out of bounds, never runs.
            validate_params(self.kind, command.name, dict(command.params))
        except CommandError as exc:
            self._finish(command, ResultStatus.FAILED, str(exc))
            return
        task = asyncio.get_running_loop().create_task(self._run(command))
        self._tasks[task] = None
        task.add_done_callback(self._forget)

    async def _run(self, command: Command) -> None:
        try:
            await self._handler(command)
        except CommandFailed as exc:
            self._finish(command, ResultStatus.FAILED, exc.reason)
        except Exception as exc:  # a handler bug fails the command, never the device
            log.exception("command handler failed", extra={"device_id": self.device_id})
            self._finish(command, ResultStatus.FAILED, f"device error: {type(exc).__name__}")
        else:
            self.executed += 1
            self._finish(command, ResultStatus.EXECUTED, None)

    def _finish(self, command: Command, status: ResultStatus, reason: str | None) -> None:
        result = self._result(command, status, reason)
        self._seen[command.id] = result
        self._answer(result)

    def _result(self, command: Command, status: ResultStatus, reason: str | None) -> CommandResult:
        return CommandResult(command_id=command.id, status=status, reason=reason, ts=self._clock())

    def _answer(self, result: CommandResult) -> None:
        self._reply(self.result_topic, result.to_payload())

    async def close(self) -> None:
        """Wait for the commands being carried out (their answers then go to the spool)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
