"""The fleet client: capped, jittered backoff at any number of attempts; what it received."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import mosquitto, wait_for_async

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


def _device_broker(tmp_path: Path, *devices: str) -> Mosquitto:
    broker = Mosquitto(tmp_path / "broker")
    for device in devices:
        broker.provision(device)
    return broker


def _command_topic(device: str) -> str:
    return f"safecity/v1/edgetest/d1/noise/{device}/ack"


async def _connected(
    broker: Mosquitto, mqtt: MqttSettings, device: str, **options: Any
) -> FleetClient:
    """A started client logged in as `device` with its own secret, once connected."""
    client = FleetClient(mqtt, device, username=device, password=broker.secret(device), **options)
    client.start()
    assert await client.wait_connected(10), client.last_error
    return client


@pytest.mark.timeout(120)
def test_an_idle_client_outlives_its_keepalive_and_notices_a_frozen_broker(
    tmp_path: Path,
) -> None:
    """Keep-alive seen from outside: an idle client is not dropped by the broker (which
    drops a client silent for 1.5 keep-alives), and a broker that stops answering
    (SIGSTOP) is noticed, reported, and connected to again once it runs (SIGCONT)."""
    device = "idle-dev"
    broker = _device_broker(tmp_path, device)
    lost: list[str] = []
    with broker:
        pid = broker.pid
        assert pid is not None
        mqtt = MqttSettings(host=broker.host, port=broker.port, keepalive=5, connect_timeout=2)

        async def main() -> tuple[int, str, int, bool]:
            client = await _connected(
                broker, mqtt, device, on_connection_lost=lost.append, backoff_max=1.0
            )
            # Two keep-alives without a publish: without its pings, the broker would have
            # dropped it 2.5 s before the end (it drops a client silent for 7.5 s).
            await asyncio.sleep(10)
            idle = client.connects
            # Before the freeze (after it, the broker drops the frozen connection too).
            idle_log = broker.log_path.read_text()
            os.kill(pid, signal.SIGSTOP)
            try:
                await wait_for_async(lambda: lost, 20, "the keep-alive timeout", 0.05)  # ~10 s
            finally:
                os.kill(pid, signal.SIGCONT)
            await wait_for_async(lambda: client.connects >= 2, 30, "a reconnect", 0.05)
            back = client.connected
            await client.stop(1.0)
            return idle, idle_log, client.connects, back

        idle, idle_log, connects, back = asyncio.run(main())
    assert idle == 1, "the idle client was dropped"
    assert f"Client {device} has exceeded timeout" not in idle_log
    assert lost[:1] == ["keepalive timeout"]
    assert connects == 2 and back


@pytest.mark.timeout(90)
def test_an_incoming_qos1_message_is_handed_over_and_acknowledged_once(tmp_path: Path) -> None:
    """A command published from outside reaches the handler once; the acknowledgement
    reached the broker: the same persistent session, reconnected, gets nothing again."""
    device = "cmd-dev"
    topic = _command_topic(device)
    broker = _device_broker(tmp_path, device)
    got: list[bytes] = []
    with broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)

        async def session() -> FleetClient:
            return await _connected(
                broker, mqtt, device, subscriptions=[(topic, 1)], session_expiry=300,
                on_message=lambda _t, payload: got.append(payload),
            )  # fmt: skip

        async def main() -> None:
            first = await session()
            await asyncio.sleep(0.5)  # the SUBACK
            publish = [*mosquitto("mosquitto_pub", broker, "_ingest"), "-q", "1", "-t", topic]
            await asyncio.to_thread(
                subprocess.run, [*publish, "-m", "reboot"], check=True, timeout=30
            )
            await wait_for_async(lambda: got, 5, "the message", 0.05)
            await asyncio.sleep(0.5)
            await first.stop()
            again = await session()  # an unacknowledged message would come again now
            await asyncio.sleep(2)
            await again.stop()

        asyncio.run(main())
    assert got == [b"reboot"]


@pytest.mark.timeout(60)
def test_a_refused_connack_is_named_and_the_password_asked_again(tmp_path: Path) -> None:
    device = "pw-dev"
    broker = _device_broker(tmp_path, device)
    with broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        answers = iter(["wrong", "still wrong"])

        def source() -> str:
            # Two wrong secrets, then the right one (a rotated secret picked up).
            return next(answers, broker.secret(device))

        async def main() -> tuple[FleetClient, FleetClient]:
            wrong = FleetClient(mqtt, device, username=device, password="nope", backoff_max=0.2)
            wrong.start()
            assert not await wrong.wait_connected(1.5)
            refused_meanwhile = wrong.refused
            await wrong.stop(0.5)
            assert refused_meanwhile
            rotating = FleetClient(mqtt, device, username=device, password=source,
                                   backoff_min=0.05, backoff_max=0.2)  # fmt: skip
            rotating.start()
            assert await rotating.wait_connected(10), rotating.last_error
            await rotating.stop(0.5)
            return wrong, rotating

        wrong, rotating = asyncio.run(main())
    assert wrong.connects == 0 and wrong.failures >= 1
    assert "broker refused 'pw-dev'" in wrong.last_error
    assert "Not authorized (0x87)" in wrong.last_error or "Bad user name" in wrong.last_error
    assert rotating.failures == 2 and rotating.connects == 1 and not rotating.refused


@pytest.mark.timeout(60)
def test_a_disconnect_from_the_broker_is_reported_with_its_reason(tmp_path: Path) -> None:
    """A packet over the broker's maximum (16 KiB) gets DISCONNECT 0x95: the client
    reports the broker's reason and comes back."""
    device = "big-dev"
    broker = _device_broker(tmp_path, device)
    lost: list[str] = []
    with broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)

        async def main() -> int:
            client = await _connected(
                broker, mqtt, device, on_connection_lost=lost.append, backoff_min=0.5
            )
            topic = f"safecity/v1/edgetest/d1/noise/{device}/telemetry"
            assert client.publish(topic, b"x" * 20_000) is not None
            await wait_for_async(lambda: client.connects >= 2, 10, "a reconnect", 0.05)
            await client.stop(1.0)
            return client.connects

        connects = asyncio.run(main())
    assert lost == ["disconnected by the broker: Packet too large (0x95)"]
    assert connects == 2
