"""Shared pieces of the `safecity` command line: argument types, settings errors, async run.

Every service's `cli.py` registers its own subcommands with these; they live in the
contract package because services may not import the control package.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import functools
import gc
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pydantic import ValidationError

from safecity.errors import CliError

__all__ = [
    "CliError",
    "freeze_at_exit",
    "port",
    "positive_float",
    "positive_int",
    "registry_flag",
    "run_async",
    "settings",
]

S = TypeVar("S")

STOP_DEADLINE_S = 30.0
"""After SIGINT/SIGTERM a service has this long to stop cleanly (the ingest's own stop
bounds its flush, stats and goodbye at 20 s), then its process exits anyway: one whose
launcher was SIGKILLed gets SIGTERM from the kernel, and nobody would ever kill it."""
STOP_DEADLINE_EXIT = 70
"""The exit status of a process that did not stop within its deadline (EX_SOFTWARE)."""


def settings(cls: Callable[..., S], **overrides: Any) -> S:
    """Build settings from env/.env plus the flags given; name the bad variable on error."""
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = [str(p) for p in err["loc"]]
            var = "SAFECITY_" + "__".join(loc).upper()
            flag = "--" + loc[-1].replace("_", "-") if loc else ""
            lines.append(f"invalid setting {var} (or {flag}): {err['msg']}")
        raise CliError("; ".join(lines)) from exc


@functools.cache
def freeze_at_exit() -> None:
    """At exit, keep the interpreter's final collection off the objects made so far (once
    per process, however often a command's `main` runs in it)."""
    # It would walk every object the imports made: 0.2-0.5 s of CPU at every service
    # stop and every command. Objects still go when their last reference does.
    atexit.register(gc.freeze)


def run_async(main: Coroutine[Any, Any, None], *, stop_deadline: float = STOP_DEADLINE_S) -> int:
    """Run a service coroutine; SIGINT/SIGTERM cancel it so it stops cleanly, and end the
    process `stop_deadline` s later if it has not."""

    async def wrapper() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop() -> None:
            task.cancel()
            _exit_after(stop_deadline)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        await main

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(wrapper())
    return 0


@functools.cache
def _exit_after(seconds: float) -> None:
    """Once per process: end it in `seconds` unless it exits by itself first."""

    def expire() -> None:
        logging.getLogger("safecity.cliargs").error(
            "not stopped within the deadline after the stop signal; exiting",
            extra={"stop_deadline_s": seconds},
        )
        logging.shutdown()
        # Whatever still runs (a stop waiting on a service that is gone, a thread that
        # never ends) is abandoned: every service is safe to kill -9 by design.
        os._exit(STOP_DEADLINE_EXIT)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True  # never what keeps a process that is ending alive
    timer.start()


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 meaning any free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535, 0 = any free)")
    return value


def registry_flag(p: argparse.ArgumentParser) -> None:
    """The `--registry PATHS` flag every city-aware command takes."""
    p.add_argument(
        "--registry",
        help="city registry: a file, several comma-separated, or a directory of *.jsonl "
        "(default: Tashkent)",
    )
