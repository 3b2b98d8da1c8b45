"""Commands on the hardened broker (real Mosquitto 2.0.11, MQTT v5): only the command role
publishes commands; a device reads only its own and answers only for itself; the
refusals are security events (the guard plugin, broker/guard.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from brokerkit import SecureBroker, connected, run, start_secure_broker
from rawmqtt import PUBACK, RawClient
from support import mosquitto, wait_for

from broker.identity import Role, service_username
from ingest.watch import BrokerEvents
from safecity import topics
from safecity.errors import MqttError

NOT_AUTHORIZED = 0x87
COMMAND = service_username(Role.COMMAND)


def _address(broker: SecureBroker, device_id: str) -> tuple[str, str, str, str]:
    device = broker.city.device(device_id)
    assert device is not None
    return broker.city.id, device.district, device.kind, device_id


def cmd_topic(broker: SecureBroker, device_id: str) -> str:
    return topics.command_topic(*_address(broker, device_id))


def result_topic(broker: SecureBroker, device_id: str) -> str:
    return topics.result_topic(*_address(broker, device_id))


def raw_publish(broker: SecureBroker, username: str, topic: str) -> int:
    """PUBACK reason of one QoS 1 publish by `username` (a device: its own client id)."""
    client = RawClient(broker.mosquitto.host, broker.mosquitto.port)
    try:
        client_id = username if not username.startswith("_") else f"probe-{username[1:]}"
        assert client.connect(client_id, username, broker.secrets[username]).reason == 0
        answer = client.publish(topic, b'{"x": 1}')
        assert answer is not None and answer.kind == PUBACK, answer
        return answer.reason
    finally:
        client.close()


def test_command_role_commands_a_device_and_reads_its_result(secure: SecureBroker) -> None:
    device = secure.devices[10]

    async def scenario() -> tuple[list[str], list[str]]:
        agent = await connected(secure.settings(device), device)
        await agent.subscribe([(cmd_topic(secure, device), 1)])
        service = await connected(secure.settings(COMMAND), "safecity-api-commands-t1")
        await service.subscribe([(topics.result_filter(secure.city.id), 1)])
        sent = await service.publish(cmd_topic(secure, device), b"cmd", expiry_s=60)
        assert sent.reason_code == 0, sent
        got = await agent.inbox.get_batch(10, 5)
        assert (await agent.publish(result_topic(secure, device), b"done")).reason_code == 0
        answers = await service.inbox.get_batch(10, 5)
        await agent.disconnect()
        await service.disconnect()
        return [m.topic for m in got], [m.topic for m in answers]

    got, answers = run(scenario())
    assert got == [cmd_topic(secure, device)]
    assert answers == [result_topic(secure, device)]


def test_device_cannot_read_another_devices_commands(secure: SecureBroker) -> None:
    spy, victim = secure.devices[11], secure.devices[12]

    async def scenario() -> tuple[list[int], int, int]:
        client = await connected(secure.settings(spy), spy)
        filters = [
            cmd_topic(secure, victim),
            f"safecity/v1/{secure.city.id}/+/+/+/cmd",
            "safecity/v1/+/+/+/+/cmd",
            result_topic(secure, victim),
            "$share/x/" + cmd_topic(secure, spy),
        ]
        with pytest.raises(MqttError, match="subscription refused") as refused:
            await client.subscribe([(f, 1) for f in filters])
        codes = [int(c) for c in str(refused.value).split("codes [")[1].rstrip("]").split(",")]
        service = await connected(secure.settings(COMMAND), "safecity-api-commands-t2")
        sent = await service.publish(cmd_topic(secure, victim), b"cmd", expiry_s=60)
        received = len(await client.inbox.get_batch(10, 0.5))
        await client.disconnect()
        await service.disconnect()
        return codes, sent.reason_code, received

    codes, sent, received = run(scenario())
    assert codes == [NOT_AUTHORIZED] * 5
    # Nobody may read the victim's commands: no subscriber at all (0x10), nothing received.
    assert sent == 0x10 and received == 0


def test_only_the_command_role_may_publish_commands(secure: SecureBroker) -> None:
    device, other = secure.devices[13], secure.devices[14]
    # A device: neither to another device, nor to itself.
    assert raw_publish(secure, device, cmd_topic(secure, other)) == NOT_AUTHORIZED
    assert raw_publish(secure, device, cmd_topic(secure, device)) == NOT_AUTHORIZED
    # Other services: the API's read role and the ingest.
    for role in (Role.API, Role.INGEST):
        username = service_username(role)
        assert raw_publish(secure, username, cmd_topic(secure, device)) == NOT_AUTHORIZED
    # The command role: accepted (no subscriber here: 0x10, a success code).
    assert raw_publish(secure, COMMAND, cmd_topic(secure, device)) < 0x80


def test_device_answers_only_for_itself(secure: SecureBroker) -> None:
    device, other = secure.devices[15], secure.devices[16]
    assert raw_publish(secure, device, result_topic(secure, other)) == NOT_AUTHORIZED
    assert raw_publish(secure, device, result_topic(secure, device)) < 0x80
    # The command role never forges a device's result either.
    assert raw_publish(secure, COMMAND, result_topic(secure, device)) == NOT_AUTHORIZED


def _refused_attempts(broker: SecureBroker, spy: str, victim: str) -> list[str]:
    """With Mosquitto's own clients: a command and a result for `victim`, then a subscribe
    to its commands; what each client reported (every one refused)."""

    def login(tool: str) -> list[str]:
        secret = broker.secrets[spy]
        return [*mosquitto(tool, broker.mosquitto, spy, secret=secret, client_id=spy), "-q", "1"]

    said = []
    for topic in (cmd_topic(broker, victim), result_topic(broker, victim)):
        run_ = subprocess.run([*login("mosquitto_pub"), "-t", topic, "-m", "{}"],
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        said.append(run_.stderr.strip())
    run_ = subprocess.run([*login("mosquitto_sub"), "-t", cmd_topic(broker, victim), "-W", "2"],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    said.append(run_.stderr.strip())
    return said


def _new_lines(broker: SecureBroker, spy: str, before: int) -> list[str]:
    """The broker's log since `before`, once the spy's last disconnect is in it."""
    log = broker.mosquitto.log_path
    gone = f"Client {spy} disconnected"
    wait_for(lambda: log.read_text()[before:].count(gone) >= 3, 10, "the spy's disconnects")
    return log.read_text()[before:].splitlines()


def test_refused_command_traffic_is_a_security_event(tmp_path: Path) -> None:
    """At the platform's log levels, with Mosquitto's own clients as a device: a command
    for another device, a result for it, a subscribe to its commands; each is refused by
    the guard plugin and logged, and the broker-log watcher makes each an `acl_denied`
    event of the device that tried (docs/commands.md)."""
    broker = start_secure_broker(tmp_path, mutual_tls=False)
    try:
        spy, victim = broker.devices[20], broker.devices[21]
        refused = ["Warning: Publish 1 failed: Not authorized."] * 2 + [
            "All subscription requests were denied."
        ]
        assert _refused_attempts(broker, spy, victim) == refused
        lines = _new_lines(broker, spy, 0)
        assert not [line for line in lines if "log_type debug" in line or "Denied PUBLISH" in line]
        points = BrokerEvents(broker.city).points(lines)
        assert [(p.tags["type"], p.tags.get("device_id"), p.fields["detail"]) for p in points] == [
            ("acl_denied", spy, f"topic {cmd_topic(broker, victim)}"),
            ("acl_denied", spy, f"topic {result_topic(broker, victim)}"),
            ("acl_denied", spy, f"subscribe {cmd_topic(broker, victim)}"),
        ]
        # What the device may still do (the guard defers): answer for itself.
        assert raw_publish(broker, spy, result_topic(broker, spy)) < 0x80
    finally:
        broker.mosquitto.stop()
