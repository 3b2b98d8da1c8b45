"""A reconnect storm: a city of a thousand devices, each its own MQTT connection, account
and client id, loses its broker to kill -9; the broker comes back on the same data.

Every device must come back by itself (jittered backoff: not all at once, not never) and
announce itself online again; nothing the platform acknowledged may be lost: the
ledger of what the simulator sent, checked against InfluxDB, finds no loss.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from faults import new_db, settled_check
from support import wait_for

from control.stack import LocalStack
from edge.settings import EdgeSettings
from safecity import registry
from safecity.citygen import generate
from safecity.topics import Channel
from simulators.fleet import FleetStats, Sent, run
from simulators.settings import SimulatorSettings

DEVICES = 1000
CITY = generate("stormville", DEVICES, 5)


@pytest.mark.timeout(240)
def test_every_device_comes_back_after_kill_9_and_nothing_acked_is_lost(
    tmp_path: Path, ingest_factory
) -> None:
    city_file = tmp_path / "city.jsonl"
    registry.write(CITY, city_file)
    with LocalStack(tmp_path / "stack", city=CITY) as stack:
        db = new_db(stack)
        worker = ingest_factory(
            stack, db, "storm", SAFECITY_REGISTRY=str(city_file), SAFECITY_SHARE_GROUP=""
        ).start()
        births: dict[str, float] = {}

        def on_sent(sent: Sent) -> None:
            message = sent.message
            if message.channel is Channel.STATUS and sent.result == "accepted":
                births[message.device_id] = time.monotonic()

        settings = SimulatorSettings(
            mqtt=stack.mosquitto.mqtt_settings("_simulator"),
            seed=3,
            ledger=tmp_path / "ledger.jsonl",
            edge=EdgeSettings(
                spool_dir=tmp_path / "spool",
                secrets_file=stack.mosquitto.secrets_file,
                backoff_min=0.2,
                backoff_max=4.0,
                ack_timeout=5.0,
                drain_timeout=60.0,
            ),
        )
        fleet = Fleet(settings, on_sent)
        fleet.start()
        wait_for(lambda: len(births) == DEVICES, 120, "every device online")
        time.sleep(2.0)  # readings flowing, some in flight
        stack.mosquitto.kill()
        killed = time.monotonic()
        time.sleep(1.0)
        stack.mosquitto.start()
        wait_for(
            lambda: sum(1 for t in births.values() if t > killed) == DEVICES,
            90,
            "every device back online after the restart",
        )
        back = sorted(t - killed for t in births.values())
        time.sleep(3.0)  # readings after the storm, too
        stats = fleet.stop()
        # The goodbyes of the stop are acknowledged by the broker, written a moment later.
        ledger: Path = settings.ledger  # type: ignore[assignment]
        report = settled_check(stack, db, ledger, worker.deadletter_dir)
    print(f"back after {back[0]:.1f}..{back[-1]:.1f} s")
    # Every device reconnected by itself, spread over time rather than in lockstep.
    assert stats.edge.connects >= 2 * DEVICES
    assert back[-1] - back[0] > 0.5
    assert report.acknowledged > DEVICES
    assert report.lost == [] and report.duplicated == [] and report.value_mismatch == []
    assert stats.failed == 0


class Fleet:
    """`simulators.fleet.run` in a thread of its own, stopped on request."""

    def __init__(self, settings: SimulatorSettings, on_sent: object) -> None:
        self.settings = settings
        self.on_sent = on_sent
        self.stats = FleetStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def stop(self) -> FleetStats:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(120)
        return self.stats

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            self.stats = await run(
                self.settings,
                CITY,
                stop=self._stop,
                on_sent=self.on_sent,  # type: ignore[arg-type]
            )

        asyncio.run(body())
