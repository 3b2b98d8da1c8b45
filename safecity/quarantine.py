"""Poison quarantine: a message that keeps making a stage fail is set aside, not retried for ever.

Every consumer of device topics (the ingest, the alerts service) runs its per-message
stages through `attempt`: an exception is retried a bounded number of times, and when
the message still fails it becomes a `Poisoned` outcome naming the stage and the
exception's type. The consumer then dead-letters (or records) it as `poison`, acks it
and keeps consuming: without this, one message whose handling raises would stop the
worker, the broker would redeliver it to the restarted worker, and so on for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from safecity.mqtt import Incoming
from safecity.readings import Rejection, RejectReason

log = logging.getLogger("safecity.quarantine")

T = TypeVar("T")

STAGE_HOOKS: list[Callable[[str, Incoming], None]] = []
"""Called with (stage, message) before a stage handles a message. Empty in production;
the poison tests install one that raises on a chosen message (tests/helpers)."""

INFRASTRUCTURE: tuple[type[BaseException], ...] = (OSError,)
"""Failures of the machine, not of a message: never quarantined, they propagate (a full
disk would otherwise turn every message into poison)."""


@dataclass(frozen=True, slots=True)
class Poisoned:
    """A message that failed `stage` on every attempt; `error` is the exception's type."""

    stage: str
    error: str
    detail: str
    attempts: int

    def rejection(self, seq: int | None = None) -> Rejection:
        """The dead letter's reason and detail (the seq the message claimed, if known)."""
        text = f"stage {self.stage} raised {self.error} {self.attempts} times: {self.detail}"
        return Rejection(RejectReason.POISON, text[:300], seq)


def run_hooks(stage: str, message: Incoming) -> None:
    """The installed test hooks for one message (none in production)."""
    for hook in STAGE_HOOKS:
        hook(stage, message)


def attempt(
    stage: str, handle: Callable[[Incoming], T], message: Incoming, attempts: int
) -> T | Poisoned:
    """`handle(message)`, retried up to `attempts` times in all; `Poisoned` if every try
    raised (infrastructure errors propagate)."""
    failure: Exception | None = None
    for _ in range(max(1, attempts)):
        try:
            run_hooks(stage, message)
            return handle(message)
        except INFRASTRUCTURE:
            raise
        except Exception as exc:  # any failure of one message: counted, never fatal
            failure = exc
            log.warning(
                "stage failed on a message",
                extra={"stage": stage, "topic": message.topic, "error": type(exc).__name__},
            )
    assert failure is not None
    return poisoned(stage, failure, attempts)


def poisoned(stage: str, failure: BaseException, attempts: int) -> Poisoned:
    """The outcome of a message that failed `stage` `attempts` times with `failure` last."""
    log.error(
        "message quarantined as poison",
        extra={"stage": stage, "error": type(failure).__name__, "attempts": attempts},
    )
    return Poisoned(stage, type(failure).__name__, str(failure)[:200], max(1, attempts))
