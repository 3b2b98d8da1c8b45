"""The broker's own rates: live publish->subscribe and the queued-drain ceiling."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._ingest.load import CITY, INGEST, READER, mosquitto_pub
from benchmarks._ingest.probes import proc_stats
from control.stack import LocalStack
from safecity import topics
from tests.helpers.support import mosquitto


def raw_broker_rate(stack: LocalStack, lines: list[bytes], name: str = "bench-raw") -> float:
    """Messages/s from mosquitto_pub (`_simulator`) through the broker to a QoS 1
    mosquitto_sub (`_api`), on a `_services` topic both may use and no ingest reads."""
    topic = topics.service_status_topic(CITY.id, name)
    sub = subprocess.Popen(
        [
            *mosquitto("mosquitto_sub", stack, READER, client_id=f"{name}-sub"),
            *("-q", "1", "-t", topic, "-C", str(len(lines))),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    started = time.monotonic()
    mosquitto_pub(stack, topic, lines, f"{name}-pub")
    if sub.wait(600) != 0:
        raise SystemExit("raw baseline: mosquitto_sub failed (login or ACL?)")
    return len(lines) / (time.monotonic() - started)


def queued_drain_ceiling(
    stack: LocalStack, base: Path, lines: list[bytes], name: str = "bench-ceiling"
) -> tuple[float, float]:
    """(msg/s, subscriber CPU us per message) of the broker draining a pre-queued backlog into
    `mosquitto_sub -q 1` on a persistent session: the ingest's method without the ingest.

    The subscriber (`_api`, MQTT v5, `-c`, session expiry 1 h) subscribes, is SIGSTOPped,
    the whole load is queued in its session, then it is SIGCONTed and timed to its last
    message. This, not the live publish->subscribe rate (set by the publisher), is what the
    broker can hand a consumer.
    """
    topic = topics.service_status_topic(CITY.id, name)
    client = [
        *mosquitto("mosquitto_sub", stack, READER, client_id=f"{name}-sub"),
        *("-q", "1", "-c", "-x", "3600", "-t", topic),
    ]
    # The session and its subscription first (-E: exit once subscribed), so that nothing
    # published from here on can miss it; a probe then shows the subscriber is connected.
    subprocess.run([*client, "-E"], check=True, timeout=30, stdout=subprocess.DEVNULL)
    out = base / f"{name}.out"
    with out.open("wb") as sink:
        sub = subprocess.Popen([*client, "-C", str(len(lines) + 1)], stdout=sink)
    mosquitto_pub(stack, topic, [b"probe"], f"{name}-probe")
    watchdog = threading.Timer(600, sub.kill)
    try:
        deadline = time.monotonic() + 60
        while out.stat().st_size == 0:
            if sub.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("queued-drain ceiling: mosquitto_sub failed (login or ACL?)")
            time.sleep(0.05)
        os.kill(sub.pid, signal.SIGSTOP)
        try:
            mosquitto_pub(stack, topic, lines, f"{name}-pub")
        finally:
            cpu_before = proc_stats(sub.pid)[0]
            started = time.monotonic()
            os.kill(sub.pid, signal.SIGCONT)
        watchdog.start()
        # wait4 returns when the last message is in (mosquitto_sub -C exits on it) and gives
        # the subscriber's CPU, which /proc no longer shows once it is reaped.
        _, status, usage = os.wait4(sub.pid, 0)
        elapsed = time.monotonic() - started
        sub.returncode = os.waitstatus_to_exitcode(status)
    finally:
        watchdog.cancel()
        if sub.returncode is None:
            sub.kill()
            sub.wait()
        out.unlink(missing_ok=True)
    if sub.returncode != 0:
        raise SystemExit(f"queued-drain ceiling: mosquitto_sub exited {sub.returncode}")
    drop_sessions(stack, [f"{name}-sub"], READER)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    return len(lines) / elapsed, cpu / len(lines) * 1e6


def drop_sessions(stack: LocalStack, client_ids: Sequence[str], username: str = INGEST) -> None:
    """End the persistent sessions of finished consumers (clean start, expiry 0).

    A stopped worker's session stays subscribed and would queue every later load of the
    run (broker memory and CPU the next contender would pay for).
    """
    for client_id in client_ids:
        subprocess.run(
            [
                *mosquitto("mosquitto_sub", stack, username, client_id=client_id),
                *("-t", topics.service_status_topic(CITY.id, "bench-none"), "-E"),
            ],
            check=True,
            timeout=30,
            stdout=subprocess.DEVNULL,
        )
