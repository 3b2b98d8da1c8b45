"""The local stack launcher against real Mosquitto and InfluxDB processes."""

from __future__ import annotations

import asyncio
import os
import queue
import secrets
import stat
import threading
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from control.stack import (
    DEFAULT_MOSQUITTO_CONF,
    Influxd,
    LocalStack,
    Mosquitto,
    free_port,
    mqtt_connack_reason,
    render_mosquitto_conf,
)
from safecity.errors import MqttError, StackError
from safecity.mqtt import MqttClient
from safecity.settings import MqttSettings

WAIT = 10.0


# The ingest account may read safecity/v1/# and write its `_services` status topics: one
# client can publish and receive there. Nothing outside safecity/v1/ is allowed anyone.
SERVICE = "_ingest"


def _topic(name: str) -> str:
    return f"safecity/v1/test/_services/{name}"


class _Client:
    """A paho MQTT v5 client (VERSION2 callbacks) whose events land in queues to wait on."""

    def __init__(
        self,
        broker: Mosquitto,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry: int | None = None,
        username: str = SERVICE,
    ) -> None:
        host, port = broker.host, broker.port
        self.connacks: queue.Queue[tuple[bool, ReasonCode]] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        self.puback_event = threading.Condition()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.username_pw_set(username, broker.secret(username))
        props: Properties | None = None
        if session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry
        self.client.connect(host, port, keepalive=30, clean_start=clean_start, properties=props)
        self.client.loop_start()
        self.session_present, reason = self.connacks.get(timeout=WAIT)
        assert not reason.is_failure, reason

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connacks.put((flags.session_present, reason_code))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.subacks.put(reason_codes)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self.puback_event:
            self.pubacks[mid] = reason_code
            self.puback_event.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, _mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        codes = self.subacks.get(timeout=WAIT)
        assert [c.value for c in codes] == [qos]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        with self.puback_event:
            assert self.puback_event.wait_for(lambda: info.mid in self.pubacks, timeout=WAIT)
            return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _query(influxd: Influxd, db: str, q: str) -> dict[str, Any]:
    response = httpx.get(
        f"{influxd.url}/query", params={"db": db, "q": q, "epoch": "ms"}, timeout=10
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def test_stack_is_up_on_distinct_loopback_ports(stack: LocalStack) -> None:
    assert stack.mosquitto.alive
    assert stack.influxd.alive
    assert stack.mqtt_host == "127.0.0.1"
    assert stack.mqtt_port != stack.influxd.port
    assert stack.influxd.rpc_port not in (8088, stack.influxd.port)
    assert stack.influx_url == f"http://127.0.0.1:{stack.influxd.port}"
    assert stack.mosquitto.conf_path.is_file()


def test_broker_accepts_mqtt5_and_acks_qos1(mosquitto: Mosquitto) -> None:
    topic = _topic(secrets.token_hex(4))
    client = _Client(mosquitto, f"test-qos1-{secrets.token_hex(4)}")
    try:
        # With no subscriber Mosquitto acks 0x10 "no matching subscribers", not 0.
        client.subscribe(topic)
        reason = client.publish(topic, b"hello")
        assert reason.value == 0
        message = client.messages.get(timeout=WAIT)
        assert (message.topic, message.payload, message.qos) == (topic, b"hello", 1)
    finally:
        client.close()


def test_broker_refuses_qos2_subscription_downgrade_to_1(mosquitto: Mosquitto) -> None:
    # max_qos 1 in broker/mosquitto.conf: a QoS 2 subscription is granted QoS 1.
    client = _Client(mosquitto, f"test-qos2-{secrets.token_hex(4)}")
    try:
        client.client.subscribe(_topic(secrets.token_hex(4)), 2)
        codes = client.subacks.get(timeout=WAIT)
        assert [c.value for c in codes] == [1]
    finally:
        client.close()


def test_influxd_ping(influxd: Influxd) -> None:
    response = httpx.get(f"{influxd.url}/ping", timeout=5)
    assert response.status_code == 204


def test_influxd_write_and_read_back(influxd: Influxd, influx_db: str) -> None:
    response = httpx.post(
        f"{influxd.url}/write",
        params={"db": influx_db, "precision": "ms"},
        content=b"probe,city=tashkent value=1.5,seq=7i 1700000000123\n",
        timeout=10,
    )
    assert response.status_code == 204, response.text
    body = _query(influxd, influx_db, 'SELECT "value", "seq" FROM "probe"')
    series = body["results"][0]["series"][0]
    assert series["name"] == "probe"
    assert series["columns"] == ["time", "value", "seq"]
    assert series["values"] == [[1700000000123, 1.5, 7]]


def test_influx_db_fixture_gives_fresh_databases(influxd: Influxd, influx_db: str) -> None:
    body = _query(influxd, influx_db, "SHOW DATABASES")
    names = [row[0] for row in body["results"][0]["series"][0]["values"]]
    assert influx_db in names
    body = _query(influxd, influx_db, "SHOW MEASUREMENTS")
    assert "series" not in body["results"][0]


def test_stop_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    local = LocalStack(tmp_path, mqtt_port=free_port(), influx_port=0)
    with local:
        pids = [local.mosquitto.pid, local.influxd.pid]
        assert all(pid is not None for pid in pids)
    for pid in pids:
        assert pid is not None
        _assert_gone(pid)
    assert not local.mosquitto.alive
    assert not local.influxd.alive
    assert local.mosquitto.process.returncode == 0
    assert local.influxd.process.returncode == 0
    local.stop()
    local.stop()


def test_stop_before_start_is_a_no_op(tmp_path: Path) -> None:
    LocalStack(tmp_path).stop()


@pytest.mark.parametrize(
    ("cls", "package"),
    [(Mosquitto, "mosquitto"), (Influxd, "influxdb")],
)
def test_missing_binary_names_the_debian_package(
    tmp_path: Path, cls: type[Mosquitto] | type[Influxd], package: str
) -> None:
    with pytest.raises(StackError) as excinfo:
        cls(tmp_path, binary="safecity-no-such-binary")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "not found" in message
    assert f"'{package}'" in message
    assert f"apt-get install {package}" in message
    with pytest.raises(StackError, match=f"apt-get install {package}"):
        cls(tmp_path, binary=tmp_path / "bin" / "nothing-here")


def test_child_exiting_during_startup_reports_its_log(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, extra_config=["no_such_option true"])
    with pytest.raises(StackError, match="exited during start-up") as excinfo:
        broker.start()
    assert 'Unknown configuration variable "no_such_option"' in str(excinfo.value)
    assert not broker.alive
    broker.stop()


def test_port_in_use_is_reported_not_mistaken_for_ready(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    broker = Mosquitto(tmp_path / "m", mosquitto.port)
    with pytest.raises(StackError, match=f"127.0.0.1:{mosquitto.port} is already in use"):
        broker.start()
    assert broker.pid is None
    db = Influxd(tmp_path / "i", influxd.port)
    with pytest.raises(StackError, match="already in use"):
        db.start()
    assert db.pid is None
    assert mosquitto.alive
    assert influxd.alive


def test_stop_of_a_paused_process_is_graceful(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    try:
        broker.pause()
        broker.stop(timeout=5)
        # 0, not -SIGKILL: the SIGTERM was delivered once the process was continued.
        assert broker.process.returncode == 0
    finally:
        broker.stop()


def test_kill_then_restart(tmp_path: Path) -> None:
    db = Influxd(tmp_path).start()
    try:
        pid = db.pid
        assert pid is not None
        db.kill()
        assert db.process.returncode == -9
        _assert_gone(pid)
        db.restart()
        assert db.alive
        assert db.pid != pid
        assert httpx.get(f"{db.url}/ping", timeout=5).status_code == 204
    finally:
        db.stop()


def test_persistent_session_survives_graceful_broker_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    topic = _topic("persist-queue")
    sub_id = "test-persistent-subscriber"
    try:
        sub = _Client(broker, sub_id, clean_start=False, session_expiry=3600)
        sub.subscribe(topic)
        sub.close()

        pub = _Client(broker, "test-publisher")
        reason = pub.publish(topic, b"queued-while-offline")
        assert not reason.is_failure
        pub.close()

        broker.restart()

        sub = _Client(broker, sub_id, clean_start=False, session_expiry=3600)
        try:
            assert sub.session_present
            message = sub.messages.get(timeout=WAIT)
            assert (message.topic, message.payload) == (topic, b"queued-while-offline")
        finally:
            sub.close()
    finally:
        broker.stop()


def test_render_mosquitto_conf_adapts_the_shared_config(tmp_path: Path) -> None:
    template = Path(__file__).resolve().parents[2].joinpath("broker", "mosquitto.conf")
    rendered = render_mosquitto_conf(
        template.read_text(),
        host="127.0.0.1",
        port=12345,
        data_dir=tmp_path,
        user="someone",
        extra_lines=["password_file /x"],
    )
    lines = rendered.splitlines()
    assert "listener 12345 127.0.0.1" in lines
    assert "listener 1883" not in lines
    assert f"persistence_location {tmp_path}/" in lines
    assert "persistence_location /mosquitto/data/" not in lines
    assert "user someone" in lines
    assert f"log_dest file {tmp_path / 'mosquitto.log'}" in lines
    assert lines[-1] == "password_file /x"


# --- no anonymous MQTT anywhere ------------------------------------------------------

NOT_AUTHORIZED = 0x87


def test_session_broker_refuses_anonymous_clients(stack: LocalStack) -> None:
    host, port = stack.mqtt_host, stack.mqtt_port
    assert mqtt_connack_reason(host, port, 5) == NOT_AUTHORIZED
    assert mqtt_connack_reason(host, port, 5, username="_ingest") == NOT_AUTHORIZED
    assert mqtt_connack_reason(host, port, 5, username="_ingest", password="x") == NOT_AUTHORIZED
    device = stack.city.devices[0].id
    for username in ("_ingest", "_api", "_alerts", "_simulator", device):
        # A device logs in only under its own client id (the broker pins it).
        client_id = username if username == device else None
        reason = mqtt_connack_reason(
            host, port, 5, username=username, password=stack.secret(username), client_id=client_id
        )
        assert reason == 0, (username, reason)
    rendered = [ln.strip() for ln in stack.mosquitto.conf_path.read_text().splitlines()]
    assert "allow_anonymous false" in rendered
    assert not any(ln.startswith("allow_anonymous true") for ln in rendered)


def test_session_broker_tls_listener_needs_the_ca_and_an_account(stack: LocalStack) -> None:
    assert stack.mqtt_tls_port is not None and stack.ca_file is not None

    async def connect(settings: MqttSettings) -> None:
        client = MqttClient(settings, f"test-tls-{secrets.token_hex(3)}")
        try:
            await client.connect()
        finally:
            await client.disconnect()

    asyncio.run(connect(stack.mqtt_settings("_api", tls=True)))
    anonymous = MqttSettings(
        host=stack.mqtt_host, port=stack.mqtt_tls_port, tls_ca=stack.ca_file, connect_timeout=5
    )
    with pytest.raises(MqttError, match="Not authorized"):
        asyncio.run(connect(anonymous))


def test_identity_files_are_private_and_reused(tmp_path: Path) -> None:
    first = Mosquitto(tmp_path)
    names = {p.name for p in first.identity_dir.iterdir()}
    assert {"credentials.json", "dynamic-security.json", "admin.json", "secrets.json"} <= names
    for path in first.identity_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (first.certs_dir / "ca.key", first.certs_dir / "server.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # Only hashes in the store and the broker files; the secrets only in the 0600 file.
    secret = first.secret("_ingest")
    for name in ("credentials.json", "dynamic-security.json"):
        assert secret not in (first.identity_dir / name).read_text()
    ca = (first.certs_dir / "ca.crt").read_bytes()
    # A second start on the same directories reuses everything and issues nothing.
    again = Mosquitto(tmp_path)
    assert again.identities.issued == {}
    assert again.secret("_ingest") == secret
    assert (again.certs_dir / "ca.crt").read_bytes() == ca
    # An account whose secret left the file (rotated elsewhere) gets a new one.
    store = again.identities.store
    store.rotate("_api")
    store.save()
    repaired = Mosquitto(tmp_path)
    assert set(repaired.identities.issued) == {"_api"}
    assert repaired.identities.store.check("_api", repaired.secret("_api"))


def test_a_config_allowing_anonymous_access_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "anonymous.conf"
    text = DEFAULT_MOSQUITTO_CONF.read_text()
    template.write_text(text.replace("allow_anonymous false", "allow_anonymous true"))
    broker = Mosquitto(tmp_path / "m", config=template)
    with pytest.raises(StackError, match="allow_anonymous false"):
        broker.start()
    assert broker.pid is None
