"""A service process and its stop signal, from outside: `run_async` in a real Python child,
sent a real SIGTERM (what the kernel sends when its launcher is SIGKILLed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from safecity.cliargs import STOP_DEADLINE_EXIT

CHILD = """
import asyncio, sys
from safecity.cliargs import run_async
from safecity.observability import configure_logging

async def service() -> None:
    print("ready", flush=True)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        if {hangs}:  # a stop that waits on something gone for ever
            await asyncio.Event().wait()
        raise

configure_logging("probe", "info")
sys.exit(run_async(service(), stop_deadline={deadline}))
"""


def _started(hangs: bool, deadline: float) -> subprocess.Popen[str]:
    code = textwrap.dedent(CHILD.format(hangs=hangs, deadline=deadline))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stop_that_hangs_ends_at_the_deadline_and_says_so(signum: signal.Signals) -> None:
    proc = _started(hangs=True, deadline=1.0)
    sent = time.monotonic()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == STOP_DEADLINE_EXIT, stderr
    assert took >= 1.0
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    said = [r for r in records if r.get("level") == "error"]
    assert [r["msg"] for r in said] == [
        "not stopped within the deadline after the stop signal; exiting"
    ], stderr
    assert said[0]["stop_deadline_s"] == 1.0


def test_a_clean_stop_exits_at_once_with_0() -> None:
    proc = _started(hangs=False, deadline=60.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert time.monotonic() - sent < 20  # not held until the deadline
    assert "deadline" not in stderr
