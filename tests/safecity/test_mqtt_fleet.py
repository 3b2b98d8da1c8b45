"""The fleet client: capped, jittered backoff at any number of attempts; what it received."""

from __future__ import annotations

import asyncio
import math
import subprocess
from pathlib import Path

import pytest
from support import mosquitto

from control.stack import Mosquitto, free_port
from safecity.mqtt.fleet import (
    CONNECTS_IN_FLIGHT,
    FleetClient,
    Jitter,
    backoff_cap,
    connect_window,
    share_connect_window,
)
from safecity.settings import MqttSettings

RETRIES = 10_000


def test_backoff_cap_grows_then_stays_at_the_maximum_for_any_attempt() -> None:
    caps = [backoff_cap(n, 0.2, 30.0) for n in (0, 1, 2, 7, 8, 1023, 1024, 10**6, 10**12)]
    assert caps[:3] == [0.2, 0.4, 0.8]
    assert caps[3] == pytest.approx(25.6)
    assert caps[4:] == [30.0] * 5
    # A minimum above the maximum never yields less than the minimum.
    assert backoff_cap(5000, 5.0, 1.0) == 5.0


@pytest.mark.timeout(300)
def test_ten_thousand_failed_connects_keep_retrying_without_overflow() -> None:
    """A broker gone for hours: every retry is refused, the backoff never overflows."""
    # Nothing listens on this port: each attempt is a real, quickly refused connect.
    settings = MqttSettings(port=free_port(), connect_timeout=2)
    delays: list[float] = []

    async def main() -> FleetClient:
        done = asyncio.Event()

        async def no_wait(delay: float) -> None:
            # The injected clock: record the delay, never wait for it.
            delays.append(delay)
            if len(delays) >= RETRIES:
                done.set()
            await asyncio.sleep(0)

        client = FleetClient(settings, "backoff-dev", seed=7, sleep=no_wait)
        client.start()
        await asyncio.wait_for(done.wait(), 240)
        await client.stop(0.1)
        return client

    client = asyncio.run(main())
    assert client.failures >= RETRIES
    assert client.connects == 0 and not client.connected
    assert "refused" in client.last_error.lower()
    assert all(math.isfinite(d) and 0.1 <= d <= 30.0 for d in delays)
    # Past the first few attempts the cap is the maximum: full jitter over [0.1, 30].
    tail = delays[100:]
    assert 10.0 < sum(tail) / len(tail) < 20.0
    assert max(tail) > 29.0
    assert sum(delays) > 24 * 3600  # more than a day of backoff, none of it waited


def test_devices_of_one_seed_draw_their_own_delays() -> None:
    # One seed for a whole fleet: the devices must still not retry in lockstep after a
    # broker restart, and a device's own draws are the same in every run.
    draws = {d: [Jitter(42, d).uniform(0.1, 30.0)] for d in ("dev-a", "dev-b", "dev-c")}
    assert len({v[0] for v in draws.values()}) == 3
    again = Jitter(42, "dev-a")
    assert again.uniform(0.1, 30.0) == draws["dev-a"][0]
    spread = [Jitter(42, f"dev-{i}").uniform(0.0, 1.0) for i in range(2000)]
    assert all(0.0 <= x <= 1.0 for x in spread)
    # Uniform: each tenth of the range gets its share (2000 draws, 200 expected each).
    tenths = [sum(1 for x in spread if k / 10 <= x < (k + 1) / 10) for k in range(10)]
    assert min(tenths) > 140 and max(tenths) < 260


@pytest.mark.timeout(90)
def test_messages_acknowledged_before_a_handler_is_set_are_held_for_it(tmp_path: Path) -> None:
    """A persistent session's queued messages follow the CONNACK, and paho acknowledges
    each one: a client with no handler yet holds them until it gets one."""
    device, sent = "late-dev", [f"m{i}" for i in range(5)]
    topic = f"safecity/v1/edgetest/d1/noise/{device}/ack"
    broker = Mosquitto(tmp_path / "broker")
    broker.provision(device)
    with broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)

        def client() -> FleetClient:
            return FleetClient(
                mqtt, device, username=device, password=broker.secret(device),
                subscriptions=[(topic, 1)], session_expiry=300,
            )  # fmt: skip

        async def main() -> tuple[list[str], list[str]]:
            first = client()  # opens the session and subscribes in it
            first.start()
            assert await first.wait_connected(10)
            await asyncio.sleep(1)
            await first.stop()
            publish = [*mosquitto("mosquitto_pub", broker, "_ingest"), "-q", "1", "-t", topic]
            await asyncio.to_thread(
                subprocess.run, [*publish, "-l"], input="\n".join(sent) + "\n", text=True,
                check=True, timeout=30,
            )  # fmt: skip
            late = client()  # no handler while its session's messages arrive
            late.start()
            assert await late.wait_connected(10)
            await asyncio.sleep(2)
            await late.stop()
            # Whatever the broker did not count as delivered comes to the next connection.
            again, held = client(), []
            again.set_on_message(lambda _t, payload: held.append(payload.decode()))
            again.start()
            assert await again.wait_connected(10)
            await asyncio.sleep(2)
            await again.stop()
            handed: list[str] = []
            late.set_on_message(lambda _t, payload: handed.append(payload.decode()))
            return handed, held

        handed, redelivered = asyncio.run(main())
    assert handed + redelivered == sent
    assert handed, "the messages came to the client without a handler and were held"


def test_the_processes_of_a_fleet_share_one_connect_window() -> None:
    """Three processes of 21 attempts each stay below the broker's listen backlog of 100."""

    async def permits(processes: int | None) -> int:
        if processes is not None:
            share_connect_window(processes)
        window, taken = connect_window(), 0
        while not window.locked():
            await window.acquire()
            taken += 1
        return taken

    assert asyncio.run(permits(None)) == CONNECTS_IN_FLIGHT == 64
    assert asyncio.run(permits(3)) == 21
    assert asyncio.run(permits(1000)) == 1
