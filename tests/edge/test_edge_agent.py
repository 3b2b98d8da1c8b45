"""The edge agent against real Mosquitto brokers of its own: restart, refusals, ids."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import wait_for

from control.stack import Mosquitto
from edge.agent import DeviceAgent, Envelope
from edge.settings import EdgeSettings
from safecity.acks import Ack
from safecity.errors import MqttError
from safecity.mqtt import FleetClient, Will
from safecity.settings import MqttSettings

DEVICES = 12


def topic(device_id: str, channel: str = "telemetry") -> str:
    """A device's own topic (the broker's ACL lets a device publish only under its id)."""
    return f"safecity/v1/edgetest/d1/noise/{device_id}/{channel}"


class Receiver:
    """A persistent-session QoS 1 subscriber (paho's own thread; survives broker restarts)."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.topic = topic
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"rx-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )  # fmt: skip
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.username_pw_set("_api", broker.secret("_api"))  # read-only account
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[str, bytes]]:
        def enough() -> bool:
            with self.lock:
                return len(set(self.got)) >= count

        wait_for(enough, timeout, f"{count} distinct messages", interval=0.05)
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _publish_for(agents: list[DeviceAgent], sent: dict[str, int], seconds: float) -> None:
    """Each agent submits its next numbered message every 5 ms for `seconds`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        for agent in agents:
            seq = sent[agent.client_id]
            body = json.dumps({"d": agent.client_id, "s": seq}).encode()
            agent.submit(Envelope(topic(agent.client_id), body,
                                  {"d": agent.client_id, "s": seq}))  # fmt: skip
            sent[agent.client_id] = seq + 1
        await asyncio.sleep(0.005)


async def _fleet_through_a_restart(broker: Mosquitto, agents: list[DeviceAgent]) -> dict[str, int]:
    """Publish, stop the broker (the agents spool), start it again, publish, close: how many
    messages each device sent."""
    for agent in agents:
        agent.start()
    for agent in agents:
        assert await agent.client.wait_connected(5)
    sent = dict.fromkeys((a.client_id for a in agents), 0)
    await _publish_for(agents, sent, 0.5)
    await asyncio.to_thread(broker.stop)
    await _publish_for(agents, sent, 1.0)  # broker down: the agents spool
    spooled_while_down = sum(a.stats.spooled for a in agents)
    assert spooled_while_down > 0
    await asyncio.to_thread(broker.start)
    await _publish_for(agents, sent, 0.5)
    await asyncio.gather(*(a.close() for a in agents))
    assert all(a.stats.left_buffered == 0 for a in agents)
    assert all(a.client.connects >= 2 for a in agents)
    return sent


@pytest.mark.timeout(90)
def test_store_and_forward_survives_a_broker_restart_in_order(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    ids = [f"edge-dev-{i:02d}" for i in range(DEVICES)]
    broker.provision(*ids)
    broker.start()
    try:
        receiver = Receiver(broker, "safecity/v1/edgetest/#")
        mqtt = MqttSettings(host=broker.host, port=broker.port, connect_timeout=2.0)
        edge = EdgeSettings(
            spool_dir=tmp_path / "spool", max_inflight=20, memory_queue=50,
            backoff_min=0.05, backoff_max=0.5, drain_timeout=20.0,
        )  # fmt: skip
        verdicts: dict[str, list[tuple[int, int]]] = {}

        def on_result(message: Envelope, code: int) -> None:
            device, seq = message.meta["d"], message.meta["s"]
            verdicts.setdefault(device, []).append((seq, code))

        async def main() -> dict[str, int]:
            agents = [DeviceAgent(d, mqtt, edge, on_result, password=broker.secret(d)) for d in ids]
            return await _fleet_through_a_restart(broker, agents)

        sent = asyncio.run(main())
        total = sum(sent.values())
        received = receiver.wait_for(total)
        receiver.close()
    finally:
        broker.stop()

    # Every message got exactly one verdict: accepted (nothing refused, nothing lost).
    for device, count in sent.items():
        codes = sorted(verdicts[device])
        assert [seq for seq, _ in codes] == list(range(count))
        assert all(code < 0x80 for _, code in codes)
    # The receiver got everything, each device in order (a resent message may repeat,
    # right after its predecessor, never after a later one).
    firsts: dict[str, list[int]] = {}
    for _topic, payload in received:
        body = json.loads(payload)
        seqs = firsts.setdefault(body["d"], [])
        if body["s"] not in seqs:
            assert not seqs or body["s"] > seqs[-1], (body, seqs[-5:])
            seqs.append(body["s"])
    assert {d: len(s) for d, s in firsts.items()} == sent


@pytest.mark.timeout(60)
def test_puback_refusal_is_recorded_as_failure_and_not_retried(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.provision("acl-dev", "other-dev")
    with broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        results: list[tuple[str, int]] = []

        async def main() -> None:
            agent = DeviceAgent(
                "acl-dev", mqtt, EdgeSettings(spool_dir=tmp_path / "spool"),
                lambda m, code: results.append((m.topic, code)),
                password=broker.secret("acl-dev"),
            )  # fmt: skip
            agent.start()
            assert await agent.client.wait_connected(5)
            agent.submit(Envelope(topic("acl-dev"), b"{}"))
            agent.submit(Envelope(topic("other-dev"), b"{}"))  # another device's topic
            await agent.close(5.0)
            assert agent.stats.refused == 1 and agent.stats.resent == 0

        asyncio.run(main())
    assert dict(results)[topic("other-dev")] == 0x87
    assert dict(results)[topic("acl-dev")] < 0x80


@pytest.mark.timeout(60)
def test_will_is_published_when_a_device_vanishes(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.provision("will-dev")
    with broker:
        receiver = Receiver(broker, topic("+", "status"))
        mqtt = MqttSettings(host=broker.host, port=broker.port)

        async def main() -> list[tuple[str, bytes]]:
            client = FleetClient(
                mqtt, "will-dev", username="will-dev", password=broker.secret("will-dev"),
                will=lambda: Will(topic("will-dev", "status"), b'{"state":"offline"}'),
            )  # fmt: skip
            client.start()
            assert await client.wait_connected(5)
            # Vanish without DISCONNECT: the broker must send the will.
            link = client._link
            assert link is not None and link.transport is not None
            link.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)

            # Stopped only once the will is out: no DISCONNECT can cancel it.
            got: list[tuple[str, bytes]] = await asyncio.to_thread(receiver.wait_for, 1, 10)
            await client.stop(0.5)
            return got

        got = asyncio.run(main())
        receiver.close()
    assert (topic("will-dev", "status"), b'{"state":"offline"}') in got


def test_zero_length_client_id_is_refused_before_the_broker_sees_it() -> None:
    with pytest.raises(MqttError, match="non-empty"):
        FleetClient(MqttSettings(), "")


class Platform:
    """Stands in for the ingest: reads the devices' telemetry, acks every seq it saw."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen: list[int] = []
        self.payloads: list[bytes] = []
        self.ready = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"ack-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )  # fmt: skip
        self.client.on_connect = lambda c, *a: c.subscribe(topic("+"), qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.username_pw_set("_ingest", broker.secret("_ingest"))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        seq = json.loads(msg.payload)["s"]
        self.seen.append(seq)
        self.payloads.append(bytes(msg.payload))
        device = msg.topic.split("/")[5]
        ack = Ack(telemetry=((seq, seq),))
        client.publish(topic(device, "ack"), ack.to_payload(), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(90)
def test_puback_without_subscribers_is_not_delivered_until_the_platform_acks(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.provision("ack-dev")
    with broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        edge = EdgeSettings(spool_dir=tmp_path / "spool", ack_timeout=1.0, drain_timeout=3.0)
        verdicts: list[tuple[int, int]] = []

        async def run(count: int) -> DeviceAgent:
            agent = DeviceAgent(
                "ack-dev", mqtt, edge, lambda m, code: verdicts.append((m.seq or 0, code)),
                password=broker.secret("ack-dev"), ack_topic=topic("ack-dev", "ack"),
            )  # fmt: skip
            agent.start()
            assert await agent.client.wait_connected(5)
            for seq in range(count):
                body = json.dumps({"s": seq}).encode()
                agent.submit(Envelope(topic("ack-dev"), body, {"s": seq}, seq=seq))
            await agent.close()
            return agent

        # Nobody subscribed: PUBACK 0x10 for each, a success code, yet nothing is settled.
        first = asyncio.run(run(20))
        assert first.stats.no_subscribers >= 20 and first.stats.ack_timeouts >= 1
        assert verdicts == [] and first.stats.left_buffered == 20
        # The platform is there now: the next run sends the spool again and the acks settle it.
        platform = Platform(broker)
        try:
            second = asyncio.run(run(0))
        finally:
            platform.close()
    assert second.stats.left_buffered == 0 and second.stats.confirmed == 20
    assert sorted(verdicts) == [(seq, 0) for seq in range(20)]
    assert sorted(set(platform.seen)) == list(range(20))
    assert not (tmp_path / "spool" / "ack-dev.spool").exists()


@pytest.mark.timeout(60)
def test_an_ack_settles_only_what_was_sent_under_its_seq(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.provision("dup-dev")
    with broker:
        platform = Platform(broker)
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        # One unconfirmed reading at a time: the second message under seq 7 is unsent when the
        # ack for the first arrives, and must go out all the same.
        edge = EdgeSettings(spool_dir=tmp_path / "spool", ack_window=1, drain_timeout=10)

        async def main() -> DeviceAgent:
            agent = DeviceAgent(
                "dup-dev", mqtt, edge, lambda m, code: None,
                password=broker.secret("dup-dev"), ack_topic=topic("dup-dev", "ack"),
            )  # fmt: skip
            agent.start()
            assert await agent.client.wait_connected(5)
            for body in ({"s": 7, "v": 1}, {"s": 7, "v": 2}):
                agent.submit(Envelope(topic("dup-dev"), json.dumps(body).encode(), None, seq=7))
            await agent.close()
            return agent

        try:
            agent = asyncio.run(main())
        finally:
            platform.close()
    assert agent.stats.left_buffered == 0
    assert sorted(json.loads(p)["v"] for p in set(platform.payloads)) == [1, 2]


@pytest.mark.timeout(60)
def test_a_device_may_read_its_own_acks_and_no_one_elses(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.provision("reader-dev", "other-dev")
    with broker:
        granted: list[int] = []
        done = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="reader-dev", protocol=paho.MQTTv5
        )
        client.username_pw_set("reader-dev", broker.secret("reader-dev"))

        def on_subscribe(c: paho.Client, u: Any, mid: int, codes: list[Any], p: Any) -> None:
            granted.extend(code.value for code in codes)
            done.set()

        client.on_subscribe = on_subscribe
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            client.subscribe(
                [
                    (topic("reader-dev", "ack"), 1),
                    (topic("other-dev", "ack"), 1),
                    ("safecity/v1/+/+/+/+/ack", 1),
                    (f"$share/g/{topic('reader-dev', 'ack')}", 1),
                ]
            )
            assert done.wait(10)
        finally:
            client.disconnect()
            client.loop_stop()
    assert granted[0] == 1 and all(code >= 0x80 for code in granted[1:]), granted
