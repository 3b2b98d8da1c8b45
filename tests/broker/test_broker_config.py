"""The shipped secure config, identity formats and documentation of the new settings."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

from brokerkit import SECURE_TEMPLATE

from broker.config import render_local_config, render_secure_config
from broker.identity import (
    PBKDF2_ITERATIONS,
    CredentialStore,
    Role,
    hash_password,
    verify_password,
)
from broker.settings import SecuritySettings
from control.stack import render_mosquitto_conf
from safecity.settings import MqttSettings

ROOT = Path(__file__).resolve().parents[2]


def test_hash_is_mosquitto_passwd_format(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "alice", "s3cret"], check=True)
    line = passwd.read_text().strip()
    user, encoded = line.split(":", 1)
    match = re.fullmatch(r"\$7\$(\d+)\$([^$]+)\$([^$]+)", encoded)
    assert user == "alice" and match is not None
    assert int(match.group(1)) == PBKDF2_ITERATIONS  # mosquitto_passwd's own default
    salt = base64.b64decode(match.group(2))
    ours = hash_password("s3cret", iterations=int(match.group(1)), salt=salt)
    assert ours == encoded
    assert verify_password("s3cret", encoded) and not verify_password("s3cret!", encoded)


def test_store_keeps_hashes_only(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    secret = store.provision("dev-1")
    assert secret is not None and store.provision("dev-1") is None
    store.provision("_ingest", Role.INGEST)
    store.save()
    for path in tmp_path.iterdir():
        assert secret not in path.read_text()
    reloaded = CredentialStore(tmp_path)
    assert reloaded.check("dev-1", secret) and not reloaded.check("dev-1", secret + "x")


def test_dynsec_config_pins_devices_to_their_id(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    store.provision("dev-1", Role.DEVICE, "tashkent")
    store.provision("dev-2", Role.DEVICE, "samarkand")
    store.provision("_ingest", Role.INGEST)
    store.provision("_api", Role.API)
    store.revoke("dev-2")
    store.save()
    config = json.loads(store.dynsec_file.read_text())
    # Everything not granted is refused, SUBSCRIBE included.
    assert config["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    clients = {c["username"]: c for c in config["clients"]}
    assert set(clients) == {"_api", "_ingest", "dev-1"}  # the revoked device is gone
    assert clients["dev-1"]["clientid"] == "dev-1"
    assert "clientid" not in clients["_ingest"]  # several workers, one account
    roles = {r["rolename"]: r["acls"] for r in config["roles"]}
    device = roles[clients["dev-1"]["roles"][0]["rolename"]]
    # It reads its own end-to-end acks and its own commands, nothing else.
    reads = ("safecity/v1/tashkent/+/+/dev-1/ack", "safecity/v1/tashkent/+/+/dev-1/cmd")
    assert {(a["acltype"], a["topic"]) for a in device} == {
        ("publishClientSend", f"safecity/v1/+/+/+/dev-1/{c}")
        for c in ("telemetry", "event", "status", "result")
    } | {(t, r) for r in reads for t in ("publishClientReceive", "subscribePattern")}
    # Only the ingest and alerts roles (and the regional ingest, over federation topics
    # only) may join a share group; the API only reads.
    shared = {
        name for name, acls in roles.items() if any(a["topic"].startswith("$share/") for a in acls)
    }
    assert shared == {"ingest", "alerts", "notify", "region"}
    # The hashes are the store's own ($7$ = PBKDF2-SHA512), split into the plugin's fields.
    _, _, iterations, salt, digest = store.accounts["dev-1"].password_hash.split("$")  # type: ignore[union-attr]
    assert (clients["dev-1"]["iterations"], clients["dev-1"]["salt"]) == (int(iterations), salt)
    assert clients["dev-1"]["password"] == digest


def test_secure_template_hardening_and_loopback_plain_listener(tmp_path: Path) -> None:
    text = render_secure_config(
        SECURE_TEMPLATE.read_text(),
        dynsec_file=tmp_path / "d.json",
        pid_file=tmp_path / "pid",
        plugin="/x/mosquitto_dynamic_security.so",
        guard="/x/safecity_guard.so",
    )
    conf = render_mosquitto_conf(
        text, host="127.0.0.1", port=1884, data_dir=tmp_path, user="nobody"
    )
    lines = [ln.strip() for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    for required in (
        "allow_anonymous false",
        "per_listener_settings false",
        "retain_available false",
        "allow_zero_length_clientid false",
        "max_qos 1",
        "max_packet_size 16384",
        "plugin /x/mosquitto_dynamic_security.so",
        f"plugin_opt_config_file {tmp_path / 'd.json'}",
        # The ingest engineer's sizing (tests/ingest fault tests depend on it).
        "max_queued_messages 2000000",
        "max_queued_bytes 805306368",
        "max_inflight_messages 1000",
        "queue_qos0_messages true",
        "autosave_interval 2",
        "sys_interval 5",
    ):
        assert required in lines, required
    # No broker-level payload limit: 2.0.11 answers it with PUBACK 0x95, which paho 2.2
    # cannot parse (endless resends); ingest dead-letters payloads over 8 KiB instead.
    assert not any(ln.startswith("message_size_limit") for ln in lines)
    # Without a TLS port the TLS listener and its options are gone, not left dangling.
    assert [ln for ln in lines if ln.startswith("listener")] == ["listener 1884 127.0.0.1"]
    assert not any(ln.startswith(("cafile", "certfile", "keyfile")) for ln in lines)
    # The shipped template has no anonymous access and no account of its own.
    raw = SECURE_TEMPLATE.read_text()
    assert "allow_anonymous true" not in raw
    assert re.search(r"^listener 1883 127\.0\.0\.1$", raw, re.MULTILINE)
    assert not any(ln.startswith(("password_file", "acl_file")) for ln in lines)
    # The guard first (it answers before dynamic security), then exactly the one
    # dynamic-security plugin, configured (a comment line must never turn into another).
    assert [ln for ln in conf.splitlines() if ln.startswith("plugin")] == [
        "plugin /x/safecity_guard.so",
        "plugin /x/mosquitto_dynamic_security.so",
        f"plugin_opt_config_file {tmp_path / 'd.json'}",
    ]


def test_one_broker_config_and_no_anonymous_variant() -> None:
    configs = sorted(p.name for p in (ROOT / "broker").iterdir() if p.suffix == ".conf")
    assert configs == ["mosquitto.conf"]
    for path in (ROOT / "broker").iterdir():
        if path.is_file():
            assert not re.search(r"^\s*allow_anonymous\s+true", path.read_text(), re.MULTILINE)
    # max_qos is per listener: each of the two listeners carries it.
    text = SECURE_TEMPLATE.read_text()
    blocks = re.split(r"^listener ", text, flags=re.MULTILINE)[1:]
    assert len(blocks) == 2 and all(re.search(r"^max_qos 1$", b, re.MULTILINE) for b in blocks)


def test_env_example_documents_security_settings() -> None:
    text = (ROOT / ".env.example").read_text()
    names = [f"SAFECITY_{n.upper()}" for n in SecuritySettings.model_fields]
    names += [f"SAFECITY_MQTT__{n.upper()}" for n in MqttSettings.model_fields]
    missing = [n for n in names if f"{n}=" not in text]
    assert missing == []


def test_local_config_uses_this_instances_files(tmp_path: Path) -> None:
    text = render_local_config(
        SECURE_TEMPLATE.read_text(encoding="utf-8"),
        identity_dir=tmp_path / "identity",
        certs_dir=tmp_path / "certs",
        data_dir=tmp_path / "data",
        port=11883,
        tls_port=18883,
    )
    assert re.search(r"^listener 11883 127\.0\.0\.1$", text, re.MULTILINE)
    assert re.search(r"^listener 18883 127\.0\.0\.1$", text, re.MULTILINE)
    assert f"plugin_opt_config_file {tmp_path}/identity/dynamic-security.json" in text
    assert f"certfile {tmp_path}/certs/server.crt" in text
    assert f"persistence_location {tmp_path}/data/" in text
    assert not [line for line in text.splitlines() if "/mosquitto/" in line.split("#")[0]]
    assert re.search(r"^allow_anonymous false$", text, re.MULTILINE)
